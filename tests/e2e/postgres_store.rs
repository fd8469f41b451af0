//! What only the PostgreSQL store has to show: a database that cannot be reached or was
//! written by a newer Cairn stops the start with one clear line, a PostgreSQL crash and
//! restart under load loses nothing acknowledged and the host serves again by itself, and
//! readers following the log never see a position out of order.

use crate::harness::{Host, answer_of};
use crate::postgres;
use crate::sagas::eventually;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `cairn serve --store url` on a fresh data directory: how it exited and what it said.
fn serve_until_exit(url: &str) -> (Option<i32>, String) {
    serve_until_exit_with(&["--store", url])
}

/// Run `cairn serve` with `args` on a fresh data directory until it exits: its exit code and
/// what it wrote to stderr.
pub(crate) fn serve_until_exit_with(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--data")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A debug build compiles every bundled component before it opens the store: on a loaded
    // two-core machine that alone has taken more than 30 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("cairn serve did not exit within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn an_unreachable_database_stops_the_start_with_one_line_naming_it_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (code, stderr) = serve_until_exit(&format!("postgres://cairn:hunter2@127.0.0.1:{port}/cairn"));
    assert_eq!(code, Some(1), "{stderr}");
    let error = stderr.lines().find(|l| l.contains("cannot connect")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(error.contains(&format!("postgres://cairn:***@127.0.0.1:{port}/cairn")), "{stderr}");
    assert!(error.contains("refused"), "the reason shows: {stderr}");
    assert!(!stderr.contains("hunter2"), "the password shows: {stderr}");
    let (code, stderr) = serve_until_exit("mysql://nowhere");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not a PostgreSQL URL"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_written_by_a_newer_cairn_is_refused_and_nothing_is_changed() {
    let url = postgres::fresh_database();
    let mut host = Host::start_with(&["--store", &url]);
    host.open_account("a", 10).await;
    host.stop();
    let current = postgres::query_text(&url, "SELECT version FROM cairn.schema_version").unwrap();
    postgres::execute(&url, "UPDATE cairn.schema_version SET version = 999");
    let (code, stderr) = serve_until_exit(&url);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("version 999, newer than this Cairn's"), "{stderr}");
    assert_eq!(
        postgres::query_text(&url, "SELECT version FROM cairn.schema_version").as_deref(),
        Some("999"),
        "the refused start changed nothing"
    );
    postgres::execute(&url, &format!("UPDATE cairn.schema_version SET version = {current}"));
    host.start_again();
    assert_eq!(host.state("account", "a").await["balance"], 10);
}

