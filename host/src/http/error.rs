//! The one place where failures become HTTP answers:
//! `{"error": {"code": "<machine_code>", "message": "<sentence>"}}` with the status
//! API.md gives for each kind of failure.

use super::openapi::{ErrorBody, ErrorDetail};
use crate::actor::CommandError;
use crate::components::{DeployError, VersionError};
use crate::runtime::{GuestError, LoadError};
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Seconds a client should wait before retrying (429 / 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError { status, code: code.to_owned(), message: message.into(), retry_after: None }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    pub(crate) fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, "{}", self.message);
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The answer for an error of the tower layers around the handlers: load shedding at the
/// limit of requests in flight, or a request past `--request-timeout-ms`.
pub async fn stack_error(error: tower::BoxError) -> ApiError {
    if error.is::<tower::load_shed::error::Overloaded>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the host is at its limit of requests in flight; retry shortly",
        )
        .retry_after(1)
    } else if error.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            "the request took longer than the host allows; a command may still have taken effect, \
             so retry it with the same Idempotency-Key",
        )
        .retry_after(1)
    } else {
        ApiError::internal(format!("request failed in the HTTP stack: {error}"))
    }
}

impl From<StoreError> for ApiError {
    /// The store could not be read or written now (503: retry), or what it holds does not
    /// decode (500: a defect, or a file of another version).
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Corrupt(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage_error", error.to_string())
            }
            StoreError::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", error.to_string())
                    .retry_after(5)
            }
            StoreError::OutcomeUnknown(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!("{error}; read back what was written before retrying"),
            )
            .retry_after(1),
            _ => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                format!("the store is unavailable: {error}"),
            )
            .retry_after(1),
        }
    }
}

/// A command whose store work failed: nothing of it was stored (a failed group commit
/// stores none of its batches; a failed read happens before anything is decided).
fn command_not_stored(error: StoreError) -> ApiError {
    match error {
        StoreError::Corrupt(_) | StoreError::Closed => error.into(),
        StoreError::OutcomeUnknown(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown",
            format!(
                "{error}; the command may have been stored: retry it only with the same \
                 Idempotency-Key, which answers what happened"
            ),
        )
        .retry_after(1),
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("the command was not stored: {error}; retry it (with the same Idempotency-Key)"),
        )
        .retry_after(1),
    }
}

impl From<GuestError> for ApiError {
    /// A guest failure is the component's fault, not the host's: 422, never 500.
    fn from(error: GuestError) -> Self {
        let code = match error {
            GuestError::Trap(_) => "guest_trap",
            GuestError::Timeout(_) => "guest_timeout",
            GuestError::OutputTooLarge { .. } => "guest_output_too_large",
            GuestError::SchemaUnknown { .. } => "schema_unknown",
            // Every instance slot is taken: the host is overloaded, the guest did nothing wrong.
            GuestError::Busy(_) => {
                return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", error.to_string())
                    .retry_after(1);
            }
        };
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, error.to_string())
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::Rejected(rejection) => {
                let status = match rejection.code.as_str() {
                    cairn_wire::UNKNOWN_COMMAND | cairn_wire::INVALID_COMMAND => StatusCode::BAD_REQUEST,
                    crate::actor::INTERNAL_COMMAND => StatusCode::FORBIDDEN,
                    _ => StatusCode::UNPROCESSABLE_ENTITY,
                };
                ApiError::new(status, &rejection.code, rejection.message)
            }
            CommandError::VersionConflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "version_conflict", error.to_string())
            }
            CommandError::Overloaded => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", error.to_string()).retry_after(1)
            }
            CommandError::UnknownType(_) => ApiError::not_found("unknown_type", error.to_string()),
            CommandError::Guest(guest) => guest.into(),
            CommandError::Store(store) => command_not_stored(store),
            CommandError::ActorFailed => ApiError::internal(error.to_string()),
            // Answered as a storage hiccup, worth a retry, as it always was.
            CommandError::Interrupted(why) => command_not_stored(StoreError::Unavailable(why)),
            CommandError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", error.to_string())
                    .retry_after(5)
            }
            CommandError::NotHere(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "partition_unavailable", error.to_string())
                    .retry_after(1)
            }
        }
    }
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> Self {
        let message = error.to_string();
        match error {
            DeployError::InvalidName(_) => ApiError::bad_request("invalid_name", message),
            DeployError::Load(LoadError::Invalid(_)) => ApiError::bad_request("invalid_component", message),
            DeployError::Load(LoadError::WrongWorld(_)) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "wrong_world", message)
            }
            DeployError::Load(LoadError::Describe(guest)) => guest.into(),
            DeployError::NameMismatch { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "name_mismatch", message)
            }
            DeployError::CompileTimeout(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "compile_timeout", message)
            }
            DeployError::KindMismatch { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "kind_mismatch", message)
            }
            DeployError::ReplayFailed { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "replay_failed", message)
            }
            DeployError::ConsumerBreaks { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "consumer_breaks", message)
            }
            DeployError::NotFollowed(_) => ApiError::internal(message),
            DeployError::Interrupted(why) => StoreError::Unavailable(why).into(),
            DeployError::Store(store) => store.into(),
        }
    }
}

impl From<VersionError> for ApiError {
    fn from(error: VersionError) -> Self {
        let message = error.to_string();
        match error {
            VersionError::UnknownComponent(_) => ApiError::not_found("unknown_component", message),
            VersionError::UnknownVersion { .. } => ApiError::not_found("unknown_version", message),
            VersionError::NothingToRollBack(_) => {
                ApiError::new(StatusCode::CONFLICT, "nothing_to_roll_back", message)
            }
            VersionError::ActiveVersion { .. } => {
                ApiError::new(StatusCode::CONFLICT, "version_active", message)
            }
            VersionError::Load(load) => DeployError::Load(load).into(),
            VersionError::Replay(replay) => replay.into(),
            VersionError::NotFollowed(_) => ApiError::internal(message),
            VersionError::Interrupted(why) => StoreError::Unavailable(why).into(),
            VersionError::Store(store) => store.into(),
        }
    }
}
