//! Which names the host answers to, and which web pages may change it: the defences of a
//! service that listens on a developer's machine, where any page in their browser can send
//! it requests.
//!
//! - **DNS rebinding**: a page on `evil.example` whose name is made to resolve to
//!   127.0.0.1 reaches the host as if it were same-origin, and the browser then lets it
//!   read the answers. Such a request carries `Host: evil.example`, so the host answers only
//!   requests whose `Host` is its listen address, `localhost` or a loopback address (with its
//!   port), any IP address when it listens on all of them (an IP literal cannot be rebound),
//!   or a name given with `--allowed-host`; anything else is 421.
//! - **Cross-site requests**: a page on another site can POST to the host without reading
//!   the answer (a form, or `fetch` with `text/plain`, needs no CORS preflight). Browsers
//!   send `Origin` with every such request, so a state-changing request (POST, PUT, PATCH,
//!   DELETE) whose `Origin` is not the host's own (`http://` + its `Host`) or one given with
//!   `--allowed-origin` is 403 `origin_not_allowed`, whatever its `Content-Type`. Requests
//!   without `Origin` (curl, SDKs, other services) are not browsers' and pass.
//!
//! Both checks run before any handler, so a refused request reads no body and reaches no
//! actor. Cross-origin reads are left to the browser: without `--allowed-origin` the host
//! grants no CORS at all.

use super::error::ApiError;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The names and origins the host answers, and the address it listens on.
#[derive(Debug, Clone)]
pub struct SitePolicy {
    listen: SocketAddr,
    /// Lower-case names, each `name` (any port) or `name:port`.
    allowed_hosts: Vec<String>,
    /// Lower-case origins, `scheme://host[:port]`.
    allowed_origins: Vec<String>,
}

impl SitePolicy {
    pub fn new(listen: SocketAddr, allowed_hosts: &[String], allowed_origins: &[String]) -> Self {
        let normalise = |items: &[String]| -> Vec<String> {
            items
                .iter()
                .map(|item| item.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|item| !item.is_empty())
                .collect()
        };
        SitePolicy {
            listen,
            allowed_hosts: normalise(allowed_hosts),
            allowed_origins: normalise(allowed_origins),
        }
    }

    /// The origins `--allowed-origin` names, for the CORS grant (none: no grant at all).
    pub fn allowed_origins(&self) -> &[String] {
        &self.allowed_origins
    }

    /// Whether a request that says `Host: host` is for this host.
    fn answers_for(&self, host: &str) -> bool {
        let host = host.trim().to_ascii_lowercase();
        let Some((name, port)) = split_host(&host) else { return false };
        if self.allowed_hosts.iter().any(|allowed| *allowed == host || *allowed == name) {
            return true;
        }
        // A Host without a port means the scheme's default.
        if port.unwrap_or(80) != self.listen.port() {
            return false;
        }
        if name == "localhost" {
            return true;
        }
        let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
            return false;
        };
        ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified()
    }

    /// Whether a state-changing request from a page of `origin` may reach the host, whose
    /// `Host` it names as `host`: a page the host served itself (by that name, over HTTP, or
    /// HTTPS behind a proxy that terminates TLS), or an allowed origin.
    fn accepts_origin(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
        let own = host.is_some_and(|host| {
            let host = host.trim().to_ascii_lowercase();
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host.as_str())
        });
        own || self.allowed_origins.contains(&origin)
    }
}

/// `name` and optional port of a `Host` value (`[::1]:8080`, `localhost`, `10.0.0.1:80`).
fn split_host(host: &str) -> Option<(&str, Option<u16>)> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')?;
        let rest = &host[end + 1..];
        let port = match rest.strip_prefix(':') {
            Some(port) => Some(port),
            None if rest.is_empty() => None,
            None => return None,
        };
        (&host[..=end], port)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port = match port {
        Some(port) => Some(port.parse().ok()?),
        None => None,
    };
    (!name.is_empty()).then_some((name, port))
}

