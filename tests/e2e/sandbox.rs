//! A component that traps or runs away answers an error, stores nothing, and its actor
//! goes on serving; a component that is not what it claims is refused. (Reactions that
//! misbehave are in `delivery.rs`.)

use crate::harness::Host;
use serde_json::json;

fn deploy(host: &Host, name: &str, bytes: &[u8]) -> reqwest::RequestBuilder {
    host.http
        .put(format!("{}/components/{name}", host.url))
        .bearer_auth("test-token")
        .header("content-type", "application/wasm")
        .body(bytes.to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn traps_and_timeouts_are_422_and_the_actor_survives() {
    let host = Host::start();
    let deployed = host.send(deploy(&host, "faulty", cairn_test_guests::FAULTY)).await.expect(200);
    assert_eq!(deployed.body["version"], 1);
    assert!(deployed.body["digest"].as_str().unwrap().starts_with("sha256:"));
    host.command("faulty", "1", "Increment", json!({})).await.expect(200);
    let panicked = host.command("faulty", "1", "Panic", json!({})).await.expect_error(422, "guest_trap");
    // The guest's own message, with where it panicked, and no WebAssembly backtrace.
    let message = panicked.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("asked to panic") && message.contains("misbehave/src/lib.rs"), "{message}");
    assert!(!message.contains("wasm backtrace"), "{message}");
    host.command("faulty", "1", "Spin", json!({})).await.expect_error(422, "guest_timeout");
    host.command("faulty", "1", "Hog", json!({})).await.expect_error(422, "guest_trap");
    let after = host.command("faulty", "1", "Increment", json!({})).await.expect(200);
    assert_eq!(after.body["version"], 2, "nothing was stored for the failed commands");
    assert_eq!(host.state("faulty", "1").await["count"], 2);
}

/// What one guest call returns is bounded: a command's events and the state they fold to.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_returns_too_much_is_refused_and_stores_nothing() {
    let host = Host::start_with(&["--guest-output-bytes", "65536"]);
    host.send(deploy(&host, "faulty", cairn_test_guests::FAULTY)).await.expect(200);
    let flood = json!({"note": "x".repeat(100_000)});
    let refused =
        host.command("faulty", "1", "Record", flood).await.expect_error(422, "guest_output_too_large");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("at most 65536"), "{}", refused.body);
    host.get("/aggregates/faulty/1").await.expect_error(404, "stream_not_found");

    // Each of these events fits, but the state they fold to would not.
    let note = json!({"note": "y".repeat(40_000)});
    host.command("faulty", "2", "Record", note.clone()).await.expect(200);
    host.command("faulty", "2", "Record", note).await.expect_error(422, "guest_output_too_large");
    let after = host.command("faulty", "2", "Increment", json!({})).await.expect(200);
    assert_eq!(after.body["version"], 2, "nothing was stored for the refused command");
    let log = host.get("/aggregates/faulty/2/events").await.expect(200).body;
    assert_eq!(log["events"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_component_is_refused_and_the_running_one_stays() {
    let host = Host::start();
    host.send(deploy(&host, "account", b"not wasm at all")).await.expect_error(400, "invalid_component");
    host.send(deploy(&host, "account", cairn_artifacts::ORDER)).await.expect_error(422, "name_mismatch");
    host.send(deploy(&host, "Bad_Name", cairn_artifacts::ORDER)).await.expect_error(400, "invalid_name");
    host.open_account("1", 5).await;
    assert_eq!(host.state("account", "1").await["balance"], 5);
}

async fn bystander_serves(host: &Host, transaction_id: &str) {
    host.command(
        "account",
        "bystander",
        "CreditAccount",
        json!({"amount": 1, "transaction_id": transaction_id}),
    )
    .await
    .expect(200);
}

/// Each hostile guest gets the documented error, nothing of its is stored, and another
/// aggregate is served between the blows. (A panic, a runaway loop and a memory hog are in
/// `traps_and_timeouts_are_422_and_the_actor_survives`, a `describe` that never returns in
/// `deploys.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn hostile_guests_get_the_documented_errors_while_others_are_served() {
    // Room in the guest's memory and fuel for 40 MiB of events (with the default fuel the
    // guest runs out of time first, also a 422), so the output cap is what stops them.
    let memory = (256u64 << 20).to_string();
    let host = Host::start_with(&["--guest-memory-bytes", &memory, "--guest-fuel", "2000000000"]);
    host.send(deploy(&host, "faulty", cairn_test_guests::FAULTY)).await.expect(200);
    host.open_account("bystander", 0).await;

    // A global the guest bumps on every call never carries over: each call is a fresh instance.
    for id in ["g1", "g2", "g1", "g1"] {
        host.command("faulty", id, "CountCalls", json!({})).await.expect(200);
    }
    for (id, count) in [("g1", 3), ("g2", 1)] {
        let events =
            host.get(&format!("/aggregates/faulty/{id}/events")).await.expect(200).body["events"].clone();
        let calls: Vec<_> = events.as_array().unwrap().iter().map(|e| e["data"]["calls"].as_u64()).collect();
        assert_eq!(calls, vec![Some(1); count], "state leaked between calls through a global");
    }
    bystander_serves(&host, "1").await;

    let deep = host.command("faulty", "h", "Recurse", json!({"depth": 100_000_000})).await;
    let message = deep.expect_error(422, "guest_trap").body["error"]["message"].as_str().unwrap().to_owned();
    // Rust's stack lives in linear memory below the data: running off it is an
    // out-of-bounds access, or wasmtime's own call-stack limit, whichever comes first.
    assert!(message.contains("out of bounds") || message.contains("stack"), "{message}");
    assert!(!message.contains("backtrace"), "{message}");
    bystander_serves(&host, "2").await;

    let flood = json!({"events": 40, "bytes": 1 << 20});
    let refused =
        host.command("faulty", "h", "Flood", flood).await.expect_error(422, "guest_output_too_large");
    assert!(refused.body["error"]["message"].as_str().unwrap().contains("4194"), "{}", refused.body);
    bystander_serves(&host, "3").await;

    // The event is small; the state it folds to is 8 MiB, beyond the 1 MiB a call may return.
    host.command("faulty", "h", "Grow", json!({"bytes": 8 << 20}))
        .await
        .expect_error(422, "guest_output_too_large");
    host.get("/aggregates/faulty/h").await.expect_error(404, "stream_not_found");
    bystander_serves(&host, "4").await;

    // The environment is empty; files, clock and randomness are not there: reaching for
    // them traps, and the error names what the guest reached for.
    let probed = host.command("faulty", "env", "Probe", json!({"what": "env"})).await.expect(200);
    assert_eq!(probed.body["events"][0]["data"]["saw"], "[]");
    for (what, import) in [("files", "wasi:filesystem"), ("clock", "wasi:clocks"), ("random", "wasi:random")]
    {
        let probed = host.command("faulty", "h", "Probe", json!({ "what": what })).await;
        let message =
            probed.expect_error(422, "guest_trap").body["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(import), "{what}: {message}");
    }
    bystander_serves(&host, "5").await;

    // A reaction that sends a million commands fails every attempt and is parked; the
    // event that asked for it is stored, and nothing of the million was sent.
    host.command("faulty", "s", "Swarm", json!({"commands": 1_000_000})).await.expect(200);
    crate::sagas::eventually("the swarm to be parked", || async {
        let parked = host.get("/routing/dead-letters?subscriber=faulty&stream=faulty/s").await.expect(200);
        parked.body["dead_letters"].as_array().unwrap().len() == 1
    })
    .await;
    let parked = host.get("/routing/dead-letters?subscriber=faulty&stream=faulty/s").await.expect(200);
    let letter = &parked.body["dead_letters"][0];
    assert!(letter["error"].as_str().unwrap().contains("react failed"), "{letter}");
    let stored = letter["stored_bytes"].as_u64().unwrap();
    assert!(stored > letter["error"].as_str().unwrap().len() as u64 && stored < 64 << 10, "{letter}");
    host.get("/aggregates/faulty/swarm-0").await.expect_error(404, "stream_not_found");
    bystander_serves(&host, "6").await;

    // Standard output and error reach the host's log under the component's name, bounded
    // per call.
    host.command("faulty", "p", "Print", json!({"text": "hello from the guest", "times": 1}))
        .await
        .expect(200);
    host.command("faulty", "p", "Print", json!({"text": "x".repeat(1000), "times": 200})).await.expect(200);
    crate::sagas::eventually("the guest's output in the log", || async {
        let log = host.log_text();
        log.contains("hello from the guest") && log.contains("on stderr: hello from the guest")
    })
    .await;
    let log = host.log_text();
    let line = log.lines().find(|l| l.contains("hello from the guest")).unwrap();
    assert!(line.contains("faulty") && line.contains("stdout"), "{line}");
    assert!(log.contains("more than 65536 bytes in one call"), "the bound was not applied");
    assert!(log.matches(&"x".repeat(1000)).count() < 100, "more than the bound reached the log");
    bystander_serves(&host, "7").await;

    assert_eq!(host.state("account", "bystander").await["balance"], 7);
    assert_eq!(host.command("faulty", "h", "Increment", json!({})).await.expect(200).body["version"], 1);
}
