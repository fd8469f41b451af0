//! Three hosts on one PostgreSQL database (API.md, "Stores and clusters"): any host answers
//! any request, every partition has one owner, and when a host is killed its partitions are
//! served again by the others with nothing acknowledged lost.

use crate::harness::Host;
use crate::postgres;
use crate::sagas::{assert_no_duplicate_movements, open_ten_accounts, total_balance, wait_all_terminal};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Short, so a takeover is quick; renewals every third of it.
const TTL_MS: u64 = 1500;
const PARTITIONS: u64 = 256;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A host of the cluster on `database`, reachable at its own port.
fn member(database: &str, node: &str) -> Host {
    let port = free_port();
    let (listen, advertise) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}"));
    let ttl = TTL_MS.to_string();
    Host::start_with(&[
        "--store",
        database,
        "--listen",
        &listen,
        "--advertise",
        &advertise,
        "--node-id",
        node,
        "--lease-ttl-ms",
        &ttl,
    ])
}

async fn cluster_of(host: &Host) -> Value {
    host.get("/cluster").await.expect(200).body
}

/// Wait until every host's `/cluster` shows `alive` live nodes holding every partition
/// between them, none unowned; how long that took.
async fn settled(hosts: &[&Host], alive: usize) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let mut all = true;
        let mut last = Value::Null;
        for host in hosts {
            let cluster = cluster_of(host).await;
            let nodes = cluster["nodes"].as_array().unwrap();
            let live: Vec<&Value> = nodes.iter().filter(|n| n["alive"] == true).collect();
            let held: u64 = live.iter().map(|n| n["partitions"].as_u64().unwrap()).sum();
            let background = live.iter().filter(|n| n["background"] == true).count();
            all &= live.len() == alive
                && held == PARTITIONS
                && cluster["unowned"].as_array().unwrap().is_empty()
                && background == 1
                && live.iter().all(|n| n["partitions"].as_u64().unwrap() > 0);
            last = cluster;
        }
        if all {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "the cluster did not settle on {alive} nodes: {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn forwarded(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cairn_cluster_forwarded_total") && l.contains("outcome=\"answered\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_answer_every_request_for_any_stream_and_own_every_partition_once() {
    let database = postgres::fresh_database();
    let hosts = [member(&database, "n1"), member(&database, "n2"), member(&database, "n3")];
    let all: Vec<&Host> = hosts.iter().collect();
    settled(&all, 3).await;
    let cluster = cluster_of(&hosts[0]).await;
    assert_eq!(cluster["node"]["id"], "n1", "{cluster}");
    assert_eq!(cluster["partitions"], PARTITIONS, "{cluster}");
    assert_eq!(cluster["lease_ttl_ms"], TTL_MS, "{cluster}");

    // Opened, credited and read each through another host: most streams are owned by one
    // of the other two, so most requests are forwarded.
    for i in 0..30 {
        let id = format!("acct-{i}");
        hosts[i % 3].open_account(&id, 1000).await;
        hosts[(i + 1) % 3]
            .command(
                "account",
                &id,
                "CreditAccount",
                json!({"amount": i + 1, "transaction_id": format!("c-{i}")}),
            )
            .await
            .expect(200);
    }
    for i in 0..30 {
        let state = hosts[(i + 2) % 3].state("account", &format!("acct-{i}")).await;
        assert_eq!(state["balance"], 1001 + i as i64, "acct-{i}: {state}");
    }

    // The client's headers reach the owner: a retry with the same key through another
    // host is the first answer; If-Match is checked where the stream is.
    let credit = json!({"type": "CreditAccount", "data": {"amount": 5, "transaction_id": "keyed"}});
    let send = |host: &Host, key: &str| {
        host.http
            .post(format!("{}/aggregates/account/acct-0/commands", host.url))
            .header("Idempotency-Key", key)
            .header("X-Correlation-Id", "corr-cluster")
            .json(&credit)
    };
    let first = hosts[1].send(send(&hosts[1], "k1")).await.expect(200);
    let again = hosts[2].send(send(&hosts[2], "k1")).await.expect(200);
    assert_eq!(first.body, again.body, "a keyed retry through another host answers the first answer");
    assert_eq!(first.body["events"][0]["correlation_id"], "corr-cluster", "{}", first.body);
    let stale = hosts[2]
        .http
        .post(format!("{}/aggregates/account/acct-0/commands", hosts[2].url))
        .header("If-Match", "\"1\"")
        .json(&credit);
    hosts[2].send(stale).await.expect_error(409, "version_conflict");
    assert_eq!(hosts[0].state("account", "acct-0").await["balance"], 1006);

    // A saga across hosts: the routing runs on one of them, the accounts anywhere.
    for (n, (from, to)) in [(1, 2), (3, 4), (5, 6)].into_iter().enumerate() {
        let data = json!({"from_account_id": format!("acct-{from}"), "to_account_id": format!("acct-{to}"), "amount": 100});
        hosts[n].command("money-transfer", &format!("tr-{n}"), "CreateMoneyTransfer", data).await.expect(200);
    }
    let outcomes = wait_all_terminal(&hosts[2], &["tr-0".into(), "tr-1".into(), "tr-2".into()]).await;
    assert_eq!(outcomes.get("COMPLETED"), Some(&3), "{outcomes:?}");
    assert_eq!(hosts[1].state("account", "acct-2").await["balance"], 1000 + 3 + 100);
    assert_eq!(hosts[0].state("account", "acct-1").await["balance"], 1000 + 2 - 100);

    // The log, sagas and views are read alike on every host.
    let head = hosts[0].get("/healthz").await.body["head_position"].as_u64().unwrap();
    for host in &hosts {
        let events = host.get("/aggregates/account/acct-2/events").await.expect(200);
        assert_eq!(events.body["events"].as_array().unwrap().len(), 3, "{}", events.body);
        let info = host.get(&format!("/views/account-info/acct-2?min_position={head}")).await.expect(200);
        assert_eq!(info.body["balance"], 1103, "{}", info.body);
    }

    let mut total = 0.0;
    for host in &hosts {
        total += forwarded(host.get("/metrics").await.body.as_str().unwrap_or_default());
    }
    assert!(total >= 40.0, "most requests were forwarded to their owner: {total}");
}

