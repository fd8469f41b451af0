//! The `cairn` command line: `serve`, plus client subcommands that speak the HTTP API.

mod people;
mod table;

use crate::client::{HostClient, aggregate_path, segment};
use crate::config::{ADMIN_TOKEN_FILE, ServeConfig};
use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Parser, Debug)]
#[command(name = "cairn", version, about = "A WebAssembly-hosted actor runtime for event-sourced aggregates")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The host client commands talk to.
    #[arg(long, global = true, env = "CAIRN_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token: `serve` requires it on admin endpoints (without it one is made and kept
    /// in DIR/admin-token); admin client commands send it (without it they read DIR/admin-token).
    #[arg(long, alias = "admin-token", global = true, env = "CAIRN_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The data directory: where `serve` keeps its store, and whose admin token client
    /// commands use when no `--token` is given.
    #[arg(long, global = true, default_value = "data", value_name = "DIR")]
    data: PathBuf,
    /// Print answers as the host's JSON, compact, one line each, and a refusal as the host's
    /// JSON error body on stderr: for scripts. Without it lists are tables and other answers
    /// one line, coloured on a terminal only (`NO_COLOR` turns colour off).
    #[arg(long, global = true)]
    json: bool,
    /// How `serve` writes its log to stderr: `text` (coloured only on a terminal) or `json`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Why a client command failed, for its exit code (see [`run`]).
#[derive(Debug, thiserror::Error)]
enum ClientFailure {
    #[error("the host answered {0}")]
    Refused(reqwest::StatusCode),
    #[error("could not reach the cairn host at {url} (is `cairn serve` running?): {source}")]
    Unreachable { url: String, source: reqwest::Error },
}

/// Exit codes: 0 ok, 1 refused by the host (or failed), 2 usage, 3 host unreachable.
pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

