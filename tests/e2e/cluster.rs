//! Three hosts on one PostgreSQL database (API.md, "Stores and clusters"): any host answers
//! any request, every partition has one owner, and when a host is killed its partitions are
//! served again by the others with nothing acknowledged lost.

use crate::harness::Host;
use crate::postgres;
use crate::postgres_store::serve_until_exit_with;
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
    member_with_env(database, node, &[])
}

/// [`member`], with environment variables (e.g. `CAIRN_FAULTS`).
fn member_with_env(database: &str, node: &str, env: &[(&str, &str)]) -> Host {
    let port = free_port();
    let (listen, advertise) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}"));
    let ttl = TTL_MS.to_string();
    let args = [
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
    ];
    Host::start_with_env(&args, env)
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
    // `cairn cluster` for a person: this node on one line, then a row a member.
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["cluster", "--url", &hosts[0].url])
        .env_remove("CLICOLOR_FORCE")
        .output()
        .unwrap();
    let shown = String::from_utf8(shown.stdout).unwrap();
    let (this, table) = shown.split_once('\n').unwrap();
    assert!(this.starts_with(&format!("this node: n1 at {} · 256 partitions", hosts[0].url)), "{shown}");
    let rows = crate::cli::rows_of(table);
    assert_eq!(rows[0][..3], ["NODE", "URL", "ALIVE"], "{shown}");
    let members: Vec<(&str, &str)> = rows[1..].iter().map(|row| (row[0].as_str(), row[2].as_str())).collect();
    assert_eq!(members, [("n1", "yes"), ("n2", "yes"), ("n3", "yes")], "{shown}");

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

    // A saga across hosts: the routing runs on one of them, the accounts anywhere. Each
    // carries its client's trace, through forwarded and routed commands alike.
    let trace = |n: usize| format!("4bf92f3577b34da6a3ce929d0e0e473{n}");
    for (n, (from, to)) in [(1, 2), (3, 4), (5, 6)].into_iter().enumerate() {
        let data = json!({"from_account_id": format!("acct-{from}"), "to_account_id": format!("acct-{to}"), "amount": 100});
        let request = hosts[n]
            .command_request("money-transfer", &format!("tr-{n}"), "CreateMoneyTransfer", data)
            .header("traceparent", format!("00-{}-00f067aa0ba902b7-01", trace(n)))
            .header("X-Correlation-Id", format!("saga-tr-{n}"));
        hosts[n].send(request).await.expect(200);
    }
    let outcomes = wait_all_terminal(&hosts[2], &["tr-0".into(), "tr-1".into(), "tr-2".into()]).await;
    assert_eq!(outcomes.get("COMPLETED"), Some(&3), "{outcomes:?}");
    for n in 0..3 {
        let saga = hosts[(n + 1) % 3].get(&format!("/sagas/saga-tr-{n}")).await.expect(200).body;
        let events = saga["events"].as_array().unwrap();
        assert_eq!(events.len(), 5, "{saga}");
        assert!(events.iter().all(|e| e["trace_id"] == trace(n)), "tr-{n} is one trace: {saga}");
    }
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
    storm_named(hosts, "storm", count, progress).await
}

