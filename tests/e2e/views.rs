//! Read models end to end: the bundled projections follow the sagas, readers get their
//! own writes with `min_position`, rebuilds switch atomically, and a failing projection
//! is reported while everything else keeps serving.

use crate::harness::{Answer, Host};
use crate::sagas::{create_order, eventually, transfer, wait_order, wait_terminal};
use serde_json::{Value, json};

/// The head of the global log now.
pub(crate) async fn head(host: &Host) -> u64 {
    host.get("/healthz").await.expect(200).body["head_position"].as_u64().unwrap()
}

/// `GET /views/{projection}/{key}?min_position=`, asserting 200 and the position header.
pub(crate) async fn view(host: &Host, projection: &str, key: &str, min_position: u64) -> (u64, Value) {
    let answer =
        host.get(&format!("/views/{projection}/{key}?min_position={min_position}")).await.expect(200);
    let position = position_of(&answer);
    assert!(position >= min_position, "the view answered at {position}, below {min_position}");
    (position, answer.body)
}

fn position_of(answer: &Answer) -> u64 {
    let header = answer.headers.get("x-cairn-position").expect("every view answer has X-Cairn-Position");
    header.to_str().unwrap().parse().unwrap()
}

/// The last position of a saga's chain (the events of one correlation id).
async fn last_position_of_saga(host: &Host, correlation_id: &str) -> u64 {
    let saga = host.get(&format!("/sagas/{correlation_id}")).await.expect(200);
    saga.body["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).max().unwrap()
}

pub(crate) fn projection<'a>(views: &'a Value, name: &str) -> &'a Value {
    views["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{views}"))
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn account_info_shows_the_transfer_on_both_sides_and_reads_its_own_writes() {
    let host = Host::start_with(&["--view-wait-ms", "1000"]);
    host.open_account("A", 25000).await;
    host.open_account("B", 12500).await;
    let created = host
        .command(
            "money-transfer",
            "T1",
            "CreateMoneyTransfer",
            json!({"from_account_id": "A", "to_account_id": "B", "amount": 5500}),
        )
        .await
        .expect(200);
    assert_eq!(wait_terminal(&host, "T1").await, "COMPLETED");
    let correlation = created.body["events"][0]["correlation_id"].as_str().unwrap().to_owned();
    let last = last_position_of_saga(&host, &correlation).await;

    let (_, source) = view(&host, "account-info", "A", last).await;
    assert_eq!(source["balance"], 19500, "{source}");
    let debit = &source["transactions"][1];
    assert_eq!(
        (&debit["kind"], &debit["amount"], &debit["counterparty_account_id"]),
        (&json!("debit"), &json!(5500), &json!("B")),
        "{source}"
    );
    assert_eq!(source["transactions"][0]["kind"], "opened");
    let (_, target) = view(&host, "account-info", "B", last).await;
    assert_eq!(target["balance"], 18000, "{target}");
    let credit = &target["transactions"][1];
    assert_eq!(
        (&credit["kind"], &credit["amount"], &credit["counterparty_account_id"]),
        (&json!("credit"), &json!(5500), &json!("A")),
        "{target}"
    );

    let keys = host.get(&format!("/views/account-info?min_position={last}")).await.expect(200);
    assert_eq!(keys.body["keys"], json!(["A", "B"]));
    assert!(position_of(&keys) >= last);
    let page = host.get("/views/account-info?limit=1").await.expect(200);
    assert_eq!((&page.body["keys"], &page.body["next_after"]), (&json!(["A"]), &json!("A")));
    let rest = host.get("/views/account-info?after=A").await.expect(200);
    assert_eq!(rest.body["keys"], json!(["B"]));

    host.get("/views/account-info/nobody").await.expect_error(404, "document_not_found");
    host.get("/views/no-such-view/A").await.expect_error(404, "unknown_view");
    host.get("/views/account-info/A?min_position=banana").await.expect_error(400, "invalid_query");
    // A position the log will not reach in time: a bounded wait, then 503 with where the view is.
    let behind =
        host.get("/views/account-info/A?min_position=1000000").await.expect_error(503, "view_behind");
    let message = behind.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("reached position {}", head(&host).await)), "{message}");
    assert!(message.contains("after waiting 1000 ms"), "{message}");
    assert_eq!(behind.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    assert!(position_of(&behind) >= last);

    let views = host.get("/views").await.expect(200).body;
    let info = projection(&views, "account-info");
    assert_eq!((info["status"].as_str(), info["lag"].as_u64()), (Some("running"), Some(0)), "{views}");
    assert_eq!(info["documents"], 2);
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn customer_orders_follow_the_order_saga_across_two_aggregate_types() {
    let host = Host::start();
    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 200000}))
        .await
        .expect(200);
    create_order(&host, "o1", "c1", 123400).await;
    assert_eq!(wait_order(&host, "o1").await["state"], "APPROVED");
    create_order(&host, "o2", "c1", 100000).await;
    assert_eq!(wait_order(&host, "o2").await["state"], "REJECTED");
    create_order(&host, "o3", "nobody", 10).await;
    assert_eq!(wait_order(&host, "o3").await["state"], "REJECTED");

    let (_, before) = view(&host, "customer-orders", "c1", head(&host).await).await;
    assert_eq!(
        before,
        json!({"id": "c1", "name": "Fred", "credit_limit": 200000, "available_credit": 200000 - 123400,
               "orders": {"o1": {"state": "APPROVED", "order_total": 123400},
                          "o2": {"state": "REJECTED", "order_total": 100000}}})
    );
    host.get("/views/customer-orders/nobody").await.expect_error(404, "document_not_found");
    // The projection's own index of orders is kept but never served.
    let keys = host.get("/views/customer-orders").await.expect(200);
    assert_eq!(keys.body["keys"], json!(["c1"]));
    host.get("/views/customer-orders/_order%2Fo1").await.expect(404);

    host.command("order", "o1", "CancelOrder", json!({})).await.expect(200);
    eventually("the credit is released", || async {
        host.state("customer", "c1").await["available_credit"] == 200000
    })
    .await;
    let (_, after) = view(&host, "customer-orders", "c1", head(&host).await).await;
    assert_eq!(after["available_credit"], 200000, "{after}");
    assert_eq!(after["orders"]["o1"]["state"], "CANCELLED", "{after}");
    assert_eq!(after["orders"]["o2"]["state"], "REJECTED", "{after}");
}

