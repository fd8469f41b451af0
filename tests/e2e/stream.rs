//! `GET /events/stream` and `cairn tail`: the global log live over Server-Sent Events.

use crate::harness::Host;
use serde_json::{Value, json};
use std::time::Duration;

/// One Server-Sent Event: its `id:`, `event:` kind (`message` by default) and JSON data.
#[derive(Debug)]
struct Received {
    id: Option<u64>,
    kind: String,
    data: Value,
}

/// Reads a live stream event by event.
struct Subscriber {
    response: reqwest::Response,
    pending: String,
}

impl Subscriber {
    async fn open(host: &Host, query: &str, last_event_id: Option<&str>) -> Subscriber {
        let mut request = host.http.get(format!("{}/events/stream?{query}", host.url));
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Subscriber { response, pending: String::new() }
    }

    /// The next event (keep-alive comments skipped); `None` when the host ended the stream.
    async fn next(&mut self) -> Option<Received> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut received = Received { id: None, kind: "message".to_owned(), data: Value::Null };
                for line in block.lines() {
                    if let Some(id) = line.strip_prefix("id:") {
                        received.id = Some(id.trim().parse().unwrap());
                    } else if let Some(kind) = line.strip_prefix("event:") {
                        received.kind = kind.trim().to_owned();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        received.data = serde_json::from_str(data.trim()).unwrap();
                    }
                }
                if received.data.is_null() {
                    continue;
                }
                return Some(received);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(30), self.response.chunk())
                .await
                .expect("an event within 30 s")
                .unwrap()?;
            self.pending.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn events(&mut self, count: usize) -> Vec<Received> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            out.push(self.next().await.expect("the stream goes on"));
        }
        out
    }
}

