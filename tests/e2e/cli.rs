//! The `cairn` client subcommands against a running host.

use crate::harness::Host;
use serde_json::Value;
use std::process::{Command, Output};

fn cairn(host: &Host, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .args(["--url", &host.url])
        .output()
        .expect("run cairn")
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "cairn failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the CLI prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn send_state_events_components_and_deploy() {
    let host = Host::start();
    let opened = json_of(&cairn(
        &host,
        &["send", "account", "1", r#"{"type":"OpenAccount","data":{"initial_balance":10}}"#],
    ));
    assert_eq!(opened["version"], 1);
    let keyed =
        ["send", "account", "1", r#"{"type":"CreditAccount","data":{"amount":5,"transaction_id":"t"}}"#];
    let first = json_of(&cairn(
        &host,
        &[&keyed[..], &["--idempotency-key", "k", "--correlation-id", "cli-1"]].concat(),
    ));
    let retry = json_of(&cairn(&host, &[&keyed[..], &["--idempotency-key", "k"]].concat()));
    assert_eq!(first, retry);
    assert_eq!(first["events"][0]["correlation_id"], "cli-1");

    assert_eq!(json_of(&cairn(&host, &["state", "account", "1"]))["state"]["balance"], 15);
    assert_eq!(json_of(&cairn(&host, &["state", "account", "1", "--version", "1"]))["state"]["balance"], 10);
    let events = json_of(&cairn(&host, &["events", "account", "1", "--from", "2"]));
    assert_eq!(events["events"].as_array().unwrap().len(), 1);

    let reopen = ["send", "account", "1", r#"{"type":"OpenAccount","data":{"initial_balance":1}}"#];
    let refused = cairn(&host, &reopen);
    assert_eq!(refused.status.code(), Some(1), "1: refused by the host");
    // A person reads the host's message, its code and the status on one line.
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("[account_already_open, HTTP 422]") && !said.contains('{'), "{said}");
    // `--json` is for scripts: answers are one compact line, refusals the host's error body.
    let scripted = cairn(&host, &[&reopen[..], &["--json"]].concat());
    assert_eq!(scripted.status.code(), Some(1));
    let body: Value = serde_json::from_slice(&scripted.stderr).expect("the error body as JSON");
    assert_eq!(body["error"]["code"], "account_already_open");
    let compact = cairn(&host, &["--json", "state", "account", "1"]);
    assert_eq!(String::from_utf8_lossy(&compact.stdout).trim().lines().count(), 1);
    assert_eq!(json_of(&compact)["version"], 2);
    let conflict = cairn(&host, &[&keyed[..], &["--expect-version", "1"]].concat());
    assert!(String::from_utf8_lossy(&conflict.stderr).contains("version_conflict"));

    let components = json_of(&cairn(&host, &["components"]));
    assert!(components.as_array().unwrap().iter().any(|c| c["name"] == "account"));
    let deployed = json_of(&cairn(
        &host,
        &["deploy", cairn_test_guests::FAULTY_PATH, "--admin-token", "test-token", "--name", "faulty"],
    ));
    assert_eq!((deployed["name"].as_str(), deployed["version"].as_u64()), (Some("faulty"), Some(1)));
    let unauthorized = cairn(&host, &["deploy", cairn_test_guests::FAULTY_PATH, "--admin-token", "nope"]);
    assert!(String::from_utf8_lossy(&unauthorized.stderr).contains("unauthorized"));
    // Without `--token`, an admin command reads the token file of `--data DIR`.
    let local = tempfile::tempdir().unwrap();
    let data = local.path().to_str().unwrap();
    let no_file = cairn(&host, &["rollback", "faulty", "--data", data]);
    assert_eq!(no_file.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_file.stderr).contains("no --token given"));
    std::fs::write(local.path().join("admin-token"), "test-token\n").unwrap();
    let from_file = cairn(&host, &["rollback", "faulty", "--data", data]);
    assert!(String::from_utf8_lossy(&from_file.stderr).contains("nothing_to_roll_back"), "{from_file:?}");

    let token = ["--token", "test-token"];
    let fixed = cairn_test_guests::FAULTY_FIXED_PATH;
    let dry =
        json_of(&cairn(&host, &[&["deploy", fixed, "--name", "faulty", "--dry-run"][..], &token].concat()));
    assert_eq!((dry["version"].as_u64(), dry["active"].as_bool()), (Some(2), Some(false)));
    let v2 = json_of(&cairn(&host, &[&["deploy", fixed, "--name", "faulty"][..], &token].concat()));
    assert_eq!((v2["version"].as_u64(), v2["active"].as_bool()), (Some(2), Some(true)));
    let rolled = json_of(&cairn(&host, &[&["rollback", "faulty"][..], &token].concat()));
    assert_eq!(rolled["active_version"], 1);
    let activated = json_of(&cairn(&host, &[&["activate", "faulty", "2"][..], &token].concat()));
    assert_eq!(activated["active_version"], 2);
    let missing = cairn(&host, &[&["activate", "faulty", "9"][..], &token].concat());
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("unknown_version"));

    let position = opened["events"][0]["position"].as_u64().unwrap().to_string();
    let info = json_of(&cairn(&host, &["view", "account-info", "1", "--min-position", &position]));
    assert_eq!(info["transactions"][0]["kind"], "opened");
    // Global flags go before the subcommand as well as after it.
    let global = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--url", &host.url, "--token", "test-token", "views"])
        .output()
        .unwrap();
    let views = json_of(&global);
    let names: Vec<_> = views["projections"].as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, ["account-info", "customer-orders"]);
    let rebuilding = json_of(&cairn(&host, &[&["rebuild", "account-info"][..], &token].concat()));
    assert_eq!(rebuilding["rebuild"]["projection"], "account-info");
    let log = json_of(&cairn(&host, &["log", "--after", "0", "--limit", "1"]));
    assert_eq!(log["events"][0]["position"], 1);
    let saga = json_of(&cairn(&host, &["saga", "cli-1"]));
    assert_eq!(saga["events"][0]["correlation_id"], "cli-1");
    let routing = json_of(&cairn(&host, &["routing"]));
    assert!(routing["subscribers"].as_array().unwrap().iter().any(|s| s["name"] == "account"));
    // Ids are sent URL-encoded: a space and a `?` are part of the id, not of the URL.
    let odd = json_of(&cairn(
        &host,
        &["send", "account", "a b?c", r#"{"type":"OpenAccount","data":{"initial_balance":3}}"#],
    ));
    assert_eq!(odd["id"], "a b?c");
    assert_eq!(json_of(&cairn(&host, &["state", "account", "a b?c"]))["state"]["balance"], 3);
    let absent = cairn(&host, &["view", "account-info", "no such account"]);
    assert!(String::from_utf8_lossy(&absent.stderr).contains("document_not_found"));
}

