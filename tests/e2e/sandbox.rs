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

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_component_is_refused_and_the_running_one_stays() {
    let host = Host::start();
    host.send(deploy(&host, "account", b"not wasm at all")).await.expect_error(400, "invalid_component");
    host.send(deploy(&host, "account", cairn_artifacts::ORDER)).await.expect_error(422, "name_mismatch");
    host.send(deploy(&host, "Bad_Name", cairn_artifacts::ORDER)).await.expect_error(400, "invalid_name");
    host.open_account("1", 5).await;
    assert_eq!(host.state("account", "1").await["balance"], 5);
}