// Parsed once per process: `serve`'s many settings need no box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the host: an embedded event store in DIR, the HTTP API on ADDR.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
        /// Keep everything durable in PostgreSQL (`postgres://USER@HOST:PORT/DB`) instead of
        /// the embedded store in --data, which then keeps only the admin token and the
        /// compiled components.
        #[arg(long, env = "CAIRN_STORE", value_name = "URL")]
        store: Option<String>,
        /// Largest command request body, in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        max_body_bytes: usize,
        /// Requests handled at once before the host answers 503.
        #[arg(long, default_value_t = 4096)]
        max_in_flight: usize,
        /// Commands one aggregate may have waiting before it answers 429.
        #[arg(long, default_value_t = 1024)]
        mailbox_capacity: usize,
        /// Seconds an idle aggregate stays in memory.
        #[arg(long, default_value_t = 60)]
        idle_seconds: u64,
        /// Aggregates kept live in memory; beyond it the least recently used idle ones
        /// passivate (they come back from snapshot and events on their next command).
        #[arg(long, default_value_t = 10_000)]
        max_live_actors: usize,
        /// Streams a deploy's replay check rebuilds with the new version (the most recent).
        #[arg(long, default_value_t = 100)]
        replay_sample: usize,
        /// The longest a deploy may spend compiling a component before it is refused.
        #[arg(long, default_value_t = 60_000, value_name = "MILLIS")]
        compile_timeout_ms: u64,
        /// The longest a view read with `?min_position=` waits before answering 503.
        #[arg(long, default_value_t = 5_000, value_name = "MILLIS")]
        view_wait_ms: u64,
        /// How many events behind the head a live event stream may fall, once it has caught
        /// up, before the host ends it as too slow (the client resumes with Last-Event-ID).
        #[arg(long, default_value_t = 10_000, value_name = "EVENTS")]
        stream_max_lag: u64,
        /// Reads of past versions (`?version=N`) folded at once; more are answered 503 with
        /// Retry-After. Default: the number of CPUs.
        #[arg(long)]
        max_concurrent_folds: Option<usize>,
        /// How many live event streams one client address may hold open (of 256 in all).
        #[arg(long, default_value_t = 32)]
        stream_max_per_client: usize,
        /// The longest a write to a client may wait for it to take bytes before the host
        /// closes the connection (a live stream nobody reads ends this way).
        #[arg(long, default_value_t = 30_000, value_name = "MILLIS")]
        write_stall_ms: u64,
        /// Fuel one guest call may burn (about one unit per WebAssembly instruction).
        #[arg(long, default_value_t = 200_000_000)]
        guest_fuel: u64,
        /// The most linear memory one guest instance may grow to, in bytes.
        #[arg(long, default_value_t = 64 << 20)]
        guest_memory_bytes: usize,
        /// The most bytes one guest call may return (a command's events, a state, a
        /// reaction's commands); beyond it the call is refused with `guest_output_too_large`.
        #[arg(long, default_value_t = 1 << 20)]
        guest_output_bytes: usize,
        /// Guest instances that may exist at once (one per call in progress); a call beyond
        /// them answers 503 `overloaded` (a reaction or a projection retries it).
        #[arg(long, default_value_t = 256)]
        guest_instances: u32,
        /// The largest document a projection may write; a projection that writes a larger
        /// one stops there, and says so in `/views`, `/metrics` and `/readyz`.
        #[arg(long, default_value_t = 1 << 20)]
        view_document_bytes: usize,
        /// The longest a request may take, body included (live event streams excepted),
        /// before it is answered 503 `request_timeout`.
        #[arg(long, default_value_t = 120_000, value_name = "MILLIS")]
        request_timeout_ms: u64,
        /// The longest a client may take to send a request's head, and to stay idle on a
        /// kept-alive connection.
        #[arg(long, default_value_t = 30_000, value_name = "MILLIS")]
        header_timeout_ms: u64,
        /// How long a command's Idempotency-Key is remembered; a retry after that runs as a
        /// new command.
        #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
        idempotency_retention_seconds: u64,
        /// Where compiled components are cached (default: `compiled` in the data
        /// directory). Hosts on one machine may share one, e.g. several data directories of
        /// tests; it must be a directory only cairn writes, since its code is run as is.
        #[arg(long, env = "CAIRN_COMPILED_CACHE", value_name = "DIR")]
        compiled_cache: Option<PathBuf>,
        /// Which bundled example components a new data directory gets (comma-separated:
        /// account, money-transfer, order, customer, account-info, customer-orders; `none`
        /// for none). Ignored when the directory already has components.
        #[arg(long, value_delimiter = ',', default_value = "all", value_name = "NAMES")]
        examples: Vec<String>,
        /// A name the host also answers for (`name` for any port, or `name:port`), e.g. behind
        /// a proxy; repeatable. Requests for any other name but the listen address, localhost
        /// and loopback addresses are refused (421), which stops DNS rebinding.
        #[arg(long = "allowed-host", value_name = "NAME")]
        allowed_hosts: Vec<String>,
        /// An origin (`https://console.example`) whose web pages may send state-changing
        /// requests and read answers (CORS); repeatable. Pages of other sites are refused (403).
        #[arg(long = "allowed-origin", value_name = "ORIGIN")]
        allowed_origins: Vec<String>,
        /// Export spans over OTLP/HTTP to this URL (e.g. `http://127.0.0.1:4318/v1/traces`):
        /// a command, its reactions and the commands they send, and the projections, as one
        /// trace. Nothing is exported without it; export never makes a command wait.
        #[arg(long, env = "CAIRN_OTLP_ENDPOINT", value_name = "URL")]
        otlp_endpoint: Option<String>,
        /// Join the cluster of hosts on the --store database, reachable by the others at URL
        /// (`http://HOST:PORT`): any host answers any request, each stream has one writer.
        #[arg(long, env = "CAIRN_ADVERTISE", value_name = "URL")]
        advertise: Option<String>,
        /// This host's id in the cluster (default: one made at first start and kept in --data).
        #[arg(long, env = "CAIRN_NODE_ID", requires = "advertise")]
        node_id: Option<String>,
        /// How long a host's partition leases last unless it renews them (every third of it):
        /// how soon a dead host's streams are served again.
        #[arg(long, default_value_t = 5_000, value_name = "MILLIS", requires = "advertise")]
        lease_ttl_ms: u64,
    },
    /// Send a command: `cairn send account 101 '{"type":"OpenAccount","data":{"initial_balance":100}}'`.
    Send {
        #[arg(value_name = "TYPE")]
        type_name: String,
        id: String,
        /// The command as JSON: {"type": ..., "data": {...}}.
        #[arg(value_name = "JSON")]
        command: String,
        #[arg(long, value_parser = header_value)]
        idempotency_key: Option<String>,
        #[arg(long, value_parser = header_value)]
        correlation_id: Option<String>,
        /// Append only if the aggregate is at this version.
        #[arg(long)]
        expect_version: Option<u64>,
    },
    /// Show an aggregate's state (optionally as it was at a version).
    State {
        #[arg(value_name = "TYPE")]
        type_name: String,
        id: String,
        #[arg(long)]
        version: Option<u64>,
    },
    /// List an aggregate's events.
    Events {
        #[arg(value_name = "TYPE")]
        type_name: String,
        id: String,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// The document a projection keeps under KEY, e.g. `cairn view account-info 101`.
    View {
        projection: String,
        key: String,
        /// Wait (up to the host's bound) until the view has handled this global position.
        #[arg(long)]
        min_position: Option<u64>,
    },
    /// The global log, in position order.
    Log {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Every event of one saga (correlation id), in global order.
    Saga {
        correlation_id: String,
        /// The last position of the previous page.
        #[arg(long)]
        after: Option<u64>,
    },
    /// Each subscriber's cursor, lag, deliveries and dead letters.
    Routing {},
    /// Events parked for a subscriber, in order (paged with --after).
    DeadLetters {
        #[arg(long)]
        subscriber: Option<String>,
        /// One source stream, e.g. `account/101`.
        #[arg(long)]
        stream: Option<String>,
        /// The id of the last letter of the previous page.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// The cluster: every node, the partitions each holds, and what no node holds.
    Cluster {},
    /// Follow the global log live (Server-Sent Events), one event a line.
    Tail {
        /// Start after this position (default: the head, so only new events).
        #[arg(long)]
        after: Option<u64>,
        #[arg(long)]
        stream_type: Option<String>,
        /// One stream, e.g. `account/101`.
        #[arg(long)]
        stream: Option<String>,
        #[arg(long)]
        event_type: Option<String>,
        #[arg(long)]
        correlation_id: Option<String>,
    },
    /// Write everything the running host's store holds that is not derived (the log with its
    /// positions, components, idempotency and dedup records, cursors, dead letters) to FILE,
    /// from one snapshot, while the host keeps serving: an online backup.
    Export { file: PathBuf },
    /// Load an export into an empty store, PostgreSQL (--store) or the embedded store in
    /// --data, with no host running on it; views and snapshots are rebuilt by the host.
    Import {
        file: PathBuf,
        /// The PostgreSQL database to load it into; without it, the embedded store in --data.
        #[arg(long, env = "CAIRN_STORE", value_name = "URL")]
        store: Option<String>,
    },
    /// Every projection with its cursor, lag and status (running, rebuilding, failed).
    Views {},
    /// Build a projection's view again from the whole log, beside the live one.
    Rebuild { projection: String },
    /// List deployed components and their versions.
    Components {},
    /// Deploy a component (.wasm) as a new active version, after the host's replay check.
    Deploy {
        file: PathBuf,
        /// Component name; defaults to the file name without `.wasm` (`_` read as `-`).
        #[arg(long)]
        name: Option<String>,
        /// Run every check (including the replay check) and activate nothing.
        #[arg(long)]
        dry_run: bool,
        /// A new subscribing component reacts to the whole log, not only to new events.
        #[arg(long)]
        react_from_beginning: bool,
        /// Let the consumer check pass a reaction that sends other commands for events in
        /// the new version's schema (a schema change that is meant to change a saga).
        #[arg(long)]
        allow_changed_reactions: bool,
    },
    /// Load the host and measure it: throughput, latency, errors, and the same for its
    /// `/healthz` in the same run, so each figure is also a ratio.
    Bench {
        #[arg(value_enum, default_value_t = crate::bench::Scenario::Credits)]
        scenario: crate::bench::Scenario,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// How long each load runs (the scenario, then `/healthz`), in seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Stop the scenario after this many requests.
        #[arg(long)]
        count: Option<u64>,
        /// Accounts the load is spread over (`credits`, `transfers`, `mixed`).
        #[arg(long, default_value_t = 1000)]
        accounts: u64,
        /// Do not measure `/healthz`.
        #[arg(long)]
        no_baseline: bool,
        /// Another host of the same cluster (repeatable): the connections are spread over
        /// --url and these, and the answers tell how many were forwarded to their owner.
        #[arg(long, value_name = "URL")]
        also: Vec<String>,
    },
    /// Make the version that was active before the current one active again (after the
    /// replay check a deploy runs).
    Rollback {
        name: String,
        /// Skip the replay check: an emergency.
        #[arg(long)]
        force: bool,
    },
    /// Make a stored version of a component active (after the replay check a deploy runs).
    Activate {
        name: String,
        version: u32,
        /// Skip the replay check: an emergency.
        #[arg(long)]
        force: bool,
    },
}

/// What every client command shares: where the host is, how to authenticate, how to print.
struct Client {
    url: String,
    token: Option<String>,
    data: PathBuf,
    json: bool,
}

impl Client {
    /// The admin token: `--token` (or `$CAIRN_ADMIN_TOKEN`), else the data directory's file.
    fn token(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let file = self.data.join(ADMIN_TOKEN_FILE);
        let token = std::fs::read_to_string(&file).with_context(|| {
            format!("no --token given and no admin token file at {} (pass --data DIR?)", file.display())
        })?;
        Ok(token.trim().to_owned())
    }
}

/// Parse the command line (usage errors exit with 2), set up logging, run the command, and
/// turn its outcome into the documented exit code.
pub fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    let otlp = match &cli.command {
        Command::Serve { otlp_endpoint: Some(url), .. } if !url.trim().is_empty() => Some(url.trim()),
        _ => None,
    };
    let traces = match init_logging(cli.log_format, otlp) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("cairn: {error:#}");
            let usage = error.downcast_ref::<BadEndpoint>().is_some();
            return std::process::ExitCode::from(if usage { EXIT_USAGE } else { EXIT_REFUSED });
        }
    };
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            let client = Client { url: cli.url, token: cli.token, data: cli.data, json: cli.json };
            runtime.block_on(dispatch(cli.command, client))
        });
    if let Some(traces) = traces {
        // What is still queued goes out, within a bound.
        let _ = traces.shutdown_with_timeout(std::time::Duration::from_secs(5));
    }
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let failure = error.downcast_ref::<ClientFailure>();
            // A refusal's own words (the host's error body) are already on stderr.
            if !matches!(failure, Some(ClientFailure::Refused(_))) {
                eprintln!("cairn: {error:#}");
            }
            let code = match failure {
                Some(ClientFailure::Unreachable { .. }) => EXIT_UNREACHABLE,
                _ => EXIT_REFUSED,
            };
            std::process::ExitCode::from(code)
        }
    }
}

