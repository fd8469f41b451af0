//! Headless Chromium for the console tests, driven over WebDriver (chromedriver) with
//! fantoccini. Chromium and its driver come from the system packages (`chromium`,
//! `chromium-driver`); `.ci/run` installs them. Without them a console test fails and says
//! how to install them, unless `CAIRN_SKIP_BROWSER_TESTS=1` asks to skip them, which each
//! skipped test prints.

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a page may take to show what a test waits for. Generous: CI's two cores run
/// the other end-to-end tests beside the browser.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// chromedriver's port and the session's id, to end the session from `Drop`.
    port: u16,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

fn executable(variable: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    path.is_file().then_some(path)
}

impl Browser {
    /// A fresh headless Chromium with an empty profile, or `None` (after saying so) when
    /// there is none and the run asked to skip browser tests.
    pub async fn open(test: &str) -> Option<Browser> {
        let chromium = executable("CAIRN_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = executable("CAIRN_CHROMEDRIVER", "/usr/bin/chromedriver");
        let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
            let missing = "no browser: the console tests need Chromium and ChromeDriver \
                (`apt-get install chromium chromium-driver`, or CAIRN_CHROMIUM and CAIRN_CHROMEDRIVER)";
            if std::env::var("CAIRN_SKIP_BROWSER_TESTS").as_deref() == Ok("1") {
                eprintln!("SKIPPED {test}: {missing}; CAIRN_SKIP_BROWSER_TESTS=1 asked to skip it");
                return None;
            }
            panic!("{missing}. Set CAIRN_SKIP_BROWSER_TESTS=1 to skip these tests on purpose.");
        };
        let (driver, port) = start_driver(&chromedriver);
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-extensions",
                    "--window-size=1440,1000", "--lang=en-GB",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let capabilities: Capabilities = capabilities;
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("chromedriver starts a Chromium session");
        let session = client.session_id().await.ok().flatten();
        Some(Browser { client, driver, port, session, _profile: profile })
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// Evaluate `script` (a function body; `arguments` are `args`) in the page.
    pub async fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        self.client.execute(script, args).await.unwrap_or_else(|e| panic!("run {script}: {e}"))
    }

    /// Wait until `script` answers something other than `null`/`false`, and answer it.
    #[track_caller]
    pub fn wait_for<'a>(&'a self, what: &'a str, script: &'a str) -> impl Future<Output = Value> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let value = self.eval(script, vec![]).await;
                if !matches!(value, Value::Null | Value::Bool(false)) {
                    return value;
                }
                if Instant::now() > deadline {
                    let text =
                        self.eval("return document.getElementById('main')?.innerText ?? ''", vec![]).await;
                    panic!(
                        "{caller}: waited {PATIENCE:?} for {what}; the page shows:\n{}",
                        text.as_str().unwrap_or("")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The text of the first element matching `css`, once there is one.
    pub async fn text_of(&self, css: &str) -> String {
        let element = self.client.wait().at_most(PATIENCE).for_element(Locator::Css(css)).await;
        let element = element.unwrap_or_else(|e| panic!("no {css} on the page: {e}"));
        element.text().await.unwrap()
    }

    pub async fn click(&self, css: &str) {
        let element = self.client.wait().at_most(PATIENCE).for_element(Locator::Css(css)).await;
        element.unwrap_or_else(|e| panic!("no {css} to click: {e}")).click().await.unwrap();
    }

    /// Replace what a field holds with `text` (for a file input: its path).
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.client.wait().at_most(PATIENCE).for_element(Locator::Css(css)).await;
        let element = element.unwrap_or_else(|e| panic!("no field {css}: {e}"));
        if element.attr("type").await.unwrap().as_deref() != Some("file") {
            element.clear().await.unwrap();
        }
        element.send_keys(text).await.unwrap();
    }

    /// Pick `value` in a `<select>`.
    pub async fn choose(&self, css: &str, value: &str) {
        let element = self.client.wait().at_most(PATIENCE).for_element(Locator::Css(css)).await;
        element.unwrap_or_else(|e| panic!("no select {css}: {e}")).select_by_value(value).await.unwrap();
    }

    /// Everything the page wrote to the browser's console at level SEVERE (uncaught
    /// exceptions, failed loads, `console.error`, CSP violations) since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let entries = self.client.issue_cmd(BrowserLog).await.expect("chromedriver answers the browser log");
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Save a PNG of the window to `$CAIRN_UI_SCREENSHOTS/<name>.png` when that is set (how
    /// docs/console/ is made).
    pub async fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("CAIRN_UI_SCREENSHOTS") else { return };
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        self.session = None;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // A test that failed did not reach close(). Killing chromedriver would leave Chromium
        // running (it keeps a process group of its own), so end the session first: then
        // chromedriver quits Chromium.
        if let Some(session) = self.session.take() {
            end_session(self.port, &session);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// WebDriver's `DELETE /session/{id}`, over a plain blocking socket (`Drop` cannot await).
fn end_session(port: u16, session: &str) {
    use std::io::{Read, Write};
    let Ok(mut socket) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(20)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if socket.write_all(request.as_bytes()).is_err() {
        return;
    }
    // chromedriver answers once Chromium has quit; its answer's head is enough (it may keep
    // the connection open after it).
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// chromedriver on a port it picks itself, read from what it prints when it is ready.
fn start_driver(chromedriver: &std::path::Path) -> (Child, u16) {
    let mut driver = Command::new(chromedriver)
        .args(["--port=0", "--log-level=SEVERE"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let port = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    break rest
                        .trim_end_matches('.')
                        .trim()
                        .parse::<u16>()
                        .expect("chromedriver names its port");
                }
            }
            _ => panic!("chromedriver exited before it was ready"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (driver, port)
}

/// chromedriver's `POST /session/{id}/se/log` for the `browser` log: the console messages
/// the page produced (kept because the session asked for `goog:loggingPrefs`).
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({"type": "browser"}).to_string()))
    }
}
