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
    let deployed = host.send(deploy(&host, "faulty", cairn_artifacts::FAULTY)).await.expect(200);
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
    host.send(deploy(&host, "faulty", cairn_artifacts::FAULTY)).await.expect(200);
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