/// `--otlp-endpoint` names no URL the host can export to: a usage error.
#[derive(Debug, thiserror::Error)]
#[error("--otlp-endpoint must be an http:// URL (a collector or agent beside the host): {0:?}")]
struct BadEndpoint(String);

/// Logs go to stderr: text, coloured only when stderr is a terminal, or one JSON object a line.
/// With an OTLP endpoint, spans are exported too (whatever the log level): the provider to
/// shut down at exit is answered.
fn init_logging(
    format: LogFormat,
    otlp: Option<&str>,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Json => logs.json().boxed(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).boxed(),
    };
    let (spans, provider) = match otlp {
        Some(url) => {
            // The host speaks no TLS: a collector beside it (or an agent) takes plain HTTP.
            let parsed =
                reqwest::Url::parse(url).ok().filter(|u| u.scheme() == "http" && u.host_str().is_some());
            if parsed.is_none() {
                return Err(BadEndpoint(url.to_owned()).into());
            }
            let (layer, provider) = crate::traces::otlp_layer(url)?;
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs.with_filter(filter)).with(spans).init();
    Ok(provider)
}

async fn dispatch(command: Command, client: Client) -> anyhow::Result<()> {
    let host = HostClient::new(&client.url);
    match command {
        Command::Serve {
            listen,
            store,
            max_body_bytes,
            max_in_flight,
            mailbox_capacity,
            idle_seconds,
            max_live_actors,
            replay_sample,
            compile_timeout_ms,
            view_wait_ms,
            stream_max_lag,
            max_concurrent_folds,
            stream_max_per_client,
            write_stall_ms,
            guest_fuel,
            guest_memory_bytes,
            guest_output_bytes,
            guest_instances,
            view_document_bytes,
            request_timeout_ms,
            header_timeout_ms,
            idempotency_retention_seconds,
            compiled_cache,
            examples,
            allowed_hosts,
            allowed_origins,
            advertise,
            node_id,
            lease_ttl_ms,
            // Taken by the logging set-up, before the runtime starts.
            otlp_endpoint: _,
        } => {
            let mut config = ServeConfig {
                data_dir: client.data,
                store: store.filter(|url| !url.trim().is_empty()),
                listen,
                admin_token: client.token,
                ..ServeConfig::default()
            };
            config.body_limits.command_bytes = max_body_bytes;
            config.body_limits.max_in_flight = max_in_flight.max(1);
            config.actors.mailbox_capacity = mailbox_capacity.max(1);
            config.actors.idle_timeout = std::time::Duration::from_secs(idle_seconds.max(1));
            config.actors.max_live_actors = max_live_actors.max(1);
            config.replay_sample = replay_sample;
            config.compile_timeout = std::time::Duration::from_millis(compile_timeout_ms.max(1));
            config.view_wait = std::time::Duration::from_millis(view_wait_ms);
            config.max_stream_lag = stream_max_lag.max(1);
            config.max_live_streams_per_client = stream_max_per_client.max(1);
            if let Some(folds) = max_concurrent_folds {
                config.max_concurrent_folds = folds.max(1);
            }
            config.connections.write_stall = std::time::Duration::from_millis(write_stall_ms.max(1));
            config.guest_limits.fuel_per_call = guest_fuel.max(1);
            config.guest_limits.max_memory_bytes = guest_memory_bytes;
            config.guest_limits.max_output_bytes = guest_output_bytes;
            config.guest_limits.max_document_bytes = view_document_bytes.max(1);
            config.guest_limits.max_instances = guest_instances.max(1);
            config.body_limits.request_timeout = std::time::Duration::from_millis(request_timeout_ms.max(1));
            config.connections.header_read = std::time::Duration::from_millis(header_timeout_ms.max(1));
            config.idempotency_retention =
                std::time::Duration::from_secs(idempotency_retention_seconds.max(1));
            config.examples = bundled_examples(&examples)?;
            config.allowed_hosts = allowed_hosts;
            config.allowed_origins = allowed_origins;
            config.compiled_cache = compiled_cache;
            if let Some(advertise) = advertise.filter(|a| !a.trim().is_empty()) {
                let parsed = reqwest::Url::parse(&advertise)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
                anyhow::ensure!(
                    parsed.is_some(),
                    "--advertise must be an http:// URL other hosts reach this one at: {advertise:?}"
                );
                anyhow::ensure!(lease_ttl_ms >= 300, "--lease-ttl-ms must be at least 300");
                config.cluster = Some(crate::cluster::ClusterConfig {
                    advertise: advertise.trim_end_matches('/').to_owned(),
                    node_id,
                    lease_ttl: std::time::Duration::from_millis(lease_ttl_ms),
                });
            }
            crate::server::serve(config).await
        }
        Command::Send { type_name, id, command, idempotency_key, correlation_id, expect_version } => {
            let body: Value = serde_json::from_str(&command).context("the command must be JSON")?;
            let mut request = host.post(&format!("{}/commands", aggregate_path(&type_name, &id))).json(&body);
            if let Some(key) = idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            if let Some(id) = correlation_id {
                request = request.header("X-Correlation-Id", id);
            }
            if let Some(version) = expect_version {
                request = request.header("If-Match", format!("\"{version}\""));
            }
            print_answer(&client, request, people::command).await
        }
        Command::State { type_name, id, version } => {
            let mut path = aggregate_path(&type_name, &id);
            if let Some(version) = version {
                path.push_str(&format!("?version={version}"));
            }
            print_answer(&client, host.get(&path), people::state).await
        }
        Command::Events { type_name, id, from, limit } => {
            let path = format!("{}/events?from={from}&limit={limit}", aggregate_path(&type_name, &id));
            print_answer(&client, host.get(&path), people::events).await
        }
        Command::View { projection, key, min_position } => {
            let mut path = format!("/views/{}/{}", segment(&projection), segment(&key));
            if let Some(position) = min_position {
                path.push_str(&format!("?min_position={position}"));
            }
            print_answer(&client, host.get(&path), people::document).await
        }
        Command::Tail { after, stream_type, stream, event_type, correlation_id } => {
            let filters = [
                ("after", after.map(|p| p.to_string())),
                ("stream_type", stream_type),
                ("stream", stream),
                ("event_type", event_type),
                ("correlation_id", correlation_id),
            ];
            tail(&host, &format!("/events/stream?{}", query_of(filters)), client.json).await
        }
        Command::Views {} => print_answer(&client, host.get("/views"), people::views).await,
        Command::Rebuild { projection } => {
            let path = format!("/views/{}/rebuild", segment(&projection));
            print_answer(&client, host.post(&path).bearer_auth(client.token()?), people::rebuild).await
        }
        Command::Components {} => print_answer(&client, host.get("/components"), people::components).await,
        Command::Export { file } => export(&host, &client, &file).await,
        Command::Import { file, store } => {
            import(&client, &file, store.filter(|s| !s.trim().is_empty())).await
        }
        Command::Log { after, limit } => {
            print_answer(&client, host.get(&format!("/events?after={after}&limit={limit}")), people::events)
                .await
        }
        Command::Saga { correlation_id, after } => {
            let mut path = format!("/sagas/{}", segment(&correlation_id));
            if let Some(after) = after {
                path.push_str(&format!("?after={after}"));
            }
            print_answer(&client, host.get(&path), people::events).await
        }
        Command::Routing {} => print_answer(&client, host.get("/routing"), people::routing).await,
        Command::DeadLetters { subscriber, stream, after, limit } => {
            let filters = [
                ("subscriber", subscriber),
                ("stream", stream),
                ("after", after),
                ("limit", Some(limit.to_string())),
            ];
            let path = format!("/routing/dead-letters?{}", query_of(filters));
            print_answer(&client, host.get(&path), people::dead_letters).await
        }
        Command::Cluster {} => print_answer(&client, host.get("/cluster"), people::cluster).await,
        Command::Deploy { file, name, dry_run, react_from_beginning, allow_changed_reactions } => {
            let bytes = std::fs::read(&file).with_context(|| format!("read {}", file.display()))?;
            let name = match name {
                Some(name) => name,
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .map(|s| s.replace('_', "-"))
                    .context("cannot tell the component name from the file name; pass --name")?,
            };
            let mut query = Vec::new();
            if dry_run {
                query.push("dry_run=true");
            }
            if react_from_beginning {
                query.push("react_from=beginning");
            }
            if allow_changed_reactions {
                query.push("allow_changed_reactions=true");
            }
            let request = host
                .put(&format!("/components/{}?{}", segment(&name), query.join("&")))
                .bearer_auth(client.token()?)
                .header("Content-Type", "application/wasm")
                .body(bytes);
            print_answer(&client, request, people::deployed).await
        }
        Command::Bench { scenario, connections, duration, count, accounts, no_baseline, also } => {
            use std::io::IsTerminal;
            if !(duration.is_finite() && duration > 0.0) {
                anyhow::bail!("--duration must be a positive number of seconds");
            }
            let options = crate::bench::BenchOptions {
                scenario,
                connections,
                duration: std::time::Duration::from_secs_f64(duration),
                count,
                accounts,
                no_baseline,
                progress: !client.json && std::io::stderr().is_terminal(),
                also,
            };
            let report = crate::bench::run(host.base(), &options).await?;
            if client.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                crate::bench::print(&report);
            }
            Ok(())
        }
        Command::Rollback { name, force } => {
            let path = format!("/components/{}/rollback?force={force}", segment(&name));
            print_answer(&client, host.post(&path).bearer_auth(client.token()?), people::switched).await
        }
        Command::Activate { name, version, force } => {
            let path = format!("/components/{}/activate?version={version}&force={force}", segment(&name));
            print_answer(&client, host.post(&path).bearer_auth(client.token()?), people::switched).await
        }
    }
}

