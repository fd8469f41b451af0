//! `GET /openapi.json`: the API described from the code. Every route is registered through
//! utoipa-axum's `routes!`, which takes the method and path from the handler's
//! `#[utoipa::path]`, so what the router serves and what the document lists are one list.

use super::extract::{MAX_HEADER_LEN, MAX_IF_MATCH_LEN, MAX_QUERY_INTEGER, MAX_QUERY_TEXT_CHARS};
use crate::components::{COMPONENT_NAME_PATTERN, MAX_NAME_LEN};
use axum::Extension;
use axum::body::Bytes;
use axum::http::header;
use axum::response::IntoResponse;
use cairn_wire::MAX_ID_LEN;
use serde::Serialize;
use serde_json::{Value, json};
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

/// The document as served: utoipa's, with the bounds the host's shared parsers enforce and
/// the answers its outer layers give to every operation, written in once here rather than
/// at each of the ~40 parameters that go through those parsers.
pub fn render(doc: utoipa::openapi::OpenApi) -> Vec<u8> {
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serializes");
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for (method, operation) in item.iter_mut() {
                bound_parameters(operation);
                add_host_wide_answers(method, operation);
                add_links(operation);
            }
        }
        let command = &mut paths["/aggregates/{type}/{id}/commands"]["post"]["requestBody"];
        command["content"]["application/json"]["example"] =
            json!({"type": "OpenAccount", "data": {"initial_balance": 25000}});
    }
    serde_json::to_vec(&doc).expect("the OpenAPI document serializes")
}

/// A parameter's example, by its name: what a fresh `cairn serve` with the bundled
/// components answers (the aggregate 101 once it is opened with the command's example).
fn example_of(location: &str, name: &str) -> Option<Value> {
    Some(match (location, name) {
        ("path", "type" | "name") => json!("account"),
        ("path", "id" | "key") => json!("101"),
        ("path", "projection") => json!("account-info"),
        ("path", "subscriber") => json!("money-transfer"),
        ("path", "version") | ("query", "version") => json!(1),
        _ => return None,
    })
}

/// How one operation's answer leads to the next (OpenAPI links): from a command to the
/// aggregate's state, events and saga, from the lists to what they list.
fn links_of(operation_id: &str) -> Vec<(&'static str, &'static str, Value)> {
    let aggregate = |id: &str| json!({"type": "$request.path.type", "id": id});
    let from_state = json!({"type": "$response.body#/type", "id": "$response.body#/id"});
    let saga = json!({"correlation_id": "$response.body#/events/0/correlation_id"});
    let component = json!({"name": "$response.body#/0/name", "version": "$response.body#/0/active_version"});
    let projection = json!({"projection": "$response.body#/projections/0/name"});
    match operation_id {
        "command" => vec![
            ("State", "state", aggregate("$request.path.id")),
            ("Events", "events", aggregate("$request.path.id")),
            ("Saga", "saga", saga),
        ],
        "command_new_id" => vec![
            ("State", "state", aggregate("$response.body#/id")),
            ("Events", "events", aggregate("$response.body#/id")),
            ("Saga", "saga", saga),
        ],
        "state" => vec![("Events", "events", from_state)],
        "components" => vec![
            ("VersionBytes", "version_bytes", component.clone()),
            ("Activate", "activate", component.clone()),
            ("Rollback", "rollback", json!({"name": "$response.body#/0/name"})),
            ("DeleteVersion", "delete_version", component),
        ],
        "list" => vec![
            ("Keys", "keys", projection.clone()),
            ("RebuildStatus", "rebuild_document", projection.clone()),
            ("Rebuild", "rebuild", projection),
        ],
        "keys" => vec![(
            "Document",
            "document",
            json!({"projection": "$request.path.projection", "key": "$response.body#/keys/0"}),
        )],
        "routing" => vec![
            ("Rewind", "rewind", json!({"subscriber": "$response.body#/subscribers/0/name"})),
            ("DeadLetters", "dead_letters", json!({"subscriber": "$response.body#/subscribers/0/name"})),
        ],
        _ => Vec::new(),
    }
}

fn add_links(operation: &mut Value) {
    let operation_id = operation["operationId"].as_str().unwrap_or_default().to_owned();
    let links: serde_json::Map<String, Value> = links_of(&operation_id)
        .into_iter()
        .map(|(name, target, parameters)| {
            (name.to_owned(), json!({"operationId": target, "parameters": parameters}))
        })
        .collect();
    let answer =
        ["200", "202"].into_iter().find_map(|status| operation["responses"].get(status).map(|_| status));
    if let Some(status) = answer
        && !links.is_empty()
    {
        operation["responses"][status]["links"] = Value::Object(links);
    }
}