/// Transfers through all three hosts, each retried with its key through the next host when
/// its own is gone, until `count` are acknowledged (or `stop` is set).
async fn storm(
    hosts: Vec<(reqwest::Client, String)>,
    count: usize,
    progress: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut clients = Vec::new();
    for client in 0..12usize {
        let hosts = hosts.clone();
        let progress = progress.clone();
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (client as u64 + 1);
            let mut next = move |below: u64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed % below
            };
            for n in 0..count / 12 {
                let from = next(10);
                let to = (from + 1 + next(9)) % 10;
                let amount = 1 + next(3000) as i64;
                let id = format!("storm-{client}-{n}");
                let body = json!({"type": "CreateMoneyTransfer", "data": {"from_account_id": from.to_string(), "to_account_id": to.to_string(), "amount": amount}});
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut host = client + n;
                loop {
                    let (http, url) = &hosts[host % hosts.len()];
                    let sent = http
                        .post(format!("{url}/aggregates/money-transfer/{id}/commands"))
                        .header("Idempotency-Key", &id)
                        .json(&body)
                        .send()
                        .await;
                    match sent.map(|r| r.status().as_u16()) {
                        Ok(200) => {
                            acknowledged.push(id);
                            progress.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        // Its host is gone or its partition is moving: again, elsewhere.
                        Err(_) | Ok(503) => host += 1,
                        Ok(status) => panic!("transfer {id}: {status}"),
                    }
                    assert!(Instant::now() < deadline, "transfer {id} was never acknowledged");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            acknowledged
        }));
    }
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_of_one_host_mid_storm_loses_nothing_and_its_partitions_are_served_again_within_two_ttls() {
    let database = postgres::fresh_database();
    let mut hosts = [member(&database, "k1"), member(&database, "k2"), member(&database, "k3")];
    settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
    open_ten_accounts(&hosts[0]).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let targets: Vec<(reqwest::Client, String)> =
        hosts.iter().map(|h| (h.http.clone(), h.url.clone())).collect();
    let storm = tokio::spawn(storm(targets, 240, progress.clone()));
    while progress.load(Ordering::SeqCst) < 60 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    hosts[1].kill9();
    let killed = Instant::now();
    let survivors = [&hosts[0], &hosts[2]];
    settled(&survivors, 2).await;
    let takeover = killed.elapsed();
    assert!(
        takeover <= Duration::from_millis(2 * TTL_MS + 500),
        "the dead host's partitions were served again after {takeover:?}"
    );
    let acknowledged = storm.await.unwrap();
    assert_eq!(acknowledged.len(), 240);

    let outcomes = wait_all_terminal(&hosts[2], &acknowledged).await;
    assert_eq!(total_balance(&hosts[0]).await, 100_000, "outcomes: {outcomes:?}");
    assert_no_duplicate_movements(&hosts[2]).await;
    // Every version of every stream once, in one dense log.
    let duplicates = postgres::query_text(
        &database,
        "SELECT count(*) FROM (SELECT stream_type, stream_id, version FROM cairn.events \
         GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
    );
    assert_eq!(duplicates.as_deref(), Some("0"));
    let gaps = postgres::query_text(&database, "SELECT max(position) - count(*) FROM cairn.events");
    assert_eq!(gaps.as_deref(), Some("0"), "positions are dense");
    // The views agree with the aggregates, on either survivor.
    let head = hosts[0].get("/healthz").await.body["head_position"].as_u64().unwrap();
    for id in 0..10 {
        let id = id.to_string();
        let reader = survivors[id.len() % 2];
        let info = reader.get(&format!("/views/account-info/{id}?min_position={head}")).await.expect(200);
        let balance = hosts[0].state("account", &id).await["balance"].clone();
        assert_eq!(info.body["balance"], balance, "account-info of {id}: {}", info.body);
    }

    // The killed host comes back under its id and gets its share again.
    hosts[1].start_again();
    settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
    eprintln!("takeover after kill -9: {takeover:?}");
}
