//! criterion benchmarks of the event store's append path (`cargo bench -p cairn --bench store`),
//! each next to the ceiling beneath it:
//! (b) one append per commit; 64 appends from 64 concurrent writers, group-committed; the same
//!     64 rows inserted into one redb table in one durable commit (redb's raw batched-insert
//!     ceiling at that batch size), then into the store's tables one by one (what its layout
//!     costs without the writer); and the disk's raw `fsync` rate.
//!
//! Every commit here is durable (fsynced), as a command's is. The data lives in a temporary
//! directory next to the target directory, so it is on the same disk as a host's data.

use cairn::store::{AppendBatch, ComponentVersion, NewEvent, StreamId, Version};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use redb::{Database, Durability, TableDefinition};
use std::io::Write;
use std::time::{Duration, Instant};

/// Writers per group commit, as at 64 HTTP connections.
const WRITERS: u64 = 64;

fn scratch() -> tempfile::TempDir {
    let beside_target = std::env::var_os("CARGO_TARGET_TMPDIR").map(std::path::PathBuf::from);
    match beside_target {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a scratch directory")
}

/// An event as an Account credit stores it: MessagePack of about 60 bytes.
fn credit(n: u64) -> NewEvent {
    let data = serde_json::json!({"amount": 1, "transaction_id": format!("c-{n}"), "balance": 1_000_000 + n});
    NewEvent {
        event_type: "AccountCredited".to_owned(),
        payload: cairn::msgpack::to_msgpack(&data),
        correlation_id: format!("{n:032x}"),
        causation_id: None,
        component_version: ComponentVersion(1),
        reply_to: None,
        schema: 1,
        trace: None,
    }
}

fn stream(k: u64) -> StreamId {
    StreamId::new("account", &format!("bench-{k}")).expect("a valid stream id")
}

fn appends(c: &mut Criterion) {
    let metrics = cairn::telemetry::install();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let dir = scratch();
    let (_store, writer) =
        cairn::store::embedded::open(&dir.path().join("events.redb")).expect("the store opens");
    let mut versions = vec![0u64; WRITERS as usize];
    let mut sequence = 0u64;

    let mut group = c.benchmark_group("store append");
    group.throughput(Throughput::Elements(1));
    group.bench_function("one append per commit", |b| {
        b.iter(|| {
            sequence += 1;
            versions[0] += 1;
            let batch = AppendBatch {
                stream: stream(0),
                expected_version: Version(versions[0] - 1),
                events: vec![credit(sequence)],
                outcomes: Vec::new(),
                snapshot: None,
                history: Vec::new(),
                fence: None,
            };
            runtime.block_on(writer.append(batch)).expect("the append commits")
        })
    });
    group.throughput(Throughput::Elements(WRITERS));
    // No commit yet (the benchmark before was filtered out): no histogram yet either.
    let before = metrics.as_ref().map(|handle| batches(&handle.render()).unwrap_or((0.0, 0.0)));
    group.bench_function("64 concurrent writers, group commit", |b| {
        b.iter_custom(|rounds| {
            let mut spent = Duration::ZERO;
            for _ in 0..rounds {
                let batches: Vec<_> = (0..WRITERS)
                    .map(|k| {
                        sequence += 1;
                        versions[k as usize] += 1;
                        AppendBatch {
                            stream: stream(k),
                            expected_version: Version(versions[k as usize] - 1),
                            events: vec![credit(sequence)],
                            outcomes: Vec::new(),
                            snapshot: None,
                            history: Vec::new(),
                            fence: None,
                        }
                    })
                    .collect();
                let began = Instant::now();
                runtime.block_on(async {
                    let pending: Vec<_> = batches
                        .into_iter()
                        .map(|batch| {
                            let writer = writer.clone();
                            tokio::spawn(async move { writer.append(batch).await })
                        })
                        .collect();
                    for append in pending {
                        append.await.expect("the writer task").expect("the append commits");
                    }
                });
                spent += began.elapsed();
            }
            spent
        })
    });
    group.finish();
    runtime.block_on(writer.shutdown());
    let after = metrics.as_ref().and_then(|handle| batches(&handle.render()));
    if let (Some((appends_before, commits_before)), Some((appends, commits))) = (before, after) {
        let batch = (appends - appends_before) / (commits - commits_before).max(1.0);
        eprintln!("64 concurrent writers: {batch:.1} appends per group commit on average");
    }
}

/// (appends, commits) so far, from the host's own `cairn_commit_batch_appends` histogram.
fn batches(rendered: &str) -> Option<(f64, f64)> {
    cairn::bench::CommitMetrics::from_prometheus(rendered).map(|m| (m.appends, m.commits))
}

const ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("rows");

/// redb alone: the same number of rows of an encoded event's size, one table, one durable
/// commit. Our group commit also writes the stream index, the correlation index and the
/// stream's head for every event, so it cannot reach this.
fn raw_redb(c: &mut Criterion) {
    let dir = scratch();
    let db = Database::create(dir.path().join("raw.redb")).expect("redb creates a file");
    let row = vec![7u8; 160];
    let mut key = 0u64;
    let mut group = c.benchmark_group("store append");
    group.throughput(Throughput::Elements(WRITERS));
    group.bench_function("raw redb, 64 rows in one durable commit", |b| {
        b.iter(|| {
            let mut txn = db.begin_write().expect("a write transaction");
            txn.set_durability(Durability::Immediate).expect("durable commits");
            {
                let mut rows = txn.open_table(ROWS).expect("the table");
                for _ in 0..WRITERS {
                    key += 1;
                    rows.insert(key, row.as_slice()).expect("an insert");
                }
            }
            txn.commit().expect("the commit");
        })
    });
    // The store's own layout, table by table, to show what each costs a commit.
    let layouts = [
        "events only",
        "events + stream index",
        "events + stream index + correlations",
        "the store's four tables",
    ];
    let (mut versions, mut position) = (vec![0u64; WRITERS as usize], 0u64);
    for (tables, layout) in layouts.into_iter().enumerate() {
        group.bench_function(format!("raw redb, 64 events into {layout}, one durable commit"), |b| {
            use cairn::store::embedded::tables::{CORRELATIONS, EVENTS, STREAM_INDEX, STREAMS};
            b.iter(|| {
                let mut txn = db.begin_write().expect("a write transaction");
                txn.set_durability(Durability::Immediate).expect("durable commits");
                {
                    let mut events = txn.open_table(EVENTS).expect("events");
                    let mut index = txn.open_table(STREAM_INDEX).expect("stream index");
                    let mut correlations = txn.open_table(CORRELATIONS).expect("correlations");
                    let mut streams = txn.open_table(STREAMS).expect("streams");
                    for (k, version) in versions.iter_mut().enumerate() {
                        position += 1;
                        *version += 1;
                        let stream = format!("account/bench-{k}");
                        events.insert(position, row.as_slice()).expect("an event");
                        if tables >= 1 {
                            index.insert((stream.as_str(), *version), position).expect("its index entry");
                        }
                        if tables >= 2 {
                            let correlation = format!("{position:032x}");
                            correlations
                                .insert((correlation.as_str(), position), ())
                                .expect("its correlation");
                        }
                        if tables >= 3 {
                            streams.insert(stream.as_str(), (*version, position)).expect("its stream head");
                        }
                    }
                }
                txn.commit().expect("the commit");
            })
        });
    }
    group.finish();
}

/// The disk's own ceiling for commits: write 4 KiB, `fdatasync`, again.
fn raw_fsync(c: &mut Criterion) {
    let dir = scratch();
    let mut file = std::fs::File::create(dir.path().join("fsync")).expect("a file");
    let page = vec![1u8; 4096];
    let mut group = c.benchmark_group("store append");
    group.throughput(Throughput::Elements(1));
    group.bench_function("raw fsync of 4 KiB", |b| {
        b.iter_batched(
            || (),
            |()| {
                file.write_all(&page).expect("a write");
                file.sync_data().expect("fdatasync");
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = appends, raw_redb, raw_fsync
}
criterion_main!(benches);
