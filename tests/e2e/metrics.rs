//! `GET /metrics`: Prometheus text that a Prometheus parser reads, with counters that move; and
//! the logs: JSON lines, command spans.

use crate::harness::Host;
use prometheus_parse::{Scrape, Value};
use serde_json::json;

async fn scrape(host: &Host) -> Scrape {
    let response = host.http.get(format!("{}/metrics", host.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text format");
    assert!(
        scrape.samples.iter().all(|s| s.metric.starts_with("cairn_")),
        "every name has the cairn_ prefix"
    );
    scrape
}

/// The value of a counter or gauge with these labels (0 when it has not appeared yet).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map_or(0.0, |s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{metric} is not a number: {other:?}"),
        })
}

fn has(scrape: &Scrape, metric: &str) -> bool {
    scrape.samples.iter().any(|s| s.metric == metric)
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_move_as_commands_are_sent() {
    let host = Host::start();
    host.open_account("101", 10).await;
    let before = scrape(&host).await;
    let accepted = [("type", "account"), ("outcome", "accepted")];
    let rejected = [("type", "account"), ("outcome", "rejected")];

    host.command("account", "101", "CreditAccount", json!({"amount": 5, "transaction_id": "a"}))
        .await
        .expect(200);
    host.command("account", "101", "CreditAccount", json!({"amount": 5, "transaction_id": "b"}))
        .await
        .expect(200);
    host.command("account", "101", "OpenAccount", json!({"initial_balance": 1})).await.expect(422);
    host.command("nonsense", "1", "Anything", json!({})).await.expect(404);
    let head = host.get("/healthz").await.body["head_position"].as_f64().unwrap();
    crate::views::view(&host, "account-info", "101", head as u64).await;

    let after = scrape(&host).await;
    assert_eq!(
        value(&after, "cairn_commands_total", &accepted) - value(&before, "cairn_commands_total", &accepted),
        2.0
    );
    assert_eq!(
        value(&after, "cairn_commands_total", &rejected) - value(&before, "cairn_commands_total", &rejected),
        1.0
    );
    assert_eq!(
        value(&after, "cairn_commands_total", &[("type", "nonsense")]),
        0.0,
        "unknown types are not labels"
    );
    assert!(
        value(&after, "cairn_events_appended_total", &[])
            - value(&before, "cairn_events_appended_total", &[])
            >= 2.0
    );
    assert_eq!(value(&after, "cairn_head_position", &[]), head);
    assert_eq!(value(&after, "cairn_projection_lag_events", &[("projection", "account-info")]), 0.0);
    assert!(value(&after, "cairn_live_actors", &[]) >= 1.0);
    assert_eq!(value(&after, "cairn_mailbox_messages", &[]), 0.0, "every command was answered");
    assert_eq!(value(&after, "cairn_mailbox_depth_max", &[]), 0.0);
    // Each call gets a fresh instance and drops it: none outlives the calls above.
    assert!(has(&after, "cairn_guest_instances"));
    assert!(value(&after, "cairn_guest_instances", &[]) <= 4.0, "instances outlive their calls");
    // Requests are counted by route pattern, not by path (ids never become labels).
    assert!(value(&after, "cairn_http_requests_total", &[("route", "/healthz"), ("status", "200")]) >= 1.0);
    let text = host.http.get(format!("{}/metrics", host.url)).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains(r#"cairn_http_requests_total{route="/aggregates/{type}/{id}/commands",status="200"} "#)
    );
    assert!(!text.contains("/aggregates/account/101"), "a path became a label");
    for histogram in [
        "cairn_command_duration_seconds",
        "cairn_commit_duration_seconds",
        "cairn_commit_batch_appends",
        "cairn_guest_call_duration_seconds",
        "cairn_http_request_duration_seconds",
    ] {
        assert!(has(&after, histogram), "{histogram} is missing");
    }
    assert!(has(&after, "cairn_routing_lag_events"));
}

/// `--log-format json` writes one JSON object a line, and a command's span (type, id,
/// correlation id) carries what is logged about it through to its commit; text logs to a
/// file carry no colour codes.
#[tokio::test(flavor = "multi_thread")]
async fn logs_are_json_lines_and_a_command_span_reaches_its_commit() {
    let host = Host::start_with_env(&["--log-format", "json"], &[("RUST_LOG", "info,cairn=debug")]);
    let request = host
        .command_request("account", "101", "OpenAccount", serde_json::json!({"initial_balance": 1}))
        .header("X-Correlation-Id", "trace-me");
    host.send(request).await.expect(200);
    let log = host.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}")))
        .collect();
    let committed = lines
        .iter()
        .find(|l| l["fields"]["message"] == "committed")
        .unwrap_or_else(|| panic!("no commit logged: {log}"));
    assert_eq!(committed["span"]["correlation_id"], "trace-me", "{committed}");
    assert_eq!(committed["span"]["id"], "101");
    assert_eq!(committed["fields"]["version"], 1);

    let text = Host::start();
    text.open_account("1", 1).await;
    assert!(!text.log_text().contains('\u{1b}'), "no colour codes in a log file");
}

/// Commands waiting behind a busy actor show in the mailbox gauges.
#[tokio::test(flavor = "multi_thread")]
async fn waiting_commands_show_in_the_mailbox_gauges() {
    let host = Host::start_with_env(&[], &[("CAIRN_FAULTS", "actor-stall=CreditAccount:1500")]);
    host.open_account("101", 0).await;
    let credit = |n: u32| {
        let host = Host::attach(host.http.clone(), host.url.clone());
        tokio::spawn(async move {
            let data = json!({"amount": 1, "transaction_id": format!("t{n}")});
            host.command("account", "101", "CreditAccount", data).await.expect(200);
        })
    };
    // The first is taken alone and held; the rest arrive while it is held, so they wait in
    // the mailbox (sent together, all four could be taken as one batch).
    let mut credits = vec![credit(0)];
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    credits.extend((1..4).map(credit));
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let during = scrape(&host).await;
    assert!(value(&during, "cairn_mailbox_messages", &[]) >= 1.0, "commands wait behind the held one");
    assert!(value(&during, "cairn_mailbox_depth_max", &[]) >= 1.0);
    for credit in credits {
        credit.await.unwrap();
    }
    assert_eq!(value(&scrape(&host).await, "cairn_mailbox_messages", &[]), 0.0);
}

/// The host's memory after 100 000 streams were touched, with the live-actor cap (10 000
/// by default) passivating the least recently used. A measurement, not a test of a target:
/// `cargo test -p cairn --test e2e measure_memory -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement"]
async fn measure_memory_with_100k_streams() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let host = Host::start();
    host.open_account("warm", 1).await;
    let idle = host.resident_bytes();
    let next = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (http, url, next) = (host.http.clone(), host.url.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= 100_000 {
                        return;
                    }
                    let body = json!({"type": "OpenAccount", "data": {"initial_balance": 1}});
                    let response = http
                        .post(format!("{url}/aggregates/account/m{n}/commands"))
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    let mut peak = 0;
    for client in clients {
        while !client.is_finished() {
            peak = peak.max(host.resident_bytes());
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        client.await.unwrap();
    }
    let metrics = host.get("/healthz").await.expect(200).body;
    let after = host.resident_bytes();
    println!(
        "100 000 streams touched: resident {} MiB (idle {} MiB, peak {} MiB), live actors {}",
        after >> 20,
        idle >> 20,
        peak.max(after) >> 20,
        metrics["live_actors"]
    );
    assert!(metrics["live_actors"].as_u64().unwrap() <= 10_000 + 64, "{metrics}");
}
