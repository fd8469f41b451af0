//! Commands: answers, idempotency, correlation, optimistic concurrency, host-made ids.

use crate::harness::Host;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_command_answers_its_durable_events() {
    let host = Host::start();
    let answer =
        host.command("account", "101", "OpenAccount", json!({"initial_balance": 25000})).await.expect(200);
    let body = &answer.body;
    assert_eq!(
        (body["type"].as_str(), body["id"].as_str(), body["version"].as_u64()),
        (Some("account"), Some("101"), Some(1))
    );
    let event = &body["events"][0];
    assert_eq!(event["stream"], "account/101");
    assert_eq!(event["version"], 1);
    assert_eq!(event["position"], 1);
    assert_eq!(event["type"], "AccountOpened");
    assert_eq!(event["data"], json!({"initial_balance": 25000}));
    assert_eq!(event["component_version"], 1);
    assert!(event["recorded_at"].as_str().unwrap().ends_with('Z'), "RFC 3339: {event}");
    assert!(!event["correlation_id"].as_str().unwrap().is_empty(), "the host makes a correlation id");
    assert_eq!(answer.headers["etag"], "\"1\"");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_may_be_omitted_for_a_command_without_fields() {
    let host = Host::start();
    host.open_account("1", 10).await;
    let request = host
        .http
        .post(format!("{}/aggregates/account/1/commands", host.url))
        .json(&json!({"type": "CloseAccount"}));
    let answer = host.send(request).await.expect(200);
    assert_eq!(answer.body["events"][0]["type"], "AccountClosed");
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn four_hundred_concurrent_credits_to_one_account_are_all_kept() {
    let host = Host::start();
    host.open_account("hot", 0).await;
    let mut requests = Vec::new();
    for n in 0..400 {
        let request = host.command_request(
            "account",
            "hot",
            "CreditAccount",
            json!({"amount": 1, "transaction_id": format!("c{n}")}),
        );
        requests.push(tokio::spawn(request.send()));
    }
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    let answer = host.get("/aggregates/account/hot").await.expect(200);
    assert_eq!(answer.body["state"]["balance"], 400);
    assert_eq!(answer.body["version"], 401);
    let events = host.get("/aggregates/account/hot/events?limit=1000").await.expect(200);
    assert_eq!(events.body["events"].as_array().unwrap().len(), 401);
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn an_idempotent_retry_returns_the_first_answer_and_stores_once() {
    let host = Host::start();
    host.open_account("1", 100).await;
    let credit = || {
        host.command_request("account", "1", "CreditAccount", json!({"amount": 5, "transaction_id": "t"}))
            .header("Idempotency-Key", "credit-once")
    };
    let first = host.send(credit()).await.expect(200);
    let retry = host.send(credit()).await.expect(200);
    assert_eq!(first.body, retry.body, "the retry gets the first answer");
    assert_eq!(host.state("account", "1").await["balance"], 105);
    let events = host.get("/aggregates/account/1/events").await.expect(200);
    assert_eq!(events.body["events"].as_array().unwrap().len(), 2);

    // Concurrent retries with one key (they may land in one batch) also store once.
    let mut retries = Vec::new();
    for _ in 0..20 {
        let request = host
            .command_request("account", "1", "CreditAccount", json!({"amount": 7, "transaction_id": "u"}))
            .header("Idempotency-Key", "burst");
        retries.push(tokio::spawn(request.send()));
    }
    for retry in retries {
        assert_eq!(retry.await.unwrap().unwrap().status(), 200);
    }
    assert_eq!(host.state("account", "1").await["balance"], 112);

    // A rejected command's answer is remembered too.
    let debit_closed = || {
        host.command_request("account", "nobody", "DebitAccount", json!({"amount": 5, "transaction_id": "t"}))
            .header("Idempotency-Key", "rejected-once")
    };
    host.send(debit_closed()).await.expect_error(422, "account_not_found");
    host.send(debit_closed()).await.expect_error(422, "account_not_found");
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn idempotency_keys_survive_a_restart() {
    let mut host = Host::start();
    host.open_account("1", 100).await;
    let credit = |host: &Host| {
        host.command_request("account", "1", "CreditAccount", json!({"amount": 5, "transaction_id": "t"}))
            .header("Idempotency-Key", "k")
    };
    let first = host.send(credit(&host)).await.expect(200);
    host.restart();
    let retry = host.send(credit(&host)).await.expect(200);
    assert_eq!(first.body, retry.body);
    assert_eq!(host.state("account", "1").await["balance"], 105);
}

/// A key is remembered for the retention window, then forgotten: the same key runs again.
/// Routed commands' dedup records are not idempotency keys and outlive it, so a rewound
/// subscriber still applies nothing twice.
#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn idempotency_keys_are_forgotten_after_the_retention_window() {
    let host = Host::start_with(&["--idempotency-retention-seconds", "1"]);
    host.open_account("1", 100).await;
    host.open_account("2", 0).await;
    let credit = |host: &Host| {
        host.command_request("account", "1", "CreditAccount", json!({"amount": 5, "transaction_id": "t"}))
            .header("Idempotency-Key", "k")
    };
    let first = host.send(credit(&host)).await.expect(200);
    let retry = host.send(credit(&host)).await.expect(200);
    assert_eq!(first.body, retry.body, "within the window, the first answer");
    crate::sagas::transfer(&host, "m1", "1", "2", 50).await;
    crate::sagas::wait_terminal(&host, "m1").await;

    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let metrics = host.get("/metrics").await.body;
    let swept =
        metrics.as_str().unwrap().lines().find(|l| l.starts_with("cairn_idempotency_keys_forgotten_total"));
    assert_eq!(swept.and_then(|l| l.split_whitespace().last()), Some("1"), "{swept:?}");
    let again = host.send(credit(&host)).await.expect(200);
    assert_eq!(again.body["version"], 4, "after the window the key runs as a new command: {}", again.body);

    let head = host.get("/healthz").await.body["head_position"].as_u64().unwrap();
    host.admin_post("/routing/account/rewind?to=0").await.expect(200);
    crate::sagas::eventually("the account subscriber to catch up again", || async {
        let routing = host.get("/routing").await.body;
        routing["subscribers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "account" && s["cursor"] == head)
    })
    .await;
    assert_eq!(host.state("account", "1").await["balance"], 100 + 5 + 5 - 50);
    assert_eq!(host.state("account", "2").await["balance"], 50);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_correlation_id_is_kept_or_made() {
    let host = Host::start();
    let request = host
        .command_request("account", "1", "OpenAccount", json!({"initial_balance": 1}))
        .header("X-Correlation-Id", "order-42");
    let answer = host.send(request).await.expect(200);
    assert_eq!(answer.body["events"][0]["correlation_id"], "order-42");
    let saga = host.get("/sagas/order-42").await.expect(200);
    assert_eq!(saga.body["events"][0]["stream"], "account/1");
    let made = host.command("account", "2", "OpenAccount", json!({"initial_balance": 1})).await.expect(200);
    let made_id = made.body["events"][0]["correlation_id"].as_str().unwrap().to_owned();
    assert_ne!(made_id, "order-42");
    assert!(uuid_like(&made_id), "{made_id}");
}

fn uuid_like(text: &str) -> bool {
    text.len() == 36 && text.chars().filter(|c| *c == '-').count() == 4
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn if_match_appends_only_at_that_version() {
    let host = Host::start();
    host.open_account("1", 100).await;
    let credit = |version: &str| {
        host.command_request("account", "1", "CreditAccount", json!({"amount": 1, "transaction_id": "t"}))
            .header("If-Match", version)
    };
    host.send(credit("\"1\"")).await.expect(200);
    host.send(credit("\"1\"")).await.expect_error(409, "version_conflict");
    host.send(credit("2")).await.expect(200);
    host.send(credit("\"x\"")).await.expect_error(400, "invalid_header");
    assert_eq!(host.state("account", "1").await["balance"], 102);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_host_picks_a_new_id_when_none_is_given() {
    let host = Host::start();
    let request = host
        .http
        .post(format!("{}/aggregates/customer/commands", host.url))
        .json(&json!({"type": "CreateCustomer", "data": {"name": "Fred", "credit_limit": 200000}}));
    let first = host.send(request.try_clone().unwrap()).await.expect(200);
    let second = host.send(request).await.expect(200);
    let (a, b) = (first.body["id"].as_str().unwrap(), second.body["id"].as_str().unwrap());
    assert_ne!(a, b);
    assert_eq!(host.state("customer", a).await["name"], "Fred");

    // With an Idempotency-Key, a retry gets the first answer and creates nothing new.
    let keyed = request_with_key(&host, "signup-42");
    let first = host.send(keyed).await.expect(200);
    let retry = host.send(request_with_key(&host, "signup-42")).await.expect(200);
    assert_eq!(retry.body, first.body);
    let id = first.body["id"].as_str().unwrap();
    let events = host.get(&format!("/aggregates/customer/{id}/events")).await.expect(200);
    assert_eq!(events.body["events"].as_array().unwrap().len(), 1, "one aggregate, one event");
    let other = host.send(request_with_key(&host, "signup-43")).await.expect(200);
    assert_ne!(other.body["id"], first.body["id"], "another key, another aggregate");
}

fn request_with_key(host: &Host, key: &str) -> reqwest::RequestBuilder {
    host.http
        .post(format!("{}/aggregates/customer/commands", host.url))
        .header("Idempotency-Key", key)
        .json(&json!({"type": "CreateCustomer", "data": {"name": "Fred", "credit_limit": 200000}}))
}

/// With a cap on live actors, the least recently used passivate while commands keep
/// coming; none fails and nothing is lost, since an actor stops only with an empty mailbox.
#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_live_actor_cap_the_least_recently_used_passivate() {
    // Idle actors stay for ten minutes here: only the cap can passivate them.
    let host = Host::start_with(&["--max-live-actors", "10", "--idle-seconds", "600"]);
    for n in 0..50 {
        host.open_account(&format!("a{n}"), 0).await;
    }
    let credits: Vec<_> = (0..200)
        .map(|n| {
            let host = Host::attach(host.http.clone(), host.url.clone());
            tokio::spawn(async move {
                let data = json!({"amount": 1, "transaction_id": format!("t{n}")});
                host.command("account", &format!("a{}", n % 50), "CreditAccount", data).await.expect(200);
            })
        })
        .collect();
    for credit in credits {
        credit.await.unwrap();
    }
    // The cap is looked at when an actor starts (at most every 100 ms): one more start.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    host.open_account("last", 0).await;
    crate::sagas::eventually("the live actors to fall to the cap", || async {
        host.get("/healthz").await.body["live_actors"].as_u64().unwrap() <= 10
    })
    .await;
    for n in 0..50 {
        assert_eq!(host.state("account", &format!("a{n}")).await["balance"], 4, "account a{n}");
    }
    let metrics = host.get("/metrics").await.body;
    let evictions = metrics.as_str().unwrap().lines().find(|l| l.starts_with("cairn_actor_evictions_total"));
    let evicted: f64 = evictions.and_then(|l| l.split_whitespace().last()).unwrap().parse().unwrap();
    assert!(evicted >= 40.0, "{evictions:?}");
}
