//! `cairn export` against a running host and `cairn import` into an empty store: the way to
//! back up either store online, and to move from redb to PostgreSQL.

use crate::harness::Host;
use crate::postgres;
use crate::sagas::{
    assert_no_duplicate_movements, open_ten_accounts, total_balance, transfer_storm, wait_terminal,
};
use serde_json::Value;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Run the `cairn` CLI; its exit code, stdout and stderr.
fn cairn(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn")).args(args).output().unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// Every event of the log up to `head`, in order.
async fn log_until(host: &Host, head: u64) -> Vec<Value> {
    let mut events = Vec::new();
    let mut after = 0;
    while after < head {
        let page = host.get(&format!("/events?after={after}&limit=1000")).await.expect(200);
        let page = page.body["events"].as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        after = last["position"].as_u64().unwrap();
        events.extend(page.into_iter().filter(|e| e["position"].as_u64().unwrap() <= head));
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_under_load_imports_into_postgres_with_the_same_log_and_its_sagas_finish_there() {
    let mut source = Host::start();
    open_ten_accounts(&source).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let storm = {
        let shadow = Host::attach(source.http.clone(), source.url.clone());
        let progress = progress.clone();
        tokio::spawn(async move { transfer_storm(&shadow, 320, "moved", progress).await })
    };
    while progress.load(Ordering::SeqCst) < 60 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // Exported while transfers are being created and their sagas run.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cairn.export");
    let file = file.to_str().unwrap();
    let (code, stdout, stderr) =
        cairn(&["--url", &source.url, "--token", "test-token", "--json", "export", file]);
    assert_eq!(code, Some(0), "{stderr}");
    let exported: Value = serde_json::from_str(&stdout).unwrap();
    let head = exported["head"].as_u64().unwrap();
    assert!(head > 0 && exported["events"] == head, "{exported}");
    assert!(exported["components"].as_u64().unwrap() >= 5, "{exported}");
    let acknowledged = storm.await.unwrap();
    assert_eq!(acknowledged.len(), 320);
    let source_log = log_until(&source, head).await;
    source.stop();

    // Without a token the host gives nothing away.
    let (code, _, stderr) = cairn(&["--url", "http://127.0.0.1:1", "--token", "x", "export", file]);
    assert_ne!(code, Some(0), "{stderr}");

    let url = postgres::fresh_database();
    let (code, stdout, stderr) = cairn(&["--json", "import", file, "--store", &url]);
    assert_eq!(code, Some(0), "{stderr}");
    let imported: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(imported, exported, "the import read what the export wrote");
    let (code, _, stderr) = cairn(&["import", file, "--store", &url]);
    assert_eq!(code, Some(1), "a second import is refused: {stderr}");
    assert!(stderr.contains("not empty"), "{stderr}");

    let target = Host::start_with(&["--store", &url]);
    assert_eq!(log_until(&target, head).await, source_log, "the same log, positions included");
    // The transfers the export holds finish on the new store: each reaches its end, money is
    // conserved, nothing moves twice, and the views agree with the accounts.
    let moved: Vec<String> = source_log
        .iter()
        .filter(|e| e["type"] == "MoneyTransferCreated")
        .map(|e| e["stream"].as_str().unwrap().trim_start_matches("money-transfer/").to_owned())
        .collect();
    assert!(!moved.is_empty());
    for id in &moved {
        wait_terminal(&target, id).await;
    }
    assert_eq!(total_balance(&target).await, 100000);
    assert_no_duplicate_movements(&target).await;
    let head_now = target.get("/healthz").await.body["head_position"].as_u64().unwrap();
    for id in 0..10 {
        let view = target.get(&format!("/views/account-info/{id}?min_position={head_now}")).await.expect(200);
        assert_eq!(view.body["balance"], target.state("account", &id.to_string()).await["balance"], "{id}");
    }

    // And back: an export of the PostgreSQL host, imported into an embedded data directory.
    let back = dir.path().join("back.export");
    let back = back.to_str().unwrap();
    let (code, stdout, stderr) =
        cairn(&["--url", &target.url, "--token", "test-token", "--json", "export", back]);
    assert_eq!(code, Some(0), "{stderr}");
    let exported_back: Value = serde_json::from_str(&stdout).unwrap();
    let head_back = exported_back["head"].as_u64().unwrap();
    assert!(head_back > head, "the sagas went on after the move: {exported_back}");
    let target_log = log_until(&target, head_back).await;
    let embedded = dir.path().join("embedded");
    let (code, _, stderr) = cairn(&["--data", embedded.to_str().unwrap(), "import", back]);
    assert_eq!(code, Some(0), "{stderr}");
    let returned = Host::start_on(&embedded);
    assert_eq!(log_until(&returned, head_back).await, target_log);
    assert_eq!(total_balance(&returned).await, 100000);

    // A damaged file is refused before anything is written.
    let mut bytes = std::fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let damaged = dir.path().join("damaged.export");
    std::fs::write(&damaged, &bytes).unwrap();
    let fresh = dir.path().join("fresh");
    let (code, _, stderr) = cairn(&["--data", fresh.to_str().unwrap(), "import", damaged.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("damaged"), "{stderr}");
}
