//! The orchestrated Create Order saga beside the choreographed one: the same customers and
//! orders, driven by an orchestrator (`create-order-saga`) instead of by each other.

use crate::harness::{Host, answer_of};
use crate::sagas::{create_order, eventually, wait_order};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TERMINAL: [&str; 2] = ["APPROVED", "REJECTED"];

async fn start(host: &Host, order: &str, customer: &str, total: i64) -> crate::harness::Answer {
    let start = json!({"order_id": order, "customer_id": customer, "order_total": total});
    host.command("create-order-saga", order, "StartCreateOrder", start).await
}

/// The saga's state once it has ended.
async fn saga_end(host: &Host, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let saga = host.state("create-order-saga", id).await;
        if TERMINAL.contains(&saga["state"].as_str().unwrap()) {
            return saga;
        }
        assert!(Instant::now() < deadline, "saga {id} is still {}", saga["state"]);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The stream of the event that caused `event` (a routed command's event names its cause by
/// the cause's position).
async fn cause_stream(host: &Host, event: &Value) -> String {
    let cause: u64 = event["causation_id"].as_str().expect("a routed command's event").parse().unwrap();
    let found = host.get(&format!("/events?after={}&limit=1", cause - 1)).await.expect(200);
    let cause_event = &found.body["events"][0];
    assert_eq!(cause_event["position"], cause, "{}", found.body);
    cause_event["stream"].as_str().unwrap().to_owned()
}

async fn customer(host: &Host, id: &str) -> Value {
    host.state("customer", id).await
}

/// The seeds' figures, through the orchestrator: a customer with a credit limit of 200 000,
/// an order of 123 400 approved, one of 176 600 rejected for lack of credit, the first
/// cancelled (its credit released), and an order for nobody rejected as `UNKNOWN_CUSTOMER`.
#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn the_orchestrator_runs_the_seeds_figures_to_their_ends() {
    let host = Host::start();
    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 200000}))
        .await
        .expect(200);
    start(&host, "o1", "c1", 123400).await.expect(200);
    let first = saga_end(&host, "o1").await;
    assert_eq!(first["state"], "APPROVED", "{first}");
    assert_eq!(wait_order(&host, "o1").await["state"], "APPROVED");
    assert_eq!(customer(&host, "c1").await["available_credit"], 76600);

    start(&host, "o2", "c1", 176600).await.expect(200);
    let second = saga_end(&host, "o2").await;
    assert_eq!(
        (second["state"].as_str(), second["rejection_reason"].as_str()),
        (Some("REJECTED"), Some("INSUFFICIENT_CREDIT"))
    );
    let order = wait_order(&host, "o2").await;
    assert_eq!(
        (order["state"].as_str(), order["rejection_reason"].as_str()),
        (Some("REJECTED"), Some("INSUFFICIENT_CREDIT"))
    );

    host.command("order", "o1", "CancelOrder", json!({})).await.expect(200);
    eventually("the cancelled order's credit is released", || async {
        customer(&host, "c1").await["available_credit"] == 200000
    })
    .await;

    start(&host, "o3", "nobody", 10).await.expect(200);
    let third = saga_end(&host, "o3").await;
    assert_eq!(
        (third["state"].as_str(), third["rejection_reason"].as_str()),
        (Some("REJECTED"), Some("UNKNOWN_CUSTOMER"))
    );
    assert_eq!(wait_order(&host, "o3").await["rejection_reason"], "UNKNOWN_CUSTOMER");

    // The saga's page: its whole chain under one correlation, the orchestrator's own steps
    // between the participants' replies.
    let created = host.get("/aggregates/create-order-saga/o1/events").await.expect(200);
    let correlation = created.body["events"][0]["correlation_id"].as_str().unwrap().to_owned();
    let chain = host.get(&format!("/sagas/{correlation}")).await.expect(200);
    let steps: Vec<String> = chain.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["stream"].as_str().unwrap(), e["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            "create-order-saga/o1 CreateOrderSagaStarted",
            "order/o1 OrderCreated",
            "create-order-saga/o1 OrderCreationRecorded",
            "customer/c1 CustomerCreditReserved",
            "create-order-saga/o1 CreditReservationRecorded",
            "order/o1 OrderApproved",
            "create-order-saga/o1 CreateOrderSagaApproved",
        ]
    );
    // Its steps are internal, as the choreography's are.
    host.command("create-order-saga", "o2", "RecordCreditReserved", json!({}))
        .await
        .expect_error(403, "internal_command");
}