/// An aggregate id (`cairn_wire::check_aggregate_id`): no `/`, no control character, at most
/// [`MAX_ID_LEN`] bytes (the document counts characters: ASCII ids meet both).
const AGGREGATE_ID_PATTERN: &str = "^[^/\\u0000-\\u001f\\u007f-\\u009f]+$";

/// `If-Match` as [`super::extract::if_match`] reads it: a version, quoted or weak or not.
const IF_MATCH_PATTERN: &str = "^(W/)*\"*\\+?[0-9]{1,19}\"*$";

/// A header value [`super::extract::header_text`] takes: visible ASCII, not only blanks.
const HEADER_TEXT_PATTERN: &str = "^[\\t\\u0020-\\u007e]*[\\u0021-\\u007e][\\t\\u0020-\\u007e]*$";

fn bound_parameters(operation: &mut Value) {
    let Some(parameters) = operation.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    for parameter in parameters {
        let location = parameter["in"].as_str().unwrap_or_default().to_owned();
        let name = parameter["name"].as_str().unwrap_or_default().to_owned();
        let Some(schema) = parameter.get_mut("schema").and_then(Value::as_object_mut) else {
            continue;
        };
        let integer = schema.get("type") == Some(&json!("integer"));
        let bounds = match (location.as_str(), name.as_str()) {
            ("path", "type" | "name" | "projection" | "subscriber") => json!({
                "type": "string", "pattern": COMPONENT_NAME_PATTERN, "minLength": 1, "maxLength": MAX_NAME_LEN,
            }),
            ("path", "id") => json!({
                "type": "string", "pattern": AGGREGATE_ID_PATTERN, "minLength": 1, "maxLength": MAX_ID_LEN,
            }),
            ("path", "version") => json!({
                "type": "integer", "format": "int64", "minimum": 1, "maximum": u32::MAX,
            }),
            ("path", _) => json!({"type": "string", "minLength": 1}),
            ("query", "react_from") => json!({"type": "string", "enum": ["beginning", "now"]}),
            ("query", "limit" | "version") => {
                json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_QUERY_INTEGER})
            }
            ("query", _) if integer => {
                json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_QUERY_INTEGER})
            }
            ("query", "stream") => json!({
                "type": "string", "pattern": "/", "minLength": 1, "maxLength": MAX_QUERY_TEXT_CHARS,
            }),
            ("query", _) if schema.get("type") == Some(&json!("string")) => {
                json!({"type": "string", "minLength": 1, "maxLength": MAX_QUERY_TEXT_CHARS})
            }
            ("header", "If-Match") => json!({
                "type": "string", "pattern": IF_MATCH_PATTERN, "maxLength": MAX_IF_MATCH_LEN,
            }),
            ("header", "Idempotency-Key" | "X-Correlation-Id") => json!({
                "type": "string", "pattern": HEADER_TEXT_PATTERN, "maxLength": MAX_HEADER_LEN,
            }),
            // Any value is taken: one that is not a trace context is ignored (W3C).
            ("header", "traceparent") => json!({"type": "string"}),
            ("header", "Last-Event-ID") => {
                json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": MAX_QUERY_INTEGER})
            }
            _ => continue,
        };
        for (key, value) in bounds.as_object().expect("bounds are an object") {
            schema.insert(key.clone(), value.clone());
        }
        if let Some(example) = example_of(&location, &name) {
            parameter["example"] = example;
        }
    }
}