/// Every served document of a view, once it has caught up with `position`.
async fn documents(host: &Host, projection: &str, position: u64) -> Vec<(String, Value)> {
    let keys = host.get(&format!("/views/{projection}?min_position={position}&limit=1000")).await.expect(200);
    let mut out = Vec::new();
    for key in keys.body["keys"].as_array().unwrap() {
        let key = key.as_str().unwrap();
        out.push((key.to_owned(), view(host, projection, key, position).await.1));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn a_rebuild_gives_the_same_documents_and_readers_keep_the_old_generation_until_it_switches()
{
    // Each rebuild batch waits 1.5 s, so the test can read while the new generation is built.
    let host = Host::start_with_env(&[], &[("CAIRN_FAULTS", "rebuild-stall=1500")]);
    host.open_account("A", 25000).await;
    host.open_account("B", 12500).await;
    transfer(&host, "T1", "A", "B", 5500).await;
    transfer(&host, "T2", "B", "A", 100).await;
    assert_eq!(wait_terminal(&host, "T1").await, "COMPLETED");
    assert_eq!(wait_terminal(&host, "T2").await, "COMPLETED");
    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 200000}))
        .await
        .expect(200);
    create_order(&host, "o1", "c1", 123400).await;
    assert_eq!(wait_order(&host, "o1").await["state"], "APPROVED");
    let at = head(&host).await;

    for name in ["account-info", "customer-orders"] {
        let before = documents(&host, name, at).await;
        assert!(!before.is_empty());
        let generation = projection(&host.get("/views").await.body, name)["generation"].as_u64().unwrap();

        let refused = host.send(host.http.post(format!("{}/views/{name}/rebuild", host.url))).await;
        refused.expect_error(401, "unauthorized");
        let started = host.admin_post(&format!("/views/{name}/rebuild")).await.expect(202);
        assert_eq!(started.body["rebuild"]["generation"].as_u64(), Some(generation + 1), "{}", started.body);

        // While the new generation is built, readers get the old one, whole.
        let views = host.get("/views").await.expect(200).body;
        let status = projection(&views, name);
        assert_eq!(status["status"], "rebuilding", "{views}");
        assert_eq!(status["generation"].as_u64(), Some(generation), "{views}");
        assert!(status["rebuild"]["progress"].as_f64().is_some_and(|p| p < 1.0), "{views}");
        assert_eq!(documents(&host, name, at).await, before);

        eventually("the rebuilt generation is live", || async {
            let views = host.get("/views").await.body;
            let status = projection(&views, name);
            status["status"] == "running" && status["generation"].as_u64() == Some(generation + 1)
        })
        .await;
        assert_eq!(documents(&host, name, at).await, before, "{name} after its rebuild");
    }
    host.admin_post("/views/no-such-view/rebuild").await.expect_error(404, "unknown_view");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_projection_that_traps_is_reported_and_the_host_keeps_serving() {
    let host = Host::start();
    host.open_account("W", 1).await;
    let deployed = host.deploy("fragile-view", cairn_test_guests::FRAGILE_VIEW).await.expect(200);
    assert_eq!(deployed.body["kind"], "projection", "{}", deployed.body);
    let components = host.get("/components").await.expect(200).body;
    let listed = components.as_array().unwrap().iter().find(|c| c["name"] == "fragile-view").unwrap().clone();
    assert_eq!(listed["kind"], "projection");
    // A projection cannot take an aggregate's name, nor the other way round.
    host.deploy("account", cairn_test_guests::FRAGILE_VIEW).await.expect_error(422, "name_mismatch");

    host.open_account("X", 100).await;
    host.command("account", "X", "CreditAccount", json!({"amount": 5, "transaction_id": "t1"}))
        .await
        .expect(200);
    let closed = host.command("account", "X", "CloseAccount", json!({})).await.expect(200);
    let poison = closed.body["events"][0]["position"].as_u64().unwrap();
    host.open_account("Y", 7).await;

    eventually("fragile-view reports its failure", || async {
        projection(&host.get("/views").await.body, "fragile-view")["status"] == "failed"
    })
    .await;
    let views = host.get("/views").await.expect(200).body;
    let fragile = projection(&views, "fragile-view");
    let failure = &fragile["failure"];
    assert_eq!(failure["position"].as_u64(), Some(poison), "{views}");
    assert_eq!(
        (failure["stream"].as_str(), failure["event_type"].as_str()),
        (Some("account/X"), Some("AccountClosed"))
    );
    assert!(
        failure["reason"].as_str().unwrap().contains("fragile-view cannot show a closed account"),
        "{views}"
    );
    assert_eq!(fragile["cursor"].as_u64(), Some(poison - 1), "it handled everything before the event");

    // What it built before the event is served; waiting for a later position answers at
    // once that it has stopped, and why.
    let (position, count) = view(&host, "fragile-view", "X", poison - 1).await;
    assert_eq!((position, count), (poison - 1, json!(2)), "the failing event's own write was taken back");
    let behind = host
        .get(&format!("/views/fragile-view/X?min_position={poison}"))
        .await
        .expect_error(503, "view_behind");
    assert!(behind.body["error"]["message"].as_str().unwrap().contains("AccountClosed"), "{}", behind.body);

    // A new projection sees all of history, also what was committed before its deploy.
    assert_eq!(view(&host, "fragile-view", "W", poison - 1).await.1, json!(1));

    // Everything else goes on: commands, the other projections.
    host.command("account", "Y", "CreditAccount", json!({"amount": 1, "transaction_id": "t2"}))
        .await
        .expect(200);
    let (_, y) = view(&host, "account-info", "Y", head(&host).await).await;
    assert_eq!(y["balance"], 8);

    // A rebuild starts it again, from the beginning; it stops at the same event.
    host.admin_post("/views/fragile-view/rebuild").await.expect(202);
    eventually("the rebuild reaches the same event", || async {
        let views = host.get("/views").await.body;
        let fragile = projection(&views, "fragile-view");
        fragile["rebuild"]["failure"]["position"].as_u64() == Some(poison)
    })
    .await;

    // A fixed version rebuilds the view beside the stopped one and takes over once caught up.
    let fixed = host.deploy("fragile-view", cairn_test_guests::FRAGILE_VIEW_FIXED).await.expect(200);
    assert_eq!((fixed.body["kind"].as_str(), fixed.body["version"].as_u64()), (Some("projection"), Some(2)));
    eventually("the fixed version's view is live", || async {
        let views = host.get("/views").await.body;
        let fragile = projection(&views, "fragile-view");
        fragile["status"] == "running" && fragile["version"] == 2
    })
    .await;
    let (_, count) = view(&host, "fragile-view", "X", head(&host).await).await;
    assert_eq!(count, json!(3), "opened, credited and closed");
}