/// A participant that refuses a step ends the saga: an order id already taken (by a
/// choreographed order here) is refused by the order, and the saga ends `REJECTED` without
/// touching that order; a start whose order id is not the saga's own is abandoned.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_step_ends_the_saga_and_changes_nothing_else() {
    let host = Host::start();
    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 1000}))
        .await
        .expect(200);
    create_order(&host, "taken", "c1", 300).await;
    assert_eq!(wait_order(&host, "taken").await["state"], "APPROVED");
    start(&host, "taken", "c1", 500).await.expect(200);
    let saga = saga_end(&host, "taken").await;
    assert_eq!(
        (saga["state"].as_str(), saga["rejection_reason"].as_str()),
        (Some("REJECTED"), Some("ORDER_ALREADY_EXISTS"))
    );
    assert_eq!(
        host.state("order", "taken").await["order_total"],
        300,
        "the choreographed order is untouched"
    );
    assert_eq!(customer(&host, "c1").await["available_credit"], 700);

    let wrong = json!({"order_id": "o9", "customer_id": "c1", "order_total": 5});
    host.command("create-order-saga", "s9", "StartCreateOrder", wrong).await.expect(200);
    let saga = saga_end(&host, "s9").await;
    assert_eq!(saga["rejection_reason"], "ORDER_ID_IS_NOT_THE_SAGA_ID");
    host.get("/aggregates/order/o9").await.expect_error(404, "stream_not_found");
}

/// Orchestrated and choreographed orders over the same customers, with a SIGKILL in the
/// middle: every saga ends, no order is driven by both styles (each credit is reserved once),
/// and each customer's reserved credit is the sum of its approved orders' totals.
#[tokio::test(flavor = "multi_thread")]
async fn both_styles_over_the_same_customers_survive_a_kill_9_and_reserve_each_credit_once() {
    let mut host = Host::start();
    const CUSTOMERS: usize = 4;
    const ORDERS: usize = 120;
    for c in 0..CUSTOMERS {
        host.command(
            "customer",
            &format!("c{c}"),
            "CreateCustomer",
            json!({"name": "Fred", "credit_limit": 50_000}),
        )
        .await
        .expect(200);
    }
    let progress = Arc::new(AtomicUsize::new(0));
    let storm = {
        let (http, url, progress) = (host.http.clone(), host.url.clone(), progress.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..ORDERS {
                let (id, customer, total) =
                    (format!("o{n}"), format!("c{}", n % CUSTOMERS), 1000 + (n as i64 * 37) % 4000);
                let orchestrated = n % 2 == 0;
                let (path, body) = if orchestrated {
                    (
                        format!("{url}/aggregates/create-order-saga/{id}/commands"),
                        json!({"type": "StartCreateOrder", "data": {"order_id": id, "customer_id": customer, "order_total": total}}),
                    )
                } else {
                    (
                        format!("{url}/aggregates/order/{id}/commands"),
                        json!({"type": "CreateOrder", "data": {"customer_id": customer, "order_total": total}}),
                    )
                };
                let request = http.post(path).header("Idempotency-Key", id.clone()).json(&body);
                match request.send().await {
                    Ok(response) if response.status() == 200 => acknowledged.push((id, orchestrated)),
                    // The host is gone (killed): the storm ends.
                    Ok(_) | Err(_) => return acknowledged,
                }
                progress.fetch_add(1, Ordering::SeqCst);
            }
            acknowledged
        })
    };
    while progress.load(Ordering::SeqCst) < ORDERS / 3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    host.kill9();
    let acknowledged = storm.await.unwrap();
    assert!(
        (ORDERS / 3..ORDERS).contains(&acknowledged.len()),
        "the kill landed mid-storm ({})",
        acknowledged.len()
    );
    host.start_again();

    // Every order there is (an acknowledged one, or one the kill cut off after it was
    // stored), whichever style started it.
    let exists = |path: String| {
        let http = host.http.clone();
        let url = host.url.clone();
        async move { answer_of(http.get(format!("{url}{path}"))).await.status == 200 }
    };
    let mut approved_by_customer: HashMap<String, i64> = HashMap::new();
    for n in 0..ORDERS {
        let id = format!("o{n}");
        let acknowledged_here = acknowledged.iter().any(|(a, _)| *a == id);
        if n % 2 == 0 && (acknowledged_here || exists(format!("/aggregates/create-order-saga/{id}")).await) {
            let saga = saga_end(&host, &id).await;
            let order = wait_order(&host, &id).await;
            assert_eq!(saga["state"], order["state"], "{id}: the saga ends as its order does");
        }
        if !acknowledged_here && !exists(format!("/aggregates/order/{id}")).await {
            continue;
        }
        let order = wait_order(&host, &id).await;
        if order["state"] == "APPROVED" {
            *approved_by_customer.entry(order["customer_id"].as_str().unwrap().to_owned()).or_default() +=
                order["order_total"].as_i64().unwrap();
        }
    }
    for c in 0..CUSTOMERS {
        let id = format!("c{c}");
        let state = customer(&host, &id).await;
        let reserved: i64 =
            state["credit_reservations"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum();
        assert_eq!(reserved, approved_by_customer.get(&id).copied().unwrap_or(0), "{id}: {state}");
        assert_eq!(state["available_credit"], 50_000 - reserved, "{id}");
        // Each order's credit was decided once: one reservation event (or one refusal) each.
        let events =
            answer_of(host.http.get(format!("{}/aggregates/customer/{id}/events?limit=1000", host.url)))
                .await;
        let mut decided: HashMap<String, usize> = HashMap::new();
        for event in events.body["events"].as_array().unwrap() {
            if let Some(order) = event["data"]["order_id"].as_str()
                && event["type"] != "CustomerCreditReleased"
            {
                *decided.entry(order.to_owned()).or_default() += 1;
                // ... by the style that started the order: the saga's own step, or the order.
                let n: usize = order.trim_start_matches('o').parse().unwrap();
                let expected = if n.is_multiple_of(2) { "create-order-saga" } else { "order" };
                let cause = cause_stream(&host, event).await;
                assert_eq!(cause.split('/').next(), Some(expected), "{order} was decided for {cause}");
            }
        }
        assert!(decided.values().all(|n| *n == 1), "{id}: a credit decided twice: {decided:?}");
    }
    let dead = host.get("/routing/dead-letters").await.expect(200);
    assert_eq!(dead.body["dead_letters"], json!([]));
}

