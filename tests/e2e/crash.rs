//! The crash checker: clients send idempotent credits, retries of them and money
//! transfers while the host is killed with SIGKILL at a random moment, several times in a
//! row. After each restart the whole log is checked: every acknowledged command's events
//! are there; each stream's versions run 1, 2, 3, … with no gap; global positions are unique
//! and increasing; every account's state is the fold of its events; once every transfer is
//! terminal, no money was made or lost; and every idempotency key answers its first answer.
//!
//! CI runs `CAIRN_CRASH_CYCLES` cycles (3 unless set); the long mode is
//! `CAIRN_CRASH_CYCLES=100 cargo test -p cairn --test e2e crash -- --nocapture`.
//! `CAIRN_CRASH_SEED` replays a run (each run prints its seed).

use crate::harness::Host;
use crate::sagas::{Random, wait_terminal};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ACCOUNTS: u64 = 10;
const OPENING_BALANCE: i64 = 10_000;
const CLIENTS: u64 = 8;

/// An idempotent credit the host acknowledged, and what it answered.
#[derive(Clone)]
struct Acknowledged {
    key: String,
    account: u64,
    amount: i64,
    version: u64,
    positions: Vec<u64>,
}

/// What the clients did in one cycle.
#[derive(Default)]
struct Ledger {
    credits: Vec<Acknowledged>,
    /// Every transfer sent, acknowledged or not: an unacknowledged one may exist.
    transfers: Vec<String>,
    operations: u64,
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} is not a number: {v}")))
}

fn credit_body(amount: i64, key: &str) -> Value {
    json!({"type": "CreditAccount", "data": {"amount": amount, "transaction_id": key}})
}

fn positions(answer: &Value) -> Vec<u64> {
    answer["events"].as_array().unwrap().iter().map(|e| e["position"].as_u64().unwrap()).collect()
}

/// One client until the host dies under it: mostly new idempotent credits, some retries of
/// its own acknowledged ones (which must answer the same), some transfers.
async fn client(
    http: reqwest::Client,
    url: String,
    cycle: u64,
    client: u64,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut random = Random(seed ^ (cycle << 32) ^ (client + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut mine: Vec<Acknowledged> = Vec::new();
    for n in 0.. {
        let roll = random.below(10);
        let sent = if roll < 2 && !mine.is_empty() {
            let first = mine[random.below(mine.len() as u64) as usize].clone();
            let request = http
                .post(format!("{url}/aggregates/account/{}/commands", first.account))
                .header("idempotency-key", &first.key)
                .json(&credit_body(first.amount, &first.key));
            match request.send().await {
                Ok(response) if response.status() == 200 => {
                    let answer: Value = response.json().await.unwrap_or(Value::Null);
                    assert_eq!(
                        answer["version"], first.version,
                        "a retry of {} answered differently",
                        first.key
                    );
                    assert_eq!(
                        positions(&answer),
                        first.positions,
                        "a retry of {} answered other events",
                        first.key
                    );
                    Ok(())
                }
                other => Err(other.map(|r| r.status())),
            }
        } else if roll < 7 {
            let account = random.below(ACCOUNTS);
            let amount = 1 + random.below(100) as i64;
            let key = format!("c{cycle}-{client}-{n}");
            let request = http
                .post(format!("{url}/aggregates/account/{account}/commands"))
                .header("idempotency-key", &key)
                .json(&credit_body(amount, &key));
            match request.send().await {
                Ok(response) if response.status() == 200 => {
                    let Ok(answer) = response.json::<Value>().await else { break };
                    let version = answer["version"].as_u64().unwrap();
                    mine.push(Acknowledged { key, account, amount, version, positions: positions(&answer) });
                    Ok(())
                }
                other => Err(other.map(|r| r.status())),
            }
        } else {
            let from = random.below(ACCOUNTS);
            let to = (from + 1 + random.below(ACCOUNTS - 1)) % ACCOUNTS;
            let id = format!("t{cycle}-{client}-{n}");
            ledger.lock().unwrap().transfers.push(id.clone());
            let data = json!({"from_account_id": from.to_string(), "to_account_id": to.to_string(), "amount": 1 + random.below(500)});
            let request = http
                .post(format!("{url}/aggregates/money-transfer/{id}/commands"))
                .json(&json!({"type": "CreateMoneyTransfer", "data": data}));
            match request.send().await {
                Ok(response) if response.status() == 200 => Ok(()),
                other => Err(other.map(|r| r.status())),
            }
        };
        match sent {
            Ok(()) => ledger.lock().unwrap().operations += 1,
            // Killed under it; the load shedder's 429/503 would be fine too, but only a dead
            // host ends a client.
            Err(Err(_)) => break,
            Err(Ok(status)) if status == 429 || status == 503 => {}
            Err(Ok(status)) => panic!("client {client}: unexpected {status}"),
        }
    }
    ledger.lock().unwrap().credits.extend(mine);
}

/// Every event of the global log, in order.
async fn whole_log(host: &Host) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |e: &Value| e["position"].as_u64().unwrap());
        let page = host.get(&format!("/events?after={after}&limit=1000")).await.expect(200);
        let page = page.body["events"].as_array().unwrap().clone();
        if page.is_empty() {
            return events;
        }
        events.extend(page);
    }
}

