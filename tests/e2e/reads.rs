//! Reading aggregates, temporal queries, stream and global event pages.

use crate::harness::Host;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn state_has_an_etag_and_a_temporal_view() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    host.command("account", "101", "DebitAccount", json!({"amount": 5500, "transaction_id": "t1"}))
        .await
        .expect(200);
    host.command("account", "101", "CreditAccount", json!({"amount": 1000, "transaction_id": "t2"}))
        .await
        .expect(200);
    let now = host.get("/aggregates/account/101").await.expect(200);
    assert_eq!(
        now.body,
        json!({"type": "account", "id": "101", "version": 3, "state": {"balance": 20500, "closed": false}})
    );
    assert_eq!(now.headers["etag"], "\"3\"");
    let then = host.get("/aggregates/account/101?version=2").await.expect(200);
    assert_eq!(then.body["state"]["balance"], 19500);
    assert_eq!(then.body["version"], 2);
    assert_eq!(then.headers["etag"], "\"2\"");
    assert_eq!(host.get("/aggregates/account/101?version=1").await.body["state"]["balance"], 25000);
    host.get("/aggregates/account/101?version=4").await.expect_error(404, "version_not_found");
    host.get("/aggregates/account/101?version=0").await.expect_error(400, "invalid_query");
    host.get("/aggregates/account/101?version=abc").await.expect_error(400, "invalid_query");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_events_page_by_version() {
    let host = Host::start();
    host.open_account("1", 0).await;
    for n in 0..9 {
        host.command(
            "account",
            "1",
            "CreditAccount",
            json!({"amount": 1, "transaction_id": format!("t{n}")}),
        )
        .await
        .expect(200);
    }
    let page = host.get("/aggregates/account/1/events?from=3&limit=4").await.expect(200);
    let versions: Vec<_> =
        page.body["events"].as_array().unwrap().iter().map(|e| e["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [3, 4, 5, 6]);
    let all = host.get("/aggregates/account/1/events").await.expect(200);
    assert_eq!(all.body["events"].as_array().unwrap().len(), 10);
    let past_end = host.get("/aggregates/account/1/events?from=11").await.expect(200);
    assert_eq!(past_end.body["events"], json!([]));
    host.get("/aggregates/account/1/events?limit=0").await.expect_error(400, "invalid_query");
    host.get("/aggregates/account/2/events").await.expect_error(404, "stream_not_found");
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn the_global_log_is_in_position_order_across_streams() {
    let host = Host::start();
    host.open_account("a", 1).await;
    host.open_account("b", 2).await;
    host.command("account", "a", "CloseAccount", json!({})).await.expect(200);
    let log = host.get("/events?after=0&limit=10").await.expect(200);
    let events = log.body["events"].as_array().unwrap();
    let positions: Vec<_> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, [1, 2, 3]);
    let streams: Vec<_> = events.iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert_eq!(streams, ["account/a", "account/b", "account/a"]);
    let after = host.get("/events?after=1&limit=1").await.expect(200);
    assert_eq!(after.body["events"][0]["position"], 2);
    assert_eq!(host.get("/events?after=3").await.expect(200).body["events"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_components_answer() {
    let host = Host::start();
    assert_eq!(host.get("/healthz").await.expect(200).body["status"], "ok");
    let components = host.get("/components").await.expect(200);
    let names: Vec<_> =
        components.body.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "account",
            "account-info",
            "create-order-saga",
            "customer",
            "customer-orders",
            "money-transfer",
            "order"
        ],
        "a new data directory has the examples"
    );
    let account = &components.body[0];
    assert_eq!((account["active_version"].as_u64(), account["kind"].as_str()), (Some(1), Some("aggregate")));
    assert_eq!(components.body[1]["kind"], "projection");
    assert!(account["versions"][0]["digest"].as_str().unwrap().starts_with("sha256:"));
}

/// Temporal reads start from the nearest older snapshot (every 100 events for accounts) and
/// answer the same state as folding from the start, on either side of each snapshot.
#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn temporal_reads_across_snapshots_answer_the_state_at_that_version() {
    let host = Host::start();
    host.open_account("s", 0).await;
    for n in 0..250 {
        let data = serde_json::json!({"amount": 1, "transaction_id": format!("t{n}")});
        host.command("account", "s", "CreditAccount", data).await.expect(200);
    }
    for version in [1u64, 2, 99, 100, 101, 150, 199, 200, 201, 250, 251] {
        let then = host.get(&format!("/aggregates/account/s?version={version}")).await.expect(200);
        assert_eq!(then.body["version"], version);
        assert_eq!(then.body["state"]["balance"], version - 1, "the balance after event {version}");
    }
}
