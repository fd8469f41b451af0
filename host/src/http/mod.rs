//! The HTTP API of API.md, on axum. Handlers decode requests into typed values, hand
//! them to the actor layer or read the store, and encode answers; every failure goes
//! through [`ApiError`], the one JSON error shape.

mod aggregates;
mod error;
mod extract;
mod log;
mod operations;
mod stream;
mod views;

pub use error::ApiError;
pub use stream::LiveStreams;
pub use views::POSITION_HEADER;

use crate::actor::Actors;
use crate::components::ComponentRegistry;
use crate::projection::Projections;
use crate::routing::Routing;
use crate::store::{EventStore, Writer};
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use std::sync::Arc;
use tower::ServiceBuilder;

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
}

/// Limits on what requests may cost.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub command_bytes: usize,
    pub component_bytes: usize,
    /// Requests handled at once; beyond it the host answers 503 at once instead of
    /// queueing without bound.
    pub max_in_flight: usize,
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
    let commands = Router::new()
        .route("/aggregates/{type}/{id}/commands", post(aggregates::command))
        .route("/aggregates/{type}/commands", post(aggregates::command_new_id))
        .layer(DefaultBodyLimit::max(limits.command_bytes));
    Router::new()
        .merge(commands)
        // Its body is read by the handler, after the token check, up to `component_bytes`.
        .route("/components/{name}", put(operations::deploy))
        .route("/components/{name}/versions/{version}", get(operations::version_bytes))
        .route("/components/{name}/rollback", post(operations::rollback))
        .route("/components/{name}/activate", post(operations::activate))
        .route("/aggregates/{type}/{id}", get(aggregates::state))
        .route("/aggregates/{type}/{id}/events", get(aggregates::events))
        .route("/events", get(log::global))
        .route("/events/stream", get(stream::stream))
        .route("/sagas/{correlation_id}", get(log::saga))
        .route("/components", get(operations::components))
        .route("/routing", get(operations::routing))
        .route("/routing/dead-letters", get(operations::dead_letters))
        .route("/routing/dead-letters/retry", post(operations::retry_dead_letters))
        .route("/routing/dead-letters/discard", post(operations::discard_dead_letters))
        .route("/routing/{subscriber}/rewind", post(operations::rewind))
        .route("/views", get(views::list))
        .route("/views/{projection}", get(views::keys))
        .route("/views/{projection}/{key}", get(views::document))
        .route("/views/{projection}/rebuild", post(views::rebuild))
        .route("/healthz", get(operations::health))
        .route("/readyz", get(operations::ready))
        .route("/metrics", get(operations::metrics))
        .fallback(operations::not_found)
        .method_not_allowed_fallback(operations::method_not_allowed)
        .layer(axum::middleware::from_fn(count_request))
        .layer(
            ServiceBuilder::new()
                .layer(tower_http::trace::TraceLayer::new_for_http())
                .layer(HandleErrorLayer::new(error::overloaded))
                .load_shed()
                .concurrency_limit(limits.max_in_flight),
        )
        .with_state(state)
}
