//! The event store's behaviour as named scenarios, after the cases of Akka Persistence's
//! journal and snapshot-store TCK, each run against both stores: the embedded redb store
//! (module `embedded`) and PostgreSQL (module `postgres`, on a server of the run's own).

#[path = "../../tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use cairn::projection::store::embedded::EmbeddedViews;
use cairn::projection::store::postgres::PostgresViews;
use cairn::projection::store::{BatchCommit, Generation, ViewRecord, Views};
use cairn::store::{
    AppendBatch, AppendError, ComponentVersion, EventStore, NewEvent, OutcomeKey, Position, Snapshot,
    StoredEvent, StoredOutcome, StreamId, Version, Writer,
};
use cairn::traces::TraceParent;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn stream(id: &str) -> StreamId {
    StreamId::new("account", id).unwrap()
}

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_type: format!("Happened{n}"),
        payload: vec![0x81, 0xa1, b'n', n as u8 & 0x7f],
        correlation_id: format!("corr-{n}"),
        causation_id: None,
        component_version: ComponentVersion(1),
        reply_to: None,
        schema: 1,
        // Every other event was caused in a trace.
        trace: (!n.is_multiple_of(2)).then(|| trace(n)),
    }
}

fn trace(n: u64) -> TraceParent {
    TraceParent {
        trace_id: u128::from(n).to_be_bytes(),
        span_id: (n + 1).to_be_bytes(),
        sampled: !n.is_multiple_of(3),
    }
}

fn batch(stream: &StreamId, expected_version: u64, events: impl IntoIterator<Item = u64>) -> AppendBatch {
    AppendBatch {
        stream: stream.clone(),
        expected_version: Version(expected_version),
        events: events.into_iter().map(event).collect(),
        outcomes: Vec::new(),
        snapshot: None,
        history: Vec::new(),
        fence: None,
    }
}

fn versions(events: &[StoredEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version.get()).collect()
}

/// A store to run a scenario on: an embedded store in a directory of its own, or a
/// database of its own on the run's PostgreSQL server.
enum Backend {
    Embedded(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn embedded() -> Backend {
        Backend::Embedded(tempfile::tempdir().unwrap())
    }

    fn postgres() -> Backend {
        Backend::Postgres(postgres::fresh_database())
    }

    /// What the child writer of the kill test is told to open.
    fn location(&self) -> String {
        match self {
            Backend::Embedded(dir) => format!("dir:{}", dir.path().display()),
            Backend::Postgres(url) => url.clone(),
        }
    }

    async fn open(&self) -> (EventStore, Writer) {
        open_at(&self.location()).await
    }

    async fn views(&self) -> Views {
        match self {
            Backend::Embedded(dir) => EmbeddedViews::open(&dir.path().join("views.redb")).unwrap().shared(),
            Backend::Postgres(url) => {
                PostgresViews::shared(cairn::store::postgres::views_pool(url).await.unwrap())
            }
        }
    }
}

async fn open_at(location: &str) -> (EventStore, Writer) {
    match location.strip_prefix("dir:") {
        Some(dir) => cairn::store::embedded::open(&Path::new(dir).join("events.redb")).unwrap(),
        None => {
            let opened = cairn::store::postgres::open(location).await.unwrap();
            (opened.store, opened.writer)
        }
    }
}

async fn close(store: EventStore, writer: Writer) {
    writer.shutdown().await;
    drop(writer);
    drop(store);
}

async fn append_and_read_back_in_order(backend: Backend) {
    let (store, writer) = backend.open().await;
    let s = stream("1");
    writer.append(batch(&s, 0, [1, 2, 3])).await.unwrap();
    writer.append(batch(&s, 3, [4])).await.unwrap();
    let events = store.read_stream(&s, Version(1), 100.into()).await.unwrap();
    assert_eq!(versions(&events), [1, 2, 3, 4]);
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["Happened1", "Happened2", "Happened3", "Happened4"]);
    assert_eq!(events[1].payload, event(2).payload);
    assert_eq!(events[0].correlation_id, "corr-1");
    let traces: Vec<_> = events.iter().map(|e| e.trace).collect();
    assert_eq!(traces, [Some(trace(1)), None, Some(trace(3)), None], "each event keeps its trace");
    assert_eq!(store.stream_head(&s).await.unwrap(), Some((Version(4), events[3].position)));
    close(store, writer).await;
}