/// What the layers around every handler may answer: a request target that is too long, a
/// `Host` the host does not answer for, a cross-site change, overload.
fn add_host_wide_answers(method: &str, operation: &mut Value) {
    let mut answers = vec![
        ("414", "`uri_too_long`: the path and query are longer than the host reads"),
        ("421", "`host_not_allowed`: a Host the host does not answer for"),
        ("503", "`overloaded`: the host is handling as many requests as it takes, or is shutting down"),
    ];
    if method != "get" {
        answers.push(("403", "`origin_not_allowed`: a web page of another origin"));
    }
    if operation.get("parameters").is_some_and(|p| p.as_array().is_some_and(|p| !p.is_empty())) {
        answers.push(("400", "A malformed query or path, or a parameter out of its bounds"));
    }
    let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for (status, description) in answers {
        responses.entry(status).or_insert_with(|| {
            json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn document() -> Value {
        let (_, doc) = super::super::api_routes(super::super::tests::limits()).split_for_parts();
        serde_json::from_slice(&render(doc)).unwrap()
    }

    /// Every operation by its id, with its method and path.
    fn operations(doc: &Value) -> BTreeMap<String, (String, &Value)> {
        let mut operations = BTreeMap::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                let previous = operations.insert(id.clone(), (format!("{method} {path}"), operation));
                assert!(previous.is_none(), "two operations are {id}");
            }
        }
        operations
    }

    #[test]
    fn every_link_names_an_operation_and_parameters_it_has() {
        let doc = document();
        let operations = operations(&doc);
        let mut links = 0;
        for (source, operation) in operations.values() {
            for response in operation["responses"].as_object().unwrap().values() {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    links += 1;
                    let target = link["operationId"].as_str().unwrap();
                    let (label, target) = operations.get(target).unwrap_or_else(|| panic!("{source} {name}"));
                    let names: Vec<&str> = target["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["name"].as_str().unwrap())
                        .collect();
                    for parameter in link["parameters"].as_object().unwrap().keys() {
                        assert!(
                            names.contains(&parameter.as_str()),
                            "{source} {name}: {label} has no {parameter}"
                        );
                    }
                }
            }
        }
        assert!(links >= 15, "{links} links");
    }

    #[test]
    fn parameters_carry_the_bounds_the_parsers_enforce() {
        let doc = document();
        for (label, operation) in operations(&doc).values() {
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let (name, schema) = (parameter["name"].as_str().unwrap(), &parameter["schema"]);
                let what = format!("{label} {name}");
                match schema["type"].as_str() {
                    Some("integer") => assert!(schema["maximum"].is_u64(), "{what}: {schema}"),
                    Some("string") if parameter["in"] == "header" && name != "traceparent" => {
                        assert!(schema["pattern"].is_string(), "{what}")
                    }
                    Some("string") if parameter["in"] == "header" => {}
                    Some("string") => {
                        assert!(schema["minLength"] == 1 || schema["enum"].is_array(), "{what}: {schema}")
                    }
                    Some("boolean") => {}
                    other => panic!("{what}: an unbounded {other:?}"),
                }
                if name == "limit" {
                    assert_eq!(schema["minimum"], 1, "{what}");
                }
            }
            let errors = operation["responses"].as_object().unwrap();
            assert!(errors.contains_key("414") && errors.contains_key("503"), "{label}");
        }
    }

    #[test]
    fn the_id_patterns_say_what_the_checks_say() {
        let name = regex::Regex::new(COMPONENT_NAME_PATTERN).unwrap();
        for sample in ["account", "a", "money-transfer", "v2", "-a", "a-", "Account", "a_b", "a/b", ""] {
            let valid = crate::components::valid_name(sample);
            assert_eq!(name.is_match(sample), valid, "{sample:?}");
        }
        let id = regex::Regex::new(AGGREGATE_ID_PATTERN).unwrap();
        for sample in ["101", "a-b_c.d", "üñï", "a/b", "", "tab\there", "nul\u{0}", "c1\u{85}", "sp ace"] {
            let valid = cairn_wire::check_aggregate_id(sample).is_ok();
            assert_eq!(id.is_match(sample), valid, "{sample:?}");
        }
        let doc = document();
        let after = doc["paths"]["/routing/dead-letters"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "after")
            .map(|p| p["schema"]["pattern"].as_str().unwrap().to_owned())
            .unwrap();
        let after = regex::Regex::new(&after).unwrap();
        for sample in
            ["faulty:account/p:9", "a:b/c:d:12", "s:x/y\nz:3", "s:/:0", "s:account/p", "s:ap:9", "s:a/b:x"]
        {
            let valid = sample.parse::<crate::store::DeadLetterKey>().is_ok();
            assert_eq!(after.is_match(sample), valid, "{sample:?}");
        }
        let if_match = regex::Regex::new(IF_MATCH_PATTERN).unwrap();
        for sample in ["3", "\"3\"", "W/\"3\"", "+3", "x", "\"\"", "3.0"] {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("if-match", sample.parse().unwrap());
            let valid = super::super::extract::if_match(&headers).is_ok();
            assert_eq!(if_match.is_match(sample), valid, "{sample:?}");
        }
    }
}
