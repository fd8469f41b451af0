//! The HTTP API of API.md, on axum. Handlers decode requests into typed values, hand
//! them to the actor layer or read the store, and encode answers; every failure goes
//! through [`ApiError`], the one JSON error shape.

mod aggregates;
mod backup;
mod cluster;
mod component_json;
mod components;
mod connections;
mod error;
mod event_json;
mod events;
mod extract;
mod health;
mod openapi;
mod routing;
mod site;
mod stream;
mod ui;
mod views;

pub use connections::{ConnectionLimits, serve};
pub use error::ApiError;
pub use site::SitePolicy;
pub use stream::LiveStreams;
pub use views::POSITION_HEADER;

use crate::actor::Actors;
use crate::components::ComponentRegistry;
use crate::projection::Projections;
use crate::routing::Routing;
use crate::store::{EventStore, Writer};
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::{Extension, Router};
use std::sync::Arc;
use tower::ServiceBuilder;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub actors: Actors,
    pub store: EventStore,
    /// For `/readyz`: whether the writer can take appends.
    pub writer: Writer,
    pub components: Arc<ComponentRegistry>,
    pub routing: Arc<Routing>,
    pub projections: Arc<Projections>,
    pub admin_token: Arc<str>,
    /// The largest component a deploy accepts.
    pub max_component_bytes: usize,
    /// Streams a deploy's replay check rebuilds.
    pub replay_sample: usize,
    /// The longest an upload may take to compile.
    pub compile_timeout: std::time::Duration,
    /// The longest a view read waits for `min_position`.
    pub view_wait: std::time::Duration,
    /// The open `GET /events/stream` answers, bounded, and their shutdown signal.
    pub live_streams: LiveStreams,
    /// Renders `GET /metrics`; `None` when metrics could not be installed.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The names the host answers for and the origins that may change it.
    pub site: Arc<SitePolicy>,
    /// Folds of past versions (temporal reads) that may run at once.
    pub folds: Arc<tokio::sync::Semaphore>,
    /// The snapshot interval of components that set none, as the actors use it.
    pub default_snapshot_interval: u32,
    /// In a cluster: who owns which stream, and the way to the other hosts.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// Limits on what requests may cost.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub command_bytes: usize,
    pub component_bytes: usize,
    /// Requests handled at once; beyond it the host answers 503 at once instead of
    /// queueing without bound.
    pub max_in_flight: usize,
    /// The longest a request may take, body included (not a live event stream); beyond it
    /// the answer is 503 `request_timeout`.
    pub request_timeout: std::time::Duration,
}

/// Count every answer by the route's pattern (so ids do not become labels) and status.
async fn count_request(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    crate::telemetry::http_request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// Every route of the API, apart from `main` so tests can use it without a socket.
pub fn router(state: AppState, limits: BodyLimits) -> Router {
    let (routes, doc) = api_routes(limits).split_for_parts();
    let doc = openapi::render(doc);
    let site = state.site.clone();
    let router = routes
        .route("/ui/", axum::routing::get(ui::console))
        .route("/ui/{*asset}", axum::routing::get(ui::asset))
        // Between the hosts of a cluster only: not in the document.
        .route("/cluster/deliver", axum::routing::post(cluster::deliver))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(openapi::RenderedDoc(doc.into())))
        .layer(axum::middleware::from_fn(count_request))
        .layer(axum::middleware::from_fn(extract::bound_uri))
        .layer(
            ServiceBuilder::new()
                .layer(tower_http::trace::TraceLayer::new_for_http())
                .layer(HandleErrorLayer::new(error::stack_error))
                .load_shed()
                .concurrency_limit(limits.max_in_flight),
        )
        // Cross-site changes are refused inside the CORS layer, so that a page of an allowed
        // origin can read why it was refused; foreign names are refused before all of it.
        .layer(axum::middleware::from_fn_with_state(site.clone(), site::guard_origin));
    let router = match site::cors(&site) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router.layer(axum::middleware::from_fn_with_state(site, site::guard_host)).with_state(state)
}

/// The routes, each registered with `routes!` so that it is in the OpenAPI document.
pub(super) fn api_routes(limits: BodyLimits) -> OpenApiRouter<AppState> {
    let commands = OpenApiRouter::new()
        .routes(routes!(aggregates::command))
        .routes(routes!(aggregates::command_new_id))
        .layer(DefaultBodyLimit::max(limits.command_bytes));
    let timed = OpenApiRouter::new()
        .merge(commands)
        // Its body is read by the handler, after the token check, up to `component_bytes`.
        .routes(routes!(components::deploy))
        .routes(routes!(components::version_bytes, components::delete_version))
        .routes(routes!(components::rollback))
        .routes(routes!(components::activate))
        .routes(routes!(aggregates::state))
        .routes(routes!(aggregates::events))
        .routes(routes!(events::global))
        .routes(routes!(events::saga))
        .routes(routes!(components::components))
        .routes(routes!(routing::routing))
        .routes(routes!(routing::dead_letters))
        .routes(routes!(routing::retry_dead_letters))
        .routes(routes!(routing::discard_dead_letters))
        .routes(routes!(routing::rewind))
        .routes(routes!(views::list))
        .routes(routes!(views::keys))
        .routes(routes!(views::document))
        .routes(routes!(views::rebuild, views::rebuild_document))
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(health::metrics))
        .routes(routes!(cluster::cluster))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(ui::console))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(error::stack_error))
                .timeout(limits.request_timeout),
        );
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(timed)
        // A live stream lasts as long as the client follows it, an export as the store is large.
        .routes(routes!(stream::stream))
        .routes(routes!(backup::export))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; see the API reference in the README")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Limits for building the routes without serving them.
    pub(in crate::http) fn limits() -> BodyLimits {
        BodyLimits {
            command_bytes: 1,
            component_bytes: 1,
            max_in_flight: 1,
            request_timeout: std::time::Duration::from_secs(1),
        }
    }

    /// Every path the router serves is in the document, and nothing else: the router's own
    /// route table (axum prints it in its `Debug`) against the document's paths.
    #[test]
    fn the_openapi_document_lists_every_route_the_router_serves() {
        let (routes, doc) = api_routes(limits()).split_for_parts();
        let debug = format!("{routes:?}");
        // The fallback router's own entries (`/` among them) follow `fallback_router`.
        let (table, _) = debug.split_once("fallback_router").expect("axum's Router debug names its parts");
        let mut served: Vec<&str> =
            table.split('"').filter(|part| part.starts_with('/') && !part.contains("__private__")).collect();
        served.sort_unstable();
        served.dedup();
        let mut documented: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        documented.sort_unstable();
        assert!(served.len() >= 24, "the walk found the router's paths: {served:?}");
        assert_eq!(served, documented);
        for (path, item) in &doc.paths.paths {
            let operations = [&item.get, &item.put, &item.post, &item.delete];
            for operation in operations.into_iter().flatten() {
                assert!(operation.summary.is_some(), "{path} has a summary");
                assert!(
                    operation.responses.responses.contains_key("200")
                        || operation.responses.responses.contains_key("202"),
                    "{path} has its answer"
                );
            }
        }
    }
}
