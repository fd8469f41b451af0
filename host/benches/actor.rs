//! criterion benchmarks of the actor path without HTTP (`cargo bench -p cairn --bench actor`):
//! (d) a CreditAccount through the actor of its account, on the bundled Account component, into
//!     a real redb file with durable commits. Once alone (one fsync per command), and 64 at a
//!     time from 64 senders, over 64 accounts and on one hot account, as at 64 HTTP
//!     connections. Set beside (a) in the `guest` bench, this gives the guest's share of a
//!     command.

use cairn::actor::{ActorConfig, Actors, CommandRequest};
use cairn::components::{ComponentRegistry, DeployOptions};
use cairn::runtime::{Limits, Runtime};
use cairn::store::StreamId;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SENDERS: u64 = 64;

struct Host {
    actors: Actors,
    next_transaction: AtomicU64,
    _dir: tempfile::TempDir,
}

impl Host {
    async fn start() -> Host {
        let dir = match std::env::var_os("CARGO_TARGET_TMPDIR") {
            Some(beside_target) => tempfile::tempdir_in(beside_target),
            None => tempfile::tempdir(),
        }
        .expect("a scratch directory");
        let (store, writer) =
            cairn::store::embedded::open(&dir.path().join("events.redb")).expect("the store opens");
        let runtime = Runtime::new(None, Limits::default()).expect("a runtime");
        let components = Arc::new(
            ComponentRegistry::open(runtime, store.clone(), writer.clone()).await.expect("a registry"),
        );
        let account = cairn_artifacts::component("account").expect("the bundled account component");
        components
            .deploy("account", account.to_vec(), DeployOptions::default())
            .await
            .expect("the account component deploys");
        let part = cairn::lifecycle::Part::child_of(&cairn::lifecycle::CancellationToken::new());
        let runtime = tokio::runtime::Handle::current();
        let actors = Actors::new(store, writer, components, ActorConfig::default(), runtime, part, None);
        let host = Host { actors, next_transaction: AtomicU64::new(0), _dir: dir };
        for k in 0..SENDERS {
            host.send(k, "OpenAccount", json!({"initial_balance": 0})).await;
        }
        host
    }

    async fn send(&self, account: u64, command_type: &str, data: serde_json::Value) {
        let stream = StreamId::new("account", &format!("a-{account}")).expect("a stream id");
        let request = CommandRequest {
            command_type: command_type.to_owned(),
            payload: cairn::msgpack::to_msgpack(&data),
            expected_version: None,
            idempotency_key: None,
            fingerprint: None,
            correlation_id: format!("{:032x}", self.next_transaction.load(Ordering::Relaxed)),
            causation: None,
            span: tracing::Span::none(),
            trace: None,
        };
        self.actors.send(stream, request).await.expect("the command is accepted");
    }

    async fn credit(&self, account: u64) {
        let n = self.next_transaction.fetch_add(1, Ordering::Relaxed);
        self.send(account, "CreditAccount", json!({"amount": 1, "transaction_id": format!("t-{n}")})).await;
    }
}

fn actor_round_trips(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let host = Arc::new(runtime.block_on(Host::start()));
    let mut group = c.benchmark_group("actor round trip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one CreditAccount alone", |b| b.iter(|| runtime.block_on(host.credit(0))));
    group.throughput(Throughput::Elements(SENDERS));
    for (name, accounts) in [("64 senders over 64 accounts", SENDERS), ("64 senders on one account", 1)] {
        group.bench_function(name, |b| {
            b.iter_custom(|rounds| {
                let began = Instant::now();
                for _ in 0..rounds {
                    runtime.block_on(async {
                        let sent: Vec<_> = (0..SENDERS)
                            .map(|k| {
                                let host = host.clone();
                                tokio::spawn(async move { host.credit(k % accounts).await })
                            })
                            .collect();
                        for send in sent {
                            send.await.expect("a sender task");
                        }
                    });
                }
                began.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = actor_round_trips
}
criterion_main!(benches);
