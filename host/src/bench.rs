//! `cairn bench`: load against a running host over HTTP keep-alive, with the host's own
//! `/healthz` measured in the same run so every figure is also a ratio (absolute rates on a
//! shared machine are noise; ratios measured together are not).
//!
//! Scenarios: `credits` (CreditAccount spread over K accounts), `hot` (all to one account),
//! `transfers` (money transfers between K accounts, then the time until every one is
//! terminal) and `mixed` (credits with one state read in five).

use crate::client::HostClient;
use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    Credits,
    Hot,
    Transfers,
    Mixed,
}

/// The name the command line takes.
impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        f.write_str(self.to_possible_value().expect("every scenario has a name").get_name())
    }
}

/// How to load the host.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub scenario: Scenario,
    pub connections: usize,
    pub duration: Duration,
    /// Stop after this many requests (before the duration runs out).
    pub count: Option<u64>,
    pub accounts: u64,
    /// Skip the `/healthz` baseline.
    pub no_baseline: bool,
    /// Draw a progress bar (on a terminal).
    pub progress: bool,
    /// More hosts of the same cluster: the connections are spread over all of them.
    pub also: Vec<String>,
}

/// Throughput and latency of one load.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// In a cluster: how much of the load the host it was sent to forwarded to the owner,
    /// and the latencies of the requests answered where they were sent and of the forwarded.
    pub forwarding: Option<Forwarding>,
}

/// Forwarded requests against those answered where they were sent (`X-Cairn-Node`).
#[derive(Debug, Clone, Serialize)]
pub struct Forwarding {
    pub share: f64,
    pub direct_p50_ms: f64,
    pub direct_p99_ms: f64,
    pub forwarded_p50_ms: f64,
    pub forwarded_p99_ms: f64,
}

/// What one `cairn bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub connections: usize,
    pub load: Load,
    /// `/healthz` with the same connections for the same time.
    pub healthz: Option<Load>,
    /// `load.per_second / healthz.per_second`.
    pub ratio_to_healthz: Option<f64>,
    /// Group commits during the load: appends per commit, and the commit's time (fsync
    /// included), from the host's `/metrics`.
    pub average_commit_batch: Option<f64>,
    pub average_commit_ms: Option<f64>,
    /// The event store's fsyncs during the load, alone: their average time and how many a
    /// commit asked for (none on PostgreSQL, whose server does the fsync).
    pub average_fsync_ms: Option<f64>,
    pub fsyncs_per_commit: Option<f64>,
    /// `transfers`: from the last accepted transfer until every one was terminal.
    pub transfers_terminal_after_ms: Option<f64>,
}

