//! Requests for streams another host owns, sent to it: a client's (answered as the owner
//! answered it) and a routed command's (the router runs on one host, the targets anywhere).
//! Every forwarded request shows the cluster's secret, and a request that shows it is never
//! forwarded again, so a forwarding loop cannot happen: it waits for a takeover, or answers 503.

use super::Cluster;
use crate::actor::{Causation, CommandError, CommandReply, CommandRequest};
use crate::store::{StoreError, StreamId};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use cairn_wire::Rejection;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The header a host shows the cluster's secret in.
pub const FORWARDED_HEADER: &str = "x-cairn-peer";

/// The client's headers a forwarded request carries.
const CARRIED: &[&str] = &[
    "content-type",
    "accept",
    "if-match",
    "idempotency-key",
    "x-correlation-id",
    "if-none-match",
    "traceparent",
];

/// Why a forwarded request has no answer: `connect` when it never reached the owner.
#[derive(Debug)]
pub struct Unreachable {
    pub connect: bool,
    /// Sent, and no answer within the bound: the owner may be paused or cut off.
    pub timed_out: bool,
    pub message: String,
}

/// The owner's answer, to be given as this host's.
pub struct Forwarded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A routed command as one host hands it to the owner of its target.
#[derive(Debug, Serialize, Deserialize)]
pub struct RoutedCommandJson {
    pub target: StreamId,
    pub command_type: String,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub correlation_id: String,
    pub causation_id: String,
    pub dedup_key: String,
    pub source: StreamId,
    /// The sending host's trace context; a host before traces sends none.
    #[serde(default, deserialize_with = "crate::traces::lenient")]
    pub trace: Option<crate::traces::TraceParent>,
}

/// How the owner took a routed command: what the router needs to tell done, refused,
/// failing (counted towards parking) and worth retrying apart.
#[derive(Debug, Serialize, Deserialize)]
pub enum DeliveredJson {
    Done { replayed: bool },
    Rejected { code: String, message: String },
    UnknownType(String),
    Failed(String),
    Retry(String),
}

impl RoutedCommandJson {
    pub fn of(target: &StreamId, request: &CommandRequest) -> Option<RoutedCommandJson> {
        let causation = request.causation.as_ref()?;
        Some(RoutedCommandJson {
            target: target.clone(),
            command_type: request.command_type.clone(),
            payload: request.payload.clone(),
            correlation_id: request.correlation_id.clone(),
            causation_id: causation.causation_id.clone(),
            dedup_key: causation.dedup_key.clone(),
            source: causation.source.clone(),
            trace: request.trace,
        })
    }

    pub fn into_request(self) -> (StreamId, CommandRequest) {
        let span = tracing::info_span!(
            "routed_command",
            target = %self.target,
            command = %self.command_type,
            correlation_id = %self.correlation_id,
        );
        let trace = crate::traces::continue_trace(&span, self.trace);
        let request = CommandRequest {
            command_type: self.command_type,
            payload: self.payload,
            expected_version: None,
            idempotency_key: None,
            fingerprint: None,
            correlation_id: self.correlation_id,
            causation: Some(Causation {
                causation_id: self.causation_id,
                dedup_key: self.dedup_key,
                source: self.source,
            }),
            span,
            trace,
        };
        (self.target, request)
    }
}

impl DeliveredJson {
    pub fn of(answer: Result<CommandReply, CommandError>) -> DeliveredJson {
        match answer {
            Ok(reply) => DeliveredJson::Done { replayed: reply.replayed },
            Err(CommandError::Rejected(rejection)) => {
                DeliveredJson::Rejected { code: rejection.code, message: rejection.message }
            }
            Err(error @ CommandError::UnknownType(_)) => DeliveredJson::UnknownType(error.to_string()),
            Err(error @ CommandError::Guest(crate::runtime::GuestError::Busy(_))) => {
                DeliveredJson::Retry(error.to_string())
            }
            Err(error @ (CommandError::Guest(_) | CommandError::ActorFailed)) => {
                DeliveredJson::Failed(error.to_string())
            }
            Err(error) => DeliveredJson::Retry(error.to_string()),
        }
    }

