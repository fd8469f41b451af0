//! Bounded work: no request holds the host up or its memory hostage. Pages stop at a byte
//! budget, read models stay small however long their streams grow, deep reads and filtered
//! streams over a long log leave the host answering, and a busy instance pool or a failing
//! disk makes sagas wait, never stop.

use crate::harness::{Host, answer_of};
use crate::sagas::{balance, eventually, wait_terminal};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Every event of a paged read, following `next_key` from `first` until a page says no more.
async fn read_all_pages(host: &Host, first: &str, cursor: &str, next_key: &str) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut pages = 0;
    let mut path = first.to_owned();
    loop {
        let page = host.get(&path).await.expect(200);
        pages += 1;
        events.extend(page.body["events"].as_array().unwrap().iter().cloned());
        match page.body[next_key].as_u64() {
            Some(next) => path = format!("{first}&{cursor}={next}"),
            None => return (events, pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_of_large_events_stop_at_their_byte_budget_and_memory_stays_bounded() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    // 40 events of a megabyte each, on one stream and one saga.
    for _ in 0..40 {
        let fill = host
            .command_request("faulty", "big", "Fill", json!({"events": 1, "bytes": 1_000_000}))
            .header("X-Correlation-Id", "big-saga");
        host.send(fill).await.expect(200);
    }
    let first = host.get("/events?after=0&limit=1000").await.expect(200);
    let page = first.body["events"].as_array().unwrap();
    assert!((4..=6).contains(&page.len()), "a page of 1 MB events stops near 4 MiB: {} events", page.len());
    assert_eq!(first.body["next_after"], page.last().unwrap()["position"]);
    let (log, pages) = read_all_pages(&host, "/events?limit=1000", "after", "next_after").await;
    assert!(pages >= 8, "{pages} pages");
    let positions: Vec<u64> = log.iter().map(|e| e["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, (1..=positions.len() as u64).collect::<Vec<_>>(), "every event once, in order");
    let (stream, _) =
        read_all_pages(&host, "/aggregates/faulty/big/events?limit=1000", "from", "next_from").await;
    assert_eq!(stream.len(), 40);
    let (saga, _) = read_all_pages(&host, "/sagas/big-saga?limit=1000", "after", "next_after").await;
    assert_eq!(saga.len(), 40);
    // A small page still ends without a cursor.
    let small = host.get("/aggregates/faulty/big/events?from=39").await.expect(200);
    assert!(small.body.get("next_from").is_none(), "{}", small.body["next_from"]);

    // Many clients reading the log at once, and live streams catching up over it: the host
    // holds a page each, not the log.
    let before = host.resident_bytes();
    let mut readers = Vec::new();
    for _ in 0..16 {
        let (http, url) = (host.http.clone(), host.url.clone());
        readers.push(tokio::spawn(async move {
            let mut after = 0;
            loop {
                let page = answer_of(http.get(format!("{url}/events?after={after}&limit=1000"))).await;
                match page.body["next_after"].as_u64() {
                    Some(next) => after = next,
                    None => return,
                }
            }
        }));
    }
    let mut streams = Vec::new();
    for _ in 0..4 {
        let response = host.http.get(format!("{}/events/stream?after=0", host.url)).send().await.unwrap();
        streams.push(response);
    }
    let mut peak = 0;
    while readers.iter().any(|r| !r.is_finished()) {
        peak = peak.max(host.resident_bytes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for mut stream in streams {
        let mut received = 0;
        while received < 40_000_000 {
            let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk()).await.unwrap().unwrap();
            received += chunk.expect("the stream goes on").len();
            peak = peak.max(host.resident_bytes());
        }
    }
    println!("resident: {} MB before the readers, {} MB at their peak", before >> 20, peak >> 20);
    assert!(peak < before + (400 << 20), "16 readers and 4 streams over a 40 MB log: {} MB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_account_with_50_000_transactions_keeps_its_view_small() {
    let host = Host::start();
    host.open_account("busy", 0).await;
    const CREDITS: usize = 50_000;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = Vec::new();
    for _ in 0..64 {
        let (http, url, next) = (host.http.clone(), host.url.clone(), next.clone());
        senders.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= CREDITS {
                    return;
                }
                let credit = json!({"type": "CreditAccount", "data": {"amount": 1, "transaction_id": format!("c{n}")}});
                loop {
                    let answer = answer_of(
                        http.post(format!("{url}/aggregates/account/busy/commands"))
                            .header("Idempotency-Key", format!("c{n}"))
                            .json(&credit),
                    )
                    .await;
                    match answer.status.as_u16() {
                        200 => break,
                        429 | 503 => tokio::time::sleep(Duration::from_millis(20)).await,
                        other => panic!("credit {n}: {other} {}", answer.body),
                    }
                }
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    let head = host.get("/healthz").await.body["head_position"].as_u64().unwrap();
    let started = Instant::now();
    let document = loop {
        let answer = host.get(&format!("/views/account-info/busy?min_position={head}")).await;
        if answer.status == 200 {
            break answer;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "the view never caught up: {}", answer.body);
    };
    let bytes = serde_json::to_vec(&document.body).unwrap().len();
    let recent = document.body["transactions"].as_array().unwrap().len();
    let earlier = document.body["earlier_transactions"].as_u64().unwrap() as usize;
    println!("account-info/busy: {bytes} bytes, {recent} recent transactions, {earlier} in pages");
    assert_eq!(document.body["balance"], CREDITS as i64);
    assert_eq!(recent + earlier, CREDITS + 1, "every transaction, the opening included");
    assert!(recent < 200 && bytes < 64 << 10, "{recent} transactions, {bytes} bytes");
    // The pages are linked from the newest to the first, a hundred transactions each.
    let mut key = document.body["earlier_page"].as_str().unwrap().to_owned();
    let mut pages = 0;
    loop {
        let page = host.get(&format!("/views/account-info/{}", key.replace('/', "%2F"))).await.expect(200);
        assert_eq!(page.body["transactions"].as_array().unwrap().len(), 100);
        pages += 1;
        match page.body["earlier_page"].as_str() {
            Some(earlier) => key = earlier.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages * 100, earlier);
    let views = host.get("/views").await.expect(200);
    let info = crate::views::projection(&views.body, "account-info");
    assert_eq!(info["status"], "running", "{info}");
}

/// A projection that writes a document beyond `--view-document-bytes` stops there, and says
/// so where operators look: `/views`, `/metrics`, and `/readyz`'s detail (the host still
/// takes commands).
#[tokio::test(flavor = "multi_thread")]
async fn a_projection_stopped_by_an_oversized_document_shows_in_views_metrics_and_readyz() {
    let host = Host::start_with(&["--view-document-bytes", "2000"]);
    host.open_account("a", 0).await;
    for n in 0..40 {
        let credit = json!({"amount": 1, "transaction_id": format!("credit-number-{n}")});
        host.command("account", "a", "CreditAccount", credit).await.expect(200);
    }
    eventually("account-info stops", || async {
        let views = host.get("/views").await.body;
        crate::views::projection(&views, "account-info")["status"] == "failed"
    })
    .await;
    let views = host.get("/views").await.body;
    let info = crate::views::projection(&views, "account-info").clone();
    assert!(info["failure"]["reason"].as_str().unwrap().contains("2000 allowed"), "{info}");
    let metrics = host.get("/metrics").await.body.as_str().unwrap().to_owned();
    assert!(metrics.contains(r#"cairn_projection_failed{projection="account-info"} 1"#), "{metrics}");
    let ready = host.get("/readyz").await.expect(200);
    let degraded = &ready.body["degraded"][0];
    assert_eq!(degraded["projection"], "account-info", "{}", ready.body);
    assert!(degraded["reason"].as_str().unwrap().contains("2000 allowed"));
    host.open_account("b", 1).await;
}

/// The issue's measurement, as a test: a log of 200 000 events, four live streams with a
/// filter nothing matches catching up over all of it, 500 concurrent reads of old versions of
/// a long stream, and a storm of transfers, all at once. `/healthz` and a command keep being
/// answered quickly, every deep read answers its state or a 503 with `Retry-After`, and no
/// transfer parks.
#[tokio::test(flavor = "multi_thread")]
async fn no_request_stalls_the_host() {
    let host = Host::start();
    host.deploy("faulty", cairn_test_guests::FAULTY).await.expect(200);
    const EVENTS: u64 = 200_000;
    const PER_COMMAND: u64 = 100;
    // One long stream, written by a few concurrent writers (batched by its actor).
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..8 {
        let (http, url, next) = (host.http.clone(), host.url.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            while next.fetch_add(PER_COMMAND, std::sync::atomic::Ordering::Relaxed) < EVENTS {
                let fill = json!({"type": "Fill", "data": {"events": PER_COMMAND}});
                let answer =
                    answer_of(http.post(format!("{url}/aggregates/faulty/deep/commands")).json(&fill)).await;
                assert_eq!(answer.status, 200, "{}", answer.body);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let deep = host.get("/aggregates/faulty/deep").await.expect(200).body["version"].as_u64().unwrap();
    assert!(deep >= EVENTS, "{deep}");
    for n in 0..20 {
        host.open_account(&format!("s{n}"), 1000).await;
        host.open_account(&format!("r{n}"), 0).await;
    }
    // A new version right before the reads: none of its snapshots exist yet, so the first
    // deep reads fold far (and leave this version's snapshots behind them).
    host.deploy("faulty", cairn_test_guests::FAULTY_FIXED).await.expect(200);

    // The load: filtered streams catching up, deep reads, transfers.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let response = host
            .http
            .get(format!("{}/events/stream?after=0&event_type=NothingIsCalledThis", host.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response);
    }
    let mut reads = Vec::new();
    for n in 0..500u64 {
        let (http, url) = (host.http.clone(), host.url.clone());
        let version = 1 + (n * 7919) % (deep - 1);
        reads.push(tokio::spawn(async move {
            let answer = answer_of(http.get(format!("{url}/aggregates/faulty/deep?version={version}"))).await;
            match answer.status.as_u16() {
                200 => assert_eq!(answer.body["version"], version),
                503 => assert!(answer.headers.contains_key("retry-after"), "{}", answer.body),
                other => panic!("a deep read answered {other}: {}", answer.body),
            }
            answer.status.as_u16()
        }));
    }
    let mut transfers = Vec::new();
    for n in 0..20 {
        let (http, url) = (host.http.clone(), host.url.clone());
        transfers.push(tokio::spawn(async move {
            let data =
                json!({"from_account_id": format!("s{n}"), "to_account_id": format!("r{n}"), "amount": 400});
            let create = json!({"type": "CreateMoneyTransfer", "data": data});
            let answer =
                answer_of(http.post(format!("{url}/aggregates/money-transfer/t{n}/commands")).json(&create))
                    .await;
            assert_eq!(answer.status, 200, "{}", answer.body);
        }));
    }
    // Meanwhile: how long /healthz and a command take.
    let mut health = Vec::new();
    let mut command = Vec::new();
    let mut n = 0;
    while reads.iter().any(|r| !r.is_finished()) || health.len() < 20 {
        let started = Instant::now();
        host.get("/healthz").await.expect(200);
        health.push(started.elapsed());
        let started = Instant::now();
        host.command(
            "account",
            "s0",
            "CreditAccount",
            json!({"amount": 1, "transaction_id": format!("probe-{n}")}),
        )
        .await
        .expect(200);
        command.push(started.elapsed());
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answered = [0u32; 2];
    for read in reads {
        answered[usize::from(read.await.unwrap() == 503)] += 1;
    }
    for transfer in transfers {
        transfer.await.unwrap();
    }
    let median = |samples: &mut Vec<Duration>| {
        samples.sort();
        samples[samples.len() / 2]
    };
    let (health_median, command_median) = (median(&mut health), median(&mut command));
    println!(
        "deep reads: {} answered, {} told to retry; /healthz median {health_median:?} (max {:?}), a command median {command_median:?} (max {:?}), {} samples",
        answered[0],
        answered[1],
        health.last().unwrap(),
        command.last().unwrap(),
        health.len()
    );
    assert!(answered[0] > 0, "some deep reads were answered");
    assert!(health_median < Duration::from_millis(100), "/healthz median {health_median:?}");
    assert!(command_median < Duration::from_millis(100), "a command's median {command_median:?}");
    for n in 0..20 {
        assert_eq!(wait_terminal(&host, &format!("t{n}")).await, "COMPLETED", "t{n}");
        assert_eq!(balance(&host, &format!("r{n}")).await, 400);
    }
    let dead = host.get("/routing/dead-letters").await.expect(200);
    assert_eq!(dead.body["dead_letters"], json!([]), "no transfer parked");
    // The filtered streams are still open (a keep-alive or nothing yet, never an error).
    drop(streams);
}

/// With one guest instance for the whole host, calls meet a busy pool all the time: clients
/// are told to retry, reactions and projections retry by themselves, and a storm of
/// transfers still ends with every transfer terminal, nothing parked and money conserved.
#[tokio::test(flavor = "multi_thread")]
async fn a_busy_instance_pool_during_a_transfer_storm_parks_nothing() {
    let host = Host::start_with(&["--guest-instances", "1"]);
    const N: usize = 30;
    let retrying = |path: String, body: Value, key: String| {
        let (http, url) = (host.http.clone(), host.url.clone());
        async move {
            loop {
                let answer = answer_of(
                    http.post(format!("{url}{path}")).header("Idempotency-Key", key.clone()).json(&body),
                )
                .await;
                match answer.status.as_u16() {
                    200 => return answer,
                    429 | 503 => tokio::time::sleep(Duration::from_millis(10)).await,
                    other => panic!("{path}: {other} {}", answer.body),
                }
            }
        }
    };
    let open = |id: String, balance: i64| {
        retrying(
            format!("/aggregates/account/{id}/commands"),
            json!({"type": "OpenAccount", "data": {"initial_balance": balance}}),
            format!("open-{id}"),
        )
    };
    futures_util::future::join_all(
        (0..N).flat_map(|i| [open(format!("s{i}"), 1000), open(format!("r{i}"), 0)]),
    )
    .await;
    let transfers = (0..N).map(|i| {
        let data =
            json!({"from_account_id": format!("s{i}"), "to_account_id": format!("r{i}"), "amount": 250});
        retrying(
            format!("/aggregates/money-transfer/t{i}/commands"),
            json!({"type": "CreateMoneyTransfer", "data": data}),
            format!("t{i}"),
        )
    });
    let credits = (0..N).map(|i| {
        retrying(
            format!("/aggregates/account/s{i}/commands"),
            json!({"type": "CreditAccount", "data": {"amount": 5, "transaction_id": format!("extra-{i}")}}),
            format!("extra-{i}"),
        )
    });
    futures_util::future::join(
        futures_util::future::join_all(transfers),
        futures_util::future::join_all(credits),
    )
    .await;
    let mut total = 0;
    for i in 0..N {
        assert_eq!(wait_terminal(&host, &format!("t{i}")).await, "COMPLETED");
        total += balance(&host, &format!("s{i}")).await + balance(&host, &format!("r{i}")).await;
    }
    assert_eq!(total, (N * 1005) as i64);
    let dead = host.get("/routing/dead-letters").await.expect(200);
    assert_eq!(dead.body["dead_letters"], json!([]));
    let metrics = host.get("/metrics").await.body.as_str().unwrap().to_owned();
    assert!(metrics.contains(r#"kind="busy""#), "the pool was busy at times: {metrics}");
}
