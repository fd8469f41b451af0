//! Start the real `cairn serve` binary on a temporary data directory and talk HTTP to it.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Host {
    child: Option<Child>,
    pub url: String,
    data: PathBuf,
    _dir: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    env: Vec<(String, String)>,
    pub http: reqwest::Client,
}

/// An HTTP answer: its status, headers and JSON body (`Null` when it has none).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The machine code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error answer: {}", self.body))
    }

    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {}", self.body);
        self
    }

    /// Assert an error answer with `status` and `code`, in the JSON error shape.
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str) -> Self {
        assert_eq!(self.status.as_u16(), status, "unexpected answer: {}", self.body);
        assert_eq!(self.code(), code, "unexpected error: {}", self.body);
        assert!(self.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", self.body);
        self
    }
}

/// Send a request and read its answer (a free function, so spawned tasks can use it).
pub async fn answer_of(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the host answers");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer { status, headers, body }
}

impl Host {
    /// A host on a fresh data directory.
    pub fn start() -> Host {
        Host::start_with(&[])
    }

    /// A host on a fresh data directory with extra `cairn serve` flags.
    pub fn start_with(args: &[&str]) -> Host {
        Host::start_with_env(args, &[])
    }

    /// A host on an existing data directory (kept when the host is dropped).
    pub fn start_on(data: &std::path::Path) -> Host {
        let mut host = Host {
            child: None,
            url: String::new(),
            data: data.to_owned(),
            _dir: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            http: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        };
        host.spawn();
        host
    }

    /// A host with extra flags and environment variables (e.g. `CAIRN_FAULTS`). Inside
    /// [`on_postgres`], the host keeps its store in a database of its own on the run's
    /// PostgreSQL server instead of its data directory.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut extra_args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if ON_POSTGRES.get() {
            extra_args.extend(["--store".to_owned(), crate::postgres::fresh_database()]);
            HOSTS_ON_POSTGRES.set(HOSTS_ON_POSTGRES.get() + 1);
        }
        let mut host = Host {
            child: None,
            url: String::new(),
            data,
            _dir: Some(dir),
            extra_args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            http: reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap(),
        };
        host.spawn();
        host
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.with_extension("log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        // Every host of the run shares one compile cache, so a fresh data directory loads
        // the bundled components instead of compiling them anew (seconds of CPU each time).
        // A test that gives `CAIRN_COMPILED_CACHE` empty gets the data directory's own.
        match self.env.iter().find(|(key, _)| key == COMPILED_CACHE) {
            None => command.env(COMPILED_CACHE, shared_compiled_cache()),
            Some((_, own)) if own.is_empty() => command.env_remove(COMPILED_CACHE),
            Some(_) => &mut command,
        };
        let own_env = self.env.iter().filter(|(key, value)| !(key == COMPILED_CACHE && value.is_empty()));
        let mut child = command
            .args(["serve", "--data"])
            .arg(&self.data)
            .args(if self.extra_args.iter().any(|a| a == "--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args(["--admin-token", "test-token"])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            // A developer's collector is not the tests': a test that exports says where.
            .env_remove("CAIRN_OTLP_ENDPOINT")
            .envs(own_env.map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start cairn serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(url) = line.strip_prefix("cairn listening on ") {
                        break url.to_owned();
                    }
                }
                _ => panic!(
                    "cairn serve exited before listening; see {}",
                    self.data.with_extension("log").display()
                ),
            }
        };
        // Keep draining stdout so the host never blocks or fails writing to it.
        std::thread::spawn(move || for _ in lines {});
        self.url = url;
        self.child = Some(child);
    }

    /// The resident memory of the host process, from `/proc` (Linux).
    pub fn resident_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("a running host").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    }

    /// The host's data directory.
    /// The process id of the running host.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the host runs").id()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        &self.data
    }

    /// What the host has written to its log (stderr) so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    /// A client for a host started elsewhere (no process of its own to stop).
    pub fn attach(http: reqwest::Client, url: String) -> Host {
        Host {
            child: None,
            url,
            data: PathBuf::new(),
            _dir: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            http,
        }
    }

    /// Stop with SIGTERM (graceful) and wait for the process to end.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("cairn did not stop within 30 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Start again on the same data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The environment of the next start (e.g. without `CAIRN_FAULTS`).
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    }

    /// Start again after a SIGKILL.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop or kill the host first");
        self.spawn();
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        answer_of(request).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.url))).await
    }

    /// `POST /aggregates/{type}/{id}/commands` with `{"type": command, "data": data}`.
    pub async fn command(&self, type_name: &str, id: &str, command: &str, data: Value) -> Answer {
        self.send(self.command_request(type_name, id, command, data)).await
    }

    pub fn command_request(
        &self,
        type_name: &str,
        id: &str,
        command: &str,
        data: Value,
    ) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/aggregates/{type_name}/{id}/commands", self.url))
            .json(&json!({"type": command, "data": data}))
    }

    /// The aggregate's state JSON (asserting 200).
    pub async fn state(&self, type_name: &str, id: &str) -> Value {
        self.get(&format!("/aggregates/{type_name}/{id}")).await.expect(200).body["state"].clone()
    }

    /// `PUT /components/{name}` with the admin token.
    pub async fn deploy(&self, name: &str, bytes: &[u8]) -> Answer {
        self.deploy_with(name, "", bytes).await
    }

    /// `PUT /components/{name}?{query}` with the admin token.
    pub async fn deploy_with(&self, name: &str, query: &str, bytes: &[u8]) -> Answer {
        let request = self
            .http
            .put(format!("{}/components/{name}?{query}", self.url))
            .bearer_auth("test-token")
            .header("content-type", "application/wasm")
            .body(bytes.to_vec());
        self.send(request).await
    }

    /// `POST path` with the admin token.
    pub async fn admin_post(&self, path: &str) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.url)).bearer_auth("test-token")).await
    }

    pub async fn open_account(&self, id: &str, balance: i64) {
        self.command("account", id, "OpenAccount", json!({"initial_balance": balance})).await.expect(200);
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

thread_local! {
    static ON_POSTGRES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static HOSTS_ON_POSTGRES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Run `test` (a `#[tokio::test]`, whose body runs on this thread) with every host it starts
/// on PostgreSQL.
///
/// # Panics
/// When `test` started no host on PostgreSQL (it starts them elsewhere than on its own
/// thread, so running it here would run it on the embedded store again).
pub fn on_postgres(test: fn()) {
    ON_POSTGRES.set(true);
    HOSTS_ON_POSTGRES.set(0);
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ON_POSTGRES.set(false);
        }
    }
    let _reset = Reset;
    test();
    assert!(HOSTS_ON_POSTGRES.get() > 0, "the test started no host on PostgreSQL");
}

const COMPILED_CACHE: &str = "CAIRN_COMPILED_CACHE";

/// The compile cache the hosts of a test run share: inside the target directory, so it
/// outlives one run (compiled code is keyed by the component's digest, and wasmtime refuses
/// and recompiles code from another engine).
fn shared_compiled_cache() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("compiled-cache")
}