fn credit(n: u64) -> Value {
    json!({"amount": 1, "transaction_id": format!("t{n}")})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_catches_up_then_follows_live_with_no_gap_or_duplicate() {
    let mut host = Host::start();
    host.open_account("101", 0).await;
    host.open_account("202", 0).await;
    let mut from_start = Subscriber::open(&host, "after=0", None).await;
    let mut live_only = Subscriber::open(&host, "", None).await;
    // Commits go on while the first subscriber catches up.
    let writer = {
        let host = Host::attach(host.http.clone(), host.url.clone());
        tokio::spawn(async move {
            for n in 0..40 {
                host.command("account", "101", "CreditAccount", credit(n)).await.expect(200);
            }
        })
    };
    let events = from_start.events(42).await;
    writer.await.unwrap();
    let ids: Vec<u64> = events.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(ids, (1..=42).collect::<Vec<_>>(), "every position once, in order");
    for event in &events {
        assert_eq!(event.data["position"].as_u64(), event.id, "id is the event's position");
    }
    assert_eq!(
        (events[0].data["type"].as_str(), events[0].data["stream"].as_str()),
        (Some("AccountOpened"), Some("account/101"))
    );
    let live = live_only.events(40).await;
    assert_eq!(live[0].id, Some(3), "without `after`, the stream starts at the head");

    // A reconnect with Last-Event-ID resumes right after it.
    let mut resumed = Subscriber::open(&host, "after=0", Some("40")).await;
    let next: Vec<u64> = resumed.events(2).await.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(next, [41, 42]);

    // Shutdown ends every stream with a last event saying so, and does not wait on them.
    host.stop();
    let last = resumed.next().await.expect("a last event");
    assert_eq!(last.kind, "end");
    assert!(last.data["reason"].as_str().unwrap().contains("shutting down"), "{:?}", last.data);
    assert_eq!(last.data["resume_after"], 42);
    assert!(resumed.next().await.is_none());
}

/// A client that stops reading while the log moves on: the socket buffers fill, the stream
/// falls behind the head, and the host ends it with an `end` event that says where to resume,
/// instead of holding a stream slot for it; a reader catching up from an old position is not
/// ended however far behind it starts.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_falls_too_far_behind_is_ended_with_a_last_event() {
    use std::io::{Read, Write};
    let host = Host::start_with(&["--stream-max-lag", "100"]);
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    let position = host.command("faulty", "0", "Increment", json!({})).await.expect(200);
    let start = position.body["events"][0]["position"].as_u64().unwrap();
    // A tiny receive window; the host's kernel send buffer still takes a few megabytes, so the
    // events below are large (16 KiB) to fill it with a few hundred.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address: std::net::SocketAddr = host.url.trim_start_matches("http://").parse().unwrap();
    socket.connect(&address.into()).unwrap();
    let mut slow: std::net::TcpStream = socket.into();
    // HTTP/1.0: the body runs until the host closes the connection, with no chunk framing.
    slow.write_all(b"GET /events/stream HTTP/1.0\r\n\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Once the answer has begun, the stream is at the head and following live.
    let mut answer = Vec::new();
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8];
        slow.read_exact(&mut byte).expect("the answer's head");
        answer.push(byte[0]);
    }

    const WRITERS: u64 = 16;
    const PER_WRITER: u64 = 100;
    let note = "n".repeat(16 << 10);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let host = Host::attach(host.http.clone(), host.url.clone());
            let note = note.clone();
            tokio::spawn(async move {
                for n in 0..PER_WRITER {
                    let id = format!("{w}-{n}");
                    host.command("faulty", &id, "Record", json!({"note": note})).await.expect(200);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let head = start + WRITERS * PER_WRITER;

    // Read until the host closes; keep-alives would keep a stream that is never ended open,
    // so the wait is bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        assert!(std::time::Instant::now() < deadline, "the host never ended the slow stream");
        match slow.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("reading the stream: {e}"),
        }
    }
    let answer = String::from_utf8(answer).unwrap();
    let (head_lines, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head_lines.starts_with("HTTP/1.0 200"), "{head_lines}");
    let mut ids = Vec::new();
    let mut ending = None;
    for block in body.split("\n\n").filter(|b| b.contains("data:")) {
        let data: Value = serde_json::from_str(block.split_once("data:").unwrap().1.trim()).unwrap();
        if block.lines().any(|line| line.trim() == "event: end" || line.trim() == "event:end") {
            ending = Some(data);
        } else {
            assert!(ending.is_none(), "nothing follows the end event");
            ids.push(data["position"].as_u64().unwrap());
        }
    }
    let ending = ending.expect("the stream ends with an `end` event");
    assert!(ending["reason"].as_str().unwrap().contains("behind the head"), "{ending}");
    let expected: Vec<u64> = (start + 1..start + 1 + ids.len() as u64).collect();
    assert_eq!(ids, expected, "no gap before the end");
    assert_eq!(ending["resume_after"].as_u64(), Some(start + ids.len() as u64), "resume where it stopped");
    assert!(
        start + (ids.len() as u64) < head,
        "it was ended before the head: {} of {}",
        ids.len(),
        head - start
    );

    // Catching up over the whole log from position 0 is reading behind on purpose.
    let mut catching_up = Subscriber::open(&host, "after=0", None).await;
    let all = catching_up.events(head as usize).await;
    assert!(all.iter().all(|e| e.kind == "message"));
    assert_eq!(all.last().unwrap().id, Some(head));
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_pick_a_stream_type_a_stream_an_event_type_or_a_saga() {
    let host = Host::start();
    host.open_account("101", 25000).await;
    host.open_account("202", 12500).await;
    let data = json!({"from_account_id": "101", "to_account_id": "202", "amount": 5500});
    let transfer = host
        .send(
            host.command_request("money-transfer", "tr1", "CreateMoneyTransfer", data)
                .header("X-Correlation-Id", "sse-saga"),
        )
        .await
        .expect(200);
    assert_eq!(transfer.body["events"][0]["correlation_id"], "sse-saga");

    let mut saga = Subscriber::open(&host, "after=0&correlation_id=sse-saga", None).await;
    let mut chain = Vec::new();
    while chain.last().is_none_or(|e: &Received| e.data["type"] != "MoneyTransferCompleted") {
        chain.push(saga.next().await.unwrap());
    }
    assert!(chain.iter().all(|e| e.data["correlation_id"] == "sse-saga"));
    let mut streams: Vec<&str> = chain.iter().map(|e| e.data["stream"].as_str().unwrap()).collect();
    streams.sort();
    streams.dedup();
    assert_eq!(streams, ["account/101", "account/202", "money-transfer/tr1"]);

    let mut credits =
        Subscriber::open(&host, "after=0&stream=account%2F202&event_type=AccountCredited", None).await;
    let credit = credits.next().await.unwrap();
    assert_eq!(
        (credit.data["stream"].as_str(), credit.data["data"]["amount"].as_i64()),
        (Some("account/202"), Some(5500))
    );
    let mut transfers = Subscriber::open(&host, "after=0&stream_type=money-transfer", None).await;
    assert_eq!(transfers.next().await.unwrap().data["type"], "MoneyTransferCreated");

    host.get("/events/stream?after=soon").await.expect_error(400, "invalid_query");
    let bad_id =
        host.send(host.http.get(format!("{}/events/stream", host.url)).header("Last-Event-ID", "x")).await;
    bad_id.expect_error(400, "invalid_header");
}

#[tokio::test(flavor = "multi_thread")]
async fn cairn_tail_prints_one_event_a_line() {
    use std::io::{BufRead, BufReader};
    let host = Host::start();
    host.open_account("101", 7).await;
    host.open_account("202", 8).await;
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["tail", "--after", "0", "--stream", "account/202", "--url", &host.url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    tail.kill().unwrap();
    tail.wait().unwrap();
    let words: Vec<&str> = first.split_whitespace().collect();
    assert_eq!(words[..4], ["2", "account/202", "v1", "AccountOpened"], "{first}");
    assert!(first.contains(r#""initial_balance":8"#), "{first}");
}

/// A measurement, not a check (run it by hand in release:
/// `cargo test --release -p cairn --test e2e measure_stream -- --ignored --nocapture`): the
/// time from an event's commit (its `recorded_at`, taken when its group commit starts, so
/// the fsync is included) to a live SSE client receiving it, during a command storm.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement; run it by hand in release"]
async fn measure_stream() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let host = Host::start();
    for n in 0..100 {
        host.open_account(&format!("a{n}"), 0).await;
    }
    let mut subscriber = Subscriber::open(&host, "", None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for client in 0..16u64 {
        let (http, url, stop) = (host.http.clone(), host.url.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let body = json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("{client}-{n}")}});
                let request = http.post(format!("{url}/aggregates/account/a{}/commands", (client * 7 + n) % 100));
                crate::harness::answer_of(request.json(&body)).await.expect(200);
            }
        }));
    }
    let started = std::time::Instant::now();
    let mut delays = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        let event = subscriber.next().await.unwrap();
        let recorded = humantime::parse_rfc3339(event.data["recorded_at"].as_str().unwrap()).unwrap();
        delays.push(std::time::SystemTime::now().duration_since(recorded).unwrap_or_default());
    }
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{} events over 10 s; commit to SSE client: p50 {:?}, p99 {:?}, worst {:?}",
        delays.len(),
        at(0.5),
        at(0.99),
        delays[delays.len() - 1]
    );
}

