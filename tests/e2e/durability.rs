//! What a 200 promises: the events are on disk, across graceful restarts and kill -9.

use crate::harness::Host;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_keeps_state() {
    let mut host = Host::start();
    host.open_account("1", 100).await;
    host.command("account", "1", "DebitAccount", json!({"amount": 30, "transaction_id": "t"}))
        .await
        .expect(200);
    host.restart();
    assert_eq!(host.state("account", "1").await["balance"], 70);
    host.command("account", "1", "CreditAccount", json!({"amount": 5, "transaction_id": "u"}))
        .await
        .expect(200);
    let answer = host.get("/aggregates/account/1").await.expect(200);
    assert_eq!(
        (answer.body["version"].as_u64(), answer.body["state"]["balance"].as_i64()),
        (Some(3), Some(75))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_a_200_keeps_the_event() {
    let mut host = Host::start();
    host.open_account("1", 100).await;
    let answer = host
        .command("account", "1", "CreditAccount", json!({"amount": 1, "transaction_id": "t"}))
        .await
        .expect(200);
    let position = answer.body["events"][0]["position"].clone();
    host.kill9();
    host.start_again();
    assert_eq!(host.state("account", "1").await["balance"], 101);
    let log = host.get("/events?after=0").await.expect(200);
    assert_eq!(log.body["events"][1]["position"], position);
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn kill_9_under_load_loses_no_acknowledged_command() {
    let mut host = Host::start();
    for id in 0..8 {
        host.open_account(&id.to_string(), 0).await;
    }
    let mut clients = Vec::new();
    for id in 0..8 {
        let request = host.http.clone();
        let url = host.url.clone();
        clients.push(tokio::spawn(async move {
            let mut acknowledged = 0;
            for n in 0.. {
                let sent = request
                    .post(format!("{url}/aggregates/account/{id}/commands"))
                    .json(&json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("t{n}")}}))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 200 => acknowledged += 1,
                    _ => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    host.kill9();
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.push(client.await.unwrap());
    }
    host.start_again();
    for (id, acked) in acknowledged.iter().enumerate() {
        let balance = host.state("account", &id.to_string()).await["balance"].as_i64().unwrap();
        // An append can be durable without its answer reaching the client, never the reverse.
        assert!(balance >= *acked, "account {id}: {acked} credits acknowledged, balance {balance}");
    }
    assert!(acknowledged.iter().sum::<i64>() > 0, "the load ran");
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn snapshots_and_passivation_rebuild_the_same_state() {
    // Idle actors stop after a second; 250 events cross two snapshots (every 100).
    let mut host = Host::start_with(&["--idle-seconds", "1"]);
    host.open_account("1", 0).await;
    for n in 0..250 {
        host.command(
            "account",
            "1",
            "CreditAccount",
            json!({"amount": 2, "transaction_id": format!("t{n}")}),
        )
        .await
        .expect(200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while host.get("/healthz").await.expect(200).body["live_actors"] != 0 {
        assert!(std::time::Instant::now() < deadline, "the idle actor never passivated");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(host.state("account", "1").await["balance"], 500);
    host.restart();
    let answer = host.get("/aggregates/account/1").await.expect(200);
    assert_eq!(
        (answer.body["version"].as_u64(), answer.body["state"]["balance"].as_i64()),
        (Some(251), Some(500))
    );
    assert_eq!(host.get("/aggregates/account/1?version=101").await.body["state"]["balance"], 200);
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn a_failed_commit_costs_its_commands_an_error_stores_nothing_and_readyz_tells() {
    let host = Host::start_with_env(&[], &[("CAIRN_FAULTS", "commit-fail=account/x")]);
    assert_eq!(host.get("/readyz").await.expect(200).body["status"], "ready");
    host.command("account", "x", "OpenAccount", json!({"initial_balance": 5}))
        .await
        .expect_error(503, "storage_unavailable");
    let not_ready = host.get("/readyz").await.expect_error(503, "not_ready");
    assert!(
        not_ready.body["error"]["message"].as_str().unwrap().contains("last commit failed"),
        "{}",
        not_ready.body
    );
    host.get("/healthz").await.expect(200);
    // Nothing of the failed commit was stored: the same command succeeds as version 1.
    let opened = host.command("account", "x", "OpenAccount", json!({"initial_balance": 5})).await.expect(200);
    assert_eq!(opened.body["version"], 1);
    host.get("/readyz").await.expect(200);
}

/// A stalled fsync holds the writer: the command waiting on it gets an error (its request
/// times out), its events still commit once, a retry with its key answers the first
/// result, and the host goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_commit_costs_its_command_a_timeout_and_loses_nothing() {
    let host = Host::start_with_env(
        &["--request-timeout-ms", "1000"],
        &[("CAIRN_FAULTS", "commit-stall=account/s:3000")],
    );
    let open = || {
        host.command_request("account", "s", "OpenAccount", json!({"initial_balance": 5}))
            .header("idempotency-key", "open-s")
    };
    let started = std::time::Instant::now();
    host.send(open()).await.expect_error(503, "request_timeout");
    assert!(started.elapsed() < std::time::Duration::from_millis(2500), "the timeout did not cut the wait");
    crate::sagas::eventually("the stalled commit to land", || async {
        host.get("/aggregates/account/s").await.status == 200
    })
    .await;
    let retried = host.send(open()).await.expect(200);
    assert_eq!(retried.body["version"], 1, "the retry answers the first result");
    assert_eq!(host.state("account", "s").await["balance"], 5);
    let log = host.get("/aggregates/account/s/events").await.expect(200).body;
    assert_eq!(log["events"].as_array().unwrap().len(), 1, "committed once");
    host.command("account", "s", "CreditAccount", json!({"amount": 1, "transaction_id": "after"}))
        .await
        .expect(200);
    host.open_account("t", 1).await;
    host.get("/readyz").await.expect(200);
}

/// A `CreditAccount` sent from its own task, so the test can act while it waits.
fn credit_in_background(
    host: &Host,
    id: &str,
    amount: i64,
    transaction: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let data = json!({"amount": amount, "transaction_id": transaction});
    tokio::spawn(host.command_request("account", id, "CreditAccount", data).send())
}

/// While one batch of a stream commits, its actor decides the next (pipelining), and a state
/// read answers from the last committed state at once instead of waiting for either. The
/// later command is answered only after the stalled one, with the next version.
#[tokio::test]
async fn a_read_answers_the_committed_state_while_a_commit_stalls_and_later_commands_queue_behind() {
    // The stream's second append (the first credit) stalls for 3 s.
    let host = Host::start_with_env(&[], &[("CAIRN_FAULTS", "commit-stall=account/p:3000:1")]);
    host.open_account("p", 10).await;
    let stalled = credit_in_background(&host, "p", 5, "stalled");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let behind = credit_in_background(&host, "p", 7, "behind");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let read = host.get("/aggregates/account/p").await.expect(200);
    assert!(!stalled.is_finished(), "the read waited for the stalled commit");
    assert_eq!(read.body["version"], 1, "the read sees what is committed: {}", read.body);
    assert_eq!(read.body["state"]["balance"], 10);
    assert!(!behind.is_finished(), "the later credit was answered before the one it follows committed");

    let stalled: serde_json::Value =
        stalled.await.unwrap().unwrap().error_for_status().unwrap().json().await.unwrap();
    let behind: serde_json::Value =
        behind.await.unwrap().unwrap().error_for_status().unwrap().json().await.unwrap();
    assert_eq!((stalled["version"].as_u64(), behind["version"].as_u64()), (Some(2), Some(3)));
    let now = host.get("/aggregates/account/p").await.expect(200);
    assert_eq!((now.body["version"].as_u64(), now.body["state"]["balance"].as_i64()), (Some(3), Some(22)));
}

/// A command decided while the batch before it was committing counted on that batch: when
/// that commit fails, the later command fails too (nothing of either is stored, and the
/// later one is not mistaken for a version conflict), the actor rebuilds its state from the
/// log, and the next command is decided on what is really there.
#[tokio::test]
async fn when_a_commit_fails_the_commands_decided_behind_it_fail_too_and_nothing_is_stored() {
    // The stream's second append (the first credit) stalls for 1.5 s, then fails.
    let host = Host::start_with_env(
        &[],
        &[("CAIRN_FAULTS", "commit-stall=account/f:1500:1,commit-fail=account/f:1")],
    );
    host.open_account("f", 10).await;
    let failing = credit_in_background(&host, "f", 5, "failing");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let behind = credit_in_background(&host, "f", 7, "behind");

    for answer in [failing.await.unwrap().unwrap(), behind.await.unwrap().unwrap()] {
        let status = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("storage_unavailable")), "{body}");
    }
    let log = host.get("/aggregates/account/f/events").await.expect(200).body;
    assert_eq!(log["events"].as_array().unwrap().len(), 1, "only the opening is stored: {log}");
    let after = host
        .command("account", "f", "CreditAccount", json!({"amount": 1, "transaction_id": "after"}))
        .await
        .expect(200);
    assert_eq!(after.body["version"], 2);
    assert_eq!(host.state("account", "f").await["balance"], 11);
}

/// An actor that panics while a batch of its stream is still committing: that batch lands
/// anyway, and the stream's next actor waits for it before it builds the state, so a later
/// command without `If-Match` is decided on what is really there, never refused as a 409.
#[tokio::test]
async fn after_an_actor_panics_mid_commit_the_next_command_is_decided_on_the_landed_state() {
    // The stream's second append (the first credit) stalls 1.5 s; the CloseAccount decided
    // behind it panics the actor meanwhile.
    let host = Host::start_with_env(
        &[],
        &[("CAIRN_FAULTS", "commit-stall=account/p:1500:1,actor-panic=CloseAccount")],
    );
    host.open_account("p", 10).await;
    let stalled = credit_in_background(&host, "p", 5, "stalled");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    host.command("account", "p", "CloseAccount", json!({})).await.expect_error(500, "internal_error");
    let after = host
        .command("account", "p", "CreditAccount", json!({"amount": 1, "transaction_id": "after"}))
        .await
        .expect(200);
    assert_eq!(after.body["version"], 3, "decided after the stalled credit landed: {}", after.body);
    assert_eq!(host.state("account", "p").await["balance"], 16);
    // The stalled credit's caller lost its answer with the actor; its events are stored once.
    let _ = stalled.await.unwrap();
    let log = host.get("/aggregates/account/p/events").await.expect(200).body;
    assert_eq!(log["events"].as_array().unwrap().len(), 3, "{log}");
}

/// The disk refuses the writes of one group commit, as a failing device would. redb then
/// refuses every operation on the file until it is opened again: the writer opens it again
/// by itself, the commands of that commit are told they were not stored (and are not), the
/// rest go on, `/readyz` says when and for how long, and nothing acknowledged is lost, also
/// across a SIGKILL.
#[tokio::test(flavor = "multi_thread")]
async fn an_io_error_is_recovered_without_a_restart_and_nothing_acknowledged_is_lost() {
    let mut host = Host::start_with_env(&[], &[("CAIRN_FAULTS", "io-error=account/x:3")]);
    for id in ["x", "y", "z"] {
        host.open_account(id, 0).await;
    }
    let mut credits = Vec::new();
    for n in 0..60 {
        let (http, url) = (host.http.clone(), host.url.clone());
        let account = ["x", "y", "z"][n % 3];
        credits.push(tokio::spawn(async move {
            let credit =
                json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("c{n}")}});
            let answer = crate::harness::answer_of(
                http.post(format!("{url}/aggregates/account/{account}/commands")).json(&credit),
            )
            .await;
            (account, format!("c{n}"), answer)
        }));
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut acknowledged = std::collections::HashMap::<&str, Vec<String>>::new();
    let mut refused = Vec::new();
    for credit in credits {
        let (account, transaction, answer) = credit.await.unwrap();
        match answer.status.as_u16() {
            200 => acknowledged.entry(account).or_default().push(transaction),
            503 => {
                assert_eq!(answer.code(), "storage_unavailable", "{}", answer.body);
                assert!(
                    answer.body["error"]["message"].as_str().unwrap().contains("not stored"),
                    "{}",
                    answer.body
                );
                refused.push(transaction);
            }
            other => panic!("{other}: {}", answer.body),
        }
    }
    assert!(!refused.is_empty(), "the injected failure cost some commands an error");
    // The host goes on without a restart, and says what happened.
    host.command("account", "x", "CreditAccount", json!({"amount": 1, "transaction_id": "after"}))
        .await
        .expect(200);
    acknowledged.entry("x").or_default().push("after".to_owned());
    check_views_follow(&host, &["x", "y", "z"]).await;
    let ready = host.get("/readyz").await.expect(200);
    let reopened = &ready.body["store_reopened"];
    assert!(reopened["error"].as_str().unwrap().contains("io-error"), "{}", ready.body);
    assert!(reopened["reopened_at"].is_string() && reopened["unavailable_ms"].is_u64(), "{}", ready.body);
    check_credits(&host, &acknowledged, &refused).await;
    host.kill9();
    host.start_again();
    check_credits(&host, &acknowledged, &refused).await;
}

/// An fsync fails on a commit whose header reached the file, as a device that loses its
/// cache would report. The kernel may have dropped pages it had not written, so the host
/// neither acknowledges that commit (its caller is told the outcome is unknown) nor reads or
/// writes anything more on the file: every later command is refused as not stored, reads
/// are refused, and `/readyz` says a restart is needed. The restart writes the file anew,
/// then the retry with the same `Idempotency-Key` answers what happened, and commands go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_fsync_of_a_landed_commit_stops_the_writes_until_a_restart() {
    let mut host = Host::start_with_env(&[], &[("CAIRN_FAULTS", "fsync-error=account/f:1")]);
    host.open_account("f", 0).await;
    host.open_account("g", 0).await;
    let credit = |transaction: &str| json!({"amount": 7, "transaction_id": transaction});
    let keyed = |host: &Host| {
        host.command_request("account", "f", "CreditAccount", credit("t1"))
            .header("Idempotency-Key", "fsync-1")
    };
    let unknown = host.send(keyed(&host)).await.expect_error(503, "outcome_unknown");
    assert!(
        unknown.body["error"]["message"].as_str().unwrap().contains("Idempotency-Key"),
        "{}",
        unknown.body
    );
    // Nothing more is written on this file, to any stream.
    let refused = host.command("account", "g", "CreditAccount", credit("t2")).await;
    let refused = refused.expect_error(503, "storage_unavailable");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("restart"), "{}", refused.body);
    let ready = host.get("/readyz").await.expect_error(503, "not_ready");
    assert!(ready.body["error"]["message"].as_str().unwrap().contains("restarts"), "{}", ready.body);
    // Nothing of that commit is shown before the restart: not its state, not its keyed answer.
    let read = host.get("/aggregates/account/f").await;
    assert!(read.status == 503 || read.body["state"]["balance"] == 0, "{} {}", read.status, read.body);
    host.send(keyed(&host)).await.expect_error(503, "storage_unavailable");
    host.get("/aggregates/account/f/events").await.expect_error(503, "storage_unavailable");

    host.kill9();
    let marker = host.data_dir().join("events.redb.sealed");
    assert!(marker.exists(), "the next start is told to write the file anew");
    host.set_env(&[]);
    host.start_again();
    assert!(!marker.exists());
    host.get("/readyz").await.expect(200);
    // The commit had landed: the retry answers it, and the credit is there once.
    let retried = host.send(keyed(&host)).await.expect(200);
    assert_eq!(retried.body["version"], 2, "{}", retried.body);
    assert_eq!(host.state("account", "f").await["balance"], 7);
    host.command("account", "g", "CreditAccount", credit("t2")).await.expect(200);
    assert_eq!(host.state("account", "g").await["balance"], 7);
}

/// The views equal the aggregates: a view commit the injected failure took back (or the
/// reopen of the view store) cost no event.
async fn check_views_follow(host: &Host, accounts: &[&str]) {
    let head = host.get("/healthz").await.body["head_position"].as_u64().unwrap();
    for account in accounts {
        let view = host.get(&format!("/views/account-info/{account}?min_position={head}")).await.expect(200);
        assert_eq!(view.body["balance"], host.state("account", account).await["balance"], "{account}");
    }
}

/// Every acknowledged credit is stored, no refused one is, and balances add up.
async fn check_credits(
    host: &Host,
    acknowledged: &std::collections::HashMap<&str, Vec<String>>,
    refused: &[String],
) {
    for (account, transactions) in acknowledged {
        let events = host.get(&format!("/aggregates/account/{account}/events?limit=1000")).await.expect(200);
        let stored: Vec<String> = events.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["data"]["transaction_id"].as_str().map(str::to_owned))
            .collect();
        for transaction in transactions {
            assert!(stored.contains(transaction), "{account}: acknowledged {transaction} is stored");
        }
        for transaction in refused {
            assert!(!stored.contains(transaction), "{account}: refused {transaction} is not stored");
        }
        assert_eq!(host.state("account", account).await["balance"], transactions.len() as i64);
    }
}
