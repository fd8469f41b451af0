//! `GET /ui`: the web console. Its files are compiled into the binary (no build step, no
//! CDN), so the console always matches the host that serves it. It is a client of the
//! public API and nothing more: every page reads the same endpoints a user's code would.

use super::error::ApiError;
use super::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// One embedded file: its path under `/ui/`, its media type and its bytes.
struct Asset {
    path: &'static str,
    media_type: &'static str,
    body: &'static str,
}

macro_rules! asset {
    ($path:literal, $media_type:expr) => {
        Asset { path: $path, media_type: $media_type, body: include_str!(concat!("../../ui/", $path)) }
    };
}

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Every file of `host/ui/` (a unit test keeps this list and the folder the same).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/app.js", JAVASCRIPT),
    asset!("js/api.js", JAVASCRIPT),
    asset!("js/dom.js", JAVASCRIPT),
    asset!("js/events.js", JAVASCRIPT),
    asset!("js/log.js", JAVASCRIPT),
    asset!("js/aggregate.js", JAVASCRIPT),
    asset!("js/saga.js", JAVASCRIPT),
    asset!("js/components.js", JAVASCRIPT),
    asset!("js/routing.js", JAVASCRIPT),
    asset!("js/send.js", JAVASCRIPT),
];

/// Scripts and styles come only from the host itself and nothing runs inline, so an event
/// payload that happens to contain markup can never execute in an operator's browser.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /ui`: the console's page. Its files are addressed from `/ui/`, so it works with or
/// without a trailing slash.
#[utoipa::path(get, path = "/ui", tag = "operations",
    summary = "The web console: live log, aggregates, sagas, components, routing and views",
    responses((status = 200, description = "The console's HTML page", content_type = "text/html")))]
pub async fn console() -> Result<Response, ApiError> {
    serve("index.html")
}

/// `GET /ui/{*asset}`: the console's scripts, style and icon. These are its own files, not
/// API, so they are routed beside the OpenAPI document's routes.
pub async fn asset(Path(path): Path<String>) -> Result<Response, ApiError> {
    serve(&path)
}

fn serve(path: &str) -> Result<Response, ApiError> {
    let asset = ASSETS
        .iter()
        .find(|asset| asset.path == path)
        .ok_or_else(|| ApiError::not_found("unknown_asset", format!("the console has no file {path}")))?;
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.media_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The files change with the binary: revalidate rather than run a stale console.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &std::path::Path, root: &std::path::Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files_under(&path, root, found);
            } else {
                found.push(path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }

    #[test]
    fn every_file_of_the_console_is_embedded_and_nothing_else() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = Vec::new();
        files_under(&root, &root, &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn an_unknown_file_is_a_404_in_the_error_shape_and_a_known_one_has_its_type() {
        let error = serve("../Cargo.toml").unwrap_err();
        assert_eq!(error.status.as_u16(), 404);
        let page = serve("index.html").unwrap();
        assert_eq!(page.headers()[header::CONTENT_TYPE], "text/html; charset=utf-8");
        assert!(
            page.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'")
        );
        let script = serve("js/app.js").unwrap();
        assert_eq!(script.headers()[header::CONTENT_TYPE], JAVASCRIPT);
    }
}
