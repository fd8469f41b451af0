//! Choreography end to end: one HTTP command starts a saga, the router runs the rest.

use crate::harness::Host;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Poll `check` until it holds; sagas complete asynchronously after the first 200.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED_DUE_TO_INSUFFICIENT_FUNDS", "FAILED"];

pub(crate) async fn wait_terminal(host: &Host, id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = host.get(&format!("/aggregates/money-transfer/{id}")).await;
        // In a cluster a partition can be between owners for a moment (a lease that ran out
        // on a busy machine): the host answers 503 to retry shortly, and so does this.
        let between_owners =
            answer.status.as_u16() == 503 && answer.body["error"]["code"] == "partition_unavailable";
        let state = if between_owners {
            "between owners".to_owned()
        } else {
            answer.expect(200).body["state"]["state"].as_str().unwrap().to_owned()
        };
        if TERMINAL.contains(&state.as_str()) {
            return state;
        }
        assert!(Instant::now() < deadline, "transfer {id} is still {state}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) async fn balance(host: &Host, id: &str) -> i64 {
    host.state("account", id).await["balance"].as_i64().unwrap()
}

pub(crate) async fn transfer(host: &Host, id: &str, from: &str, to: &str, amount: i64) {
    let data = json!({"from_account_id": from, "to_account_id": to, "amount": amount});
    host.command("money-transfer", id, "CreateMoneyTransfer", data).await.expect(200);
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn money_transfer_completes_and_moves_the_money() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    host.open_account("202", 12500).await;
    transfer(&host, "tr1", "101", "202", 5500).await;
    assert_eq!(wait_terminal(&host, "tr1").await, "COMPLETED");
    assert_eq!((balance(&host, "101").await, balance(&host, "202").await), (19500, 18000));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transfer_above_the_balance_fails_and_nothing_moves() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    host.open_account("202", 12500).await;
    transfer(&host, "tr1", "101", "202", 25001).await;
    assert_eq!(wait_terminal(&host, "tr1").await, "FAILED_DUE_TO_INSUFFICIENT_FUNDS");
    assert_eq!((balance(&host, "101").await, balance(&host, "202").await), (25000, 12500));
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn a_transfer_to_a_missing_or_closed_account_is_compensated() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    host.open_account("closed", 0).await;
    host.command("account", "closed", "CloseAccount", json!({})).await.expect(200);
    transfer(&host, "to-missing", "101", "nobody", 5500).await;
    transfer(&host, "to-closed", "101", "closed", 700).await;
    assert_eq!(wait_terminal(&host, "to-missing").await, "FAILED");
    assert_eq!(wait_terminal(&host, "to-closed").await, "FAILED");
    assert_eq!(balance(&host, "101").await, 25000, "both debits were credited back");
    let events = host.get("/aggregates/account/101/events").await.expect(200);
    let types: Vec<_> = events.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types.iter().filter(|t| *t == "AccountDebited").count(), 2);
    assert_eq!(types.iter().filter(|t| *t == "AccountCredited").count(), 2);
    let state = host.state("money-transfer", "to-missing").await;
    assert!(state["failure_reason"].as_str().unwrap().contains("account_not_found"), "{state}");
    let routing = host.get("/routing/dead-letters").await.expect(200);
    assert_eq!(routing.body["dead_letters"], json!([]), "a compensated failure is not a dead letter");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_saga_chain_carries_one_correlation_and_each_events_cause() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    host.open_account("202", 12500).await;
    let request = host
        .command_request(
            "money-transfer",
            "tr1",
            "CreateMoneyTransfer",
            json!({"from_account_id": "101", "to_account_id": "202", "amount": 5500}),
        )
        .header("X-Correlation-Id", "transfer-chain-1");
    host.send(request).await.expect(200);
    wait_terminal(&host, "tr1").await;
    let chain = host.get("/sagas/transfer-chain-1").await.expect(200);
    let events = chain.body["events"].as_array().unwrap();
    let steps: Vec<_> = events
        .iter()
        .map(|e| format!("{} {}", e["stream"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            "money-transfer/tr1 MoneyTransferCreated",
            "account/101 AccountDebited",
            "money-transfer/tr1 MoneyTransferDebitRecorded",
            "account/202 AccountCredited",
            "money-transfer/tr1 MoneyTransferCompleted",
        ]
    );
    assert!(events.iter().all(|e| e["correlation_id"] == "transfer-chain-1"));
    assert_eq!(events[0]["causation_id"], Value::Null, "the first event was caused by the user's command");
    for pair in events.windows(2) {
        assert_eq!(
            pair[1]["causation_id"],
            json!(pair[0]["position"].as_u64().unwrap().to_string()),
            "each step names its cause"
        );
    }
    let positions: Vec<_> = events.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "global order");
    // A long chain pages with `after`.
    let first = host.get("/sagas/transfer-chain-1?limit=2").await.expect(200).body["events"].clone();
    let after = first[1]["position"].as_u64().unwrap();
    let rest =
        host.get(&format!("/sagas/transfer-chain-1?after={after}")).await.expect(200).body["events"].clone();
    let paged: Vec<_> = first.as_array().unwrap().iter().chain(rest.as_array().unwrap()).cloned().collect();
    assert_eq!(&paged, events);
    let end = host.get(&format!("/sagas/transfer-chain-1?after={}", positions[4])).await.expect(200);
    assert_eq!(end.body["events"], json!([]));
}

