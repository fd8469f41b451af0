//! Trust boundaries, tried as an outside caller would: a client cannot send a saga its own
//! steps, an event a client caused never moves a saga, a page of another site cannot change
//! the host, and an idempotency key answers only the command it came with.

use crate::harness::{Answer, Host};
use crate::sagas::{balance, eventually, transfer, wait_terminal};
use serde_json::{Value, json};
use std::process::Command;

/// Every saga step of the bundled examples, with data that would decode.
fn saga_steps() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("money-transfer", "RecordDebit", json!({})),
        ("money-transfer", "RecordDebitFailed", json!({})),
        ("money-transfer", "RecordCredit", json!({"account_id": "r"})),
        ("order", "ApproveOrder", json!({})),
        ("order", "RejectOrder", json!({"rejection_reason": "INSUFFICIENT_CREDIT"})),
        ("customer", "ReserveCredit", json!({"order_id": "o1", "order_total": 1})),
        ("customer", "ReleaseCredit", json!({"order_id": "o1"})),
    ]
}

fn event_types(answer: &Answer) -> Vec<String> {
    answer.body["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_cannot_send_a_sagas_own_steps_and_the_issue_s_attack_moves_no_money() {
    let host = Host::start();
    host.open_account("e", 0).await;
    host.open_account("r", 0).await;
    // The attack of the issue: a transfer from an empty account, and its own step sent at once.
    let create = host.command_request(
        "money-transfer",
        "t1",
        "CreateMoneyTransfer",
        json!({"from_account_id": "e", "to_account_id": "r", "amount": 100000}),
    );
    let forged = host.command_request("money-transfer", "t1", "RecordDebit", json!({}));
    let (created, refused) = tokio::join!(host.send(create), host.send(forged));
    created.expect(200);
    let refused = refused.expect_error(403, "internal_command");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("RecordDebit"), "{}", refused.body);
    assert_eq!(wait_terminal(&host, "t1").await, "FAILED_DUE_TO_INSUFFICIENT_FUNDS");
    assert_eq!((balance(&host, "e").await, balance(&host, "r").await), (0, 0));

    host.command("customer", "c1", "CreateCustomer", json!({"name": "Fred", "credit_limit": 100}))
        .await
        .expect(200);
    host.command("order", "o1", "CreateOrder", json!({"customer_id": "c1", "order_total": 150}))
        .await
        .expect(200);
    for (type_name, command, data) in saga_steps() {
        let id = match type_name {
            "money-transfer" => "t1",
            "order" => "o1",
            _ => "c1",
        };
        let answer =
            host.command(type_name, id, command, data.clone()).await.expect_error(403, "internal_command");
        assert!(answer.body["error"]["message"].as_str().unwrap().contains(command), "{}", answer.body);
        // A new id, an idempotency key: refused all the same, and the key is not spent.
        let keyed = host.command_request(type_name, id, command, data.clone()).header("Idempotency-Key", "k");
        host.send(keyed).await.expect_error(403, "internal_command");
        let new_id = host
            .http
            .post(format!("{}/aggregates/{type_name}/commands", host.url))
            .json(&json!({"type": command, "data": data}));
        host.send(new_id).await.expect_error(403, "internal_command");
    }
    eventually("the order is decided", || async { host.state("order", "o1").await["state"] != "PENDING" })
        .await;
    let order = host.state("order", "o1").await;
    assert_eq!(
        (order["state"].as_str(), order["rejection_reason"].as_str()),
        (Some("REJECTED"), Some("INSUFFICIENT_CREDIT"))
    );
    assert_eq!(host.state("customer", "c1").await["available_credit"], 100);
    let transfer_events = host.get("/aggregates/money-transfer/t1/events").await.expect(200);
    assert_eq!(
        event_types(&transfer_events),
        ["MoneyTransferCreated", "MoneyTransferFailedDueToInsufficientFunds"]
    );
    // The key the refused steps carried was never recorded: it still works for a real command.
    let keyed =
        host.command_request("account", "r", "CreditAccount", json!({"amount": 1, "transaction_id": "x"}));
    host.send(keyed.header("Idempotency-Key", "k")).await.expect(200);

    // The CLI says the same, as a refusal (exit 1).
    let cli = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["send", "money-transfer", "t1", r#"{"type":"RecordDebit"}"#, "--url", &host.url])
        .output()
        .unwrap();
    assert_eq!(cli.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&cli.stderr).contains("[internal_command, HTTP 403]"), "{cli:?}");

    // What `/routing` says about the sagas' subscriptions.
    let routing = host.get("/routing").await.expect(200);
    let transfer = routing.body["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "money-transfer")
        .unwrap();
    assert_eq!(transfer["subscriptions"][0]["replies_only"], true, "{transfer}");
}

/// The storm of the issue: real transfers, and beside them forged steps and account
/// movements that name the transfers. The transfers end where their own debits say, and
/// money is only what the clients' own movements made it. Every real debit (of a source
/// account, `account/s…`) is held 800 ms, so each forged movement lands while its transfer
/// is still `NEW`, waiting for that debit: where a forgery could move a transfer, it would.
#[tokio::test(flavor = "multi_thread")]
async fn forged_steps_and_transfer_ids_under_a_storm_of_real_transfers_change_nothing() {
    let host = Host::start_with_env(&[], &[("CAIRN_FAULTS", "actor-stall=DebitAccount@account/s:800")]);
    const N: usize = 30;
    const RICH: i64 = 1_000_000;
    let ids: Vec<(String, i64)> =
        (0..N).flat_map(|i| [(format!("s{i}"), 1000), (format!("r{i}"), 0)]).collect();
    futures_util::future::join_all(ids.iter().map(|(id, balance)| host.open_account(id, *balance))).await;
    host.open_account("zero", 0).await;
    host.open_account("rich", RICH).await;

    let mut work = Vec::new();
    for i in 0..N {
        let host = &host;
        work.push(Box::pin(async move {
            // Even transfers fit the source's balance, odd ones do not.
            let amount = if i % 2 == 0 { 600 } else { 1500 };
            transfer(host, &format!("t{i}"), &format!("s{i}"), &format!("r{i}"), amount).await;
        }) as futures_util::future::BoxFuture<'_, ()>);
        work.push(Box::pin(async move {
            let id = format!("t{i}");
            // The transfer exists (its creation was sent first) and waits for its debit.
            eventually("the transfer is created", || async {
                host.get(&format!("/aggregates/money-transfer/{id}")).await.status == 200
            })
            .await;
            for (command, data) in [
                ("RecordDebit", json!({})),
                ("RecordDebitFailed", json!({})),
                ("RecordCredit", json!({"account_id": format!("r{i}")})),
            ] {
                host.command("money-transfer", &id, command, data).await.expect_error(403, "internal_command");
            }
            // An empty account "fails" the transfer's debit; a rich one "makes" it; the target
            // "is credited": each names the transfer, none was caused by it.
            let named = |amount: i64, n: &str| {
                json!({"amount": amount, "transaction_id": format!("forged-{n}-{i}"), "transfer_id": id, "counterparty_account_id": format!("r{i}")})
            };
            host.command("account", "zero", "DebitAccount", named(1, "fail")).await.expect(200);
            host.command("account", "rich", "DebitAccount", named(1, "debit")).await.expect(200);
        }) as futures_util::future::BoxFuture<'_, ()>);
    }
    futures_util::future::join_all(work).await;

    let mut total = 0;
    for i in 0..N {
        let expected = if i % 2 == 0 { "COMPLETED" } else { "FAILED_DUE_TO_INSUFFICIENT_FUNDS" };
        assert_eq!(wait_terminal(&host, &format!("t{i}")).await, expected, "t{i}");
        let (source, target) =
            (balance(&host, &format!("s{i}")).await, balance(&host, &format!("r{i}")).await);
        assert_eq!((source, target), if i % 2 == 0 { (400, 600) } else { (1000, 0) }, "s{i}, r{i}");
        total += source + target;
    }
    assert_eq!(total, N as i64 * 1000, "no money from nothing");
    assert_eq!(balance(&host, "zero").await, 0);
    assert_eq!(balance(&host, "rich").await, RICH - N as i64, "only the clients' own debits");
    for i in (0..N).step_by(7) {
        let events = host.get(&format!("/aggregates/money-transfer/t{i}/events")).await.expect(200);
        let expected: &[&str] = if i % 2 == 0 {
            &["MoneyTransferCreated", "MoneyTransferDebitRecorded", "MoneyTransferCompleted"]
        } else {
            &["MoneyTransferCreated", "MoneyTransferFailedDueToInsufficientFunds"]
        };
        assert_eq!(event_types(&events), expected, "t{i}");
    }
    let dead = host.get("/routing/dead-letters").await.expect(200);
    assert_eq!(dead.body["dead_letters"], json!([]));
}

/// A reaction of another component sends a transfer's step: the transfer refuses it (only
/// account events may cause it) and the refusal comes back to the sender, which refunds.
#[tokio::test(flavor = "multi_thread")]
async fn an_internal_command_routed_from_another_source_is_handed_back() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    host.open_account("payer", 500).await;
    host.open_account("e", 0).await;
    transfer(&host, "tx", "e", "payer", 100).await;
    let pay = json!({
        "from_account_id": "payer", "to_type": "money-transfer", "to_id": "tx", "amount": 200,
        "credit_command": "RecordDebit",
    });
    host.command("faulty", "p1", "Pay", pay).await.expect(200);
    eventually("the payment is refunded", || async {
        host.state("faulty", "p1").await["payment"]["failed"].is_string()
            && balance(&host, "payer").await == 500
    })
    .await;
    assert_eq!(host.state("faulty", "p1").await["payment"]["failed"], "internal_command");
    assert_eq!(wait_terminal(&host, "tx").await, "FAILED_DUE_TO_INSUFFICIENT_FUNDS");
    let events = host.get("/aggregates/money-transfer/tx/events").await.expect(200);
    assert!(!event_types(&events).contains(&"MoneyTransferDebitRecorded".to_owned()));
}

/// A command routed to a type nobody deployed is handed back and compensated; the refusal is
/// recorded in the target's place, so when the type is deployed later and the subscriber
/// delivers history again, the command is not applied after its source compensated.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_back_for_an_undeployed_type_stays_the_answer_after_the_type_is_deployed() {
    let host = Host::start_with(&["--examples", "none"]);
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    let pay = json!({
        "from_account_id": "a", "to_type": "account", "to_id": "b", "amount": 10,
        "credit_command": "CreditAccount",
    });
    host.command("faulty", "p1", "Pay", pay).await.expect(200);
    eventually("the payment fails", || async {
        host.state("faulty", "p1").await["payment"]["failed"] == "unknown_type"
    })
    .await;
    eventually("every leg is handed back", || async {
        host.get("/routing").await.body["subscribers"][0]["handed_back"].as_u64() >= Some(3)
    })
    .await;
    host.deploy("account", cairn_artifacts::ACCOUNT).await.expect(200);
    host.open_account("a", 0).await;
    host.open_account("b", 0).await;
    host.admin_post("/routing/faulty/rewind?to=0").await.expect(200);
    eventually("the rewound subscriber caught up", || async {
        let routing = host.get("/routing").await;
        let faulty = &routing.body["subscribers"][0];
        faulty["lag"] == 0 && faulty["in_flight"] == 0
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for account in ["a", "b"] {
        let events = host.get(&format!("/aggregates/account/{account}/events")).await.expect(200);
        assert_eq!(
            event_types(&events),
            ["AccountOpened"],
            "account {account}: nothing applied after the compensation"
        );
    }
}

/// A raw HTTP/1.1 request, for headers reqwest sets itself (`Host`).
pub(crate) async fn raw_request(url: &str, request: &str) -> String {
    let (address, request) = (url.trim_start_matches("http://").to_owned(), request.to_owned());
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_posts_and_rebound_names_are_refused_and_plain_clients_are_not() {
    let host = Host::start();
    let own = host.url.trim_start_matches("http://").to_owned();
    let command = r#"{"type":"OpenAccount","data":{"initial_balance":100}}"#;
    // A page of another site posting text/plain (no CORS preflight): refused, nothing stored.
    let cross_site = host
        .http
        .post(format!("{}/aggregates/account/victim/commands", host.url))
        .header("Origin", "http://evil.example")
        .header("Content-Type", "text/plain")
        .body(command);
    host.send(cross_site).await.expect_error(403, "origin_not_allowed");
    host.get("/aggregates/account/victim").await.expect_error(404, "stream_not_found");
    // Before the token is checked and the body read, and for a null origin too.
    let deploy = host
        .http
        .put(format!("{}/components/account", host.url))
        .header("Origin", "null")
        .bearer_auth("test-token")
        .body(cairn_artifacts::ACCOUNT_V2.to_vec());
    host.send(deploy).await.expect_error(403, "origin_not_allowed");
    // A rebound name: refused for reads and writes, in the JSON shape.
    let rebound = raw_request(
        &host.url,
        "GET /aggregates/account/victim HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    assert!(rebound.contains(r#""code":"host_not_allowed""#), "{rebound}");
    let rebound_post = raw_request(
        &host.url,
        &format!(
            "POST /aggregates/account/victim/commands HTTP/1.1\r\nHost: rebind.example:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{command}",
            own.rsplit(':').next().unwrap(),
            command.len()
        ),
    )
    .await;
    assert!(rebound_post.starts_with("HTTP/1.1 421"), "{rebound_post}");
    host.get("/aggregates/account/victim").await.expect_error(404, "stream_not_found");
    // curl -d: no Origin, form content type: works as always; so does the host's own page.
    let plain = raw_request(
        &host.url,
        &format!(
            "POST /aggregates/account/plain/commands HTTP/1.1\r\nHost: {own}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{command}",
            command.len()
        ),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 200"), "{plain}");
    let localhost = raw_request(
        &host.url,
        &format!(
            "GET /aggregates/account/plain HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            own.rsplit(':').next().unwrap()
        ),
    )
    .await;
    assert!(localhost.starts_with("HTTP/1.1 200"), "{localhost}");
    let same_origin = host
        .http
        .post(format!("{}/aggregates/account/own/commands", host.url))
        .header("Origin", &host.url)
        .header("Content-Type", "text/plain")
        .body(command);
    host.send(same_origin).await.expect(200);
    assert!(
        host.get("/healthz").await.expect(200).headers.get("access-control-allow-origin").is_none(),
        "no CORS grant by default"
    );

    // Configured names and origins.
    let configured =
        Host::start_with(&["--allowed-host", "cairn.test", "--allowed-origin", "https://console.example"]);
    let port = configured.url.rsplit(':').next().unwrap().to_owned();
    let named = raw_request(
        &configured.url,
        &format!("GET /healthz HTTP/1.1\r\nHost: cairn.test:{port}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(named.starts_with("HTTP/1.1 200"), "{named}");
    let preflight = configured
        .http
        .request(reqwest::Method::OPTIONS, format!("{}/aggregates/account/x/commands", configured.url))
        .header("Origin", "https://console.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type,idempotency-key");
    let preflight = configured.send(preflight).await;
    assert!(preflight.status.is_success(), "{}", preflight.status);
    assert_eq!(preflight.headers["access-control-allow-origin"], "https://console.example");
    let allowed = configured
        .http
        .post(format!("{}/aggregates/account/x/commands", configured.url))
        .header("Origin", "https://console.example")
        .header("Content-Type", "application/json")
        .body(command);
    let allowed = configured.send(allowed).await.expect(200);
    assert_eq!(allowed.headers["access-control-allow-origin"], "https://console.example");
    let other = configured
        .http
        .post(format!("{}/aggregates/account/y/commands", configured.url))
        .header("Origin", "https://other.example")
        .body(command);
    configured.send(other).await.expect_error(403, "origin_not_allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_answers_only_the_command_it_came_with() {
    let host = Host::start();
    host.open_account("a", 100).await;
    let keyed = |key: &str, body: &str| {
        host.http
            .post(format!("{}/aggregates/account/a/commands", host.url))
            .header("Idempotency-Key", key)
            .header("Content-Type", "application/json")
            .body(body.to_owned())
    };
    let credit = r#"{"type":"CreditAccount","data":{"amount":5,"transaction_id":"t1"}}"#;
    let first = host.send(keyed("k1", credit)).await.expect(200);
    assert_eq!(first.body["version"], 2);
    // The same command with its fields in another order is the same command.
    let reordered = r#"{"data":{"transaction_id":"t1","amount":5},"type":"CreditAccount"}"#;
    let again = host.send(keyed("k1", reordered)).await.expect(200);
    assert_eq!(again.body, first.body);
    // Another amount, another type: refused, and nothing stored.
    let other = r#"{"type":"CreditAccount","data":{"amount":6,"transaction_id":"t1"}}"#;
    host.send(keyed("k1", other)).await.expect_error(422, "idempotency_key_reused");
    host.send(keyed("k1", r#"{"type":"CloseAccount"}"#)).await.expect_error(422, "idempotency_key_reused");
    assert_eq!(balance(&host, "a").await, 105);
    // The same key twice in one batch with two commands: the second is refused.
    let (one, two) = tokio::join!(
        host.send(keyed("k2", r#"{"type":"CreditAccount","data":{"amount":1,"transaction_id":"t2"}}"#)),
        host.send(keyed("k2", r#"{"type":"CreditAccount","data":{"amount":2,"transaction_id":"t2"}}"#)),
    );
    let statuses = [one.status.as_u16(), two.status.as_u16()];
    assert!(statuses.contains(&200) && statuses.contains(&422), "{statuses:?}");
    // A malformed command is not the key's answer: fixed, the same key goes through.
    let malformed = r#"{"type":"CreditAccount","data":{"amount":"five","transaction_id":"t3"}}"#;
    host.send(keyed("k3", malformed)).await.expect_error(400, "invalid_command");
    host.send(keyed("k3", r#"{"type":"CreditAcount","data":{}}"#)).await.expect_error(400, "unknown_command");
    let fixed = r#"{"type":"CreditAccount","data":{"amount":7,"transaction_id":"t3"}}"#;
    host.send(keyed("k3", fixed)).await.expect(200);
    // A business rejection is the key's answer, and stays bound to its command.
    let reopen = r#"{"type":"OpenAccount","data":{"initial_balance":1}}"#;
    host.send(keyed("k4", reopen)).await.expect_error(422, "account_already_open");
    host.send(keyed("k4", reopen)).await.expect_error(422, "account_already_open");
    host.send(keyed("k4", fixed)).await.expect_error(422, "idempotency_key_reused");
    let credited = if statuses[0] == 200 { 1 } else { 2 };
    assert_eq!(balance(&host, "a").await, 105 + credited + 7);
}