/// Print the events of a live stream as they come, one a line, until the host ends it.
/// `cairn export FILE`: download `GET /export` into FILE (through a `.partial` file beside
/// it), then check it whole before it takes the name.
async fn export(host: &HostClient, client: &Client, file: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut response = host
        .get("/export")
        .bearer_auth(client.token()?)
        .send()
        .await
        .with_context(|| format!("cannot reach the host at {}", client.url))?;
    if !response.status().is_success() {
        let status = response.status();
        anyhow::bail!("the host answered {status}: {}", response.text().await.unwrap_or_default());
    }
    let partial = file.with_extension("partial");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?,
    );
    let bar = if client.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {binary_bytes} exported ({binary_bytes_per_sec})")
            .expect("a valid template"),
    );
    while let Some(chunk) = response.chunk().await.context("the export was cut short")? {
        out.write_all(&chunk)?;
        bar.inc(chunk.len() as u64);
    }
    let out = out.into_inner().map_err(|e| e.into_error())?;
    out.sync_all()?;
    drop(out);
    bar.finish_and_clear();
    let checked = {
        let partial = partial.clone();
        tokio::task::spawn_blocking(move || {
            crate::store::export::check(std::io::BufReader::new(std::fs::File::open(partial)?))
        })
        .await?
    };
    let contents = checked.with_context(|| format!("the export in {} is not whole", partial.display()))?;
    std::fs::rename(&partial, file)?;
    report_contents(client, "exported", file, &contents);
    Ok(())
}