async fn order_state(host: &Host, id: &str) -> Value {
    host.state("order", id).await
}

pub(crate) async fn wait_order(host: &Host, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let order = order_state(host, id).await;
        if order["state"] != "PENDING" {
            return order;
        }
        assert!(Instant::now() < deadline, "order {id} is still PENDING");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) async fn create_order(host: &Host, id: &str, customer: &str, total: i64) {
    host.command("order", id, "CreateOrder", json!({"customer_id": customer, "order_total": total}))
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn orders_reserve_credit_and_cancelling_releases_it() {
    let host = Host::start();
    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 200000}))
        .await
        .expect(200);
    create_order(&host, "o1", "c1", 123400).await;
    assert_eq!(wait_order(&host, "o1").await["state"], "APPROVED");
    create_order(&host, "o2", "c1", 176600).await;
    let o2 = wait_order(&host, "o2").await;
    assert_eq!(
        (o2["state"].as_str(), o2["rejection_reason"].as_str()),
        (Some("REJECTED"), Some("INSUFFICIENT_CREDIT"))
    );
    host.command("order", "o1", "CancelOrder", json!({})).await.expect(200);
    assert_eq!(order_state(&host, "o1").await["state"], "CANCELLED");
    eventually("the credit to be released", || async {
        host.state("customer", "c1").await["available_credit"] == 200000
    })
    .await;
    create_order(&host, "o3", "c1", 150000).await;
    assert_eq!(wait_order(&host, "o3").await["state"], "APPROVED");
    assert_eq!(host.state("customer", "c1").await["available_credit"], 50000);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_for_an_unknown_customer_is_rejected_and_cannot_be_cancelled() {
    let host = Host::start();
    create_order(&host, "o1", "nobody", 100).await;
    let o1 = wait_order(&host, "o1").await;
    assert_eq!(
        (o1["state"].as_str(), o1["rejection_reason"].as_str()),
        (Some("REJECTED"), Some("UNKNOWN_CUSTOMER"))
    );
    host.command("order", "o1", "CancelOrder", json!({})).await.expect_error(422, "order_not_cancellable");
}

/// A tiny deterministic generator for random transfers.
pub(crate) struct Random(pub u64);