fn changes_state(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<Result<&str, ()>> {
    headers.get(name).map(|value| value.to_str().map_err(drop))
}

/// Refuse a request for a name this host does not answer for (421), before anything else
/// reads it.
pub async fn guard_host(
    axum::extract::State(policy): axum::extract::State<Arc<SitePolicy>>,
    request: Request,
    next: Next,
) -> Response {
    match header_text(request.headers(), header::HOST) {
        None => {}
        Some(Err(())) => return misdirected("the Host header is not text").into_response(),
        Some(Ok(host)) if !policy.answers_for(host) => {
            return misdirected(&format!(
                "this host does not answer for {host:?}: only its listen address, localhost and \
                 loopback addresses with its port, and names given with --allowed-host"
            ))
            .into_response();
        }
        Some(Ok(_)) => {}
    }
    next.run(request).await
}

/// Refuse a state-changing request from a page of another origin (403), before its body is
/// read or its token checked.
pub async fn guard_origin(
    axum::extract::State(policy): axum::extract::State<Arc<SitePolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    if changes_state(request.method())
        && let Some(origin) = header_text(headers, header::ORIGIN)
    {
        let host = header_text(headers, header::HOST).and_then(Result::ok);
        if !origin.is_ok_and(|origin| policy.accepts_origin(origin, host)) {
            let origin = origin.unwrap_or("(not text)");
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "a page of {origin} may not change this host: only its own pages and \
                     origins given with --allowed-origin may"
                ),
            )
            .into_response();
        }
    }
    next.run(request).await
}

fn misdirected(message: &str) -> ApiError {
    ApiError::new(StatusCode::MISDIRECTED_REQUEST, "host_not_allowed", message)
}

/// The CORS grant for the origins `--allowed-origin` names; `None` without any.
pub fn cors(policy: &SitePolicy) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if policy.allowed_origins().is_empty() {
        return None;
    }
    let origins: Vec<_> = policy.allowed_origins().iter().filter_map(|o| o.parse().ok()).collect();
    let request_headers = [
        header::CONTENT_TYPE,
        header::AUTHORIZATION,
        header::IF_MATCH,
        header::HeaderName::from_static("last-event-id"),
        header::HeaderName::from_static("idempotency-key"),
        header::HeaderName::from_static("x-correlation-id"),
    ];
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers(request_headers)
            .expose_headers([header::ETAG, header::RETRY_AFTER, super::POSITION_HEADER]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(listen: &str) -> SitePolicy {
        SitePolicy::new(
            listen.parse().unwrap(),
            &["cairn.internal".to_owned(), "ops.example:9000".to_owned()],
            &["https://console.example".to_owned()],
        )
    }

    #[test]
    fn the_host_answers_its_own_names_and_configured_ones_only() {
        let local = policy("127.0.0.1:8080");
        for host in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080", "[::1]:8080", "127.0.0.5:8080"] {
            assert!(local.answers_for(host), "{host}");
        }
        for host in ["cairn.internal", "cairn.internal:1234", "ops.example:9000"] {
            assert!(local.answers_for(host), "{host} is configured");
        }
        for host in [
            "evil.example:8080",
            "localhost:9999",
            "127.0.0.1:9999",
            "10.0.0.1:8080",
            "ops.example:9001",
            "localhost",
            "127.0.0.1:80x",
            "[::1",
            "",
        ] {
            assert!(!local.answers_for(host), "{host}");
        }
        let everywhere = policy("0.0.0.0:8080");
        assert!(everywhere.answers_for("10.0.0.1:8080"), "any IP literal: it cannot be rebound");
        assert!(!everywhere.answers_for("rebound.example:8080"));
    }

    #[test]
    fn a_state_change_needs_the_hosts_own_origin_or_a_configured_one() {
        let local = policy("127.0.0.1:8080");
        assert!(local.accepts_origin("http://127.0.0.1:8080", Some("127.0.0.1:8080")));
        assert!(local.accepts_origin("http://localhost:8080", Some("localhost:8080")));
        assert!(local.accepts_origin("https://console.example/", None));
        assert!(local.accepts_origin("https://cairn.internal", Some("cairn.internal")), "behind a TLS proxy");
        assert!(!local.accepts_origin("http://evil.example", Some("127.0.0.1:8080")));
        assert!(!local.accepts_origin("null", Some("127.0.0.1:8080")));
        assert!(!local.accepts_origin("http://localhost:8080", Some("127.0.0.1:8080")), "another origin");
    }
}