    /// The answer as the router takes a local one: `Ok(replayed)` or the error it sorts.
    pub fn into_answer(self, target: &StreamId) -> Result<bool, CommandError> {
        match self {
            DeliveredJson::Done { replayed } => Ok(replayed),
            DeliveredJson::Rejected { code, message } => {
                Err(CommandError::Rejected(Rejection { code, message }))
            }
            DeliveredJson::UnknownType(_) => Err(CommandError::UnknownType(target.type_name.clone())),
            // Counted towards parking, as a local actor's failure is.
            DeliveredJson::Failed(why) => {
                tracing::warn!(%target, "a routed command failed at its owner: {why}");
                Err(CommandError::ActorFailed)
            }
            DeliveredJson::Retry(why) => {
                Err(CommandError::Store(StoreError::Unavailable(format!("at the owner of {target}: {why}"))))
            }
        }
    }
}

impl Cluster {
    /// Send a client's request to `url` (the owner's) as it came, and take its answer.
    ///
    /// # Errors
    /// The owner could not be reached or did not answer: the request may have reached it
    /// (a command: only a retry with the same Idempotency-Key is safe).
    pub async fn forward(
        &self,
        kind: &'static str,
        url: &str,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Forwarded, Unreachable> {
        let started = Instant::now();
        // A paused or cut-off owner loses its partitions within the takeover's bound: waiting
        // longer for it only holds the client.
        let mut request =
            self.http.request(method, format!("{url}{path_and_query}")).timeout(self.takeover_wait());
        for name in CARRIED {
            if let Some(value) = headers.get(*name) {
                request = request.header(*name, value.clone());
            }
        }
        request = request.header(FORWARDED_HEADER, self.secret()).body(body);
        let answered = async {
            let response = request.send().await?;
            let status = response.status();
            let mut headers = response.headers().clone();
            for hop in ["connection", "transfer-encoding", "content-length", "keep-alive"] {
                headers.remove(HeaderName::from_static(hop));
            }
            Ok::<_, reqwest::Error>(Forwarded { status, headers, body: response.bytes().await? })
        }
        .await;
        let outcome = if answered.is_ok() { "answered" } else { "unreachable" };
        crate::telemetry::forwarded(kind, outcome, started.elapsed());
        answered.map_err(|e| Unreachable {
            connect: e.is_connect(),
            timed_out: e.is_timeout(),
            message: format!(
                "the host at {url} that owns it did not answer: {}",
                crate::store::postgres::with_causes(&e)
            ),
        })
    }

    /// Hand a routed command to the owner of its target at `url`.
    pub async fn deliver(&self, url: &str, command: &RoutedCommandJson) -> Result<bool, CommandError> {
        let started = Instant::now();
        let body = rmp_serde::to_vec_named(command).expect("a routed command encodes");
        let sent = async {
            let response = self
                .http
                .post(format!("{url}/cluster/deliver"))
                .header(FORWARDED_HEADER, self.secret())
                .header("content-type", "application/msgpack")
                .body(body)
                .send()
                .await?
                .error_for_status()?;
            response.bytes().await
        }
        .await;
        crate::telemetry::forwarded(
            "delivery",
            if sent.is_ok() { "answered" } else { "unreachable" },
            started.elapsed(),
        );
        let bytes = sent.map_err(|e| {
            CommandError::Store(StoreError::Unavailable(format!(
                "the owner of {} at {url} did not answer: {e}",
                command.target
            )))
        })?;
        let delivered: DeliveredJson = rmp_serde::from_slice(&bytes).map_err(|e| {
            CommandError::Store(StoreError::Unavailable(format!("the owner's answer does not decode: {e}")))
        })?;
        delivered.into_answer(&command.target)
    }
}
