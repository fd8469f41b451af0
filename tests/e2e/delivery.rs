//! Choreography that never loses a step: what can never be delivered is handed back and
//! compensated, what is overloaded is retried until it passes, what fails every time is
//! parked in stream order (and retried or discarded by an operator), effects happen once
//! per subscriber, and a failing subscriber or actor is restarted.

use crate::harness::{Answer, Host};
use crate::sagas::{
    assert_no_duplicate_movements, balance, eventually, open_ten_accounts, total_balance, transfer,
    transfer_storm, wait_all_terminal, wait_terminal,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn credit(host: &Host, account: &str, transaction_id: &str) {
    host.command("account", account, "CreditAccount", json!({"amount": 1, "transaction_id": transaction_id}))
        .await
        .expect(200);
}

/// The notes `faulty/<id>` has recorded, in order.
async fn notes(host: &Host, id: &str) -> Vec<String> {
    let answer = host.get(&format!("/aggregates/faulty/{id}")).await;
    if answer.status == 404 {
        return Vec::new();
    }
    let state = answer.expect(200).body["state"].clone();
    state["notes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_owned()).collect()
}

async fn subscriber(host: &Host, name: &str) -> Value {
    let routing = host.get("/routing").await.expect(200);
    let subscribers = routing.body["subscribers"].as_array().unwrap().clone();
    subscribers.into_iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no subscriber {name}"))
}

async fn dead_letters(host: &Host, query: &str) -> Vec<Value> {
    let answer = host.get(&format!("/routing/dead-letters?{query}")).await.expect(200);
    answer.body["dead_letters"].as_array().unwrap().clone()
}

/// Wait until `name` has handled the whole log.
async fn caught_up(host: &Host, name: &str) {
    eventually(&format!("{name} to catch up"), || async {
        let head = host.get("/healthz").await.body["head_position"].clone();
        let status = subscriber(host, name).await;
        status["cursor"] == head && status["in_flight"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn transfers_and_orders_naming_impossible_ids_are_refused_at_once() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    let long = "x".repeat(300);
    for target in ["a/b", long.as_str(), "bad\tid"] {
        let data = json!({"from_account_id": "101", "to_account_id": target, "amount": 5500});
        host.command("money-transfer", "t1", "CreateMoneyTransfer", data)
            .await
            .expect_error(422, "invalid_account_id");
    }
    host.get("/aggregates/money-transfer/t1").await.expect_error(404, "stream_not_found");
    assert_eq!(balance(&host, "101").await, 25000, "nothing was debited");
    let order = json!({"customer_id": "c/1", "order_total": 100});
    host.command("order", "o1", "CreateOrder", order).await.expect_error(422, "invalid_customer_id");
}

/// A payment of 1000 from 101 through `faulty`'s saga to `to_type/to_id` with `command`.
async fn pay(host: &Host, id: &str, to_type: &str, to_id: &str, command: &str) {
    let data = json!({"from_account_id": "101", "to_type": to_type, "to_id": to_id, "amount": 1000, "credit_command": command});
    host.command("faulty", id, "Pay", data).await.expect(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_that_can_never_be_delivered_are_handed_back_and_the_money_comes_back() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    host.open_account("101", 25000).await;
    host.open_account("202", 0).await;
    let long = "x".repeat(300);
    let impossible = [
        ("to-slash", "account", "a/b", "CreditAccount", "invalid_target"),
        ("to-long", "account", long.as_str(), "CreditAccount", "invalid_target"),
        ("to-nowhere", "nowhere", "202", "CreditAccount", "unknown_type"),
        ("to-unknown-command", "account", "202", "Teleport", "unknown_command"),
        ("to-missing", "account", "nobody", "CreditAccount", "account_not_found"),
    ];
    for (id, to_type, to_id, command, _) in impossible {
        pay(&host, id, to_type, to_id, command).await;
    }
    pay(&host, "to-202", "account", "202", "CreditAccount").await;
    for (id, _, _, _, code) in impossible {
        eventually(&format!("payment {id} to be refunded"), || async {
            let state = host.state("faulty", id).await;
            state["payment"]["failed"].as_str() == Some(code)
        })
        .await;
    }
    // The debit of 101 and the credit of 202 are two deliveries: wait for both.
    eventually("every refund and the one possible payment to land", || async {
        balance(&host, "101").await == 24000 && balance(&host, "202").await == 1000
    })
    .await;
    caught_up(&host, "faulty").await;
    caught_up(&host, "account").await;
    assert_eq!(
        dead_letters(&host, "").await,
        Vec::<Value>::new(),
        "a handed-back command is not a dead letter"
    );
    // Each refusal took effect once: one PaymentFailed each (a redelivery after a restart of
    // the subscriber hands back again, and is deduplicated, so the counter may say more).
    for (id, ..) in impossible {
        let events = host.get(&format!("/aggregates/faulty/{id}/events")).await.expect(200).body;
        let failed =
            events["events"].as_array().unwrap().iter().filter(|e| e["type"] == "PaymentFailed").count();
        assert_eq!(failed, 1, "{id}: {events}");
    }
    let faulty = subscriber(&host, "faulty").await;
    let handed_back = faulty["handed_back"].as_u64().unwrap();
    assert!(handed_back >= 5, "{faulty}\nthe host's log:\n{}", host.log_text());
    assert!(handed_back == 5 || faulty["restarts"] != 0, "more only after a restart: {faulty}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_overloaded_for_ten_seconds_still_gets_every_routed_command_once() {
    // Every `Hold` command holds its actor for 5 s; a mailbox holds one command.
    let host =
        Host::start_with_env(&["--mailbox-capacity", "1"], &[("CAIRN_FAULTS", "actor-stall=Hold:5000")]);
    host.open_account("101", 100000).await;
    host.open_account("202", 0).await;
    // The first Hold occupies 202's actor, the second its mailbox: 202 refuses every other
    // command as overloaded for about 10 s, more than the old retry budget (~4.5 s).
    let hold = |host: &Host| host.command_request("account", "202", "Hold", json!({})).send();
    let first = tokio::spawn(hold(&host));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = tokio::spawn(hold(&host));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut sent = Vec::new();
    for n in 0..20 {
        let id = format!("held-{n}");
        transfer(&host, &id, "101", "202", 100 + n).await;
        sent.push(id);
    }
    for id in &sent {
        assert_eq!(wait_terminal(&host, id).await, "COMPLETED", "{id}");
    }
    let waited = started.elapsed();
    assert_eq!(first.await.unwrap().unwrap().status(), 400, "Hold is no account command");
    assert_eq!(second.await.unwrap().unwrap().status(), 400);
    assert!(waited > Duration::from_secs(5), "the target was held busy ({waited:?})");
    let sum: i64 = (0..20).map(|n| 100 + n).sum();
    assert_eq!((balance(&host, "101").await, balance(&host, "202").await), (100000 - sum, sum));
    let events =
        host.get("/aggregates/account/202/events?limit=1000").await.expect(200).body["events"].clone();
    let credits = events.as_array().unwrap().iter().filter(|e| e["type"] == "AccountCredited").count();
    assert_eq!(credits, 20, "each credit arrived once");
    let account = subscriber(&host, "account").await;
    assert!(account["transient_retries"].as_u64().unwrap() > 0, "the overload was met: {account}");
    assert_eq!(dead_letters(&host, "").await, Vec::<Value>::new(), "overload never parks");
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn a_trapping_reaction_parks_its_stream_in_order_while_a_thousand_transfers_complete() {
    let mut host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    open_ten_accounts(&host).await;
    host.open_account("p", 100).await;
    credit(&host, "p", "t1").await;
    credit(&host, "p", "poison").await;
    credit(&host, "p", "t2").await;

    // The storm runs while account/p is parked for `faulty`.
    let started = Instant::now();
    let transfers = transfer_storm(&host, 1008, "parked", Arc::default()).await;
    let outcomes = wait_all_terminal(&host, &transfers).await;
    let with_parked = started.elapsed();
    assert_eq!(transfers.len(), 1008);
    assert_eq!(total_balance(&host).await, 100000, "{outcomes:?}");
    caught_up(&host, "faulty").await;
    assert_no_duplicate_movements(&host).await;
    // faulty's other streams went on: every movement of account 0 is recorded on faulty/0.
    let movements =
        host.get("/aggregates/account/0/events?limit=1000").await.expect(200).body["events"].clone();
    let recorded: Vec<String> = movements
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "AccountCredited" || e["type"] == "AccountDebited")
        .map(|e| e["data"]["transaction_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(notes(&host, "0").await, recorded);

    // The poisoned event and everything after it on account/p wait, in order.
    assert_eq!(notes(&host, "p").await, ["t1"]);
    let parked = dead_letters(&host, "subscriber=faulty&stream=account/p").await;
    let types: Vec<_> =
        parked.iter().map(|l| (l["position"].as_u64().unwrap(), l["waiting_behind"].clone())).collect();
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert!(parked[0]["error"].as_str().unwrap().contains("react failed"), "{}", parked[0]);
    assert_eq!(parked[0]["attempts"], 5, "retried before parking");
    assert_eq!(types[1].1, json!(types[0].0), "t2 waits behind the poisoned event");
    let status = subscriber(&host, "faulty").await;
    assert_eq!((status["dead_letters"].as_u64(), status["parked_streams"].as_u64()), (Some(2), Some(1)));

    // The sequence survives a restart, and a new event of the stream parks behind it.
    host.restart();
    credit(&host, "p", "t3").await;
    eventually("t3 to park behind", || async {
        dead_letters(&host, "subscriber=faulty&stream=account/p").await.len() == 3
    })
    .await;
    let page = host.get("/routing/dead-letters?subscriber=faulty&limit=2").await.expect(200);
    let next = page.body["next_after"].as_str().unwrap().to_owned();
    let rest = dead_letters(&host, &format!("subscriber=faulty&after={next}")).await;
    assert_eq!(rest.len(), 1, "paged: 2 + 1");
    assert_eq!(notes(&host, "p").await, ["t1"]);

    // Without the token nothing happens; after a fixed version, retry delivers in order.
    let unauthorized = host.http.post(format!("{}/routing/dead-letters/retry", host.url));
    host.send(unauthorized).await.expect_error(401, "unauthorized");
    host.deploy("faulty", cairn_test_guests::FAULTY_FIXED).await.expect(200);
    // A stream alone is its parked sequences for every subscriber: here faulty's.
    let retried = host.admin_post("/routing/dead-letters/retry?stream=account/p").await.expect(200);
    assert_eq!(retried.body["events"], 3, "{}", retried.body);
    let released: Vec<_> =
        retried.body["retried"].as_array().unwrap().iter().filter(|s| s["events"] != 0).collect();
    assert_eq!(released.len(), 1, "{}", retried.body);
    assert_eq!((&released[0]["subscriber"], &released[0]["stream"]), (&json!("faulty"), &json!("account/p")));
    eventually("the parked sequence to be delivered", || async { notes(&host, "p").await.len() == 4 }).await;
    assert_eq!(notes(&host, "p").await, ["t1", "poison", "t2", "t3"]);
    // A letter is removed once its delivery is stored, so the last removal may come a moment
    // after the last note.
    eventually("the delivered letters to be removed", || async {
        dead_letters(&host, "subscriber=faulty").await.is_empty()
    })
    .await;
    credit(&host, "p", "t4").await;
    eventually("the stream to flow again", || async { notes(&host, "p").await.len() == 5 }).await;

    // A forged host command parks too; discard drops that sequence on purpose.
    host.open_account("q", 100).await;
    credit(&host, "q", "forge").await;
    credit(&host, "q", "u1").await;
    eventually("the forged reaction and u1 to park", || async {
        dead_letters(&host, "subscriber=faulty&stream=account/q").await.len() == 2
    })
    .await;
    let forged = &dead_letters(&host, "subscriber=faulty&stream=account/q").await[0];
    assert!(forged["error"].as_str().unwrap().contains("only the host may send"), "{forged}");
    assert_eq!(
        (forged["command_type"].as_str(), forged["target"].as_str()),
        (Some("CommandRejected"), Some("account/q"))
    );
    let discarded = host.admin_post("/routing/dead-letters/discard?subscriber=faulty&stream=account/q").await;
    assert_eq!(discarded.expect(200).body["events"], 2);
    credit(&host, "q", "u2").await;
    eventually("q to flow again", || async { notes(&host, "q").await == ["u2"] }).await;
    assert_eq!(dead_letters(&host, "").await, Vec::<Value>::new());
    host.admin_post("/routing/dead-letters/discard").await.expect_error(400, "invalid_query");

    // The same storm with nothing parked, for comparison.
    let started = Instant::now();
    let transfers = transfer_storm(&host, 1008, "free", Arc::default()).await;
    wait_all_terminal(&host, &transfers).await;
    let without_parked = started.elapsed();
    eprintln!(
        "1008 transfers all terminal: {with_parked:?} with a parked stream, {without_parked:?} without ({:.2}x)",
        with_parked.as_secs_f64() / without_parked.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_subscribers_sending_the_same_command_to_one_stream_both_take_effect_once() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY_FIXED).await.expect(200);
    host.deploy("twin", cairn_test_guests::TWIN).await.expect(200);
    host.open_account("a", 0).await;
    credit(&host, "a", "c1").await;
    let both = || async {
        let mut notes = notes(&host, "a").await;
        notes.sort();
        notes
    };
    eventually("both reactions to take effect", || async { both().await.len() == 2 }).await;
    assert_eq!(both().await, ["c1", "twin:c1"]);

    // A forced redelivery through both subscribers changes nothing.
    caught_up(&host, "faulty").await;
    caught_up(&host, "twin").await;
    let head = host.get("/healthz").await.body["head_position"].clone();
    for name in ["faulty", "twin"] {
        host.admin_post(&format!("/routing/{name}/rewind?to=0")).await.expect(200);
    }
    caught_up(&host, "faulty").await;
    caught_up(&host, "twin").await;
    assert_eq!(host.get("/healthz").await.body["head_position"], head, "redelivery stored nothing");
    assert_eq!(both().await, ["c1", "twin:c1"]);
    for name in ["faulty", "twin"] {
        let status = subscriber(&host, name).await;
        assert!(status["duplicates_ignored"].as_u64().unwrap() >= 1, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_delivery_task_is_restarted_and_a_panicking_actor_answers_500() {
    let faults = "delivery-panic=MoneyTransferDebitRecorded,actor-panic=CloseAccount";
    let host = Host::start_with_env(&[], &[("CAIRN_FAULTS", faults)]);
    host.open_account("101", 25000).await;
    host.open_account("202", 12500).await;
    transfer(&host, "tr1", "101", "202", 5500).await;
    assert_eq!(wait_terminal(&host, "tr1").await, "COMPLETED");
    assert_eq!((balance(&host, "101").await, balance(&host, "202").await), (19500, 18000));
    let account = subscriber(&host, "account").await;
    assert_eq!(account["restarts"], 1, "{account}");
    assert!(account["last_error"].as_str().unwrap().contains("fault injection"), "{account}");
    assert!(account["last_error_at"].is_string());

    let closed: Answer = host.command("account", "202", "CloseAccount", json!({})).await;
    closed.expect_error(500, "internal_error");
    host.command("account", "202", "CloseAccount", json!({})).await.expect(200);
    assert_eq!(host.state("account", "202").await["closed"], true, "a fresh actor served the retry");
}