/// `cairn import FILE`: check FILE, then load it into an empty store opened here.
async fn import(client: &Client, file: &Path, store: Option<String>) -> anyhow::Result<()> {
    let (reads, writer) = match &store {
        Some(url) => {
            let opened = crate::store::postgres::open(url).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            (opened.store, opened.writer)
        }
        None => {
            std::fs::create_dir_all(&client.data)
                .with_context(|| format!("cannot create {}", client.data.display()))?;
            let (reads, writer, _) = crate::host::open_embedded(&client.data)?;
            (reads, writer)
        }
    };
    let bar = if client.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events imported ({per_sec})")
            .expect("a valid template"),
    );
    let imported = crate::store::export::import(
        file,
        &reads,
        &writer,
        |contents| bar.set_length(contents.events),
        |events| bar.set_position(events),
    )
    .await;
    bar.finish_and_clear();
    writer.shutdown().await;
    let contents = imported.with_context(|| format!("cannot import {}", file.display()))?;
    let into =
        store.as_deref().map_or_else(|| client.data.display().to_string(), crate::store::postgres::redacted);
    report_contents(client, &format!("imported into {into}:"), file, &contents);
    Ok(())
}

fn report_contents(client: &Client, what: &str, file: &Path, contents: &crate::store::export::Contents) {
    if client.json {
        println!("{}", serde_json::to_string(contents).expect("plain data"));
    } else {
        println!(
            "{what} {} events (positions 1 to {}), {} components, {} idempotency and dedup records, \
             {} cursors, {} dead letters ({}; sha256 {})",
            contents.events,
            contents.head,
            contents.components,
            contents.outcomes,
            contents.cursors,
            contents.dead_letters,
            file.display(),
            contents.sha256
        );
    }
}

