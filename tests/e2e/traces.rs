//! Traces across sagas: a transfer started with a W3C `traceparent` is one trace, across
//! the transfer, both accounts, the router and the projection, exported over OTLP/HTTP to
//! a receiver of the test's own that decodes it with the `opentelemetry-proto` types; with
//! the receiver down, commands answer as before.

use crate::harness::Host;
use crate::sagas::{eventually, transfer, wait_terminal};
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AttributeValue;
use prost::Message;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) that keeps every span it is sent.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let spans: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let mut kept = kept.lock().unwrap();
                for resource in &request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.as_ref().map(text))
                        .unwrap_or_default();
                    for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                        let attributes = span
                            .attributes
                            .iter()
                            .map(|kv| {
                                (
                                    kv.key.clone(),
                                    kv.value
                                        .as_ref()
                                        .and_then(|v| v.value.as_ref())
                                        .map(text)
                                        .unwrap_or_default(),
                                )
                            })
                            .collect();
                        kept.push(Received {
                            service: service.clone(),
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent_span_id: hex::encode(&span.parent_span_id),
                            name: span.name.clone(),
                            attributes,
                        });
                    }
                }
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, spans }
    }

    fn of_trace(&self, trace: &str) -> Vec<Received> {
        self.spans.lock().unwrap().iter().filter(|s| s.trace_id == trace).cloned().collect()
    }
}

