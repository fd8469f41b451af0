//! In-process tests: a real [`cairn::host::Host`] on a temporary data directory (real redb
//! files, the real example components), driven through its router with
//! `tower::ServiceExt::oneshot`, as axum's testing example does. They cover the rules that
//! are slow or awkward through the binary: what a deploy reaches before it is answered,
//! pipelining behind a failed commit, and the order of a shutdown. Kill -9 and crash tests
//! stay on the binary.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request};
use cairn::config::ServeConfig;
use cairn::host::Host;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tower::ServiceExt;

const TOKEN: &str = "in-process-admin-token";

/// The faults these tests need, armed once for the whole test process. Each names a stream
/// no other test writes.
fn arm_faults() {
    static ARMED: OnceLock<bool> = OnceLock::new();
    let armed = *ARMED.get_or_init(|| {
        cairn::faults::arm("commit-stall=account/in-process-f:1500:1,commit-fail=account/in-process-f:1")
    });
    assert!(armed, "the faults were read before these tests could arm them");
}

fn config(data: &Path, examples: &[&'static str]) -> ServeConfig {
    ServeConfig {
        data_dir: data.to_owned(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin_token: Some(TOKEN.to_owned()),
        examples: examples.to_vec(),
        view_wait: Duration::from_secs(10),
        ..ServeConfig::default()
    }
}

async fn open(data: &Path, examples: &[&'static str]) -> (Host, Router) {
    arm_faults();
    let host = Host::open(&config(data, examples)).await.expect("the host opens");
    let router = host.router(SocketAddr::from(([127, 0, 0, 1], 8080)));
    (host, router)
}

struct Answer {
    status: u16,
    body: Value,
}

async fn call(router: &Router, method: Method, path: &str, body: Body, admin: bool) -> Answer {
    let mut request = Request::builder().method(method).uri(path);
    if admin {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    let response = router.clone().oneshot(request.body(body).unwrap()).await.expect("the router answers");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, body }
}

async fn get(router: &Router, path: &str) -> Answer {
    call(router, Method::GET, path, Body::empty(), false).await
}

async fn command(router: &Router, stream: &str, command_type: &str, data: Value) -> Answer {
    let body = Body::from(json!({"type": command_type, "data": data}).to_string());
    call(router, Method::POST, &format!("/aggregates/{stream}/commands"), body, false).await
}

async fn deploy(router: &Router, name: &str) -> Answer {
    let bytes = cairn_artifacts::component(name).expect("a bundled component").to_vec();
    call(router, Method::PUT, &format!("/components/{name}"), Body::from(bytes), true).await
}

async fn eventually<Fut: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> Fut) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn names(list: &Value, field: &str) -> Vec<String> {
    list[field].as_array().unwrap().iter().map(|item| item["name"].as_str().unwrap().to_owned()).collect()
}

/// A deploy is answered once the router runs the new subscriber and the view of the new
/// projection exists: the handler only calls the registry, and the layers follow it.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_reaches_the_router_and_the_views_before_it_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let (host, router) = open(dir.path(), &["account"]).await;
    assert!(
        !names(&get(&router, "/routing").await.body, "subscribers").contains(&"money-transfer".to_owned())
    );
    assert_eq!(get(&router, "/views").await.body["projections"], json!([]));

    assert_eq!(deploy(&router, "money-transfer").await.status, 200);
    let subscribers = names(&get(&router, "/routing").await.body, "subscribers");
    assert!(subscribers.contains(&"money-transfer".to_owned()), "{subscribers:?}");
    assert_eq!(deploy(&router, "account-info").await.status, 200);
    assert_eq!(names(&get(&router, "/views").await.body, "projections"), ["account-info"]);

    // Both run: a transfer completes, and the view shows it to a reader of its own writes.
    assert_eq!(
        command(&router, "account/a", "OpenAccount", json!({"initial_balance": 100})).await.status,
        200
    );
    assert_eq!(command(&router, "account/b", "OpenAccount", json!({"initial_balance": 0})).await.status, 200);
    let transfer = json!({"from_account_id": "a", "to_account_id": "b", "amount": 30});
    assert_eq!(command(&router, "money-transfer/t", "CreateMoneyTransfer", transfer).await.status, 200);
    eventually("the transfer to complete", || async {
        get(&router, "/aggregates/money-transfer/t").await.body["state"]["state"] == "COMPLETED"
    })
    .await;
    let head = get(&router, "/healthz").await.body["head_position"].as_u64().unwrap();
    let view = get(&router, &format!("/views/account-info/b?min_position={head}")).await;
    assert_eq!(view.status, 200, "{}", view.body);
    assert_eq!(get(&router, "/aggregates/account/b").await.body["state"]["balance"], 30);

    host.shutdown().await;
}

/// A command decided while the batch before it was committing counted on that batch: when
/// that commit fails, both fail, nothing of either is stored, and the next command is
/// decided on what is really there.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_failed_commit_the_pipelined_command_fails_too_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (host, router) = open(dir.path(), &["account"]).await;
    let stream = "account/in-process-f";
    assert_eq!(command(&router, stream, "OpenAccount", json!({"initial_balance": 10})).await.status, 200);
    // The stream's second append (the first credit) stalls 1.5 s, then fails.
    let failing = {
        let router = router.clone();
        tokio::spawn(async move {
            command(&router, stream, "CreditAccount", json!({"amount": 5, "transaction_id": "failing"})).await
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let behind = {
        let router = router.clone();
        tokio::spawn(async move {
            command(&router, stream, "CreditAccount", json!({"amount": 7, "transaction_id": "behind"})).await
        })
    };
    for answer in [failing.await.unwrap(), behind.await.unwrap()] {
        assert_eq!(
            (answer.status, answer.body["error"]["code"].as_str()),
            (503, Some("storage_unavailable"))
        );
    }
    let log = get(&router, "/aggregates/account/in-process-f/events").await.body;
    assert_eq!(log["events"].as_array().unwrap().len(), 1, "only the opening is stored: {log}");
    let after =
        command(&router, stream, "CreditAccount", json!({"amount": 1, "transaction_id": "after"})).await;
    assert_eq!((after.status, after.body["version"].as_u64()), (200, Some(2)));
    assert_eq!(get(&router, "/aggregates/account/in-process-f").await.body["state"]["balance"], 11);
    host.shutdown().await;
}

/// A shutdown under load stops the layers top down: every command is answered (200, or 503
/// once the actors stop taking commands), every 200 is stored and nothing else is, the
/// writer closes the file (the next host can open it), and the sagas that were mid-way when
/// routing stopped end after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_under_load_answers_every_command_keeps_every_acknowledged_one_and_sagas_end_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let (host, router) = open(dir.path(), &["account", "money-transfer"]).await;
    for account in ["a", "b"] {
        let opened =
            command(&router, &format!("account/{account}"), "OpenAccount", json!({"initial_balance": 1000}))
                .await;
        assert_eq!(opened.status, 200);
    }
    let send = |n: usize| {
        let router = router.clone();
        tokio::spawn(async move {
            let (from, to) = if n.is_multiple_of(2) { ("a", "b") } else { ("b", "a") };
            let transfer = json!({"from_account_id": from, "to_account_id": to, "amount": 1});
            (n, command(&router, &format!("money-transfer/t{n}"), "CreateMoneyTransfer", transfer).await)
        })
    };
    let mut sent: Vec<_> = (0..100).map(send).collect();
    // Some of the load is answered before the shutdown begins, the rest meets it.
    let early: Vec<_> = sent.drain(..10).collect();
    for answer in early {
        let (n, answer) = answer.await.unwrap();
        assert_eq!(answer.status, 200, "transfer {n} before the shutdown: {}", answer.body);
        sent.push(tokio::spawn(async move { (n, answer) }));
    }
    host.stop_accepting();
    let stopping = tokio::spawn(host.shutdown());
    // The rest of the load meets a stopping host.
    sent.extend((100..200).map(send));
    let mut acknowledged = Vec::new();
    for answer in sent {
        let (n, answer) = answer.await.unwrap();
        match answer.status {
            200 => acknowledged.push(n),
            503 => assert_eq!(answer.body["error"]["code"], "shutting_down", "{}", answer.body),
            other => panic!("transfer {n} was answered {other}: {}", answer.body),
        }
    }
    tokio::time::timeout(Duration::from_secs(60), stopping).await.expect("the shutdown ends").unwrap();
    drop(router);
    after_restart(dir.path(), acknowledged).await;
}

async fn after_restart(data: &Path, acknowledged: Vec<usize>) {
    assert!(!acknowledged.is_empty(), "no transfer was acknowledged before the shutdown");
    let (host, router) = open(data, &[]).await;
    for n in 0..200 {
        let state = get(&router, &format!("/aggregates/money-transfer/t{n}")).await;
        if acknowledged.contains(&n) {
            assert_eq!(state.status, 200, "the acknowledged transfer t{n} is lost");
        } else {
            assert_eq!(state.status, 404, "the refused transfer t{n} was stored: {}", state.body);
        }
    }
    for n in &acknowledged {
        eventually(&format!("transfer t{n} to end"), || async {
            get(&router, &format!("/aggregates/money-transfer/t{n}")).await.body["state"]["state"]
                == "COMPLETED"
        })
        .await;
    }
    let balance = |id: &'static str| {
        let router = router.clone();
        async move { get(&router, &format!("/aggregates/account/{id}")).await.body["state"]["balance"].as_i64() }
    };
    let (a, b) = (balance("a").await.unwrap(), balance("b").await.unwrap());
    assert_eq!(a + b, 2000, "money was made or lost: a {a}, b {b}");
    host.shutdown().await;
}

/// A compile cache given with `--compiled-cache` holds code cairn runs as it is: a new one
/// is made private, and one that others can write is refused before anything runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_compile_cache_that_others_can_write_is_refused_and_a_new_one_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let open_cache = dir.path().join("open-cache");
    std::fs::create_dir(&open_cache).unwrap();
    std::fs::set_permissions(&open_cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut refused = config(&dir.path().join("refused"), &["account"]);
    refused.compiled_cache = Some(open_cache.clone());
    let error = Host::open(&refused).await.err().expect("a cache others can write is refused");
    assert!(format!("{error:#}").contains("no one else"), "{error:#}");

    let private = dir.path().join("private-cache");
    let mut fresh = config(&dir.path().join("fresh"), &["account"]);
    fresh.compiled_cache = Some(private.clone());
    let host = Host::open(&fresh).await.expect("a new cache is made and used");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    host.shutdown().await;
    // The compiled code is written in the background.
    eventually("the bundled account to be cached there", || async {
        let cached = std::fs::read_dir(&private).unwrap().filter_map(Result::ok);
        cached.into_iter().any(|entry| entry.path().extension().is_some_and(|e| e == "cwasm"))
    })
    .await;
}