/// One client cannot hold every stream slot: it gets `--stream-max-per-client` of them. A
/// client that stops reading while events keep coming is cut off once a write has waited
/// `--write-stall-ms`, and its slot is free again.
#[tokio::test(flavor = "multi_thread")]
async fn one_client_holds_a_bounded_share_of_the_streams_and_one_that_stops_reading_is_cut_off() {
    use std::io::Write;
    let host = Host::start_with(&["--stream-max-per-client", "2", "--write-stall-ms", "500"]);
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    let first = Subscriber::open(&host, "", None).await;
    let second = Subscriber::open(&host, "", None).await;
    let third = host.get("/events/stream").await.expect_error(503, "overloaded");
    assert!(
        third.body["error"]["message"].as_str().unwrap().contains("stream-max-per-client"),
        "{}",
        third.body
    );
    assert!(third.headers.contains_key("retry-after"));
    drop(first);
    crate::sagas::eventually("a closed stream frees its slot", || async {
        host.http.get(format!("{}/events/stream", host.url)).send().await.unwrap().status() == 200
    })
    .await;
    drop(second);

    // A client that reads nothing, with a small receive buffer: the host's writes to it stall.
    let address: std::net::SocketAddr = host.url.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&address.into()).unwrap();
    let mut stalled: std::net::TcpStream = socket.into();
    write!(stalled, "GET /events/stream?after=0 HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    // Big events fill the socket buffers quickly.
    for n in 0..40 {
        let flood = json!({"events": 1, "bytes": 200_000});
        host.command("faulty", &format!("f{n}"), "Flood", flood).await.expect(200);
    }
    // Meanwhile the one slot left for this client is held by the stalled stream, until it
    // is cut off; then a new stream from the same client opens again.
    let mut extra = Subscriber::open(&host, "", None).await;
    crate::sagas::eventually("the stalled stream is cut off and its slot freed", || async {
        host.http.get(format!("{}/events/stream", host.url)).send().await.unwrap().status() == 200
    })
    .await;
    host.command("faulty", "after", "Increment", json!({})).await.expect(200);
    assert!(extra.next().await.is_some(), "a reading client is served all along");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_upcast_the_stream_sends_events_as_the_active_versions_consumers_read_them() {
    let host = Host::start();
    // account-v3 changes the Account's shape; the consumers that read both go first.
    host.deploy("account-info", cairn_artifacts::ACCOUNT_INFO_V2).await.expect(200);
    host.deploy("money-transfer", cairn_artifacts::MONEY_TRANSFER_V2).await.expect(200);
    host.open_account("a", 1000).await;
    host.deploy("account", cairn_artifacts::ACCOUNT_V3).await.expect(200);
    let mut stored = Subscriber::open(&host, "after=0&stream=account%2Fa", None).await;
    let opened = stored.next().await.unwrap().data;
    assert_eq!((opened["schema"].as_u64(), &opened["data"]), (Some(1), &json!({"initial_balance": 1000})));
    let mut upcast = Subscriber::open(&host, "after=0&stream=account%2Fa&upcast=true", None).await;
    let opened = upcast.next().await.unwrap().data;
    assert_eq!(opened["schema"], 2);
    assert_eq!(opened["data"], json!({"initial_balance": {"cents": 1000, "currency": "EUR"}}));
    host.get("/events/stream?upcast=perhaps").await.expect_error(400, "invalid_query");
}