async fn read_ranges_honour_from_to_and_limit(backend: Backend) {
    let (store, writer) = backend.open().await;
    let s = stream("1");
    writer.append(batch(&s, 0, 1..=10)).await.unwrap();
    assert_eq!(versions(&store.read_stream(&s, Version(4), 3.into()).await.unwrap()), [4, 5, 6]);
    assert_eq!(
        versions(&store.read_stream_range(&s, Version(2), Version(5), 100.into()).await.unwrap()),
        [2, 3, 4, 5]
    );
    assert_eq!(
        versions(&store.read_stream_range(&s, Version(9), Version(100), 100.into()).await.unwrap()),
        [9, 10]
    );
    assert!(store.read_stream(&s, Version(11), 100.into()).await.unwrap().is_empty());
    assert_eq!(
        versions(&store.read_stream(&s, Version(0), 2.into()).await.unwrap()),
        [1, 2],
        "from 0 reads from the start"
    );
    close(store, writer).await;
}

async fn an_empty_stream_has_no_head_and_no_events(backend: Backend) {
    let (store, writer) = backend.open().await;
    assert_eq!(store.stream_head(&stream("nobody")).await.unwrap(), None);
    assert!(store.read_stream(&stream("nobody"), Version(1), 10.into()).await.unwrap().is_empty());
    assert!(store.read_all(Position(0), 10.into()).await.unwrap().is_empty());
    assert_eq!(store.head_position(), 0);
    close(store, writer).await;
}

async fn many_streams_interleaved_stay_separate(backend: Backend) {
    let (store, writer) = backend.open().await;
    // Streams append concurrently (so their batches share group commits); each stream's
    // own appends stay sequential, as its actor's would.
    let mut tasks = Vec::new();
    for id in 0..8 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(&id.to_string());
            for round in 0..5u64 {
                writer.append(batch(&s, round * 2, [round * 2 + 1, round * 2 + 2])).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for id in 0..8 {
        let events = store.read_stream(&stream(&id.to_string()), Version(1), 100.into()).await.unwrap();
        assert_eq!(versions(&events), (1..=10).collect::<Vec<_>>());
        assert!(events.iter().all(|e| e.stream_id == id.to_string()));
    }
    assert_eq!(store.read_all(Position(0), 1000.into()).await.unwrap().len(), 80);
    close(store, writer).await;
}

async fn an_expected_version_conflict_stores_nothing(backend: Backend) {
    let (store, writer) = backend.open().await;
    let s = stream("1");
    writer.append(batch(&s, 0, [1, 2])).await.unwrap();
    let mut conflicting = batch(&s, 1, [3]);
    conflicting.outcomes.push((
        OutcomeKey::Idempotency("k".into()),
        StoredOutcome::Accepted {
            first_version: Version(2),
            count: 1,
            version: Version(2),
            fingerprint: None,
        },
    ));
    match writer.append(conflicting).await {
        Err(AppendError::VersionConflict { expected: Version(1), actual: Version(2) }) => {}
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(store.read_stream(&s, Version(1), 10.into()).await.unwrap().len(), 2);
    assert_eq!(
        store.outcome(&s, &OutcomeKey::Idempotency("k".into())).await.unwrap(),
        None,
        "a refused batch leaves no outcome behind"
    );
    writer.append(batch(&s, 2, [3])).await.unwrap();
    close(store, writer).await;
}

async fn global_positions_are_strictly_increasing_across_streams(backend: Backend) {
    let (store, writer) = backend.open().await;
    let (a, b) = (stream("a"), stream("b"));
    writer.append(batch(&a, 0, [1])).await.unwrap();
    writer.append(batch(&b, 0, [1, 2])).await.unwrap();
    writer.append(batch(&a, 1, [2])).await.unwrap();
    let all = store.read_all(Position(0), 100.into()).await.unwrap();
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let streams: Vec<_> = all.iter().map(|e| e.stream().key()).collect();
    assert_eq!(streams, ["account/a", "account/b", "account/b", "account/a"]);
    assert_eq!(store.read_all(Position(2), 1.into()).await.unwrap()[0].position, 3);
    assert_eq!(store.head_position(), 4);
    close(store, writer).await;
}

async fn outcomes_and_the_correlation_index_commit_with_the_events(backend: Backend) {
    let (store, writer) = backend.open().await;
    let s = stream("1");
    let accepted = StoredOutcome::Accepted {
        first_version: Version(1),
        count: 1,
        version: Version(1),
        fingerprint: None,
    };
    let mut first = batch(&s, 0, [1]);
    first.outcomes.push((OutcomeKey::Idempotency("k1".into()), accepted.clone()));
    first.outcomes.push((
        OutcomeKey::Idempotency("k2".into()),
        StoredOutcome::Rejected { code: "nope".into(), message: "no".into(), fingerprint: None },
    ));
    writer.append(first).await.unwrap();
    assert_eq!(store.outcome(&s, &OutcomeKey::Idempotency("k1".into())).await.unwrap(), Some(accepted));
    assert!(matches!(
        store.outcome(&s, &OutcomeKey::Idempotency("k2".into())).await.unwrap(),
        Some(StoredOutcome::Rejected { .. })
    ));
    assert_eq!(
        store.outcome(&stream("2"), &OutcomeKey::Idempotency("k1".into())).await.unwrap(),
        None,
        "keys are per stream"
    );
    assert_eq!(store.read_correlation("corr-1", Position(0), 10.into()).await.unwrap().len(), 1);
    assert!(store.read_correlation("corr-unknown", Position(0), 10.into()).await.unwrap().is_empty());
    close(store, writer).await;
}

async fn snapshots_save_load_latest_and_are_ignored_for_another_digest(backend: Backend) {
    let (store, writer) = backend.open().await;
    let s = stream("1");
    let digest = vec![7u8; 32];
    let mut with_snapshot = batch(&s, 0, [1, 2]);
    with_snapshot.snapshot =
        Some(Snapshot { version: Version(2), digest: digest.clone(), state: b"two".to_vec() });
    writer.append(with_snapshot).await.unwrap();
    let mut newer = batch(&s, 2, [3]);
    newer.snapshot = Some(Snapshot { version: Version(3), digest: digest.clone(), state: b"three".to_vec() });
    writer.append(newer).await.unwrap();
    let latest = store.load_snapshot_for(&s, &digest).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.state.as_slice()), (Version(3), b"three".as_slice()));
    assert_eq!(
        store.load_snapshot_for(&s, &[8u8; 32]).await.unwrap(),
        None,
        "another version's snapshot is not used"
    );
    assert_eq!(store.load_snapshot(&stream("other")).await.unwrap(), None);
    close(store, writer).await;
}

