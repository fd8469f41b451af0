//! Schema evolution (docs/ARCHITECTURE.md, "Schema versions and upcasting"): events keep the
//! schema they were written in; a version with upcasters reads old ones in its new shape,
//! in folds, temporal reads, reactions, projections and `?upcast=true` reads; a deploy that
//! would break a consumer of the changed events is refused naming it.

use crate::harness::Host;
use crate::sagas::{balance, eventually, transfer, wait_terminal};
use serde_json::{Value, json};

/// The consumers of the Account's events that read both shapes: deployed before the
/// Account's new shape, as the README's walkthrough does.
async fn deploy_tolerant_consumers(host: &Host) {
    host.deploy("account-info", cairn_artifacts::ACCOUNT_INFO_V2).await.expect(200);
    host.deploy("money-transfer", cairn_artifacts::MONEY_TRANSFER_V2).await.expect(200);
}

async fn events(host: &Host, path: &str) -> Vec<Value> {
    host.get(path).await.expect(200).body["events"].as_array().unwrap().clone()
}

fn eur(cents: i64) -> Value {
    json!({"cents": cents, "currency": "EUR"})
}

#[tokio::test(flavor = "multi_thread")]
async fn events_written_by_v1_are_folded_by_v3_and_served_as_stored_or_upcast() {
    let host = Host::start();
    deploy_tolerant_consumers(&host).await;
    host.open_account("a", 1000).await;
    host.command("account", "a", "CreditAccount", json!({"amount": 500, "transaction_id": "c1"}))
        .await
        .expect(200);
    host.command("account", "a", "DebitAccount", json!({"amount": 200, "transaction_id": "d1"}))
        .await
        .expect(200);
    assert_eq!(host.state("account", "a").await, json!({"balance": 1300, "closed": false}));

    let v3 = host.deploy("account", cairn_artifacts::ACCOUNT_V3).await.expect(200);
    let consumers = &v3.body["consumers"];
    assert_eq!(consumers["changed_types"].as_array().unwrap().len(), 4, "{}", v3.body);
    let info =
        consumers["consumers"].as_array().unwrap().iter().find(|c| c["name"] == "account-info").unwrap();
    assert_eq!(
        (info["kind"].as_str(), info["events"].as_u64(), info["changed"].as_u64()),
        (Some("projection"), Some(3), Some(0))
    );

    // The fold reads version 1's events through the upcaster: the same balance, in a currency.
    let state = json!({"balance": 1300, "currency": "EUR", "closed": false});
    assert_eq!(host.state("account", "a").await, state);
    let at_2 = host.get("/aggregates/account/a?version=2").await.expect(200);
    assert_eq!(
        at_2.body["state"],
        json!({"balance": 1500, "currency": "EUR", "closed": false}),
        "a temporal read"
    );
    let credited =
        host.command("account", "a", "CreditAccount", json!({"amount": 7, "transaction_id": "c2"}));
    let credited = credited.await.expect(200);
    assert_eq!(credited.body["events"][0]["schema"], 2);
    assert_eq!(credited.body["events"][0]["data"]["balance"], eur(1307));

    // As stored: version 1's events at schema 1 and in their shape, the new one at 2.
    let stored = events(&host, "/aggregates/account/a/events").await;
    let schemas: Vec<u64> = stored.iter().map(|e| e["schema"].as_u64().unwrap()).collect();
    assert_eq!(schemas, [1, 1, 1, 2]);
    assert_eq!(stored[0]["data"], json!({"initial_balance": 1000}));
    assert_eq!(stored[1]["data"]["balance"], 1500);
    // As the active version's consumers read them: every one at schema 2, in the new shape.
    let upcast = events(&host, "/aggregates/account/a/events?upcast=true").await;
    assert!(upcast.iter().all(|e| e["schema"] == 2), "{upcast:?}");
    assert_eq!(upcast[0]["data"], json!({"initial_balance": eur(1000)}));
    assert_eq!(upcast[2]["data"], json!({"amount": eur(200), "transaction_id": "d1", "balance": eur(1300)}));
    assert_eq!(upcast[3], stored[3], "an event at the current schema is served as stored");
    // The global log the same way.
    let log = events(&host, "/events?limit=1000").await;
    let log_upcast = events(&host, "/events?limit=1000&upcast=true").await;
    assert!(log.iter().all(|e| e["schema"].is_u64()), "every event carries its schema");
    let of_a = |events: &[Value]| -> Vec<Value> {
        events.iter().filter(|e| e["stream"] == "account/a").cloned().collect()
    };
    assert_eq!(of_a(&log), stored);
    assert_eq!(of_a(&log_upcast), upcast);
    host.get("/events?upcast=maybe").await.expect_error(400, "invalid_query");

    // The projection read both shapes: the view holds every movement.
    eventually("account-info to show the new credit", || async {
        let view = host.get("/views/account-info/a").await;
        view.status == 200 && view.body["balance"] == 1307
    })
    .await;
    let view = host.get("/views/account-info/a").await.expect(200);
    assert_eq!(view.body["transactions"].as_array().unwrap().len(), 4, "{}", view.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_saga_started_under_v1_completes_under_v3() {
    // Recording the debit on the transfer waits, so the deploy lands in the middle of the saga.
    let host = Host::start_with_env(&[], &[("CAIRN_FAULTS", "actor-stall=RecordDebit:8000")]);
    deploy_tolerant_consumers(&host).await;
    host.open_account("src", 25000).await;
    host.open_account("dst", 12500).await;
    transfer(&host, "tr1", "src", "dst", 5500).await;
    eventually("the source to be debited under v1", || async {
        events(&host, "/aggregates/account/src/events").await.iter().any(|e| e["type"] == "AccountDebited")
    })
    .await;
    host.deploy("account", cairn_artifacts::ACCOUNT_V3).await.expect(200);
    assert_eq!(wait_terminal(&host, "tr1").await, "COMPLETED");
    assert_eq!((balance(&host, "src").await, balance(&host, "dst").await), (19500, 18000));
    let debit = events(&host, "/aggregates/account/src/events").await.pop().unwrap();
    assert_eq!(
        (debit["type"].as_str(), debit["schema"].as_u64()),
        (Some("AccountDebited"), Some(1)),
        "by v1"
    );
    let credit = events(&host, "/aggregates/account/dst/events").await.pop().unwrap();
    assert_eq!(
        (credit["type"].as_str(), credit["schema"].as_u64()),
        (Some("AccountCredited"), Some(2)),
        "by v3"
    );
    assert_eq!(credit["data"]["transfer"]["transfer_id"], "tr1", "{credit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_producer_that_would_break_a_consumer_is_refused_naming_it_until_the_consumers_are_updated() {
    let host = Host::start();
    host.open_account("a", 25000).await;
    host.open_account("b", 100).await;
    transfer(&host, "t1", "a", "b", 300).await;
    assert_eq!(wait_terminal(&host, "t1").await, "COMPLETED");

    // account-info's first version cannot decode an amount with a currency.
    for query in ["dry_run=true", ""] {
        let refused = host.deploy_with("account", query, cairn_artifacts::ACCOUNT_V3).await;
        let refused = refused.expect_error(422, "consumer_breaks");
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("account-info cannot read account/"), "{message}");
        assert!(message.contains("does not decode"), "the guest's own message: {message}");
    }
    let components = host.get("/components").await.expect(200);
    let account =
        components.body.as_array().unwrap().iter().find(|c| c["name"] == "account").unwrap().clone();
    assert_eq!(account["active_version"], 1, "the running version stays");
    host.command("account", "a", "CreditAccount", json!({"amount": 1, "transaction_id": "x"}))
        .await
        .expect(200);

    // With the view updated, the saga's first version is next: it finds no transfer in the
    // new shape, so its reaction would send nothing and the saga would stop.
    host.deploy("account-info", cairn_artifacts::ACCOUNT_INFO_V2).await.expect(200);
    let refused =
        host.deploy("account", cairn_artifacts::ACCOUNT_V3).await.expect_error(422, "consumer_breaks");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("money-transfer cannot read account/"), "{message}");
    assert!(message.contains("other commands"), "{message}");

    // Both consumers updated: the dry run passes and reports each, then the deploy does.
    host.deploy("money-transfer", cairn_artifacts::MONEY_TRANSFER_V2).await.expect(200);
    let dry = host.deploy_with("account", "dry_run=true", cairn_artifacts::ACCOUNT_V3).await.expect(200);
    assert_eq!((dry.body["dry_run"].as_bool(), dry.body["active"].as_bool()), (Some(true), Some(false)));
    let report = dry.body["consumers"]["consumers"].as_array().unwrap().clone();
    let of = |name: &str| {
        report.iter().find(|c| c["name"] == name).cloned().unwrap_or_else(|| panic!("{name}: {report:?}"))
    };
    assert_eq!(
        (of("money-transfer")["kind"].as_str(), of("money-transfer")["changed"].as_u64()),
        (Some("reaction"), Some(0))
    );
    assert!(of("money-transfer")["events"].as_u64().unwrap() >= 2, "the transfer's replies: {report:?}");
    assert_eq!(of("account-info")["changed"], 0);
    let deployed = host.deploy("account", cairn_artifacts::ACCOUNT_V3).await.expect(200);
    assert_eq!(deployed.body["consumers"], dry.body["consumers"], "the dry run gives the deploy's answer");
    transfer(&host, "t2", "a", "b", 200).await;
    assert_eq!(wait_terminal(&host, "t2").await, "COMPLETED");
    assert_eq!((balance(&host, "a").await, balance(&host, "b").await), (24501, 600));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upcaster_that_traps_on_one_stored_event_is_refused_naming_stream_and_version() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    host.command("faulty", "1", "Record", json!({"note": "fine"})).await.expect(200);
    host.command("faulty", "7", "Increment", json!({})).await.expect(200);
    host.command("faulty", "7", "Record", json!({"note": "poison"})).await.expect(200);
    for query in ["dry_run=true", ""] {
        let refused = host.deploy_with("faulty", query, cairn_test_guests::FAULTY_UPCAST).await;
        let refused = refused.expect_error(422, "replay_failed");
        let message = refused.body["error"]["message"].as_str().unwrap();
        assert!(message.contains("faulty/7 event 2") && message.contains("at schema 1"), "{message}");
        assert!(message.contains("cannot read the note poison"), "the guest's own message: {message}");
    }
    host.command("faulty", "7", "Increment", json!({})).await.expect(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_rollback_an_event_in_a_newer_schema_is_refused_naming_it() {
    let host = Host::start();
    deploy_tolerant_consumers(&host).await;
    host.open_account("a", 10).await;
    host.deploy("account", cairn_artifacts::ACCOUNT_V3).await.expect(200);
    host.command("account", "a", "CreditAccount", json!({"amount": 5, "transaction_id": "c"}))
        .await
        .expect(200);
    // The first version cannot read schema 2: the rollback's replay check says so.
    let refused = host.admin_post("/components/account/rollback").await.expect_error(422, "replay_failed");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"AccountCredited\" is stored at schema 2, newer than this version's 1"),
        "{message}"
    );
    // Forced, the stream that holds it answers so instead of folding it wrongly.
    host.admin_post("/components/account/rollback?force=true").await.expect(200);
    let answer =
        host.command("account", "a", "CreditAccount", json!({"amount": 1, "transaction_id": "d"})).await;
    let answer = answer.expect_error(422, "schema_unknown");
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("AccountCredited"), "{}", answer.body);
    host.get("/aggregates/account/a").await.expect_error(422, "schema_unknown");
    // Forward again, everything reads.
    host.admin_post("/components/account/activate?version=2").await.expect(200);
    assert_eq!(host.state("account", "a").await["balance"], 15);
}

