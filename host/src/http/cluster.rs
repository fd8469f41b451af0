//! The cluster over HTTP: `GET /cluster`, the way a request for another host's stream is
//! answered (forwarded to its owner), and the endpoint hosts hand routed commands to.

use super::AppState;
use super::error::ApiError;
use super::openapi::ErrorBody;
use crate::cluster::{Cluster, DeliveredJson, NodeJson, Owner, RoutedCommandJson};
use crate::store::StreamId;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use utoipa::ToSchema;

/// This node.
#[derive(Debug, Serialize, ToSchema)]
pub struct ThisNodeJson {
    pub id: String,
    pub url: String,
    /// Versions other nodes made active that this one cannot load (a newer binary's): it
    /// serves nothing of these components until it can.
    pub unloadable: Vec<UnloadableJson>,
}

/// A version this node cannot load, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct UnloadableJson {
    pub component: String,
    pub version: u32,
    pub error: String,
}

/// `GET /cluster`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterJson {
    pub node: ThisNodeJson,
    /// Every node that ever joined, alive or not.
    pub nodes: Vec<NodeJson>,
    /// How many partitions stream keys hash to.
    pub partitions: u32,
    /// Partitions no live node holds now (a takeover is due).
    pub unowned: Vec<u32>,
    pub lease_ttl_ms: u64,
}

/// `GET /cluster`: this node, every node with the partitions it holds, and what is unowned.
#[utoipa::path(get, path = "/cluster", tag = "operations",
    summary = "The cluster: every node, its partitions, and what no node holds",
    responses(
        (status = 200, description = "The cluster as this node's last renewal read it", body = ClusterJson),
        (status = 404, description = "`not_a_cluster`: this host holds its store alone", body = ErrorBody),
    ))]
pub async fn cluster(State(state): State<AppState>) -> Result<Json<ClusterJson>, ApiError> {
    let cluster = state.cluster.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "not_a_cluster",
            "this host is not in a cluster (start it with --store postgres://… --advertise URL)",
        )
    })?;
    Ok(Json(ClusterJson {
        node: ThisNodeJson {
            id: cluster.node().to_owned(),
            url: cluster.url().to_owned(),
            unloadable: state
                .components
                .unloadable()
                .into_iter()
                .map(|(component, version, error)| UnloadableJson {
                    component,
                    version: version.get(),
                    error,
                })
                .collect(),
        },
        nodes: cluster.nodes(),
        partitions: cluster.partitions(),
        unowned: cluster.unowned(),
        lease_ttl_ms: cluster.lease_ttl().as_millis() as u64,
    }))
}

/// `POST /cluster/deliver`: a routed command from the host that runs the routing, for a
/// stream this host owns. Only hosts of the cluster may send it (they show its secret).
pub async fn deliver(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let cluster =
        state.cluster.as_ref().ok_or_else(|| ApiError::not_found("not_a_cluster", "not in a cluster"))?;
    // Before the body is read.
    if !cluster.from_peer(&headers) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "peers_only",
            "only the hosts of the cluster send this",
        ));
    }
    // One reaction's command, which the guest's output bound already bounds; this is a
    // backstop against a defect, since only hosts get here.
    const ROUTED_COMMAND_BYTES: usize = 32 << 20;
    let body = axum::body::to_bytes(body, ROUTED_COMMAND_BYTES).await.map_err(|_| {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "a routed command too large")
    })?;
    let command: RoutedCommandJson = rmp_serde::from_slice(&body).map_err(|e| {
        ApiError::bad_request("invalid_command", format!("a routed command that does not decode: {e}"))
    })?;
    let (target, request) = command.into_request();
    let answer = match cluster.owner_within(&target, cluster.takeover_wait()).await {
        // Never forwarded again: the sender asks again once the leases have settled.
        Owner::Here(_) => DeliveredJson::of(state.actors.send(target, request).await),
        _ => DeliveredJson::Retry(format!("this host does not own {target} now")),
    };
    let bytes = rmp_serde::to_vec_named(&answer).expect("an answer encodes");
    Ok(([(header::CONTENT_TYPE, "application/msgpack")], bytes).into_response())
}

