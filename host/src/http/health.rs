//! Whether the host is up and ready, and its metrics.

use super::AppState;
use super::error::ApiError;
use super::openapi::ErrorBody;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// `GET /healthz`
#[utoipa::path(get, path = "/healthz", tag = "operations", summary = "The process is up",
    responses((status = 200, description = "`{\"status\": \"ok\", \"head_position\", \"live_actors\"}`, and in a cluster `\"node\"` (this node's id) and `\"nodes_alive\"`", body = Object)))]
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let mut health = json!({"status": "ok", "head_position": state.store.head_position(), "live_actors": state.actors.live()});
    if let Some(cluster) = &state.cluster {
        health["node"] = json!(cluster.node());
        health["nodes_alive"] = json!(cluster.nodes().iter().filter(|n| n.alive).count());
    }
    Json(health)
}

/// `GET /readyz`: 200 only when the host can take commands: the writer thread is alive, its
/// last commit succeeded, and components are loaded; else 503 `not_ready` with the reason.
/// A projection that has stopped (a view that no longer follows the log) does not stop the
/// host taking commands; it is named under `degraded`, with why.
#[utoipa::path(get, path = "/readyz", tag = "operations", summary = "The host can take commands",
    responses(
        (status = 200, description = "`{\"status\": \"ready\", \"head_position\", \"degraded\": [{\"projection\", \"reason\"}], \"store_reopened\": {\"error\", \"failed_at\", \"reopened_at\", \"unavailable_ms\"}}`", body = Object),
        (status = 503, description = "`not_ready`: the writer is gone, its last commit failed, or no component is loaded", body = ErrorBody),
    ))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let problem = state
        .writer
        .problem()
        .or_else(|| state.components.is_empty().then(|| "no components are loaded".to_owned()));
    match problem {
        None => {
            let degraded: Vec<Value> = state
                .projections
                .status()
                .await?
                .into_iter()
                .filter_map(|p| {
                    let failure = p.failure.or_else(|| p.rebuild.and_then(|r| r.failure))?;
                    Some(
                        json!({"projection": p.name, "position": failure.position, "reason": failure.reason}),
                    )
                })
                .collect();
            let mut answer = json!({"status": "ready", "head_position": state.store.head_position()});
            if !degraded.is_empty() {
                answer["degraded"] = Value::Array(degraded);
            }
            // The last time the store failed with an I/O error and was opened again.
            if let Some(reopening) = state.writer.last_reopening() {
                answer["store_reopened"] = json!(reopening);
            }
            Ok(Json(answer))
        }
        Some(reason) => {
            Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason).retry_after(1))
        }
    }
}

/// `GET /metrics`: Prometheus text format. Counters and histograms come from where things
/// happen; the gauges of the host's state are read now.
#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 503, description = "Metrics could not be installed in this process", body = ErrorBody),
    ))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    use crate::telemetry::{gauge, labelled_gauge};
    let Some(handle) = &state.metrics else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process",
        ));
    };
    let head = state.store.head_position();
    gauge("cairn_head_position", head.get() as f64);
    gauge("cairn_live_actors", state.actors.live() as f64);
    let (queued, deepest) = state.actors.queued();
    gauge("cairn_mailbox_messages", queued as f64);
    gauge("cairn_mailbox_depth_max", deepest as f64);
    gauge("cairn_guest_instances", state.components.guest_instances() as f64);
    if let Some(cluster) = &state.cluster {
        gauge("cairn_cluster_partitions_held", cluster.held() as f64);
        gauge("cairn_cluster_partitions_unowned", cluster.unowned().len() as f64);
    }
    for subscriber in state.routing.status().await? {
        let name = subscriber.name.as_str();
        labelled_gauge("cairn_routing_lag_events", "subscriber", name, subscriber.lag as f64);
        labelled_gauge(
            "cairn_routing_in_flight_events",
            "subscriber",
            name,
            subscriber.counters.in_flight as f64,
        );
        labelled_gauge("cairn_dead_letters", "subscriber", name, subscriber.dead_letters as f64);
    }
    for projection in state.projections.status().await? {
        let name = projection.name.as_str();
        labelled_gauge("cairn_projection_lag_events", "projection", name, projection.lag as f64);
        let failed =
            projection.failure.is_some() || projection.rebuild.as_ref().is_some_and(|r| r.failure.is_some());
        labelled_gauge("cairn_projection_failed", "projection", name, if failed { 1.0 } else { 0.0 });
        let rebuilding = projection.rebuild.as_ref().map_or(0.0, |r| r.progress);
        labelled_gauge("cairn_projection_rebuild_progress", "projection", name, rebuilding);
    }
    handle.run_upkeep();
    let text = handle.render();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}