async fn everything_is_there_after_close_and_reopen(backend: Backend) {
    let s = stream("1");
    {
        let (store, writer) = backend.open().await;
        writer.append(batch(&s, 0, [1, 2, 3])).await.unwrap();
        writer.set_cursor("router:account", Position(2)).await.unwrap();
        close(store, writer).await;
    }
    let (store, writer) = backend.open().await;
    assert_eq!(store.read_stream(&s, Version(1), 10.into()).await.unwrap().len(), 3);
    assert_eq!(store.head_position(), 3);
    assert_eq!(store.cursor("router:account").await.unwrap(), 2);
    writer.append(batch(&s, 3, [4])).await.unwrap();
    assert_eq!(
        store.read_all(Position(0), 10.into()).await.unwrap().last().unwrap().position,
        4,
        "positions continue after reopen"
    );
    close(store, writer).await;
}

/// Run by `acknowledged_appends_survive_sigkill_mid_write` in a child process: append
/// forever from 4 concurrent streams, printing each acknowledged append.
/// The stream index is written from a tail the writer keeps in memory (a stream's entries
/// move into the table 16 at a time, or once 16 384 events old): reads see every event
/// before and after a move, and a reopened store rebuilds the tail from the log.
async fn reads_are_complete_across_stream_index_flushes_and_reopens(backend: Backend) {
    let (store, writer) = backend.open().await;
    let streams: Vec<StreamId> = (0..60).map(|k| stream(&format!("f-{k}"))).collect();
    let all = |upto: u64| (1..=upto).collect::<Vec<_>>();
    // 60 streams × 100 events, ten at a time, interleaved: 6 000 events, past a flush.
    for round in 0..10u64 {
        for s in &streams {
            writer.append(batch(s, round * 10, round * 10 + 1..=round * 10 + 10)).await.unwrap();
        }
        for s in &streams {
            assert_eq!(
                versions(&store.read_stream(s, Version(1), usize::MAX.into()).await.unwrap()),
                all((round + 1) * 10)
            );
        }
    }
    // A quiet stream's one entry leaves the tail once 16 384 events have passed it.
    let quiet = stream("quiet");
    writer.append(batch(&quiet, 0, [1])).await.unwrap();
    let bulk = stream("bulk");
    for round in 0..17u64 {
        writer.append(batch(&bulk, round * 1000, round * 1000 + 1..=round * 1000 + 1000)).await.unwrap();
        assert_eq!(versions(&store.read_stream(&quiet, Version(1), usize::MAX.into()).await.unwrap()), [1]);
    }
    assert_eq!(store.read_stream(&bulk, Version(1), usize::MAX.into()).await.unwrap().len(), 17_000);
    let s = &streams[7];
    assert_eq!(
        versions(&store.read_stream_range(s, Version(35), Version(72), 10.into()).await.unwrap()),
        (35..=44).collect::<Vec<_>>()
    );
    assert_eq!(
        versions(&store.read_stream_range(s, Version(95), Version(200), 100.into()).await.unwrap()),
        (95..=100).collect::<Vec<_>>()
    );
    assert!(store.read_stream_range(s, Version(50), Version(40), 100.into()).await.unwrap().is_empty());
    let positions: Vec<u64> = store
        .read_stream(s, Version(1), usize::MAX.into())
        .await
        .unwrap()
        .iter()
        .map(|e| e.position.get())
        .collect();
    close(store, writer).await;

    let (store, writer) = backend.open().await;
    for s in &streams {
        assert_eq!(
            versions(&store.read_stream(s, Version(1), usize::MAX.into()).await.unwrap()),
            all(100),
            "{s} after reopening"
        );
    }
    assert_eq!(versions(&store.read_stream(&quiet, Version(1), usize::MAX.into()).await.unwrap()), [1]);
    assert_eq!(
        versions(&store.read_stream(&bulk, Version(16_990), usize::MAX.into()).await.unwrap()),
        (16_990..=17_000).collect::<Vec<_>>()
    );
    let reread: Vec<u64> = store
        .read_stream(s, Version(1), usize::MAX.into())
        .await
        .unwrap()
        .iter()
        .map(|e| e.position.get())
        .collect();
    assert_eq!(reread, positions, "the same events at the same positions");
    for s in &streams {
        writer.append(batch(s, 100, [101])).await.unwrap();
        assert_eq!(
            versions(&store.read_stream(s, Version(99), usize::MAX.into()).await.unwrap()),
            [99, 100, 101]
        );
    }
    close(store, writer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_writer() {
    let Ok(location) = std::env::var("CAIRN_TCK_CHILD_STORE") else {
        return;
    };
    let (_store, writer) = open_at(&location).await;
    let mut tasks = Vec::new();
    for id in 0..4 {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(&format!("crash-{id}"));
            for round in 0.. {
                writer.append(batch(&s, round * 3, [1, 2, 3])).await.unwrap();
                println!("acked crash-{id} {}", round * 3 + 3);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

async fn acknowledged_appends_survive_sigkill_mid_write(backend: Backend) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env("CAIRN_TCK_CHILD_STORE", backend.location())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = HashMap::<String, u64>::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut count = 0;
    // Long enough for the stream index to be written from the writer's tail many times, so
    // the kill finds both the table and the tail in use.
    while count < 1600 {
        let line = lines.next().expect("the child stopped early").unwrap();
        if let Some(rest) = line.strip_prefix("acked ") {
            let (id, version) = rest.split_once(' ').unwrap();
            acked.insert(id.to_owned(), version.parse().unwrap());
            count += 1;
        }
    }
    // SIGKILL while appends are in flight.
    child.kill().unwrap();
    child.wait().unwrap();

    let (store, writer) = backend.open().await;
    for (id, acked_version) in &acked {
        let s = stream(id);
        let (head, last_position) = store.stream_head(&s).await.unwrap().unwrap();
        let head = head.get();
        assert!(head >= *acked_version, "{id}: acknowledged version {acked_version} lost; head is {head}");
        assert_eq!(head % 3, 0, "{id}: a batch of three was half written (head {head})");
        let events = store.read_stream(&s, Version(1), usize::MAX.into()).await.unwrap();
        assert_eq!(versions(&events), (1..=head).collect::<Vec<_>>());
        assert_eq!(events.last().unwrap().position, last_position);
    }
    let all = store.read_all(Position(0), usize::MAX.into()).await.unwrap();
    assert!(all.windows(2).all(|w| w[1].position == w[0].position + 1), "the global log has no gaps");
    // The store takes appends again after recovery.
    let s = stream("crash-0");
    let head = store.stream_head(&s).await.unwrap().unwrap().0;
    writer.append(batch(&s, head.get(), [1])).await.unwrap();
    close(store, writer).await;
}

fn writes(entries: &[(&str, Option<&str>)]) -> cairn::runtime::Writes {
    entries.iter().map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned))).collect()
}

fn generation(id: u32) -> Generation {
    Generation { id, version: ComponentVersion(1), cursor: Position(0) }
}

async fn views_commit_documents_with_their_cursor_and_hide_bookkeeping_keys(backend: Backend) {
    let views = backend.views().await;
    assert_eq!(views.document("v", "a").await.unwrap(), None, "no view yet");
    views.put_record("v", &ViewRecord { live: generation(1), next: None }).await.unwrap();
    let batch = writes(&[("a", Some("1")), ("_index", Some("{}")), ("b", Some("2"))]);
    assert_eq!(views.commit("v", 1, &batch, Position(0), Position(7)).await.unwrap(), BatchCommit::Done);
    assert_eq!(views.document("v", "a").await.unwrap(), Some((Position(7), Some("1".to_owned()))));
    assert_eq!(
        views.keys("v", None, 10).await.unwrap(),
        Some((Position(7), vec!["a".to_owned(), "b".to_owned()]))
    );
    assert_eq!(views.keys("v", Some("a"), 10).await.unwrap().unwrap().1, ["b"]);
    assert_eq!(
        views.commit("v", 1, &writes(&[("a", None)]), Position(7), Position(9)).await.unwrap(),
        BatchCommit::Done
    );
    // A batch read for another cursor than the stored one is refused, and says where it is.
    assert_eq!(
        views.commit("v", 1, &writes(&[("b", None)]), Position(3), Position(12)).await.unwrap(),
        BatchCommit::CursorMoved(Position(9))
    );
    assert_eq!(views.document("v", "a").await.unwrap(), Some((Position(9), None)));
    assert_eq!(views.document_count("v", 1).await.unwrap(), 2);
}

async fn a_rebuilt_view_generation_switches_whole_and_the_old_one_is_dropped(backend: Backend) {
    let views = backend.views().await;
    views.put_record("v", &ViewRecord { live: generation(1), next: None }).await.unwrap();
    views.commit("v", 1, &writes(&[("a", Some("old"))]), Position(0), Position(5)).await.unwrap();
    views
        .put_record(
            "v",
            &ViewRecord {
                live: Generation { cursor: Position(5), ..generation(1) },
                next: Some(generation(2)),
            },
        )
        .await
        .unwrap();
    views.commit("v", 2, &writes(&[("a", Some("new"))]), Position(0), Position(5)).await.unwrap();
    assert_eq!(
        views.document("v", "a").await.unwrap(),
        Some((Position(5), Some("old".to_owned()))),
        "readers keep the live one"
    );
    let record = views.switch("v", 2).await.unwrap().unwrap();
    assert_eq!((record.live.id, record.next), (2, None));
    assert_eq!(views.document("v", "a").await.unwrap(), Some((Position(5), Some("new".to_owned()))));
    assert!(
        views.commit("v", 1, &writes(&[("a", Some("late"))]), Position(5), Position(6)).await.unwrap()
            == BatchCommit::GenerationGone,
        "a dropped generation takes no writes"
    );
    assert_eq!(views.document_count("v", 1).await.unwrap(), 0);
    // What was committed survives a reopen.
    drop(views);
    let views = backend.views().await;
    assert_eq!(views.records().await.unwrap()["v"].live.id, 2);
    assert_eq!(views.document("v", "a").await.unwrap(), Some((Position(5), Some("new".to_owned()))));
}

/// Every scenario, once on each store.
macro_rules! on_both_stores {
    ($($scenario:ident),* $(,)?) => {
        mod on_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::embedded()).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::postgres()).await
                }
            )*
        }
    };
}

