//! Safe hot swap: a deploy is checked (world, name, describe, a replay of recent streams)
//! before it goes live, a swap under load fails no command, versions can be rolled back and
//! activated, and all of it survives a restart and `kill -9`.

use crate::harness::{Host, answer_of};
use crate::sagas::eventually;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The status of `PUT /components/account` announcing `length` bytes of body and sending
/// only `sent` of them, over a raw socket (an HTTP client would stop at a broken pipe when
/// the host answers before taking the whole body, as it should).
fn raw_put_status(host: &Host, token: Option<&str>, length: usize, sent: usize) -> u16 {
    use std::io::{Read, Write};
    let address = host.url.trim_start_matches("http://").to_owned();
    let mut socket = std::net::TcpStream::connect(&address).unwrap();
    socket.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let authorization = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "PUT /components/account HTTP/1.1\r\nHost: {address}\r\n{authorization}\
         Content-Type: application/wasm\r\nContent-Length: {length}\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).unwrap();
    let mut writer = socket.try_clone().unwrap();
    let body = std::thread::spawn(move || {
        let chunk = vec![0u8; 1 << 20];
        let mut left = sent;
        while left > 0 {
            let n = left.min(chunk.len());
            if writer.write_all(&chunk[..n]).is_err() {
                break; // the host answered and closed: that is the point
            }
            left -= n;
        }
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 256];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = socket.read(&mut buffer).expect("the host answers in time");
        assert!(n > 0, "the host closed without answering");
        answer.extend_from_slice(&buffer[..n]);
    }
    let _ = socket.shutdown(std::net::Shutdown::Both);
    let _ = body.join();
    let status_line = String::from_utf8_lossy(&answer);
    status_line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("a status line")
}

async fn component(host: &Host, name: &str) -> Value {
    let list = host.get("/components").await.expect(200).body;
    list.as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap_or(Value::Null)
}

async fn count(host: &Host, id: &str) -> u64 {
    host.state("faulty", id).await["count"].as_u64().unwrap()
}