/// A saga and a client race to create the same order: exactly one of them creates it, and
/// that one drives it. Either the saga's `CreateOrder` is refused (the saga ends `REJECTED`,
/// the choreography decides the credit) or the client's is (the saga decides it); the credit
/// is decided once either way, by the one that created the order.
#[tokio::test(flavor = "multi_thread")]
async fn a_saga_and_a_client_racing_for_one_order_id_drive_it_once() {
    let host = Host::start();
    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 1_000_000}))
        .await
        .expect(200);
    let ids: Vec<String> = (0..12).map(|n| format!("race{n}")).collect();
    let mut races = Vec::new();
    for id in &ids {
        let (http, url, id) = (host.http.clone(), host.url.clone(), id.clone());
        races.push(tokio::spawn(async move {
            let saga = json!({"type": "StartCreateOrder", "data": {"order_id": id, "customer_id": "c1", "order_total": 10}});
            let order = json!({"type": "CreateOrder", "data": {"customer_id": "c1", "order_total": 10}});
            let (saga, order) = tokio::join!(
                answer_of(http.post(format!("{url}/aggregates/create-order-saga/{id}/commands")).json(&saga)),
                answer_of(http.post(format!("{url}/aggregates/order/{id}/commands")).json(&order)),
            );
            saga.expect(200);
            (id, order.status.as_u16(), order.body)
        }));
    }
    let mut client_won = 0;
    for race in races {
        let (id, status, body) = race.await.unwrap();
        let saga = saga_end(&host, &id).await;
        let order = wait_order(&host, &id).await;
        match status {
            200 => {
                client_won += 1;
                assert_eq!(saga["rejection_reason"], "ORDER_ALREADY_EXISTS", "{id}: {saga}");
            }
            422 => {
                assert_eq!(body["error"]["code"], "order_already_exists", "{id}: {body}");
                assert_eq!(saga["state"], order["state"], "{id}: the saga drove its order");
            }
            other => panic!("{id}: {other} {body}"),
        }
        assert_eq!(order["state"], "APPROVED", "{id}: {order}");
    }
    // One decision per order, caused by whoever created it.
    let events = host.get("/aggregates/customer/c1/events?limit=1000").await.expect(200);
    let decisions: Vec<&Value> = events.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "CustomerCreditReserved")
        .collect();
    assert_eq!(decisions.len(), ids.len(), "{}", events.body);
    let mut by_saga = 0;
    for decision in &decisions {
        if cause_stream(&host, decision).await.starts_with("create-order-saga/") {
            by_saga += 1;
        }
    }
    assert_eq!(by_saga, ids.len() - client_won, "the saga decided the orders it created");
    assert_eq!(customer(&host, "c1").await["available_credit"], 1_000_000 - 10 * ids.len() as i64);
}
