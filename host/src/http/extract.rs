//! Request parts decoded into Cairn's types, failing with the JSON error shape (axum's
//! own rejections answer plain text).

use super::AppState;
use super::error::ApiError;
use crate::store::StreamId;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use std::collections::HashMap;

/// The raw body, within the route's size limit (413 beyond it).
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(Body(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this endpoint accepts",
            )),
            Err(rejection) => Err(ApiError::bad_request("bad_body", rejection.body_text())),
        }
    }
}

/// Path segments, percent-decoded; a segment that is not UTF-8 is 400 `invalid_path`.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::bad_request("invalid_path", rejection.body_text())),
        }
    }
}

/// The longest request target (path and query) the host reads; beyond it, 414. (hyper
/// itself refuses targets beyond 64 KiB, with an empty 414.)
pub const MAX_URI_BYTES: usize = 8 << 10;

/// Refuse a request target longer than [`MAX_URI_BYTES`] with 414 in the JSON shape.
pub async fn bound_uri(request: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let length = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if length > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {length} bytes; at most {MAX_URI_BYTES} are read"),
        )
        .into_response();
    }
    next.run(request).await
}

/// The largest integer a query parameter takes: `i64::MAX`.
pub const MAX_QUERY_INTEGER: u64 = i64::MAX as u64;

/// The longest text a query parameter takes, in characters.
pub const MAX_QUERY_TEXT_CHARS: usize = 512;

/// The longest `Idempotency-Key` or `X-Correlation-Id`.
pub const MAX_HEADER_LEN: usize = 256;

/// The longest `If-Match`.
pub const MAX_IF_MATCH_LEN: usize = 64;

/// Query parameters, parsed by name with errors in the JSON shape.
pub struct Params(HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs = parse_query(query)
            .ok_or_else(|| ApiError::bad_request("invalid_query", "the query string is malformed"))?;
        Ok(Params(pairs))
    }
}

fn parse_query(query: &str) -> Option<HashMap<String, String>> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(&format!("/?{query}").parse().ok()?)
        .ok()
        .map(|q| q.0)
}

impl Params {
    /// An optional integer parameter, 0 to [`MAX_QUERY_INTEGER`] (an int64, as the
    /// document says and PostgreSQL keeps positions).
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(text) => text.parse().ok().filter(|n| *n <= MAX_QUERY_INTEGER).map(Some).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("{name} must be an integer from 0 to {MAX_QUERY_INTEGER}, got {text:?}"),
                )
            }),
        }
    }

    /// An optional text parameter (1 to [`MAX_QUERY_TEXT_CHARS`] characters when given).
    pub fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(text) if text.is_empty() || text.chars().count() > MAX_QUERY_TEXT_CHARS => {
                Err(ApiError::bad_request(
                    "invalid_query",
                    format!("{name} must be 1 to {MAX_QUERY_TEXT_CHARS} characters"),
                ))
            }
            Some(text) => Ok(Some(text.clone())),
        }
    }

    /// An optional stream, named by its key (`account/101`).
    pub fn stream(&self, name: &str) -> Result<Option<StreamId>, ApiError> {
        let Some(text) = self.text(name)? else { return Ok(None) };
        StreamId::from_key(&text).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("{name} must name a stream as type/id, e.g. account/101"),
            )
        })
    }

    /// An optional boolean parameter: `true`/`1` or `false`/`0`; absent is `false`.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(other) => {
                Err(ApiError::bad_request("invalid_query", format!("{name} is true or false, not {other:?}")))
            }
        }
    }

    /// `limit`, defaulting to `default` and capped at `max`.
    pub fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.u64("limit")? {
            None => Ok(default),
            Some(0) => Err(ApiError::bad_request("invalid_query", "limit must be at least 1")),
            Some(n) => Ok((n as usize).min(max)),
        }
    }
}

/// A header as text, if present; 400 if it is not valid text or too long.
pub fn header_text(headers: &HeaderMap, name: &str, max_len: usize) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::bad_request("invalid_header", format!("{name} must be visible ASCII")))?
        .trim();
    if text.is_empty() || text.len() > max_len {
        return Err(ApiError::bad_request(
            "invalid_header",
            format!("{name} must be 1 to {max_len} characters"),
        ));
    }
    Ok(Some(text.to_owned()))
}

/// `If-Match: "<version>"` (quotes optional, as ETag gives them).
pub fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(text) = header_text(headers, "if-match", MAX_IF_MATCH_LEN)? else {
        return Ok(None);
    };
    let unquoted = text.trim_start_matches("W/").trim_matches('"');
    unquoted.parse().map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_header",
            format!("If-Match must be a stream version like \"3\", got {text}"),
        )
    })
}

/// Admin endpoints need `Authorization: Bearer <admin token>` (401 otherwise).
pub(super) fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let expected = state.admin_token.as_bytes();
    // Compare in time independent of where the first difference is.
    let matches = presented.is_some_and(|p| {
        p.len() == expected.len() && p.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    });
    if matches {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this endpoint needs Authorization: Bearer <admin token>",
        ))
    }
}