/// Run one benchmark against the host at `url`.
pub async fn run(url: &str, options: &BenchOptions) -> anyhow::Result<Report> {
    if options.connections == 0 || options.accounts == 0 {
        bail!("--connections and --accounts must be at least 1");
    }
    if options.scenario == Scenario::Transfers && options.accounts < 2 {
        bail!("transfers need --accounts 2 or more");
    }
    let host = HostClient::pooled(url, options.connections, Duration::from_secs(60))?;
    let mut hosts = vec![host.clone()];
    for other in &options.also {
        hosts.push(HostClient::pooled(other, options.connections, Duration::from_secs(60))?);
    }
    // Each host's node id, to tell a forwarded answer (another node's) from a direct one.
    let mut nodes = Vec::new();
    for host in &hosts {
        let health = host.get("/healthz").send().await.with_context(|| host.unreachable())?;
        // A system that is not Cairn (the peer of benches/run) may answer in plain text: no node.
        let health: Option<serde_json::Value> = health.json().await.ok();
        nodes.push(health.and_then(|h| h["node"].as_str().map(str::to_owned)));
    }
    let targets = Arc::new(hosts.into_iter().zip(nodes).collect::<Vec<_>>());
    // Fresh accounts each run, so runs against one host never share streams.
    let run_id: String = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let accounts = match options.scenario {
        Scenario::Hot => 1,
        _ => options.accounts,
    };
    open_accounts(&host, &run_id, accounts, options.connections).await?;
    // Subscribers and projections still working through an earlier load would take CPU
    // from this one, and from its baseline.
    settle(&host).await?;
    let healthz = if options.no_baseline {
        None
    } else {
        Some(drive(&targets, options, "/healthz", |_, _, _| Request::Get("/healthz".to_owned())).await?)
    };
    let before = commit_metrics(&host).await;
    let transfers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = transfers.clone();
    let scenario = options.scenario;
    let load = drive(&targets, options, &scenario.to_string(), move |connection, n, pick| {
        let account = |k: u64| format!("bench-{run_id}-{k}");
        let credit = |k: u64| {
            Request::Post(
                format!("/aggregates/account/{}/commands", account(k)),
                json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("c{connection}-{n}")}}),
            )
        };
        match scenario {
            Scenario::Credits => credit(pick % accounts),
            Scenario::Hot => credit(0),
            Scenario::Mixed if pick % 5 == 0 => Request::Get(format!("/aggregates/account/{}", account(pick % accounts))),
            Scenario::Mixed => credit(pick % accounts),
            Scenario::Transfers => {
                let from = pick % accounts;
                let to = (from + 1 + (pick >> 20) % (accounts - 1).max(1)) % accounts;
                let id = format!("bench-{run_id}-t{connection}-{n}");
                seen.lock().expect("transfer list").push(id.clone());
                Request::Post(
                    format!("/aggregates/money-transfer/{id}/commands"),
                    json!({"type": "CreateMoneyTransfer", "data": {
                        "from_account_id": account(from), "to_account_id": account(to), "amount": 1}}),
                )
            }
        }
    })
    .await?;
    let accepted_by = Instant::now();
    let transfers_terminal_after_ms = if scenario == Scenario::Transfers {
        let ids = std::mem::take(&mut *transfers.lock().expect("transfer list"));
        wait_terminal(&host, &ids, options.connections).await?;
        Some(accepted_by.elapsed().as_secs_f64() * 1000.0)
    } else {
        None
    };
    let after = commit_metrics(&host).await;
    let mut average_commit_batch = None;
    let mut average_commit_ms = None;
    let mut average_fsync_ms = None;
    let mut fsyncs_per_commit = None;
    if let (Some(before), Some(after)) = (before, after)
        && after.commits > before.commits
    {
        let commits = after.commits - before.commits;
        average_commit_batch = Some((after.appends - before.appends) / commits);
        average_commit_ms = Some((after.seconds - before.seconds) / commits * 1000.0);
        if let (Some((count_before, seconds_before)), Some((count_after, seconds_after))) =
            (before.fsyncs, after.fsyncs)
            && count_after > count_before
        {
            let fsyncs = count_after - count_before;
            average_fsync_ms = Some((seconds_after - seconds_before) / fsyncs * 1000.0);
            fsyncs_per_commit = Some(fsyncs / commits);
        }
    }
    let ratio_to_healthz = healthz.as_ref().map(|h| load.per_second / h.per_second.max(f64::MIN_POSITIVE));
    Ok(Report {
        scenario,
        connections: options.connections,
        load,
        healthz,
        ratio_to_healthz,
        average_commit_batch,
        average_commit_ms,
        average_fsync_ms,
        fsyncs_per_commit,
        transfers_terminal_after_ms,
    })
}

enum Request {
    Get(String),
    Post(String, Value),
}

