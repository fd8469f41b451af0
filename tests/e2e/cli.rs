//! The `cairn` client subcommands against a running host.

use crate::harness::Host;
use serde_json::Value;
use std::process::{Command, Output};

fn cairn(host: &Host, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .args(["--url", &host.url])
        // What a person reads in a pipe: no colour asked for by the environment.
        .env_remove("CLICOLOR_FORCE")
        .output()
        .expect("run cairn")
}

/// `cairn --json ...`: what scripts read.
fn script(host: &Host, args: &[&str]) -> Output {
    cairn(host, &[&["--json"][..], args].concat())
}

/// What a person reads: stdout, which must not carry colour when it is not a terminal.
fn person(host: &Host, args: &[&str]) -> String {
    let output = cairn(host, args);
    assert!(output.status.success(), "cairn failed: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(!text.contains('\x1b'), "no colour off a terminal: {text:?}");
    text
}

/// A table's rows as cells: columns are at least three spaces apart and no cell holds three.
pub(crate) fn rows_of(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|line| {
            line.trim().split("   ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect()
        })
        .collect()
}

/// The cell of `column` in the row whose first cell is `key`.
fn cell_of(table: &str, key: &str, column: &str) -> String {
    let rows = rows_of(table);
    let at =
        rows[0].iter().position(|title| title == column).unwrap_or_else(|| panic!("no {column}: {table}"));
    let row = rows.iter().find(|row| row[0] == key).unwrap_or_else(|| panic!("no row {key}: {table}"));
    row[at].clone()
}

fn json_of(output: &Output) -> Value {
    assert!(output.status.success(), "cairn failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the CLI prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn send_state_events_components_and_deploy() {
    let host = Host::start();
    let opened = json_of(&script(
        &host,
        &["send", "account", "1", r#"{"type":"OpenAccount","data":{"initial_balance":10}}"#],
    ));
    assert_eq!(opened["version"], 1);
    let keyed =
        ["send", "account", "1", r#"{"type":"CreditAccount","data":{"amount":5,"transaction_id":"t"}}"#];
    let first = json_of(&script(
        &host,
        &[&keyed[..], &["--idempotency-key", "k", "--correlation-id", "cli-1"]].concat(),
    ));
    let retry = json_of(&script(&host, &[&keyed[..], &["--idempotency-key", "k"]].concat()));
    assert_eq!(first, retry);
    assert_eq!(first["events"][0]["correlation_id"], "cli-1");

    assert_eq!(json_of(&script(&host, &["state", "account", "1"]))["state"]["balance"], 15);
    assert_eq!(json_of(&script(&host, &["state", "account", "1", "--version", "1"]))["state"]["balance"], 10);
    let events = json_of(&script(&host, &["events", "account", "1", "--from", "2"]));
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

    let components = json_of(&script(&host, &["components"]));
    assert!(components.as_array().unwrap().iter().any(|c| c["name"] == "account"));
    let deployed = json_of(&script(
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
        json_of(&script(&host, &[&["deploy", fixed, "--name", "faulty", "--dry-run"][..], &token].concat()));
    assert_eq!((dry["version"].as_u64(), dry["active"].as_bool()), (Some(2), Some(false)));
    let v2 = json_of(&script(&host, &[&["deploy", fixed, "--name", "faulty"][..], &token].concat()));
    assert_eq!((v2["version"].as_u64(), v2["active"].as_bool()), (Some(2), Some(true)));
    let rolled = json_of(&script(&host, &[&["rollback", "faulty"][..], &token].concat()));
    assert_eq!(rolled["active_version"], 1);
    let activated = json_of(&script(&host, &[&["activate", "faulty", "2"][..], &token].concat()));
    assert_eq!(activated["active_version"], 2);
    let missing = cairn(&host, &[&["activate", "faulty", "9"][..], &token].concat());
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("unknown_version"));

    let position = opened["events"][0]["position"].as_u64().unwrap().to_string();
    let info = json_of(&script(&host, &["view", "account-info", "1", "--min-position", &position]));
    assert_eq!(info["transactions"][0]["kind"], "opened");
    // Global flags go before the subcommand as well as after it.
    let global = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["--url", &host.url, "--token", "test-token", "--json", "views"])
        .output()
        .unwrap();
    let views = json_of(&global);
    let names: Vec<_> = views["projections"].as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
    assert_eq!(names, ["account-info", "customer-orders"]);
    let rebuilding = json_of(&script(&host, &[&["rebuild", "account-info"][..], &token].concat()));
    assert_eq!(rebuilding["rebuild"]["projection"], "account-info");
    let log = json_of(&script(&host, &["log", "--after", "0", "--limit", "1"]));
    assert_eq!(log["events"][0]["position"], 1);
    let saga = json_of(&script(&host, &["saga", "cli-1"]));
    assert_eq!(saga["events"][0]["correlation_id"], "cli-1");
    let routing = json_of(&script(&host, &["routing"]));
    assert!(routing["subscribers"].as_array().unwrap().iter().any(|s| s["name"] == "account"));
    // Ids are sent URL-encoded: a space and a `?` are part of the id, not of the URL.
    let odd = json_of(&script(
        &host,
        &["send", "account", "a b?c", r#"{"type":"OpenAccount","data":{"initial_balance":3}}"#],
    ));
    assert_eq!(odd["id"], "a b?c");
    assert_eq!(json_of(&script(&host, &["state", "account", "a b?c"]))["state"]["balance"], 3);
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
    // A correlation id goes in a header: one with a control character is a usage error.
    let bad = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["send", "account", "1", "{}", "--correlation-id", "a\nb", "--url", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no control characters"), "{bad:?}");
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

/// Without `--json` a person reads lists as aligned tables and other answers as one line.
#[tokio::test(flavor = "multi_thread")]
async fn people_read_tables_and_one_line_answers() {
    let host = Host::start();
    let opening = r#"{"type":"OpenAccount","data":{"initial_balance":100}}"#;
    assert_eq!(
        person(&host, &["send", "account", "101", opening]),
        "account/101 v1: AccountOpened {\"initial_balance\":100}\n"
    );
    person(&host, &["send", "account", "202", r#"{"type":"OpenAccount","data":{"initial_balance":5}}"#]);
    let transfer = r#"{"type":"CreateMoneyTransfer","data":{"from_account_id":"101","to_account_id":"202","amount":10}}"#;
    person(&host, &["send", "money-transfer", "t1", transfer, "--correlation-id", "cli-t1"]);
    assert_eq!(crate::sagas::wait_terminal(&host, "t1").await, "COMPLETED");
    assert_eq!(
        person(&host, &["state", "account", "202"]),
        "account/202 v2: {\"balance\":15,\"closed\":false}\n"
    );

    // Numbers line up on the right, text on the left, three spaces apart, no trailing spaces.
    let saga = person(&host, &["saga", "cli-t1"]);
    let expected = [
        "POSITION   STREAM              VERSION   TYPE                         CORRELATION   DATA",
        r#"       3   money-transfer/t1         1   MoneyTransferCreated         cli-t1        {"amount":10,"from_account_id":"101","to_account_id":"202"}"#,
        r#"       4   account/101               2   AccountDebited               cli-t1        {"amount":10,"balance":90,"counterparty_account_id":"202","transaction_id":"t1","transfer_id":"t1"}"#,
        r#"       5   money-transfer/t1         2   MoneyTransferDebitRecorded   cli-t1        {"amount":10,"from_account_id":"101","to_account_id":"202"}"#,
        r#"       6   account/202               2   AccountCredited              cli-t1        {"amount":10,"balance":15,"counterparty_account_id":"101","transaction_id":"t1","transfer_id":"t1"}"#,
        "       7   money-transfer/t1         3   MoneyTransferCompleted       cli-t1        {}",
    ];
    assert_eq!(saga, expected.join("\n") + "\n");
    let page = person(&host, &["log", "--after", "0", "--limit", "2"]);
    assert_eq!(page.lines().count(), 4, "a header, two events and where the next page starts: {page}");
    assert!(page.ends_with("more: --after 2\n"), "{page}");
    assert_eq!(cell_of(&person(&host, &["events", "account", "202"]), "6", "TYPE"), "AccountCredited");

    crate::sagas::eventually("both projections to apply the transfer", || async {
        let views = host.get("/views").await.body;
        views["projections"].as_array().unwrap().iter().all(|p| p["cursor"] == 7 && p["lag"] == 0)
    })
    .await;
    let views = person(&host, &["views"]);
    let expected = [
        "PROJECTION        VERSION   STATUS    CURSOR   LAG   DOCUMENTS   GENERATION   DETAIL",
        "account-info           v1   running        7     0           2            1   -",
        "customer-orders        v1   running        7     0           0            1   -",
    ];
    assert_eq!(views, expected.join("\n") + "\n");
    let document = person(&host, &["view", "account-info", "202", "--min-position", "6"]);
    assert!(document.starts_with("at position 7: {\"balance\":15,"), "{document}");

    // `--json` prints the host's bytes: its key order, not a re-serialisation's.
    let raw = reqwest::get(format!("{}/components", host.url)).await.unwrap().text().await.unwrap();
    assert_eq!(String::from_utf8(script(&host, &["components"]).stdout).unwrap(), raw + "\n");
    let more = person(&host, &["events", "account", "101", "--limit", "1"]);
    assert!(more.ends_with("more: --from 2\n"), "{more}");

    let components = person(&host, &["components"]);
    let listed = json_of(&script(&host, &["components"]));
    let account = listed.as_array().unwrap().iter().find(|c| c["name"] == "account").unwrap();
    let digest = account["versions"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    assert_eq!(cell_of(&components, "account", "KIND"), "aggregate");
    assert_eq!(cell_of(&components, "account", "ACTIVE"), "v1");
    assert_eq!(cell_of(&components, "account", "DIGEST"), digest[..12]);
    assert_eq!(cell_of(&components, "account-info", "KIND"), "projection");

    // A trapping reaction parks account/p for `faulty`; the letter behind it waits.
    let token = ["--token", "test-token"];
    let deployed = person(
        &host,
        &[&["deploy", cairn_test_guests::FAULTY_PATH, "--name", "faulty"][..], &token].concat(),
    );
    assert!(deployed.starts_with("faulty v1 deployed and active (aggregate, sha256:"), "{deployed}");
    assert!(deployed.contains("replay check: 0 streams, 0 changed"), "{deployed}");
    person(&host, &["send", "account", "p", r#"{"type":"OpenAccount","data":{"initial_balance":1}}"#]);
    for transaction in ["poison", "after-poison"] {
        let credit =
            format!(r#"{{"type":"CreditAccount","data":{{"amount":1,"transaction_id":"{transaction}"}}}}"#);
        person(&host, &["send", "account", "p", &credit]);
    }
    crate::sagas::eventually("account/p to park for faulty", || async {
        host.get("/routing/dead-letters?subscriber=faulty").await.body["dead_letters"]
            .as_array()
            .map(Vec::len)
            == Some(2)
    })
    .await;
    let routing = person(&host, &["routing"]);
    assert_eq!(cell_of(&routing, "faulty", "DEAD LETTERS"), "2", "{routing}");
    assert_eq!(cell_of(&routing, "account", "DEAD LETTERS"), "0", "{routing}");
    assert_eq!(cell_of(&routing, "money-transfer", "SOURCES"), "account (replies)", "{routing}");
    let first = person(&host, &["dead-letters", "--subscriber", "faulty", "--limit", "1"]);
    assert_eq!(cell_of(&first, "faulty", "STREAM"), "account/p", "{first}");
    assert_eq!(cell_of(&first, "faulty", "EVENT"), "AccountCredited", "{first}");
    let next = first.lines().last().unwrap().strip_prefix("more: --after ").expect("a next page");
    let second = person(&host, &["dead-letters", "--subscriber", "faulty", "--after", next]);
    assert_eq!(rows_of(&second).len(), 2, "the letter that waited: {second}");
    assert_ne!(cell_of(&second, "faulty", "POSITION"), cell_of(&first, "faulty", "POSITION"));
    assert_eq!(person(&host, &["dead-letters", "--subscriber", "account"]), "no dead letters\n");

    let dry = person(
        &host,
        &[&["deploy", cairn_test_guests::FAULTY_FIXED_PATH, "--name", "faulty", "--dry-run"][..], &token]
            .concat(),
    );
    assert!(
        dry.starts_with("faulty v2 would deploy (dry run: nothing activated) (aggregate, sha256:"),
        "{dry}"
    );
    let rebuilt = person(&host, &[&["rebuild", "account-info"][..], &token].concat());
    assert!(rebuilt.starts_with("account-info: ") && rebuilt.contains("generation 2"), "{rebuilt}");

    // Colour goes to a terminal (unless NO_COLOR is set) or where CLICOLOR_FORCE asks for it.
    let coloured = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["components", "--url", &host.url])
        .env("CLICOLOR_FORCE", "1")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&coloured.stdout).starts_with("\x1b[1mNAME\x1b[0m"), "{coloured:?}");
}