/// Where a client's request for `stream` is answered: here, or by the owner it was
/// forwarded to (its answer, given as this host's). A request another host forwarded is
/// never forwarded again: it waits for this host to own the stream, or answers 503.
pub async fn answer_elsewhere(
    state: &AppState,
    stream: &StreamId,
    headers: &HeaderMap,
    kind: &'static str,
    method: Method,
    tail: Option<&str>,
    body: &[u8],
) -> Result<Option<Response>, ApiError> {
    let Some(cluster) = &state.cluster else { return Ok(None) };
    let from_peer = cluster.from_peer(headers);
    let mut deadline = Instant::now() + cluster.takeover_wait();
    let keyed = headers.contains_key("idempotency-key");
    let mut timed_out_at: Option<String> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match cluster.owner_within(stream, left).await {
            Owner::Here(_) => return Ok(None),
            // Still the owner that did not answer: wait for its lease to move.
            Owner::There { url, .. }
                if timed_out_at.as_deref() == Some(url.as_str()) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Owner::There { url, .. } if !from_peer => {
                let path = path_of(stream, tail);
                // Copied only for a request that is forwarded: a host alone, or the owner, never does.
                let sent = Bytes::copy_from_slice(body);
                match cluster.forward(kind, &url, method.clone(), &path, headers, sent).await {
                    // The owner it was sent to had just let the stream go: nothing ran there,
                    // so it is sent again to whoever holds it now.
                    Ok(answer)
                        if answer.status == StatusCode::MISDIRECTED_REQUEST && is_not_owner(&answer.body) =>
                    {
                        if Instant::now() >= deadline {
                            return Err(not_here(cluster, stream));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Ok(answer) => {
                        let mut response = (answer.status, answer.body).into_response();
                        response.headers_mut().extend(answer.headers);
                        return Ok(Some(response));
                    }
                    Err(unreachable) if unreachable.connect && Instant::now() < deadline => {
                        // Not reached at all: its owner is down; its lease runs out soon.
                        tracing::debug!("{}", unreachable.message);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(unreachable) if unreachable.connect => return Err(not_here(cluster, stream)),
                    // A keyed request to an owner that stopped answering: once the stream has
                    // a new owner, the key makes sending it there again safe (once).
                    Err(unreachable) if unreachable.timed_out && keyed && timed_out_at.is_none() => {
                        tracing::warn!("{}; asking the stream's next owner", unreachable.message);
                        timed_out_at = Some(url);
                        deadline = Instant::now() + cluster.takeover_wait();
                    }
                    Err(unreachable) => {
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "outcome_unknown",
                            format!(
                                "{}; the command may have been stored: retry it only with the same Idempotency-Key",
                                unreachable.message
                            ),
                        )
                        .retry_after(1));
                    }
                }
            }
            // Sent here by a host that took this one for the owner, which it no longer is:
            // answered at once, so that host asks the new owner (nothing ran here).
            Owner::There { node, .. } => {
                return Err(ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    NOT_OWNER,
                    format!("{stream} is served by node {node} now, not this one"),
                ));
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return Err(not_here(cluster, stream)),
        }
    }
}

/// The code of a forwarded request's answer from a host that does not own the stream.
const NOT_OWNER: &str = "not_owner";

fn is_not_owner(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["error"]["code"] == NOT_OWNER)
}

fn not_here(cluster: &Arc<Cluster>, stream: &StreamId) -> ApiError {
    let partition = cluster.partition_of(stream);
    crate::actor::CommandError::NotHere(partition).into()
}

/// `/aggregates/{type}/{id}[/tail]`, each segment percent-encoded.
fn path_of(stream: &StreamId, tail: Option<&str>) -> String {
    let mut url = reqwest::Url::parse("http://peer/").expect("a base URL");
    url.path_segments_mut()
        .expect("a base URL has segments")
        .pop_if_empty()
        .extend(["aggregates", stream.type_name.as_str(), stream.id.as_str()])
        .extend(tail);
    url.path().to_owned()
}