fn text(value: &AttributeValue) -> String {
    match value {
        AttributeValue::StringValue(s) => s.clone(),
        AttributeValue::IntValue(n) => n.to_string(),
        AttributeValue::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// `(name, the attribute that tells it apart)` of each span, as a set.
fn kinds(spans: &[Received]) -> BTreeSet<(String, String)> {
    spans
        .iter()
        .map(|span| {
            let key = match span.name.as_str() {
                "command" => "type",
                "routed_command" => "command",
                "react" => "subscriber",
                "project" => "projection",
                _ => "",
            };
            (span.name.clone(), span.attributes.get(key).cloned().unwrap_or_default())
        })
        .collect()
}

async fn metrics(host: &Host) -> String {
    host.http.get(format!("{}/metrics", host.url)).send().await.unwrap().text().await.unwrap()
}

fn traced_transfer(host: &Host, id: &str, traceparent: &str) -> reqwest::RequestBuilder {
    let data = json!({"from_account_id": "101", "to_account_id": "202", "amount": 100});
    host.command_request("money-transfer", id, "CreateMoneyTransfer", data).header("traceparent", traceparent)
}

/// The trace ids the saga's events carry (`-` for none).
async fn saga_traces(host: &Host, id: &str) -> BTreeSet<String> {
    let events = host.get(&format!("/aggregates/money-transfer/{id}/events")).await.expect(200).body;
    let correlation = events["events"][0]["correlation_id"].as_str().unwrap().to_owned();
    let saga = host.get(&format!("/sagas/{correlation}")).await.expect(200).body;
    assert_eq!(saga["events"].as_array().unwrap().len(), 5, "the whole saga, to its end: {saga}");
    saga["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["trace_id"].as_str().unwrap_or("-").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_started_with_a_traceparent_is_one_trace_across_its_aggregates_and_the_projection() {
    let receiver = Receiver::start().await;
    let host = Host::start_with(&["--otlp-endpoint", &receiver.url]);
    host.open_account("101", 25000).await;
    host.open_account("202", 0).await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let answer = host.send(traced_transfer(&host, "t1", &traceparent)).await;
    assert_eq!(answer.expect(200).body["events"][0]["trace_id"], TRACE);
    assert_eq!(wait_terminal(&host, "t1").await, "COMPLETED");
    // Every event of the saga carries the client's trace.
    assert_eq!(saga_traces(&host, "t1").await, BTreeSet::from([TRACE.to_owned()]));

    let expected: BTreeSet<(String, String)> = [
        ("command", "money-transfer"),
        ("react", "account"),
        ("routed_command", "DebitAccount"),
        ("react", "money-transfer"),
        ("routed_command", "RecordDebit"),
        ("routed_command", "CreditAccount"),
        ("routed_command", "RecordCredit"),
        ("project", "account-info"),
    ]
    .into_iter()
    .map(|(name, what)| (name.to_owned(), what.to_owned()))
    .collect();
    eventually("the transfer's spans to arrive", || async {
        expected.is_subset(&kinds(&receiver.of_trace(TRACE)))
    })
    .await;
    let spans = receiver.of_trace(TRACE);
    let command = spans.iter().find(|s| s.name == "command").unwrap();
    assert_eq!(command.parent_span_id, CLIENT_SPAN, "the command hangs under the client's span");
    assert_eq!(command.attributes["id"], "t1");
    // Each span hangs under the one that caused it: the client's, or another of the trace.
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let parent_name = |span: &Received| {
        spans.iter().find(|p| p.span_id == span.parent_span_id).map_or("client", |p| p.name.as_str())
    };
    for span in &spans {
        assert!(
            span.parent_span_id == CLIENT_SPAN || ids.contains(span.parent_span_id.as_str()),
            "{span:?} hangs under a span of the trace"
        );
        let expected_parents: &[&str] = match span.name.as_str() {
            "command" => &["client"],
            "react" | "project" => &["command", "routed_command"],
            "routed_command" => &["react"],
            other => panic!("a span named {other}"),
        };
        assert!(expected_parents.contains(&parent_name(span)), "{} under {}", span.name, parent_name(span));
        assert_eq!(span.service, "cairn", "the service is named: {span:?}");
    }
    // The accounts' openings were not part of it: each is a trace of its own.
    let opened = receiver.spans.lock().unwrap().iter().filter(|s| s.name == "command").count();
    assert!(opened >= 3, "{opened} command spans");
    assert_eq!(spans.iter().filter(|s| s.name == "command").count(), 1, "{:#?}", kinds(&spans));

    // A command without a traceparent starts its own trace, which its saga carries on.
    transfer(&host, "t2", "101", "202", 5).await;
    assert_eq!(wait_terminal(&host, "t2").await, "COMPLETED");
    let traces = saga_traces(&host, "t2").await;
    assert_eq!(traces.len(), 1, "{traces:?}");
    let own = traces.into_iter().next().unwrap();
    assert!(own.len() == 32 && own != TRACE, "{own}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_collector_down_commands_answer_as_before_and_the_lost_spans_are_counted() {
    // Nothing listens there: every export fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1/traces", closed.local_addr().unwrap());
    drop(closed);
    let host = Host::start_with(&["--otlp-endpoint", &url]);
    host.open_account("101", 25000).await;
    host.open_account("202", 0).await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    host.send(traced_transfer(&host, "t1", &traceparent)).await.expect(200);
    assert_eq!(wait_terminal(&host, "t1").await, "COMPLETED");
    let balances = (host.state("account", "101").await, host.state("account", "202").await);
    assert_eq!((&balances.0["balance"], &balances.1["balance"]), (&json!(24900), &json!(100)));
    eventually("the failed export to be counted", || async {
        let metrics = metrics(&host).await;
        metrics.lines().any(|l| l.starts_with("cairn_trace_spans_failed_total") && !l.ends_with(" 0"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_export_a_traceparent_is_still_carried_and_a_malformed_one_is_ignored() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    host.open_account("202", 0).await;
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    host.send(traced_transfer(&host, "t1", &traceparent)).await.expect(200);
    assert_eq!(wait_terminal(&host, "t1").await, "COMPLETED");
    assert_eq!(saga_traces(&host, "t1").await, BTreeSet::from([TRACE.to_owned()]));
    let malformed = format!("00-{}-{CLIENT_SPAN}-01", TRACE.to_uppercase());
    let answer = host.send(traced_transfer(&host, "t2", &malformed)).await.expect(200);
    assert_eq!(answer.body["events"][0]["trace_id"], Value::Null, "{}", answer.body);
    assert!(!metrics(&host).await.contains("cairn_trace_spans"), "nothing is exported");
}

#[test]
fn an_endpoint_the_host_cannot_export_to_is_a_usage_error() {
    let data = tempfile::tempdir().unwrap();
    for endpoint in ["https://collector:4318/v1/traces", "collector:4318", "not a url"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["serve", "--listen", "127.0.0.1:0", "--otlp-endpoint", endpoint, "--data"])
            .arg(data.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{endpoint}: {stderr}");
        assert!(stderr.contains("must be an http:// URL"), "{endpoint}: {stderr}");
    }
}