async fn tail(host: &HostClient, path: &str, json: bool) -> anyhow::Result<()> {
    let mut response = host
        .get(path)
        .send()
        .await
        .map_err(|source| ClientFailure::Unreachable { url: host.url(path), source })?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str::<Value>(&text).ok();
        match body {
            Some(body) if json => eprintln!("{body}"),
            _ => eprintln!("{}", refusal(status, body.as_ref(), &text)),
        }
        return Err(ClientFailure::Refused(status).into());
    }
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await.context("the event stream broke off")? {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let mut kind = "message";
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    kind = if value.trim() == "end" { "end" } else { "other" };
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            match kind {
                "end" => {
                    eprintln!("the host ended the stream: {}", people::printable(&data));
                    return Ok(());
                }
                _ if data.is_empty() => {} // a keep-alive comment
                _ if json => println!("{data}"),
                _ => println!("{}", event_line(&data)),
            }
        }
    }
    Ok(())
}

/// `position stream vVERSION Type {data}`: one event, readable in a terminal.
fn event_line(data: &str) -> String {
    let line = match serde_json::from_str::<Value>(data) {
        Ok(event) => format!(
            "{:>8} {} v{} {} {}",
            event["position"],
            event["stream"].as_str().unwrap_or("?"),
            event["version"],
            event["type"].as_str().unwrap_or("?"),
            event["data"]
        ),
        Err(_) => data.to_owned(),
    };
    people::printable(&line)
}