async fn increment(host: &Host, id: &str) {
    host.command("faulty", id, "Increment", json!({})).await.expect(200);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_components_are_refused_and_the_running_version_stays() {
    let host = Host::start();
    // The token is checked before the body is read: announcing 40 MiB and sending none of
    // it still gets 401 at once. With the token, more than 32 MiB of body gets 413.
    assert_eq!(raw_put_status(&host, None, 40 << 20, 0), 401);
    assert_eq!(raw_put_status(&host, Some("test-token"), 40 << 20, 33 << 20), 413);
    host.deploy("account", b"not wasm at all").await.expect_error(400, "invalid_component");
    host.deploy("account", b"\0asm\x01\0\0\0").await.expect_error(400, "invalid_component");
    host.deploy("account", b"\0asm\x0d\0\x01\0").await.expect_error(422, "wrong_world");
    host.deploy("account", cairn_artifacts::ORDER).await.expect_error(422, "name_mismatch");
    host.deploy("faulty", cairn_test_guests::HANGING_DESCRIBE).await.expect_error(422, "guest_timeout");
    host.deploy("Bad_Name", cairn_artifacts::ORDER).await.expect_error(400, "invalid_name");
    let account = component(&host, "account").await;
    assert_eq!(
        (account["active_version"].as_u64(), account["versions"].as_array().unwrap().len()),
        (Some(1), 1)
    );
    assert_eq!(component(&host, "faulty").await, Value::Null, "nothing of the refused faulty was kept");
    host.open_account("1", 5).await;
    assert_eq!(host.state("account", "1").await["balance"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compile_beyond_its_time_bound_is_refused() {
    // Its own cache: a component another test compiled would load, not compile.
    let host = Host::start_with_env(&["--compile-timeout-ms", "1"], &[("CAIRN_COMPILED_CACHE", "")]);
    let refused = host.deploy("faulty", cairn_test_guests::FAULTY).await.expect_error(422, "compile_timeout");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("1ms"), "{}", refused.body);
    assert_eq!(component(&host, "faulty").await, Value::Null, "nothing of it was kept");
    host.open_account("1", 5).await;
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn a_changed_rule_is_reported_followed_and_rolled_back_and_versions_survive_kill_9() {
    let mut host = Host::start();
    let first = host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    assert_eq!(first.body["version"], 1);
    let again = host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    assert_eq!(
        (again.body["version"].clone(), again.body["digest"].clone()),
        (json!(1), first.body["digest"].clone())
    );
    for id in ["1", "2"] {
        for _ in 0..3 {
            increment(&host, id).await;
        }
    }

    // A dry run checks everything and activates nothing.
    let dry = host.deploy_with("faulty", "dry_run=true", cairn_test_guests::FAULTY_FIXED).await.expect(200);
    assert_eq!((dry.body["dry_run"].as_bool(), dry.body["active"].as_bool()), (Some(true), Some(false)));
    assert_eq!(
        (dry.body["replay"]["streams"].as_u64(), dry.body["replay"]["changed"].as_u64()),
        (Some(2), Some(2))
    );
    increment(&host, "1").await;
    assert_eq!(count(&host, "1").await, 4, "still the old rule");
    assert_eq!(component(&host, "faulty").await["active_version"], 1);

    // v2 counts in tens: the replay report shows how much it changes, new commands follow it.
    let v2 = host.deploy("faulty", cairn_test_guests::FAULTY_FIXED).await.expect(200);
    assert_eq!((v2.body["version"].as_u64(), v2.body["active"].as_bool()), (Some(2), Some(true)));
    let replay = &v2.body["replay"];
    assert_eq!((replay["streams"].as_u64(), replay["changed"].as_u64()), (Some(2), Some(2)), "{replay}");
    let example = &replay["example"];
    let (before, after) =
        (example["before"]["count"].as_u64().unwrap(), example["after"]["count"].as_u64().unwrap());
    assert_eq!(after, before * 10, "{example}");
    assert_eq!(count(&host, "1").await, 40, "the state is rebuilt with v2");
    increment(&host, "1").await;
    assert_eq!(count(&host, "1").await, 50);

    // 100 events under v2 make a snapshot of v2 (every 100 events by default).
    for _ in 0..100 {
        increment(&host, "long").await;
    }
    assert_eq!(count(&host, "long").await, 1000);

    // Rollback: v1's rule again, rebuilt from events: v2's snapshot is not v1's.
    let rolled = host.admin_post("/components/faulty/rollback").await.expect(200);
    assert_eq!(rolled.body["active_version"], 1);
    assert_eq!(count(&host, "1").await, 5);
    assert_eq!(count(&host, "long").await, 100, "v1 did not start from v2's snapshot");
    increment(&host, "1").await;
    assert_eq!(count(&host, "1").await, 6);
    host.admin_post("/components/faulty/rollback").await.expect_error(409, "nothing_to_roll_back");
    host.admin_post("/components/faulty/activate?version=2").await.expect(200);
    assert_eq!(count(&host, "1").await, 60);
    host.admin_post("/components/faulty/activate?version=9").await.expect_error(404, "unknown_version");
    host.admin_post("/components/nobody/activate?version=1").await.expect_error(404, "unknown_component");
    let unauthorized = host.http.post(format!("{}/components/faulty/rollback", host.url));
    host.send(unauthorized).await.expect_error(401, "unauthorized");
    host.admin_post("/components/faulty/activate?version=1").await.expect(200);

    // Versions, their bytes and the active pointer survive kill -9.
    host.kill9();
    host.start_again();
    let faulty = component(&host, "faulty").await;
    assert_eq!(faulty["active_version"], 1, "{faulty}");
    let versions = faulty["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["replay"]["changed"], 2, "{faulty}");
    assert!(versions[1]["size"].as_u64().unwrap() > 0 && versions[1]["deployed_at"].is_string());
    let bytes = host.http.get(format!("{}/components/faulty/versions/2", host.url)).send().await.unwrap();
    assert_eq!(bytes.headers()["content-type"], "application/wasm");
    assert_eq!(bytes.bytes().await.unwrap().as_ref(), cairn_test_guests::FAULTY_FIXED);
    host.get("/components/faulty/versions/3").await.expect_error(404, "unknown_version");
    assert_eq!(count(&host, "1").await, 6, "v1 again, from the same six events");
}

async fn debit(host: &Host, account: &str, amount: i64) -> String {
    let data = json!({"amount": amount, "transaction_id": format!("d{amount}")});
    let answer = host.command("account", account, "DebitAccount", data).await.expect(200);
    answer.body["events"][0]["type"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_account_v2_grants_an_overdraft_until_it_is_rolled_back() {
    let host = Host::start();
    host.open_account("101", 100).await;
    assert_eq!(debit(&host, "101", 150).await, "AccountDebitFailedDueToInsufficientFunds");
    let v2 = host.deploy("account", cairn_artifacts::ACCOUNT_V2).await.expect(200);
    assert_eq!(v2.body["version"], 2);
    let replay = &v2.body["replay"];
    assert_eq!(
        (replay["streams"].as_u64(), replay["changed"].as_u64()),
        (Some(1), Some(0)),
        "same events, same states"
    );
    assert_eq!(debit(&host, "101", 150).await, "AccountDebited", "v2's overdraft");
    assert_eq!(host.state("account", "101").await["balance"], -50);
    host.admin_post("/components/account/rollback").await.expect(200);
    assert_eq!(debit(&host, "101", 1).await, "AccountDebitFailedDueToInsufficientFunds", "v1's rule again");
    assert_eq!(host.state("account", "101").await["balance"], -50, "v1 reads what v2 wrote");
    let events = host.get("/aggregates/account/101/events").await.expect(200).body["events"].clone();
    let versions: Vec<_> =
        events.as_array().unwrap().iter().map(|e| e["component_version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [1, 1, 2, 1], "each event names the version that decided it");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_replay_sample_is_configurable() {
    let host = Host::start_with(&["--replay-sample", "1"]);
    for id in ["a", "b", "c"] {
        host.open_account(id, 1).await;
    }
    let dry = host.deploy_with("account", "dry_run=true", cairn_artifacts::ACCOUNT_V2).await.expect(200);
    assert_eq!(dry.body["replay"]["streams"], 1, "{}", dry.body);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_traps_on_replay_is_refused_naming_the_stream() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    increment(&host, "7").await;
    let refused =
        host.deploy("faulty", cairn_test_guests::FAULTY_BROKEN).await.expect_error(422, "replay_failed");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("faulty/7") && message.contains("event 1"), "{message}");
    assert!(message.contains("this version cannot fold Incremented"), "the guest's own message: {message}");
    let dry = host.deploy_with("faulty", "dry_run=true", cairn_test_guests::FAULTY_BROKEN).await;
    dry.expect_error(422, "replay_failed");
    assert_eq!(component(&host, "faulty").await["versions"].as_array().unwrap().len(), 1);
    increment(&host, "7").await;
    assert_eq!(count(&host, "7").await, 2, "the running version keeps serving");
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn a_subscriber_deployed_later_reacts_to_new_events_unless_asked_for_history() {
    let host = Host::start();
    host.open_account("a", 0).await;
    for n in 0..100 {
        host.command(
            "account",
            "a",
            "CreditAccount",
            json!({"amount": 1, "transaction_id": format!("old-{n}")}),
        )
        .await
        .expect(200);
    }
    // `faulty` records every credit of account/a on faulty/a; twin would too (on faulty/a).
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    host.deploy_with("twin", "react_from=beginning", cairn_test_guests::TWIN).await.expect(200);
    host.command("account", "a", "CreditAccount", json!({"amount": 1, "transaction_id": "new"}))
        .await
        .expect(200);
    eventually("both to record what they should", || async {
        // faulty/a has no events until the first reaction lands (404 until then).
        let state = host.get("/aggregates/faulty/a").await.body;
        state["state"]["notes"].as_array().map_or(0, |n| n.len()) == 1 + 101
    })
    .await;
    let notes = host.state("faulty", "a").await["notes"].clone();
    let notes: Vec<&str> = notes.as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(
        notes.iter().copied().filter(|n| !n.starts_with("twin:")).collect::<Vec<_>>(),
        ["new"],
        "faulty started now"
    );
    assert_eq!(notes.iter().filter(|n| n.starts_with("twin:old-")).count(), 100, "twin reacted to history");
}

#[tokio::test(flavor = "multi_thread")]
async fn swaps_under_load_fail_no_command_and_apply_each_once() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..8 {
        let (http, url, stop) = (host.http.clone(), host.url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = 0u64;
            let mut failures = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let request = http
                    .post(format!("{url}/aggregates/faulty/c{client}/commands"))
                    .json(&json!({"type": "Increment"}));
                let answer = answer_of(request).await;
                if answer.status == 200 {
                    acknowledged += 1;
                } else {
                    failures.push(answer.body);
                }
            }
            (acknowledged, failures)
        }));
    }
    let mut versions = Vec::new();
    for bytes in [cairn_test_guests::FAULTY_FIXED, cairn_test_guests::FAULTY, cairn_test_guests::FAULTY_FIXED]
    {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        versions.push(host.deploy("faulty", bytes).await.expect(200).body["version"].as_u64().unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    versions.push(
        host.admin_post("/components/faulty/rollback").await.expect(200).body["active_version"]
            .as_u64()
            .unwrap(),
    );
    for bytes in [cairn_test_guests::FAULTY_FIXED, cairn_test_guests::FAULTY] {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        versions.push(host.deploy("faulty", bytes).await.expect(200).body["version"].as_u64().unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(versions, [2, 1, 2, 1, 2, 1], "each deploy of stored bytes gives their version back");
    for (client, task) in clients.into_iter().enumerate() {
        let (acknowledged, failures) = task.await.unwrap();
        assert!(failures.is_empty(), "client {client} saw failures: {failures:?}");
        assert!(acknowledged > 0);
        let stream = host.get(&format!("/aggregates/faulty/c{client}")).await.expect(200);
        assert_eq!(
            stream.body["version"].as_u64(),
            Some(acknowledged),
            "each acknowledged command applied once"
        );
    }
}

/// Figures for the notes, not a test of speed (run it in release:
/// `cargo test --release -p cairn --test e2e measure_swaps -- --ignored --nocapture`):
/// deploy latency of the Account with 10 000 account streams, and the longest command
/// latency of 8 clients with and without swaps in the same run.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run it by hand in release"]
async fn measure_swaps() {
    let host = Host::start();
    let streams = 10_000;
    let mut writers = Vec::new();
    for client in 0..16 {
        let (http, url) = (host.http.clone(), host.url.clone());
        writers.push(tokio::spawn(async move {
            for n in (client..streams).step_by(16) {
                let open = json!({"type": "OpenAccount", "data": {"initial_balance": 100}});
                answer_of(http.post(format!("{url}/aggregates/account/s{n}/commands")).json(&open))
                    .await
                    .expect(200);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    for bytes in [cairn_artifacts::ACCOUNT_V2, cairn_artifacts::ACCOUNT] {
        let started = std::time::Instant::now();
        host.deploy("account", bytes).await.expect(200);
        eprintln!("deploy of account (PUT to active) with {streams} streams: {:?}", started.elapsed());
    }
    for swapping in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for client in 0..8 {
            let (http, url, stop) = (host.http.clone(), host.url.clone(), stop.clone());
            clients.push(tokio::spawn(async move {
                let mut worst = std::time::Duration::ZERO;
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let credit = json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("{swapping}-{n}")}});
                    let started = std::time::Instant::now();
                    let request = http.post(format!("{url}/aggregates/account/s{client}/commands")).json(&credit);
                    answer_of(request).await.expect(200);
                    worst = worst.max(started.elapsed());
                }
                worst
            }));
        }
        for round in 0..6 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if swapping {
                let bytes =
                    if round % 2 == 0 { cairn_artifacts::ACCOUNT_V2 } else { cairn_artifacts::ACCOUNT };
                host.deploy("account", bytes).await.expect(200);
            }
        }
        stop.store(true, Ordering::SeqCst);
        let mut worst = std::time::Duration::ZERO;
        for client in clients {
            worst = worst.max(client.await.unwrap());
        }
        eprintln!("longest command latency of 8 clients over 3 s, swapping={swapping}: {worst:?}");
    }
}

/// An old version can be deleted to reclaim its space, never the active one; its number is
/// not given again, and rollback no longer goes back to it.
#[tokio::test(flavor = "multi_thread")]
async fn an_inactive_version_can_be_deleted_and_its_number_is_not_reused() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    host.deploy("faulty", cairn_test_guests::FAULTY_FIXED).await.expect(200);
    let delete = |version: u32| {
        host.http
            .delete(format!("{}/components/faulty/versions/{version}", host.url))
            .bearer_auth("test-token")
    };
    let unauthorized = host.http.delete(format!("{}/components/faulty/versions/1", host.url));
    host.send(unauthorized).await.expect_error(401, "unauthorized");
    host.send(delete(2)).await.expect_error(409, "version_active");
    host.send(delete(7)).await.expect_error(404, "unknown_version");
    let deleted = host.send(delete(1)).await.expect(200);
    assert_eq!(deleted.body["freed_bytes"], cairn_test_guests::FAULTY.len());

    let components = host.get("/components").await.expect(200).body;
    let faulty = components.as_array().unwrap().iter().find(|c| c["name"] == "faulty").unwrap();
    let versions: Vec<_> =
        faulty["versions"].as_array().unwrap().iter().map(|v| v["version"].clone()).collect();
    assert_eq!(versions, [2]);
    host.get("/components/faulty/versions/1").await.expect_error(404, "unknown_version");
    host.admin_post("/components/faulty/rollback").await.expect_error(409, "nothing_to_roll_back");
    let again = host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    assert_eq!(again.body["version"], 3, "the same bytes come back as a new number");
    host.command("faulty", "1", "Increment", serde_json::json!({})).await.expect(200);
}

/// Activating a stored version or rolling back to one replays recent history through it,
/// as a deploy does: a version that cannot fold what is stored now is refused (the running
/// one stays), unless an operator forces it in an emergency.
#[tokio::test(flavor = "multi_thread")]
async fn activate_and_rollback_run_the_replay_check_unless_forced() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    // The broken fold is stored while no stream has an event it cannot fold.
    host.deploy("faulty", cairn_test_guests::FAULTY_BROKEN).await.expect(200);
    let back = host.admin_post("/components/faulty/activate?version=1").await.expect(200);
    assert_eq!(back.body["active_version"], 1);
    assert_eq!(back.body["replay"]["streams"], 0, "{}", back.body);
    increment(&host, "1").await;
    for path in ["/components/faulty/activate?version=2", "/components/faulty/rollback"] {
        let refused = host.admin_post(path).await.expect_error(422, "replay_failed");
        assert!(refused.body["error"]["message"].as_str().unwrap().contains("faulty/1"), "{}", refused.body);
        assert_eq!(
            component(&host, "faulty").await["active_version"],
            1,
            "{path}: the running version stays"
        );
    }
    increment(&host, "1").await;
    assert_eq!(count(&host, "1").await, 2);
    // Forced: the operator said so.
    let forced = host.admin_post("/components/faulty/activate?version=2&force=true").await.expect(200);
    assert_eq!((forced.body["active_version"].as_u64(), forced.body["replay"].is_null()), (Some(2), true));
}

/// Compiled code is cached for the versions that become active, never for uploads that
/// are only checked (a dry run) or refused.
#[tokio::test(flavor = "multi_thread")]
async fn compiled_code_is_kept_only_for_activated_versions() {
    // Its own cache, in its data directory, so that only its own compilations are counted.
    let host = Host::start_with_env(&[], &[("CAIRN_COMPILED_CACHE", "")]);
    let compiled = |host: &Host| -> usize {
        std::fs::read_dir(host.data_dir().join("compiled"))
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().extension().is_some_and(|e| e == "cwasm"))
            .count()
    };
    // The cache is written in the background: wait until every bundled component is in it,
    // so a late write is not taken for a dry run's.
    let bundled = cairn_artifacts::BUNDLED.len();
    crate::sagas::eventually("the bundled components are cached", || async { compiled(&host) == bundled })
        .await;
    host.deploy_with("faulty", "dry_run=true", cairn_test_guests::FAULTY).await.expect(200);
    host.deploy("account", cairn_artifacts::ORDER).await.expect_error(422, "name_mismatch");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(compiled(&host), bundled, "nothing cached for a dry run or a refusal");
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    crate::sagas::eventually("the activated version is cached", || async { compiled(&host) == bundled + 1 })
        .await;
}