/// A measurement, not a check (run it by hand in release:
/// `cargo test --release -p cairn --test e2e measure_views -- --ignored --nocapture`):
/// the lag of `account-info` behind the head during a storm of 100 000 credits, and the rate
/// of a rebuild of those events as a ratio to the rate they were appended at.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run it by hand in release"]
async fn measure_views() {
    use crate::harness::answer_of;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    let host = Host::start();
    let accounts = 1000;
    for n in 0..accounts {
        host.open_account(&format!("a{n}"), 0).await;
    }
    let credits = 100_000;
    let clients = 64;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (http, url, done) = (host.http.clone(), host.url.clone(), done.clone());
        tokio::spawn(async move {
            let mut lags = Vec::new();
            while !done.load(Ordering::SeqCst) {
                let views = answer_of(http.get(format!("{url}/views"))).await.body;
                lags.push(projection(&views, "account-info")["lag"].as_u64().unwrap());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            lags
        })
    };
    let head_before = head(&host).await;
    let started = Instant::now();
    let mut writers = Vec::new();
    for client in 0..clients {
        let (http, url) = (host.http.clone(), host.url.clone());
        writers.push(tokio::spawn(async move {
            for n in (client..credits).step_by(clients) {
                let credit = json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("t{n}")}});
                let request = http.post(format!("{url}/aggregates/account/a{}/commands", n % accounts)).json(&credit);
                answer_of(request).await.expect(200);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let append_seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    let mut lags = sampler.await.unwrap();
    lags.sort_unstable();
    let at = head(&host).await;
    let appended = (at - head_before) as f64;
    eprintln!(
        "appended {appended} events in {append_seconds:.2} s ({:.0}/s); account-info lag during the storm: \
         median {} p99 {} worst {} positions ({} samples)",
        appended / append_seconds,
        lags[lags.len() / 2],
        lags[lags.len() * 99 / 100],
        lags[lags.len() - 1],
        lags.len()
    );
    view(&host, "account-info", "a0", at).await;

    let generation =
        projection(&host.get("/views").await.body, "account-info")["generation"].as_u64().unwrap();
    let started = Instant::now();
    host.admin_post("/views/account-info/rebuild").await.expect(202);
    eventually("the rebuild is live", || async {
        projection(&host.get("/views").await.body, "account-info")["generation"].as_u64()
            == Some(generation + 1)
    })
    .await;
    let rebuild_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "rebuilt account-info over {at} events in {rebuild_seconds:.2} s ({:.0}/s): {:.2}x the append rate",
        at as f64 / rebuild_seconds,
        (at as f64 / rebuild_seconds) / (appended / append_seconds)
    );
}