/// A query string of the parameters given, each value URL-encoded.
fn query_of<const N: usize>(parameters: [(&str, Option<String>); N]) -> String {
    let given: Vec<String> =
        parameters.into_iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", segment(&v)))).collect();
    given.join("&")
}

/// A value sent as an HTTP header: refused at parsing (a usage error), not when it is sent.
fn header_value(text: &str) -> Result<String, String> {
    match reqwest::header::HeaderValue::from_str(text) {
        Ok(_) => Ok(text.to_owned()),
        Err(_) => Err("it is sent as an HTTP header: no control characters".to_owned()),
    }
}

/// Print the answer: for a person through `render`, for a script (`--json`) as the host's JSON.
/// A refusal goes to stderr and fails the command.
async fn print_answer(
    client: &Client,
    request: reqwest::RequestBuilder,
    render: people::Render,
) -> anyhow::Result<()> {
    let response = request.send().await.map_err(|source| {
        let url = source.url().map(|u| u.origin().ascii_serialization()).unwrap_or_default();
        ClientFailure::Unreachable { url, source }
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let body = serde_json::from_str::<Value>(&text).ok();
    if status.is_success() {
        match body {
            // The host's bytes, not a re-serialisation: keys stay in the host's order.
            Some(_) if client.json => println!("{}", text.trim_end()),
            Some(body) => println!("{}", render(&body, &headers)),
            None => println!("{}", people::printable(&text)),
        }
        return Ok(());
    }
    match body {
        Some(_) if client.json => eprintln!("{}", text.trim_end()),
        _ => eprintln!("{}", refusal(status, body.as_ref(), &text)),
    }
    Err(ClientFailure::Refused(status).into())
}

/// A refusal for a person: the host's message, its code, and the status. A rejection's message
/// and code come from the guest, so their control characters are escaped.
fn refusal(status: reqwest::StatusCode, body: Option<&Value>, text: &str) -> String {
    let error = body.map(|b| &b["error"]);
    match error.map(|e| (e["code"].as_str(), e["message"].as_str())) {
        Some((Some(code), Some(message))) => {
            let (message, code) = (people::printable(message), people::printable(code));
            format!("{message} [{code}, HTTP {}]", status.as_u16())
        }
        _ => format!("HTTP {status}: {}", people::printable(text.trim())),
    }
}

/// The bundled components `--examples` names (`all`, `none`, or a list), checked against
/// what is bundled.
fn bundled_examples(names: &[String]) -> anyhow::Result<Vec<&'static str>> {
    let bundled: Vec<&'static str> = cairn_artifacts::BUNDLED.iter().map(|(name, _)| *name).collect();
    match names {
        [one] if one == "all" => return Ok(bundled),
        [one] if one == "none" => return Ok(Vec::new()),
        _ => {}
    }
    names
        .iter()
        .map(|name| {
            bundled.iter().copied().find(|b| b == name).ok_or_else(|| {
                anyhow::anyhow!("--examples: no bundled component {name:?} (bundled: {})", bundled.join(", "))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Cli, refusal};
    use clap::CommandFactory;

    #[test]
    fn a_guests_rejection_cannot_drive_the_terminal() {
        let body = serde_json::json!({"error": {"code": "no\u{1b}[2J", "message": "bad\u{1b}]0;title\u{7}"}});
        let said = refusal(reqwest::StatusCode::UNPROCESSABLE_ENTITY, Some(&body), "");
        assert_eq!(said, r"bad\u{1b}]0;title\u{7} [no\u{1b}[2J, HTTP 422]");
        let raw = refusal(reqwest::StatusCode::BAD_GATEWAY, None, "proxy\u{1b}[31m down\n");
        assert_eq!(raw, r"HTTP 502 Bad Gateway: proxy\u{1b}[31m down");
    }

    /// clap's own consistency checks (a global flag and a subcommand argument sharing a name
    /// fails here rather than at run time).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
