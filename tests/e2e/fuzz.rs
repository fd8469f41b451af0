//! Arbitrary requests against a running host: any method, any documented path with any
//! segments (UTF-8 or not), any query, headers and body. Every answer is a status from
//! API.md's list, every error is in the one JSON shape, and nothing is a 500 or a hang.

use crate::harness::Host;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// What API.md allows a request to be answered with.
const ALLOWED: [u16; 17] =
    [200, 201, 202, 204, 400, 401, 404, 405, 409, 412, 413, 414, 415, 422, 428, 429, 503];

#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    path: String,
    query: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

/// Every byte outside `[A-Za-z0-9-_.]` percent-encoded: the path stays one segment.
fn percent(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["account", "101", "1", "2", "money-transfer", "account-info", "none", "0"])
            .prop_map(str::to_owned),
        2 => ".{0,16}".prop_map(|s| percent(s.as_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(|b| percent(&b)),
        1 => "[0-9]{1,30}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let command_type =
        prop::sample::select(vec!["OpenAccount", "CreditAccount", "DebitAccount", "Nonsense", ""]);
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (command_type, json_value())
            .prop_map(|(t, data)| json!({"type": t, "data": data}).to_string().into_bytes()),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let name = prop::sample::select(vec![
        "idempotency-key",
        "if-match",
        "content-type",
        "authorization",
        "x-correlation-id",
        "accept",
        "last-event-id",
    ]);
    let value = prop_oneof![
        "[ -~]{0,40}",
        Just("Bearer test-token".to_owned()),
        Just("application/json".to_owned()),
        Just("application/wasm".to_owned()),
        "\"[0-9]{1,22}\"",
    ];
    prop::collection::vec((name, value), 0..4)
}

fn query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        4 => prop::sample::select(vec![
            "version", "limit", "after", "min_position", "from", "type", "subscriber", "stream",
            "dry_run", "correlation_id", "stream_type", "key",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z]{1,6}",
    ];
    prop::collection::vec((name, segment()), 0..3)
        .prop_map(|pairs| pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"))
}

/// A documented operation most of the time, any method on a documented path otherwise.
fn request(operations: Vec<(&'static str, String)>) -> impl Strategy<Value = Request> {
    let paths: Vec<String> = operations.iter().map(|(_, path)| path.clone()).collect();
    let any_method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]);
    let operation = prop_oneof![
        4 => prop::sample::select(operations),
        1 => (any_method, prop::sample::select(paths)),
    ];
    let filled = (operation, prop::collection::vec(segment(), 3)).prop_map(|((method, template), values)| {
        // Each `{parameter}` of the documented path gets the next arbitrary segment.
        let mut values = values.into_iter().cycle();
        let path = template
            .split('/')
            .map(|part| if part.starts_with('{') { values.next().unwrap() } else { part.to_owned() })
            .collect::<Vec<_>>()
            .join("/");
        (method, path)
    });
    (filled, query(), headers(), body()).prop_map(|((method, path), query, headers, body)| Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

async fn send(host: &Host, request: &Request) -> Result<(u16, Option<Value>), String> {
    let url = match request.query.as_str() {
        "" => format!("{}{}", host.url, request.path),
        query => format!("{}{}?{query}", host.url, request.path),
    };
    let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
    let mut builder = host.http.request(method, &url).timeout(Duration::from_secs(20));
    for (name, value) in &request.headers {
        builder = builder.header(*name, value.as_str());
    }
    let response = builder.body(request.body.clone()).send().await.map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    let streaming = response
        .headers()
        .get("content-type")
        .is_some_and(|t| t.to_str().unwrap_or("").starts_with("text/event-stream"));
    if status < 400 || request.method == "HEAD" || streaming {
        return Ok((status, None));
    }
    let text = response.text().await.map_err(|e| format!("the body did not arrive: {e}"))?;
    Ok((status, Some(serde_json::from_str(&text).map_err(|_| format!("{status} is not JSON: {text:?}"))?)))
}

#[test]
fn arbitrary_requests_get_an_answer_from_the_list() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let host = Host::start();
    let operations = runtime.block_on(async {
        host.open_account("101", 10).await;
        let doc = host.get("/openapi.json").await.expect(200).body;
        let mut operations = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                let method = match method.as_str() {
                    "get" => "GET",
                    "post" => "POST",
                    "put" => "PUT",
                    "delete" => "DELETE",
                    other => panic!("{other}: a method the API does not use"),
                };
                operations.push((method, path.clone()));
            }
        }
        operations
    });
    let seen = std::cell::RefCell::new(BTreeMap::<u16, u32>::new());
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    runner
        .run(&request(operations), |request| {
            let (status, body) = runtime.block_on(send(&host, &request)).map_err(TestCaseError::fail)?;
            *seen.borrow_mut().entry(status).or_default() += 1;
            prop_assert!(ALLOWED.contains(&status), "{status} for {request:?}: {body:?}");
            if let Some(body) = body {
                let error = &body["error"];
                prop_assert!(
                    error["code"].is_string() && error["message"].is_string(),
                    "{status} for {request:?} is not the error shape: {body}"
                );
            }
            Ok(())
        })
        .unwrap();
    let seen = seen.into_inner();
    println!("statuses answered: {seen:?}");
    assert!(seen.keys().filter(|s| **s >= 400).count() >= 4, "the requests hardly vary: {seen:?}");
    runtime.block_on(async {
        host.get("/readyz").await.expect(200);
        assert_eq!(host.state("account", "101").await["balance"], 10);
    });
}