async fn storm_named(
    hosts: Vec<(reqwest::Client, String)>,
    prefix: &str,
    count: usize,
    progress: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut clients = Vec::new();
    for client in 0..12usize {
        let hosts = hosts.clone();
        let progress = progress.clone();
        let prefix = prefix.to_owned();
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
                let id = format!("{prefix}-{client}-{n}");
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
        takeover <= Duration::from_millis(3 * TTL_MS),
        "the dead host's partitions were served again after {takeover:?}"
    );
    let acknowledged = storm.await.unwrap();
    assert_eq!(acknowledged.len(), 240);
    assert_no_append_after_a_takeover(&database);

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

#[tokio::test(flavor = "multi_thread")]
async fn a_node_id_in_use_is_refused_a_cluster_needs_postgres_and_only_hosts_hand_over_commands() {
    let database = postgres::fresh_database();
    let host = member(&database, "same");
    let ttl = TTL_MS.to_string();
    let twin = [
        "--store",
        &database,
        "--advertise",
        "http://127.0.0.1:9",
        "--node-id",
        "same",
        "--lease-ttl-ms",
        &ttl,
    ];
    let (code, stderr) = serve_until_exit_with(&twin);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("node id \"same\" is in use by a live host at http://127.0.0.1:"), "{stderr}");
    // A host without --advertise on a cluster's database, and a member on one such a host holds.
    let (code, stderr) = serve_until_exit_with(&["--store", &database]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("is in use by another cairn host"), "{stderr}");
    let alone = postgres::fresh_database();
    let _alone = Host::start_with(&["--store", &alone]);
    let (code, stderr) = serve_until_exit_with(&["--store", &alone, "--advertise", "http://127.0.0.1:9"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("held by a cairn host started without --advertise"), "{stderr}");
    let (code, stderr) = serve_until_exit_with(&["--advertise", "http://127.0.0.1:9"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--store postgres://"), "{stderr}");
    let (code, stderr) = serve_until_exit_with(&["--store", &database, "--advertise", "ftp://x"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--advertise must be an http:// URL"), "{stderr}");

    // A client cannot hand a routed command over as if it were a host, with or without a
    // guess at the secret; the refusal comes before the body is read.
    for peer in [None, Some("guess")] {
        let mut request = host.http.post(format!("{}/cluster/deliver", host.url)).body(vec![0u8; 16]);
        if let Some(peer) = peer {
            request = request.header("x-cairn-peer", peer);
        }
        host.send(request).await.expect_error(403, "peers_only");
    }
    // Nor pass for a host to keep its request from being forwarded: it is answered anyway.
    settled(&[&host], 1).await;
    let faked = host
        .http
        .post(format!("{}/aggregates/account/a/commands", host.url))
        .header("x-cairn-peer", "guess")
        .json(&json!({"type": "OpenAccount", "data": {"initial_balance": 1}}));
    let opened = host.send(faked).await.expect(200);
    assert_eq!(opened.headers["x-cairn-node"], "same");

    // A host the others cannot reach at its advertised URL is reported in /cluster.
    let (listen, nowhere) =
        (format!("127.0.0.1:{}", free_port()), format!("http://127.0.0.1:{}", free_port()));
    let _lost = Host::start_with(&[
        "--store",
        &database,
        "--listen",
        &listen,
        "--advertise",
        &nowhere,
        "--node-id",
        "lost",
        "--lease-ttl-ms",
        &ttl,
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cluster = cluster_of(&host).await;
        let lost = cluster["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "lost").cloned();
        if lost.as_ref().is_some_and(|n| n["alive"] == true && n["reachable"] == false) {
            assert_eq!(cluster["node"]["unloadable"], json!([]), "{cluster}");
            break;
        }
        assert!(Instant::now() < deadline, "the unreachable node is not reported: {cluster}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_on_one_host_answers_on_every_host_without_a_restart() {
    let database = postgres::fresh_database();
    let hosts = [member(&database, "d1"), member(&database, "d2")];
    settled(&hosts.iter().collect::<Vec<_>>(), 2).await;
    hosts[0].deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    // The other host takes the new type in at its next look at the registry.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = hosts[1].get("/components").await.expect(200).body;
        if list.as_array().unwrap().iter().any(|c| c["name"] == "faulty") {
            break;
        }
        assert!(Instant::now() < deadline, "the deploy never reached the other host: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ["1", "2", "3", "4"] {
        hosts[1].command("faulty", id, "Increment", json!({})).await.expect(200);
    }
    // v2 counts in tens, deployed on the second host: every host folds with it at once.
    let v2 = hosts[1].deploy("faulty", cairn_test_guests::FAULTY_FIXED).await.expect(200);
    assert_eq!(v2.body["version"], 2, "{}", v2.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = hosts[0].get("/components").await.expect(200).body;
        let faulty = list.as_array().unwrap().iter().find(|c| c["name"] == "faulty").cloned().unwrap();
        if faulty["active_version"] == 2 {
            assert_eq!(list, hosts[1].get("/components").await.expect(200).body, "the same everywhere");
            break;
        }
        assert!(Instant::now() < deadline, "v2 never became active on the first host: {faulty}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ["1", "2", "3", "4"] {
        let answered = hosts[0].command("faulty", id, "Increment", json!({})).await.expect(200);
        assert_eq!(answered.body["version"], 2);
        assert_eq!(hosts[0].state("faulty", id).await["count"], 20, "faulty/{id} under v2");
    }
}

/// Which node's actor answers for the account `id` (opening it through `host`).
async fn owner_of_new_account(host: &Host, id: &str) -> String {
    let opened = host.command("account", id, "OpenAccount", json!({"initial_balance": 0})).await.expect(200);
    opened.headers["x-cairn-node"].to_str().unwrap().to_owned()
}

/// A new account whose stream `node` owns (opened through `host`).
async fn account_owned_by(host: &Host, prefix: &str, node: &str) -> String {
    for i in 0..64 {
        let id = format!("{prefix}-{i}");
        if owner_of_new_account(host, &id).await == node {
            return id;
        }
    }
    panic!("{node} owns none of 64 streams");
}

/// Credits to one account through one host, running while a test pauses or cuts off another.
struct Credits {
    stop: Arc<std::sync::atomic::AtomicBool>,
    writer: tokio::task::JoinHandle<i64>,
}

impl Credits {
    async fn start(through: &Host, id: &str) -> Credits {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = (through.http.clone(), through.url.clone());
        let writer = tokio::spawn(credits_until(target, id.to_owned(), stop.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        Credits { stop, writer }
    }

    /// Once every host is back: stop, and check that every host shows each acknowledged
    /// credit once and that nothing was appended under a lease that had moved on.
    async fn check(self, hosts: &[Host], id: &str, database: &str) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stop.store(true, Ordering::SeqCst);
        let acknowledged = self.writer.await.unwrap();
        assert!(acknowledged > 10, "credits went on around the fault: {acknowledged}");
        for host in hosts {
            assert_eq!(host.state("account", id).await["balance"], acknowledged, "every credit once");
        }
        assert_no_append_after_a_takeover(database);
    }
}

/// Credits of 1 to `id` through `host`, each retried with its key until it is answered 200,
/// until `stop`: how many were acknowledged.
async fn credits_until(
    host: (reqwest::Client, String),
    id: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> i64 {
    let (http, url) = host;
    let mut acknowledged = 0;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let body =
            json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("p-{n}")}});
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let sent = http
                .post(format!("{url}/aggregates/account/{id}/commands"))
                .header("Idempotency-Key", format!("p-{n}"))
                .json(&body)
                .send()
                .await;
            match sent.map(|r| r.status().as_u16()) {
                Ok(200) => break,
                Err(_) | Ok(503) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(status) => panic!("credit p-{n}: {status}"),
            }
            assert!(Instant::now() < deadline, "credit p-{n} was never acknowledged");
        }
        acknowledged += 1;
    }
    acknowledged
}

/// Along every stream the lease epoch its events were appended under never goes down: no
/// host appended after it had lost the partition to another.
fn assert_no_append_after_a_takeover(database: &str) {
    let stale = postgres::query_text(
        database,
        "SELECT count(*) FROM (SELECT lease_epoch, lag(lease_epoch) OVER \
         (PARTITION BY stream_type, stream_id ORDER BY version) AS before FROM cairn.events) e \
         WHERE lease_epoch < before",
    );
    assert_eq!(stale.as_deref(), Some("0"), "an event was appended under a lease that had moved on");
    let unfenced =
        postgres::query_text(database, "SELECT count(*) FROM cairn.events WHERE lease_epoch IS NULL");
    assert_eq!(unfenced.as_deref(), Some("0"), "every append of a cluster is fenced");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_paused_past_its_lease_appends_nothing_after_it_and_gets_partitions_back() {
    let database = postgres::fresh_database();
    let mut hosts = [member(&database, "s1"), member(&database, "s2"), member(&database, "s3")];
    settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
    // An account the paused host owns, credited through another host all along.
    let id = account_owned_by(&hosts[0], "paused", "s2").await;
    let credits = Credits::start(&hosts[2], &id).await;
    let pid = hosts[1].pid();
    // SAFETY: kill(2) with the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS)).await;
    settled(&[&hosts[0], &hosts[2]], 2).await;
    // SAFETY: as above.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
    credits.check(&hosts, &id, &database).await;
    hosts[1].stop();
}

/// A TCP proxy to PostgreSQL that can cut every connection through it, and refuse new ones.
struct Cable {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Cable {
    async fn to(target: u16) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (cut_flag, cuts) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if cut_flag.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let mut cutting = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cutting.changed() => {}
                    }
                });
            }
        });
        Cable { port, cut, generation }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn mend(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_cut_off_from_the_database_appends_nothing_after_losing_its_leases_and_comes_back() {
    let database = postgres::fresh_database();
    let server = postgres::server();
    let cable = Cable::to(server.port).await;
    let through_cable = database.replace(&format!(":{}/", server.port), &format!(":{}/", cable.port));
    let hosts = [member(&database, "c1"), member(&through_cable, "c2"), member(&database, "c3")];
    settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
    let id = account_owned_by(&hosts[0], "cut", "c2").await;
    let credits = Credits::start(&hosts[0], &id).await;
    cable.cut();
    settled(&[&hosts[0], &hosts[2]], 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cable.mend();
    settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
    credits.check(&hosts, &id, &database).await;
}

/// The long mode: `CAIRN_CLUSTER_CYCLES=50 cargo test -p cairn --test e2e cluster::kill -- --nocapture`
/// (CI runs 2). Each cycle kills a random host of three under a transfer storm, waits for its
/// partitions to be served again, starts it again, and checks what the crash checker checks:
/// every acknowledged transfer terminal, money conserved, nothing twice, dense positions, no
/// append after a takeover. `CAIRN_CLUSTER_SEED` replays a run.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_and_restart_cycles_across_three_hosts_under_load_lose_nothing() {
    let number = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>().expect("a number"));
    let cycles = number("CAIRN_CLUSTER_CYCLES").unwrap_or(2);
    let mut seed = number("CAIRN_CLUSTER_SEED").unwrap_or_else(|| std::process::id() as u64 | 1);
    println!("cluster cycles: {cycles}, CAIRN_CLUSTER_SEED={seed}");
    let database = postgres::fresh_database();
    let mut hosts = [member(&database, "r1"), member(&database, "r2"), member(&database, "r3")];
    settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
    open_ten_accounts(&hosts[0]).await;
    let targets: Vec<(reqwest::Client, String)> =
        hosts.iter().map(|h| (h.http.clone(), h.url.clone())).collect();
    let mut takeovers = Vec::new();
    let mut acknowledged = Vec::new();
    for cycle in 0..cycles {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // The first cycle kills the host that runs the routing and the projections.
        let victim = if cycle == 0 { background_host(&hosts).await } else { (seed % 3) as usize };
        let progress = Arc::new(AtomicUsize::new(0));
        let (targets, prefix, counted) = (targets.clone(), format!("cycle{cycle}"), progress.clone());
        let storm = tokio::spawn(async move { storm_named(targets, &prefix, 60, counted).await });
        while progress.load(Ordering::SeqCst) < 12 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        hosts[victim].kill9();
        let killed = Instant::now();
        let survivors: Vec<&Host> =
            hosts.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, h)| h).collect();
        settled(&survivors, 2).await;
        takeovers.push(killed.elapsed());
        hosts[victim].start_again();
        let this_cycle = storm.await.unwrap();
        settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
        let reader = &hosts[(victim + 1) % 3];
        let outcomes = wait_all_terminal(reader, &this_cycle).await;
        acknowledged.extend(this_cycle);
        assert_eq!(total_balance(reader).await, 100_000, "cycle {cycle}, outcomes {outcomes:?}");
        assert_no_append_after_a_takeover(&database);
        let gaps = postgres::query_text(&database, "SELECT max(position) - count(*) FROM cairn.events");
        assert_eq!(gaps.as_deref(), Some("0"), "positions are dense after cycle {cycle}");
    }
    let outcomes = wait_all_terminal(&hosts[0], &acknowledged).await;
    assert_eq!(outcomes.values().sum::<usize>(), acknowledged.len());
    assert_no_duplicate_movements(&hosts[0]).await;
    takeovers.sort();
    if let (Some(median), Some(worst)) = (takeovers.get(takeovers.len() / 2), takeovers.last()) {
        println!(
            "takeover after kill -9 over {cycles} cycles: median {median:?}, worst {worst:?} (TTL {TTL_MS} ms)"
        );
        assert!(*worst <= Duration::from_millis(3 * TTL_MS), "a takeover took {worst:?}");
    }
}

/// Which of `hosts` runs the routing and the projections now.
async fn background_host(hosts: &[Host]) -> usize {
    let cluster = cluster_of(&hosts[0]).await;
    let node =
        cluster["nodes"].as_array().unwrap().iter().find(|n| n["background"] == true).cloned().unwrap();
    let mut found = None;
    for (i, host) in hosts.iter().enumerate() {
        if cluster_of(host).await["node"]["id"] == node["id"] {
            found = Some(i);
        }
    }
    found.expect("a host runs the background work")
}

/// The case fencing exists for, which no version check catches: a host whose append is in
/// its writer when it is paused past its lease, while the new owner appends nothing to that
/// stream. When it wakes, its batch still names the stream's current version; only the lease
/// refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn an_append_in_flight_on_a_host_paused_past_its_lease_is_refused_though_its_version_still_matches() {
    let database = postgres::fresh_database();
    // Whichever host owns the stream stalls its second append (the first opens it).
    let faults = [("CAIRN_FAULTS", "commit-stall=account/fenced:6000:1")];
    let hosts = [
        member_with_env(&database, "f1", &faults),
        member_with_env(&database, "f2", &faults),
        member_with_env(&database, "f3", &faults),
    ];
    settled(&hosts.iter().collect::<Vec<_>>(), 3).await;
    let owner = owner_of_new_account(&hosts[0], "fenced").await;
    let index = ["f1", "f2", "f3"].iter().position(|n| *n == owner).unwrap();
    let paused = &hosts[index];
    let credit = json!({"type": "CreditAccount", "data": {"amount": 7, "transaction_id": "stale"}});
    let request =
        paused.http.post(format!("{}/aggregates/account/fenced/commands", paused.url)).json(&credit);
    let in_flight = tokio::spawn(async move { crate::harness::answer_of(request).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: kill(2) with the pid of a child this test spawned and has not reaped.
    unsafe { libc::kill(paused.pid() as libc::pid_t, libc::SIGSTOP) };
    let others: Vec<&Host> = hosts.iter().enumerate().filter(|(i, _)| *i != index).map(|(_, h)| h).collect();
    settled(&others, 2).await;
    // SAFETY: as above.
    unsafe { libc::kill(paused.pid() as libc::pid_t, libc::SIGCONT) };
    let answer = in_flight.await.unwrap().expect_error(503, "storage_unavailable");
    let message = answer.body["error"]["message"].as_str().unwrap();
    // Refused by its partition's lease, or (when the paused host also ran the routing and
    // the group held one of its cursor writes) by the routing's: a fence either way.
    assert!(
        message.contains("no longer holds partition") || message.contains("no longer runs the routing"),
        "{message}"
    );
    let read = others[0].get("/aggregates/account/fenced").await.expect(200).body;
    assert_eq!(
        (read["state"]["balance"].clone(), read["version"].clone()),
        (json!(0), json!(1)),
        "nothing stored: {read}"
    );
    // The new owner takes the next command at that version, under a later epoch.
    others[1]
        .command("account", "fenced", "CreditAccount", json!({"amount": 1, "transaction_id": "fresh"}))
        .await
        .expect(200);
    let epochs = postgres::query_text(
        &database,
        "SELECT string_agg(lease_epoch::text, ',' ORDER BY version) FROM cairn.events WHERE stream_id = 'fenced'",
    )
    .unwrap();
    let epochs: Vec<i64> = epochs.split(',').map(|e| e.parse().unwrap()).collect();
    assert!(epochs.len() == 2 && epochs[1] > epochs[0], "the next append is under the new lease: {epochs:?}");
    assert_no_append_after_a_takeover(&database);
}
