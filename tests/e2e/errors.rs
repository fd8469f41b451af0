//! Every failure answers the JSON error shape with the status API.md gives it.

use crate::harness::{Host, answer_of};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn bad_commands_are_400() {
    let host = Host::start();
    host.open_account("1", 10).await;
    let post = |body: &'static str| {
        host.http
            .post(format!("{}/aggregates/account/1/commands", host.url))
            .header("content-type", "application/json")
            .body(body)
    };
    host.send(post("{not json")).await.expect_error(400, "malformed_json");
    host.send(post("")).await.expect_error(400, "malformed_json");
    host.send(post(r#"{"data": {}}"#)).await.expect_error(400, "invalid_command");
    host.send(post(r#"{"type": "CreditAccount", "data": [1]}"#)).await.expect_error(400, "invalid_command");
    host.send(post(r#"{"type": ""}"#)).await.expect_error(400, "invalid_command");
    host.send(post(r#"{"type": "CommandRejected", "data": {}}"#)).await.expect_error(400, "invalid_command");
    host.command("account", "1", "Teleport", json!({})).await.expect_error(400, "unknown_command");
    let wrong_type = host
        .command("account", "1", "CreditAccount", json!({"amount": "lots", "transaction_id": "t"}))
        .await
        .expect_error(400, "invalid_command");
    assert_eq!(
        wrong_type.body["error"]["message"],
        "CreditAccount is malformed: field `amount` has the wrong type"
    );
    host.command("account", "1", "CreditAccount", json!({"transaction_id": "t"}))
        .await
        .expect_error(400, "invalid_command");
    assert_eq!(host.get("/aggregates/account/1").await.body["version"], 1, "nothing was stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn business_rejections_are_422() {
    let host = Host::start();
    host.open_account("1", 10).await;
    host.command("account", "1", "OpenAccount", json!({"initial_balance": 1}))
        .await
        .expect_error(422, "account_already_open");
    host.command("account", "2", "DebitAccount", json!({"amount": 1, "transaction_id": "t"}))
        .await
        .expect_error(422, "account_not_found");
    host.command("account", "1", "DebitAccount", json!({"amount": 0, "transaction_id": "t"}))
        .await
        .expect_error(422, "invalid_amount");
    host.get("/aggregates/account/2").await.expect_error(404, "stream_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_types_ids_and_routes_are_404() {
    let host = Host::start();
    host.command("spaceship", "1", "Launch", json!({})).await.expect_error(404, "unknown_type");
    host.get("/aggregates/spaceship/1").await.expect_error(404, "unknown_type");
    host.get("/aggregates/spaceship/1/events").await.expect_error(404, "unknown_type");
    host.get("/aggregates/account/404").await.expect_error(404, "stream_not_found");
    host.get("/nowhere").await.expect_error(404, "not_found");
    host.get("/sagas/unknown-correlation").await.expect_error(404, "saga_not_found");
    let wrong_method = host.send(host.http.delete(format!("{}/events", host.url))).await;
    wrong_method.expect_error(405, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ids_and_headers_are_400() {
    let host = Host::start();
    let long_id = "x".repeat(201);
    host.command("account", &long_id, "OpenAccount", json!({"initial_balance": 1}))
        .await
        .expect_error(400, "invalid_id");
    let long_key = "k".repeat(300);
    let request = host
        .command_request("account", "1", "OpenAccount", json!({"initial_balance": 1}))
        .header("Idempotency-Key", long_key);
    host.send(request).await.expect_error(400, "invalid_header");
    host.get("/events?after=-1").await.expect_error(400, "invalid_query");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_beyond_the_limit_is_413() {
    let host = Host::start_with(&["--max-body-bytes", "4096"]);
    let padding = "x".repeat(8192);
    host.command("account", "1", "OpenAccount", json!({"initial_balance": 1, "padding": padding}))
        .await
        .expect_error(413, "body_too_large");
    // The default limit is 1 MiB.
    let host = Host::start();
    let padding = "x".repeat(1 << 20);
    host.command("account", "1", "OpenAccount", json!({"initial_balance": 1, "padding": padding}))
        .await
        .expect_error(413, "body_too_large");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_mailbox_answers_429_at_once_and_nothing_is_lost() {
    let host = Host::start_with(&["--mailbox-capacity", "2"]);
    host.open_account("hot", 0).await;
    let mut requests = Vec::new();
    for n in 0..300 {
        let request = host.command_request(
            "account",
            "hot",
            "CreditAccount",
            json!({"amount": 1, "transaction_id": format!("c{n}")}),
        );
        requests.push(tokio::spawn(answer_of(request)));
    }
    let (mut accepted, mut overloaded) = (0, 0);
    for request in requests {
        let answer = request.await.unwrap();
        match answer.status.as_u16() {
            200 => accepted += 1,
            429 => {
                assert_eq!(answer.code(), "overloaded");
                assert_eq!(answer.headers["retry-after"], "1");
                overloaded += 1;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert!(overloaded > 0, "a mailbox of 2 under 300 concurrent commands must overflow");
    assert_eq!(
        host.state("account", "hot").await["balance"],
        accepted,
        "every 200 was kept, every 429 stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_in_flight_limit_the_host_sheds_load_with_503() {
    let host = Host::start_with(&["--max-in-flight", "1"]);
    host.open_account("1", 0).await;
    let mut requests = Vec::new();
    for n in 0..200 {
        let id = (n % 20).to_string();
        let request = host.command_request("account", &id, "OpenAccount", json!({"initial_balance": 1}));
        requests.push(tokio::spawn(answer_of(request)));
    }
    let mut shed = 0;
    for request in requests {
        let answer = request.await.unwrap();
        match answer.status.as_u16() {
            200 | 422 => {}
            503 => {
                assert_eq!(answer.code(), "overloaded");
                assert_eq!(answer.headers["retry-after"], "1");
                shed += 1;
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert!(shed > 0, "200 concurrent requests against a limit of 1 must shed some");
    assert_eq!(host.get("/healthz").await.status, 200, "the host serves again once the burst is over");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_endpoints_need_the_token() {
    let host = Host::start();
    let put = |token: Option<&str>| {
        // Refused uploads carry a small body: the host answers 401 before reading any of it
        // and closes, and a client still writing a large body sees a broken pipe instead of
        // the answer (deploys.rs checks that over a raw socket).
        let body =
            if token == Some("test-token") { cairn_artifacts::ACCOUNT.to_vec() } else { b"\0asm".to_vec() };
        let request = host
            .http
            .put(format!("{}/components/account", host.url))
            .header("content-type", "application/wasm")
            .body(body);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    host.send(put(None)).await.expect_error(401, "unauthorized");
    host.send(put(Some("wrong"))).await.expect_error(401, "unauthorized");
    let same = host.send(put(Some("test-token"))).await.expect(200);
    assert_eq!(same.body["version"], 1, "deploying the active bytes again changes nothing");
    assert_eq!(same.body["kind"], "aggregate");
}

/// A client that is slow with a request's head loses its connection; one that is slow with
/// its body gets 503 `request_timeout` in the JSON shape; a live event stream is not a slow
/// request and stays open; and a stopping host does not wait on any of them.
#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_timed_out() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let mut host = Host::start_with(&["--header-timeout-ms", "300", "--request-timeout-ms", "500"]);
    let address = host.url.trim_start_matches("http://").to_owned();
    let connect = || {
        let stream = std::net::TcpStream::connect(&address).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream
    };

    let mut head = connect();
    write!(head, "GET /healthz HTTP/1.1\r\nHost: {address}\r\n").unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    head.read_to_end(&mut answer).expect("the host closes the connection, not the read timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"), "no answer to half a head");

    let mut body = connect();
    let command = br#"{"type":"OpenAccount","data":{"initial_balance":1}}"#;
    write!(
        body,
        "POST /aggregates/account/slow/commands HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        command.len()
    )
    .unwrap();
    body.write_all(&command[..10]).unwrap();
    let mut answer = String::new();
    let mut buffer = [0u8; 4096];
    while !answer.contains("request_timeout") {
        let n = body.read(&mut buffer).expect("an answer before the read timeout");
        assert!(n > 0, "the host answers before it closes: {answer}");
        answer.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#"{"error":{"code":"request_timeout""#), "{answer}");
    host.get("/aggregates/account/slow").await.expect_error(404, "stream_not_found");

    // A live stream outlives both bounds.
    let mut live = host.http.get(format!("{}/events/stream", host.url)).send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    host.open_account("after", 1).await;
    let chunk = tokio::time::timeout(Duration::from_secs(10), live.chunk()).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&chunk.unwrap()).contains("account/after"));

    let _idle = connect();
    let started = Instant::now();
    host.stop();
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown waited {:?}", started.elapsed());
}

/// `cairn serve` on a data directory holding a foreign file, and one whose token file is
/// readable by others or a symlink.
#[test]
fn bad_data_files_fail_clearly_and_the_token_file_is_owner_only() {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};
    let serve = |data: &std::path::Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .env_remove("CAIRN_ADMIN_TOKEN");
        command
    };

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("events.redb"), "not a database at all").unwrap();
    let refused = serve(foreign.path()).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("events.redb cannot be opened") && said.contains("--data"), "{said}");
    assert!(!said.contains("panicked"), "{said}");

    // Started once with a token file others can read, and once where it is a symlink.
    let loose = tempfile::tempdir().unwrap();
    let token_file = loose.path().join("admin-token");
    std::fs::write(&token_file, "loose-token\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let linked = tempfile::tempdir().unwrap();
    let elsewhere = linked.path().join("elsewhere");
    std::fs::write(&elsewhere, "someone else's file").unwrap();
    std::os::unix::fs::symlink(&elsewhere, linked.path().join("admin-token")).unwrap();
    for data in [loose.path(), linked.path()] {
        let mut host = serve(data).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(host.stdout.take().unwrap()).lines();
        assert!(lines.next().unwrap().unwrap().starts_with("cairn listening on"));
        host.kill().unwrap();
        host.wait().unwrap();
        let token_file = data.join("admin-token");
        let metadata = std::fs::symlink_metadata(&token_file).unwrap();
        assert!(metadata.file_type().is_file(), "a file of the host's own");
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), "loose-token\n", "the token is kept");
    assert_eq!(
        std::fs::read_to_string(&elsewhere).unwrap(),
        "someone else's file",
        "the link's target untouched"
    );
}

/// Path and target-length refusals come in the JSON shape too.
#[tokio::test(flavor = "multi_thread")]
async fn undecodable_paths_and_overlong_targets_answer_json() {
    let host = Host::start();
    host.get("/aggregates/account/%FF").await.expect_error(400, "invalid_path");
    host.get("/views/account-info/%C3%28").await.expect_error(400, "invalid_path");
    let long = format!("/events?after=0&padding={}", "a".repeat(9000));
    host.get(&long).await.expect_error(414, "uri_too_long");
}

/// What hyper refuses before the API sees it (a target beyond its 64 KiB limit, bytes that
/// are not HTTP) answers in the JSON shape too; and a view document may be called `rebuild`.
#[tokio::test(flavor = "multi_thread")]
async fn answers_past_hypers_own_limits_have_the_json_shape_and_a_document_may_be_called_rebuild() {
    use crate::trust::raw_request;
    let host = Host::start();
    let address = host.url.trim_start_matches("http://").to_owned();
    let long = raw_request(
        &host.url,
        &format!("GET /events?pad={} HTTP/1.1\r\nHost: {address}\r\n\r\n", "a".repeat(70_000)),
    )
    .await;
    assert!(long.starts_with("HTTP/1.1 414"), "{long}");
    let body: serde_json::Value = serde_json::from_str(long.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "uri_too_long", "{long}");
    // Within hyper's limit but beyond the host's own: the API's answer, as before.
    let ours = raw_request(
        &host.url,
        &format!(
            "GET /events?pad={} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n",
            "a".repeat(20_000)
        ),
    )
    .await;
    assert!(ours.starts_with("HTTP/1.1 414") && ours.contains(r#""code":"uri_too_long""#), "{ours}");
    let garbage = raw_request(&host.url, "NOT HTTP AT ALL\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    assert!(garbage.contains(r#""code":"malformed_request""#), "{garbage}");
    host.get("/healthz").await.expect(200);

    let opened =
        host.command("account", "rebuild", "OpenAccount", json!({"initial_balance": 7})).await.expect(200);
    let position = opened.body["events"][0]["position"].as_u64().unwrap();
    let document =
        host.get(&format!("/views/account-info/rebuild?min_position={position}")).await.expect(200);
    assert_eq!((document.body["id"].as_str(), document.body["balance"].as_i64()), (Some("rebuild"), Some(7)));
    // The rebuild itself is still the admin's POST.
    host.send(host.http.post(format!("{}/views/account-info/rebuild", host.url)))
        .await
        .expect_error(401, "unauthorized");
}
