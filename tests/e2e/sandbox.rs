//! A component that traps or runs away answers an error, stores nothing, and its actor
//! goes on serving; a component that is not what it claims is refused.

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
    host.command("faulty", "1", "Panic", json!({})).await.expect_error(422, "guest_trap");
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

#[tokio::test(flavor = "multi_thread")]
async fn undeliverable_reactions_are_parked_and_routing_goes_on() {
    let host = Host::start();
    host.send(deploy(&host, "faulty", cairn_artifacts::FAULTY)).await.expect(200);
    host.open_account("1", 5).await;
    host.command("account", "1", "CloseAccount", json!({})).await.expect(200);
    host.open_account("2", 5).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let letters = loop {
        let letters = host.get("/routing/dead-letters").await.expect(200).body["dead_letters"].clone();
        if letters.as_array().unwrap().len() >= 3 {
            break letters;
        }
        assert!(std::time::Instant::now() < deadline, "dead letters so far: {letters}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let letters = letters.as_array().unwrap();
    let unknown_target: Vec<_> =
        letters.iter().filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with("nowhere/"))).collect();
    assert_eq!(unknown_target.len(), 2, "{letters:?}");
    assert!(unknown_target[0]["error"].as_str().unwrap().contains("nowhere"));
    let trapped: Vec<_> = letters.iter().filter(|l| l["event_type"] == "AccountClosed").collect();
    assert_eq!(trapped.len(), 1, "{letters:?}");
    assert_eq!(trapped[0]["subscriber"], "faulty");
    assert_eq!(trapped[0]["attempts"], 8, "retried before parking");
    assert!(trapped[0]["error"].as_str().unwrap().contains("react failed"));
    // The subscriber went on past the parked events.
    let head = host.get("/healthz").await.body["head_position"].clone();
    let routing = host.get("/routing").await.expect(200);
    let faulty = routing.body["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "faulty")
        .unwrap()
        .clone();
    assert_eq!((faulty["cursor"].clone(), faulty["parked"].as_u64()), (head, Some(3)));
}