/// `credits` are checked in the log, and `retried` of them retried; `transfers` (those sent
/// since the last check) must all reach a terminal state.
async fn check(host: &Host, credits: &[Acknowledged], retried: &[Acknowledged], transfers: &[String]) {
    for id in transfers {
        if host.get(&format!("/aggregates/money-transfer/{id}")).await.status == 200 {
            wait_terminal(host, id).await;
        }
    }
    let log = whole_log(host).await;
    let mut last_position = 0;
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut balances: HashMap<String, i64> = HashMap::new();
    let mut external_credits = 0;
    let mut credited: HashMap<(String, u64), String> = HashMap::new();
    for event in &log {
        let position = event["position"].as_u64().unwrap();
        assert!(position > last_position, "position {position} after {last_position}");
        last_position = position;
        let stream = event["stream"].as_str().unwrap().to_owned();
        let version = event["version"].as_u64().unwrap();
        let previous = versions.insert(stream.clone(), version).unwrap_or(0);
        assert_eq!(version, previous + 1, "{stream} jumps from version {previous} to {version}");
        let data = &event["data"];
        let amount = data["amount"].as_i64().unwrap_or(0);
        match event["type"].as_str().unwrap() {
            "AccountOpened" => {
                *balances.entry(stream.clone()).or_default() += data["initial_balance"].as_i64().unwrap()
            }
            "AccountCredited" => {
                *balances.entry(stream.clone()).or_default() += amount;
                let transaction = data["transaction_id"].as_str().unwrap().to_owned();
                if transaction.starts_with('c') {
                    external_credits += amount;
                }
                credited.insert((stream.clone(), version), transaction);
            }
            "AccountDebited" => *balances.entry(stream.clone()).or_default() -= amount,
            _ => {}
        }
    }
    for credit in credits {
        let stream = format!("account/{}", credit.account);
        assert_eq!(
            credited.get(&(stream.clone(), credit.version)),
            Some(&credit.key),
            "the acknowledged credit {} is not at {stream} version {}",
            credit.key,
            credit.version
        );
    }
    let mut total = 0;
    for account in 0..ACCOUNTS {
        let stream = format!("account/{account}");
        let answer = host.get(&format!("/aggregates/{stream}")).await.expect(200).body;
        assert_eq!(answer["version"].as_u64(), versions.get(&stream).copied(), "{stream}'s version");
        assert_eq!(
            answer["state"]["balance"].as_i64(),
            balances.get(&stream).copied(),
            "{stream} is not the fold of its events"
        );
        total += balances[&stream];
    }
    assert_eq!(total, ACCOUNTS as i64 * OPENING_BALANCE + external_credits, "money was made or lost");
    for credit in retried {
        let retry = host
            .send(
                host.http
                    .post(format!("{}/aggregates/account/{}/commands", host.url, credit.account))
                    .header("idempotency-key", &credit.key)
                    .json(&credit_body(credit.amount, &credit.key)),
            )
            .await
            .expect(200);
        assert_eq!(retry.body["version"], credit.version, "{} answers another result", credit.key);
        assert_eq!(positions(&retry.body), credit.positions, "{} answers other events", credit.key);
    }
}

#[tokio::test(flavor = "multi_thread")]
pub(crate) async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let cycles = env_number("CAIRN_CRASH_CYCLES").unwrap_or(3);
    let seed = env_number("CAIRN_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("crash checker: {cycles} cycles, CAIRN_CRASH_SEED={seed}");
    let mut random = Random(seed);
    let mut host = Host::start();
    for account in 0..ACCOUNTS {
        host.open_account(&account.to_string(), OPENING_BALANCE).await;
    }
    let mut credits: Vec<Acknowledged> = Vec::new();
    let mut operations = 0;
    for cycle in 0..cycles {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|n| {
                tokio::spawn(client(host.http.clone(), host.url.clone(), cycle, n, seed, ledger.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100 + random.below(900))).await;
        host.kill9();
        for client in clients {
            client.await.expect("a client found a broken promise");
        }
        host.start_again();
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        operations += ledger.operations;
        // Every key of this cycle is retried, and a sample of the earlier ones: the check
        // stays linear in the length of the run.
        let mut retried = ledger.credits.clone();
        for _ in 0..credits.len().min(100) {
            retried.push(credits[random.below(credits.len() as u64) as usize].clone());
        }
        credits.extend(ledger.credits);
        check(&host, &credits, &retried, &ledger.transfers).await;
        println!("cycle {}: {operations} operations acknowledged so far, all there", cycle + 1);
    }
    assert!(operations > 0, "the load ran");
}