/// Figures for the notes, not a test of speed (run it by hand, in release for real figures:
/// `cargo test --release -p cairn --test e2e measure_the_consumer_check -- --ignored --nocapture`):
/// a dry-run deploy of account-v3 over 10 000 account streams written by version 1, with its
/// two consumers (account-info-v2, money-transfer-v2) checked, beside one of account-v2,
/// which changes no schema and runs only the replay check.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run it by hand"]
async fn measure_the_consumer_check() {
    let host = Host::start();
    deploy_tolerant_consumers(&host).await;
    let streams = 10_000;
    let mut writers = Vec::new();
    for client in 0..16 {
        let (http, url) = (host.http.clone(), host.url.clone());
        writers.push(tokio::spawn(async move {
            for n in (client..streams).step_by(16) {
                let url = format!("{url}/aggregates/account/s{n}/commands");
                let open = json!({"type": "OpenAccount", "data": {"initial_balance": 100}});
                crate::harness::answer_of(http.post(&url).json(&open)).await.expect(200);
                let credit = json!({"type": "CreditAccount", "data": {"amount": 5, "transaction_id": "c"}});
                crate::harness::answer_of(http.post(&url).json(&credit)).await.expect(200);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    for (name, bytes) in
        [("account-v2", cairn_artifacts::ACCOUNT_V2), ("account-v3", cairn_artifacts::ACCOUNT_V3)]
    {
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let answer = host.deploy_with("account", "dry_run=true", bytes).await.expect(200);
            eprintln!(
                "dry-run deploy of {name} over {streams} streams: {:?} (consumers: {})",
                started.elapsed(),
                answer.body["consumers"]
            );
        }
    }
}