impl Random {
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// 16 clients send `count` random transfers between 10 accounts; returns the ids of the
/// transfers that were acknowledged (200), counting them in `progress` as they come.
pub(crate) async fn transfer_storm(
    host: &Host,
    count: usize,
    prefix: &str,
    progress: Arc<AtomicUsize>,
) -> Vec<String> {
    let per_client = count / 16;
    let mut clients = Vec::new();
    for client in 0..16u64 {
        let http = host.http.clone();
        let url = host.url.clone();
        let prefix = prefix.to_owned();
        let progress = progress.clone();
        clients.push(tokio::spawn(async move {
            let mut random = Random(0x9E37_79B9_7F4A_7C15 ^ (client + 1));
            let mut acknowledged = Vec::new();
            for n in 0..per_client {
                let from = random.below(10);
                let to = (from + 1 + random.below(9)) % 10;
                let amount = 1 + random.below(3000) as i64;
                let id = format!("{prefix}-{client}-{n}");
                let body = json!({"type": "CreateMoneyTransfer", "data": {"from_account_id": from.to_string(), "to_account_id": to.to_string(), "amount": amount}});
                match http.post(format!("{url}/aggregates/money-transfer/{id}/commands")).json(&body).send().await {
                    Ok(response) if response.status() == 200 => {
                        acknowledged.push(id);
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(response) => panic!("transfer {id}: {}", response.status()),
                    Err(_) => break, // the host was killed
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    acknowledged
}

pub(crate) async fn open_ten_accounts(host: &Host) {
    for id in 0..10 {
        host.open_account(&id.to_string(), 10000).await;
    }
}

pub(crate) async fn total_balance(host: &Host) -> i64 {
    let mut total = 0;
    for id in 0..10 {
        total += balance(host, &id.to_string()).await;
    }
    total
}

/// No account shows one transaction twice (the same kind of movement with the same id).
pub(crate) async fn assert_no_duplicate_movements(host: &Host) {
    for id in 0..10 {
        let mut seen = HashSet::new();
        let mut from = 1;
        loop {
            let page = host
                .get(&format!("/aggregates/account/{id}/events?from={from}&limit=1000"))
                .await
                .expect(200);
            let events = page.body["events"].as_array().unwrap().clone();
            if events.is_empty() {
                break;
            }
            for event in &events {
                if let Some(tx) = event["data"]["transaction_id"].as_str() {
                    assert!(seen.insert(tx.to_owned()), "account {id} shows transaction {tx} twice");
                }
            }
            from = events.last().unwrap()["version"].as_u64().unwrap() + 1;
        }
    }
}

pub(crate) async fn wait_all_terminal(host: &Host, transfers: &[String]) -> HashMap<String, usize> {
    let mut outcomes = HashMap::new();
    for id in transfers {
        *outcomes.entry(wait_terminal(host, id).await).or_insert(0) += 1;
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn three_hundred_concurrent_random_transfers_conserve_money() {
    let host = Host::start();
    open_ten_accounts(&host).await;
    let transfers = transfer_storm(&host, 304, "storm", Arc::default()).await;
    assert_eq!(transfers.len(), 304);
    let outcomes = wait_all_terminal(&host, &transfers).await;
    assert_eq!(total_balance(&host).await, 100000, "outcomes: {outcomes:?}");
    assert!(outcomes.get("COMPLETED").is_some_and(|n| *n > 0), "{outcomes:?}");
    assert_no_duplicate_movements(&host).await;
    let routing = host.get("/routing").await.expect(200);
    assert!(
        routing.body["subscribers"].as_array().unwrap().iter().all(|s| s["parked"] == 0),
        "{}",
        routing.body
    );
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn a_kill_9_in_the_middle_of_the_storm_loses_nothing_and_doubles_nothing_in_the_log_or_the_views()
 {
    let mut host = Host::start();
    open_ten_accounts(&host).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let storm = {
        let http = host.http.clone();
        let url = host.url.clone();
        // The storm runs against this host while it is killed.
        let shadow = Host::attach(http, url);
        let progress = progress.clone();
        tokio::spawn(async move { transfer_storm(&shadow, 304, "crash", progress).await })
    };
    while progress.load(Ordering::SeqCst) < 100 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    host.kill9();
    let acknowledged = storm.await.unwrap();
    assert!(
        (100..304).contains(&acknowledged.len()),
        "the kill landed mid-storm ({} acknowledged)",
        acknowledged.len()
    );
    host.start_again();
    let outcomes = wait_all_terminal(&host, &acknowledged).await;
    assert_eq!(total_balance(&host).await, 100000, "outcomes after the crash: {outcomes:?}");
    assert_no_duplicate_movements(&host).await;
    // The account-info view lost nothing and doubled nothing either.
    let head = crate::views::head(&host).await;
    for id in 0..10 {
        let id = id.to_string();
        let (_, info) = crate::views::view(&host, "account-info", &id, head).await;
        assert_eq!(info["balance"].as_i64(), Some(balance(&host, &id).await), "account-info of {id}: {info}");
        let transactions = info["transactions"].as_array().unwrap();
        let unique: HashSet<_> = transactions.iter().map(|t| (&t["kind"], &t["transaction_id"])).collect();
        assert_eq!(unique.len(), transactions.len(), "account-info of {id} shows a transaction twice");
    }
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn a_forced_redelivery_has_no_second_effect() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    host.open_account("202", 12500).await;
    transfer(&host, "tr1", "101", "202", 5500).await;
    transfer(&host, "tr2", "101", "nobody", 1000).await;
    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 200000}))
        .await
        .expect(200);
    create_order(&host, "o1", "c1", 123400).await;
    wait_terminal(&host, "tr1").await;
    wait_terminal(&host, "tr2").await;
    wait_order(&host, "o1").await;
    let head = host.get("/healthz").await.body["head_position"].as_u64().unwrap();

    // Every subscriber delivers the whole log again.
    for subscriber in ["account", "money-transfer", "customer", "order"] {
        let request = host
            .http
            .post(format!("{}/routing/{subscriber}/rewind?to=0", host.url))
            .bearer_auth("test-token");
        host.send(request).await.expect(200);
    }
    eventually("every subscriber to catch up again", || async {
        let routing = host.get("/routing").await.expect(200);
        routing.body["subscribers"].as_array().unwrap().iter().all(|s| s["cursor"] == head)
    })
    .await;
    let duplicates: u64 = host.get("/routing").await.body["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["duplicates_ignored"].as_u64().unwrap())
        .sum();
    // tr1: 4 commands, tr2: 4 and one handed-back rejection, o1: 2.
    assert!(duplicates >= 10, "every command was delivered again and recognised ({duplicates})");
    assert_eq!(host.get("/healthz").await.body["head_position"], head, "redelivery stored no new event");
    assert_eq!((balance(&host, "101").await, balance(&host, "202").await), (19500, 18000));
    assert_eq!(host.state("customer", "c1").await["available_credit"], 76600);

    let unauthorized = host.http.post(format!("{}/routing/account/rewind", host.url));
    host.send(unauthorized).await.expect_error(401, "unauthorized");
    let unknown = host.http.post(format!("{}/routing/nobody/rewind", host.url)).bearer_auth("test-token");
    host.send(unknown).await.expect_error(404, "unknown_subscriber");
}