/// `connections` tasks send requests from `next(connection, n, random)` until the duration
/// or the count runs out; every answer other than 200 is an error.
async fn drive(
    targets: &Arc<Vec<(HostClient, Option<String>)>>,
    options: &BenchOptions,
    label: &str,
    next: impl Fn(usize, u64, u64) -> Request + Send + Sync + 'static,
) -> anyhow::Result<Load> {
    let next = Arc::new(next);
    let sent = Arc::new(AtomicU64::new(0));
    let limit = options.count.unwrap_or(u64::MAX);
    let bar = progress(options, label);
    let started = Instant::now();
    let deadline = started + options.duration;
    let mut tasks = Vec::new();
    for connection in 0..options.connections {
        let (host, node) = targets[connection % targets.len()].clone();
        let (next, sent, bar) = (next.clone(), sent.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut forwarded = Vec::new();
            let mut errors = 0u64;
            let mut random =
                0x9E37_79B9_7F4A_7C15u64 ^ (connection as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            for n in 0.. {
                if Instant::now() >= deadline || sent.fetch_add(1, Ordering::Relaxed) >= limit {
                    break;
                }
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let request = match next(connection, n, random) {
                    Request::Get(path) => host.get(&path),
                    Request::Post(path, body) => host.post(&path).json(&body),
                };
                let begun = Instant::now();
                let mut elsewhere = false;
                let ok = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let answered_by =
                            response.headers().get("x-cairn-node").and_then(|v| v.to_str().ok());
                        elsewhere = node.is_some() && answered_by.is_some() && answered_by != node.as_deref();
                        // Read the whole answer: a command's 200 is only complete with its body.
                        response.bytes().await.is_ok() && status == reqwest::StatusCode::OK
                    }
                    Err(error) if error.is_connect() => return Err(error),
                    Err(_) => false,
                };
                if elsewhere {
                    forwarded.push(begun.elapsed());
                } else {
                    latencies.push(begun.elapsed());
                }
                if !ok {
                    errors += 1;
                }
                bar.inc(1);
            }
            Ok((latencies, forwarded, errors))
        }));
    }
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    let mut errors = 0;
    for (connection, task) in tasks.into_iter().enumerate() {
        let host = &targets[connection % targets.len()].0;
        let (mut mine, mut theirs, failed) =
            task.await.context("a load task failed")?.with_context(|| host.unreachable())?;
        direct.append(&mut mine);
        forwarded.append(&mut theirs);
        errors += failed;
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut latencies: Vec<Duration> = direct.iter().chain(&forwarded).copied().collect();
    latencies.sort();
    direct.sort();
    forwarded.sort();
    let at = |sorted: &[Duration], q: f64| {
        sorted.get(((sorted.len().max(1) - 1) as f64 * q) as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let requests = latencies.len() as u64;
    let clustered = targets.iter().any(|(_, node)| node.is_some());
    let forwarding = clustered.then(|| Forwarding {
        share: forwarded.len() as f64 / requests.max(1) as f64,
        direct_p50_ms: at(&direct, 0.5),
        direct_p99_ms: at(&direct, 0.99),
        forwarded_p50_ms: at(&forwarded, 0.5),
        forwarded_p99_ms: at(&forwarded, 0.99),
    });
    Ok(Load {
        requests,
        errors,
        seconds,
        per_second: (requests - errors) as f64 / seconds,
        p50_ms: at(&latencies, 0.5),
        p90_ms: at(&latencies, 0.9),
        p99_ms: at(&latencies, 0.99),
        max_ms: at(&latencies, 1.0),
        forwarding,
    })
}

fn progress(options: &BenchOptions, label: &str) -> indicatif::ProgressBar {
    if !options.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed} {pos} requests ({per_sec})")
            .expect("a valid progress template"),
    );
    bar.set_message(label.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Open the accounts the scenario uses, with a balance no transfer of 1 can exhaust.
async fn open_accounts(
    host: &HostClient,
    run_id: &str,
    accounts: u64,
    connections: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections.min(accounts as usize) {
        let (host, next, run_id) = (host.clone(), next.clone(), run_id.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= accounts {
                    return Ok::<_, anyhow::Error>(());
                }
                let body = json!({"type": "OpenAccount", "data": {"initial_balance": 1_000_000_000}});
                let response = host
                    .post(&format!("/aggregates/account/bench-{run_id}-{k}/commands"))
                    .json(&body)
                    .send()
                    .await
                    .with_context(|| host.unreachable())?;
                if !response.status().is_success() {
                    bail!("opening an account was refused: {} {}", response.status(), response.text().await?);
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Poll every transfer until it is terminal.
async fn wait_terminal(host: &HostClient, ids: &[String], connections: usize) -> anyhow::Result<()> {
    const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED_DUE_TO_INSUFFICIENT_FUNDS", "FAILED"];
    let deadline = Instant::now() + Duration::from_secs(300);
    let chunk = ids.len().div_ceil(connections.max(1)).max(1);
    let mut tasks = Vec::new();
    for part in ids.chunks(chunk) {
        let (host, part) = (host.clone(), part.to_vec());
        tasks.push(tokio::spawn(async move {
            for id in part {
                loop {
                    let answer = host.get(&format!("/aggregates/money-transfer/{id}")).send().await?;
                    let body: Value = answer.json().await.unwrap_or(Value::Null);
                    if body["state"]["state"].as_str().is_some_and(|s| TERMINAL.contains(&s)) {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("transfer {id} is not terminal after 5 minutes: {body}");
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Wait until every subscriber and projection of the host has handled the whole log (a host
/// without `/routing` or `/views`, like the benchmark's peer, is settled at once).
async fn settle(host: &HostClient) -> anyhow::Result<()> {
    let json = |path: &'static str| host.json(path);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let head = json("/healthz").await.and_then(|h| h["head_position"].as_u64());
        let Some(head) = head else { return Ok(()) };
        let routing = json("/routing").await;
        let subscribers_done = routing.as_ref().and_then(|r| r["subscribers"].as_array()).is_none_or(|all| {
            all.iter().all(|s| s["cursor"].as_u64() == Some(head) && s["in_flight"].as_u64() == Some(0))
        });
        let views = json("/views").await;
        let projections_done = views
            .as_ref()
            .and_then(|v| v["projections"].as_array())
            // A failed projection will not catch up by waiting.
            .is_none_or(|all| all.iter().all(|p| p["lag"].as_u64() == Some(0) || p["status"] == "failed"));
        if subscribers_done && projections_done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the host's subscribers and projections did not catch up with the log in 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host's group-commit counters so far, from its Prometheus text (`/metrics`).
#[derive(Debug, Clone, Copy)]
pub struct CommitMetrics {
    pub commits: f64,
    pub appends: f64,
    /// Time spent committing, fsync included.
    pub seconds: f64,
    /// The event file's fsyncs so far and the time they took (`None` on PostgreSQL).
    pub fsyncs: Option<(f64, f64)>,
}

impl CommitMetrics {
    /// `None` until the host has committed (no histogram yet) or when `text` has none.
    pub fn from_prometheus(text: &str) -> Option<CommitMetrics> {
        let events_file = Some(r#"file="events.redb""#);
        Some(CommitMetrics {
            commits: sample(text, "cairn_commit_batch_appends_count", None)?,
            appends: sample(text, "cairn_commit_batch_appends_sum", None)?,
            seconds: sample(text, "cairn_commit_duration_seconds_sum", None)?,
            fsyncs: sample(text, "cairn_fsync_duration_seconds_count", events_file).zip(sample(
                text,
                "cairn_fsync_duration_seconds_sum",
                events_file,
            )),
        })
    }
}

/// A series' value in the exporter's text: `name value` with no label, or
/// `name{…label…} value` when one is asked for.
fn sample(text: &str, name: &str, label: Option<&str>) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        let labels = series.strip_prefix(name)?;
        let wanted = match label {
            None => labels.is_empty(),
            Some(label) => labels.strip_prefix('{').is_some_and(|labels| labels.contains(label)),
        };
        if wanted { value.trim().parse().ok() } else { None }
    })
}

/// The host's group-commit counters, when it serves `/metrics`.
async fn commit_metrics(host: &HostClient) -> Option<CommitMetrics> {
    let text = host.get("/metrics").send().await.ok()?.text().await.ok()?;
    CommitMetrics::from_prometheus(&text)
}

/// The report for a person.
pub fn print(report: &Report) {
    let row = |name: &str, load: &Load| {
        println!(
            "{name:<10} {:>9.0}/s  {:>8} requests  {:>5} errors  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
            load.per_second, load.requests, load.errors, load.p50_ms, load.p90_ms, load.p99_ms, load.max_ms
        );
    };
    println!("{} with {} connections for {:.1} s", report.scenario, report.connections, report.load.seconds);
    row(&report.scenario.to_string(), &report.load);
    if let Some(healthz) = &report.healthz {
        row("/healthz", healthz);
    }
    if let Some(ratio) = report.ratio_to_healthz {
        println!("ratio to /healthz: {ratio:.3}");
    }
    if let (Some(batch), Some(ms)) = (report.average_commit_batch, report.average_commit_ms) {
        println!("group commit: {batch:.1} appends per commit, {ms:.2} ms per commit (fsync included)");
    }
    if let (Some(ms), Some(per_commit)) = (report.average_fsync_ms, report.fsyncs_per_commit) {
        println!("fsync alone: {ms:.2} ms, {per_commit:.1} per commit");
    }
    if let Some(ms) = report.transfers_terminal_after_ms {
        println!("every transfer terminal {ms:.0} ms after the last was accepted");
    }
    if let Some(f) = &report.load.forwarding {
        println!(
            "forwarded to the owner: {:.1}% of requests; p50 {:.2} ms / p99 {:.2} ms forwarded, {:.2} / {:.2} ms answered where sent",
            f.share * 100.0,
            f.forwarded_p50_ms,
            f.forwarded_p99_ms,
            f.direct_p50_ms,
            f.direct_p99_ms
        );
    }
}

#[cfg(test)]
mod tests {
    use super::CommitMetrics;

    /// The exporter's text, labels and all: the event file's fsyncs are found beside the
    /// views' and the buckets, and a host without them (PostgreSQL) still reports commits.
    #[test]
    fn commit_metrics_are_read_from_the_prometheus_text() {
        let text = r#"cairn_commit_batch_appends_count 10
cairn_commit_batch_appends_sum 35
cairn_commit_duration_seconds_sum 0.031
cairn_fsync_duration_seconds_bucket{file="events.redb",le="0.005"} 9
cairn_fsync_duration_seconds_sum{file="views.redb"} 9.5
cairn_fsync_duration_seconds_count{file="views.redb"} 4
cairn_fsync_duration_seconds_sum{file="events.redb"} 0.025
cairn_fsync_duration_seconds_count{file="events.redb"} 10
"#;
        let metrics = CommitMetrics::from_prometheus(text).unwrap();
        assert_eq!((metrics.commits, metrics.appends, metrics.seconds), (10.0, 35.0, 0.031));
        assert_eq!(metrics.fsyncs, Some((10.0, 0.025)));
        let on_postgres: String =
            text.lines().filter(|l| !l.contains("fsync")).map(|l| format!("{l}\n")).collect();
        assert_eq!(CommitMetrics::from_prometheus(&on_postgres).unwrap().fsyncs, None);
    }
}