/// Credits to `accounts`, each retried with its own Idempotency-Key until it is answered
/// 200; what each answered first.
struct Ledger {
    acknowledged: BTreeMap<String, (u64, i64)>,
    refused: u64,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_crash_and_restart_under_load_loses_nothing_acknowledged_and_the_host_recovers_by_itself()
{
    let server = postgres::own_server();
    let url = server.fresh_database();
    let host = Host::start_with(&["--store", &url, "--request-timeout-ms", "20000"]);
    const ACCOUNTS: u64 = 8;
    for account in 0..ACCOUNTS {
        host.open_account(&account.to_string(), 0).await;
    }
    let ledger = Arc::new(Mutex::new(Ledger { acknowledged: BTreeMap::new(), refused: 0 }));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for client in 0..16u64 {
        let (http, url, ledger, stop) = (host.http.clone(), host.url.clone(), ledger.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let key = format!("k{client}-{n}");
                let account = (client + n) % ACCOUNTS;
                let amount = 1 + (n % 7) as i64;
                let body =
                    json!({"type": "CreditAccount", "data": {"amount": amount, "transaction_id": key}});
                // Retried with the same key until it is answered: exactly once, whatever failed.
                loop {
                    let request = http
                        .post(format!("{url}/aggregates/account/{account}/commands"))
                        .header("idempotency-key", &key)
                        .json(&body);
                    let answer = answer_of(request).await;
                    match answer.status.as_u16() {
                        200 => {
                            ledger.lock().unwrap().acknowledged.insert(key.clone(), (account, amount));
                            break;
                        }
                        503 | 429 => {
                            ledger.lock().unwrap().refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        other => panic!("unexpected {other}: {}", answer.body),
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acknowledged_before = ledger.lock().unwrap().acknowledged.len();
    // A crash of PostgreSQL (no shutdown checkpoint), down until the clients have been
    // refused, then it starts again: a restart alone can be quicker than any commit.
    server.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    eventually("a command refused while PostgreSQL is down", || async { ledger.lock().unwrap().refused > 0 })
        .await;
    server.start_again();
    let refused_while_down = ledger.lock().unwrap().refused;
    let acknowledged_while_down = ledger.lock().unwrap().acknowledged.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(
        acknowledged_before > 0 && ledger.acknowledged.len() > acknowledged_while_down,
        "load ran on both sides: {acknowledged_before} acknowledged before, {acknowledged_while_down} \
         when PostgreSQL came back, {} in the end",
        ledger.acknowledged.len()
    );
    assert!(refused_while_down > 0, "the outage was seen as 503s");
    eventually("/readyz to be ready again", || async { host.get("/readyz").await.status == 200 }).await;

    // Every acknowledged credit is in the log once, and nothing else is.
    let mut expected: BTreeMap<u64, i64> = BTreeMap::new();
    for (account, amount) in ledger.acknowledged.values() {
        *expected.entry(*account).or_default() += amount;
    }
    for account in 0..ACCOUNTS {
        let events = host.get(&format!("/aggregates/account/{account}/events?limit=1000")).await.expect(200);
        let credits: Vec<String> = events.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "AccountCredited")
            .map(|e| e["data"]["transaction_id"].as_str().unwrap().to_owned())
            .collect();
        let unique: BTreeSet<&String> = credits.iter().collect();
        assert_eq!(unique.len(), credits.len(), "account {account}: a credit is stored twice");
        let mine: BTreeSet<&String> =
            ledger.acknowledged.iter().filter(|(_, (a, _))| *a == account).map(|(k, _)| k).collect();
        assert_eq!(unique, mine, "account {account}: the log holds exactly the acknowledged credits");
        let balance = host.state("account", &account.to_string()).await["balance"].as_i64().unwrap();
        assert_eq!(balance, expected.get(&account).copied().unwrap_or(0), "account {account}");
    }
    // It takes commands again without a restart of its own.
    host.command("account", "0", "CreditAccount", json!({"amount": 1, "transaction_id": "after"}))
        .await
        .expect(200);
}

/// Writers on many streams at once and readers following `/events` by position over HTTP:
/// every reader's positions strictly increase, and in the end each has read the whole log.
/// (Several stores writing one database at once are in the store TCK.)
#[tokio::test(flavor = "multi_thread")]
async fn readers_following_the_log_under_concurrent_writers_never_see_a_position_out_of_order() {
    let url = postgres::fresh_database();
    let host = Host::start_with(&["--store", &url]);
    const WRITERS: u64 = 32;
    const CREDITS: u64 = 40;
    for account in 0..WRITERS {
        host.open_account(&format!("w{account}"), 0).await;
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (http, base, done) = (host.http.clone(), host.url.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let after = seen.last().copied().unwrap_or(0);
                let page = answer_of(http.get(format!("{base}/events?after={after}&limit=100"))).await;
                let events = page.body["events"].as_array().cloned().unwrap_or_default();
                for event in &events {
                    let position = event["position"].as_u64().unwrap();
                    assert!(position > after, "position {position} after {after}");
                    if let Some(last) = seen.last() {
                        assert!(position > *last, "position {position} after {last}");
                    }
                    seen.push(position);
                }
                if events.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }));
    }
    let mut writers = Vec::new();
    for account in 0..WRITERS {
        let (http, base) = (host.http.clone(), host.url.clone());
        writers.push(tokio::spawn(async move {
            for n in 0..CREDITS {
                let body = json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("{account}-{n}")}});
                let request = http.post(format!("{base}/aggregates/account/w{account}/commands")).json(&body);
                answer_of(request).await.expect(200);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let log: Vec<Value> = {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = host.get(&format!("/events?after={after}&limit=1000")).await.expect(200);
            let events = page.body["events"].as_array().unwrap().clone();
            let Some(last) = events.last() else { break };
            after = last["position"].as_u64().unwrap();
            all.extend(events);
        }
        all
    };
    let whole: Vec<u64> = log.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(whole.len() as u64, WRITERS * (CREDITS + 1));
    assert_eq!(whole, (1..=whole.len() as u64).collect::<Vec<_>>(), "positions are dense");
    for reader in readers {
        assert_eq!(reader.await.unwrap(), whole, "a reader saw the whole log, in order");
    }
}

/// A COMMIT that landed but whose answer never came back (the connection dropped during
/// it): the host asks the database what became of its transaction and answers 200, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_whose_answer_was_lost_is_asked_after_and_answered_as_it_landed() {
    let url = postgres::fresh_database();
    let host =
        Host::start_with_env(&["--store", &url], &[("CAIRN_FAULTS", "commit-answer-lost=account/lost")]);
    host.open_account("lost", 10).await;
    let events = host.get("/aggregates/account/lost/events").await.expect(200);
    assert_eq!(events.body["events"].as_array().unwrap().len(), 1, "stored once: {}", events.body);
    assert!(host.log_text().contains("a COMMIT whose answer was lost had landed"), "the fault fired");
    host.command("account", "lost", "CreditAccount", json!({"amount": 5, "transaction_id": "after"}))
        .await
        .expect(200);
    assert_eq!(host.state("account", "lost").await["balance"], 15);
}
