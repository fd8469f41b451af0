//! `GET /openapi.json`: the API described from the code. Every route is registered through
//! utoipa-axum's `routes!`, which takes the method and path from the handler's
//! `#[utoipa::path]`, so what the router serves and what the document lists are one list.

use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// Every error answer: `{"error": {"code", "message"}}` (API.md, Conventions).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A machine code such as `unknown_type`, `version_conflict`, `guest_trap`.
    pub code: String,
    /// A sentence for a person.
    pub message: String,
}

/// The document's frame: title, tags and the admin token's scheme; the paths come from the
/// routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cairn",
        description = "A WebAssembly-hosted actor runtime for event-sourced aggregates. \
            Every error is `{\"error\": {\"code\", \"message\"}}`; admin endpoints need \
            `Authorization: Bearer <admin token>`."
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&AdminToken),
    tags(
        (name = "aggregates", description = "Commands and the state and events of one aggregate"),
        (name = "log", description = "The global log, live events and sagas"),
        (name = "views", description = "Read models kept by projection components"),
        (name = "components", description = "Deploying, rolling back and activating component versions"),
        (name = "routing", description = "Event routing between aggregates: cursors and dead letters"),
        (name = "operations", description = "Health, readiness, metrics and this document")
    )
)]
pub struct ApiDoc;

/// The security scheme admin endpoints name.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("The admin token (`--token`, or DATA/admin-token)"))
            .build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(ADMIN_SCHEME, SecurityScheme::Http(scheme));
    }
}

/// The name admin operations give in `security(...)`.
pub const ADMIN_SCHEME: &str = "admin_token";

/// The rendered document, made once when the router is built.
#[derive(Clone)]
pub struct RenderedDoc(pub Bytes);

/// `GET /openapi.json`
#[utoipa::path(get, path = "/openapi.json", tag = "operations", summary = "This OpenAPI document",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json(Extension(doc): Extension<RenderedDoc>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], doc.0)
}