#[test]
fn a_client_command_without_a_host_fails_clearly() {
    let output = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["state", "account", "1", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "3: the host cannot be reached");
    assert!(String::from_utf8_lossy(&output.stderr).contains("could not reach the cairn host"));
    let usage = Command::new(env!("CARGO_BIN_EXE_cairn")).args(["state", "account"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2), "2: a usage error");
}

/// `cairn bench` against a running host: a 2-second smoke of each scenario that asserts the
/// report is whole (the real figures come from release builds, see BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread")]
async fn bench_measures_a_scenario_and_the_healthz_baseline() {
    let host = Host::start();
    let common = ["--json", "bench", "--duration", "1", "--connections", "4", "--accounts", "20"];
    for scenario in ["credits", "hot", "mixed", "transfers"] {
        let report = json_of(&cairn(&host, &[&common[..], &[scenario]].concat()));
        assert_eq!(report["scenario"], scenario);
        let load = &report["load"];
        assert!(load["requests"].as_u64().unwrap() > 0, "{report}");
        assert_eq!(load["errors"], 0, "{report}");
        assert!(load["p50_ms"].as_f64().unwrap() <= load["p99_ms"].as_f64().unwrap(), "{report}");
        assert!(load["p99_ms"].as_f64().unwrap() <= load["max_ms"].as_f64().unwrap(), "{report}");
        assert!(report["healthz"]["per_second"].as_f64().unwrap() > 0.0, "{report}");
        let ratio = report["ratio_to_healthz"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio < 1.0, "commands cost more than /healthz: {report}");
        assert!(report["average_commit_batch"].as_f64().unwrap() > 0.0, "{report}");
        // The disk apart from the rest: each commit fsyncs the event file, in part of its time.
        // (A scrape can fall between a background commit's fsync and its commit being
        // counted, so the bounds leave room for one.)
        let fsync_ms = report["average_fsync_ms"].as_f64().unwrap();
        assert!(
            fsync_ms > 0.0 && fsync_ms <= report["average_commit_ms"].as_f64().unwrap() * 1.2,
            "{report}"
        );
        assert!(report["fsyncs_per_commit"].as_f64().unwrap() >= 0.9, "{report}");
        assert_eq!(report["transfers_terminal_after_ms"].is_number(), scenario == "transfers", "{report}");
    }
    // Transfers need two accounts: a clear refusal, not a hang.
    let refused = cairn(&host, &["bench", "transfers", "--accounts", "1", "--duration", "1"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--accounts 2"), "{refused:?}");
}

/// `serve --examples` picks which bundled components a new data directory gets; a name that
/// is not bundled stops the host with a message naming what is.
#[tokio::test(flavor = "multi_thread")]
async fn serve_deploys_only_the_examples_asked_for() {
    let host = Host::start_with(&["--examples", "account,money-transfer"]);
    let listed = host.get("/components").await.expect(200).body;
    let mut names: Vec<&str> =
        listed.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["account", "money-transfer"], "{listed}");
    host.open_account("e", 1).await;

    let scratch = tempfile::tempdir().unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "--data",
            scratch.path().to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--examples",
            "acount",
        ])
        .output()
        .expect("run cairn serve");
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("\"acount\"") && message.contains("money-transfer"), "{message}");
}