on_both_stores!(
    append_and_read_back_in_order,
    read_ranges_honour_from_to_and_limit,
    an_empty_stream_has_no_head_and_no_events,
    many_streams_interleaved_stay_separate,
    an_expected_version_conflict_stores_nothing,
    global_positions_are_strictly_increasing_across_streams,
    outcomes_and_the_correlation_index_commit_with_the_events,
    snapshots_save_load_latest_and_are_ignored_for_another_digest,
    everything_is_there_after_close_and_reopen,
    reads_are_complete_across_stream_index_flushes_and_reopens,
    acknowledged_appends_survive_sigkill_mid_write,
    views_commit_documents_with_their_cursor_and_hide_bookkeeping_keys,
    a_rebuilt_view_generation_switches_whole_and_the_old_one_is_dropped,
);

/// One host holds its database, as one process holds a redb file: a second store opened on
/// it is refused, and gets it once the first has shut down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_a_held_database_is_refused_until_the_first_closes() {
    let url = postgres::fresh_database();
    let first = cairn::store::postgres::open(&url).await.unwrap();
    let refused = cairn::store::postgres::open(&url).await.err().expect("a second exclusive open is refused");
    assert!(refused.to_string().contains("in use by another cairn host"), "{refused}");
    assert!(!refused.to_string().contains("secret"));
    first.writer.shutdown().await;
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        match cairn::store::postgres::open(&url).await {
            Ok(opened) => {
                reopened = Some(opened);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let reopened = reopened.expect("the database is free once the first store has shut down");
    reopened.writer.shutdown().await;
}

/// Several stores writing one database at once (as hosts of a cluster will), and readers
/// following the log while they write: every reader sees positions strictly increasing and,
/// at the end, the whole log, dense. A position taken before commit (a sequence) would let a
/// reader pass a position that a slower transaction fills in later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_position_out_of_order_while_several_stores_write_one_database() {
    use cairn::store::LogFollower;
    use cairn::store::postgres::{OpenOptions, open_with};
    const STORES: usize = 3;
    const WRITERS: usize = 6;
    const ROUNDS: u64 = 25;
    let url = postgres::fresh_database();
    let shared = OpenOptions { exclusive: false, member: None };
    let mut stores = Vec::new();
    for _ in 0..STORES {
        let opened = open_with(&url, shared.clone()).await.unwrap();
        stores.push((opened.store, opened.writer));
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for (store, _) in &stores {
        let (store, done) = (store.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut follower = LogFollower::new(store, Position(0));
            let mut seen: Vec<u64> = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let page = follower.next_page(50).await.unwrap();
                for event in &page {
                    if let Some(last) = seen.last() {
                        assert!(event.position.get() > *last, "position {} after {last}", event.position);
                    }
                    seen.push(event.position.get());
                }
                if page.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::select! {
                        _ = follower.more() => {}
                        _ = tokio::time::sleep(std::time::Duration::from_millis(20)) => {}
                    }
                }
            }
        }));
    }
    let mut writers = Vec::new();
    for (index, (_, writer)) in stores.iter().enumerate() {
        for task in 0..WRITERS {
            let writer = writer.clone();
            writers.push(tokio::spawn(async move {
                let s = stream(&format!("s{index}-{task}"));
                for round in 0..ROUNDS {
                    writer.append(batch(&s, round * 2, [1, 2])).await.unwrap();
                }
            }));
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let total = (STORES * WRITERS) as u64 * ROUNDS * 2;
    let whole: Vec<u64> = (1..=total).collect();
    let log = stores[0].0.read_all(Position(0), usize::MAX.into()).await.unwrap();
    assert_eq!(log.iter().map(|e| e.position.get()).collect::<Vec<_>>(), whole, "dense, in order");
    for reader in readers {
        assert_eq!(reader.await.unwrap(), whole, "a reader saw the whole log in order");
    }
    for (store, writer) in stores {
        close(store, writer).await;
    }
}

/// A host that lost its hold on the database (its lock's session ended by an operator) to
/// another host never writes again: the other's epoch fences it, and only the new owner's
/// events are in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_lost_the_database_to_another_never_writes_again() {
    let url = postgres::fresh_database();
    let first = cairn::store::postgres::open(&url).await.unwrap();
    first.writer.append(batch(&stream("a"), 0, [1])).await.unwrap();
    postgres::execute(
        &url,
        // This database's lock only: other tests' servers share the cluster.
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    );
    let second = cairn::store::postgres::open(&url).await.unwrap();
    second.writer.append(batch(&stream("b"), 0, [1])).await.unwrap();
    let refused = first.writer.append(batch(&stream("a"), 1, [2])).await;
    assert!(refused.is_err(), "the first host wrote after losing the database: {refused:?}");
    let log = second.store.read_all(Position(0), 100.into()).await.unwrap();
    let streams: Vec<String> = log.iter().map(|e| e.stream().key()).collect();
    assert_eq!(streams, ["account/a", "account/b"]);
    first.writer.shutdown().await;
    second.writer.shutdown().await;
}
