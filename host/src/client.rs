//! The HTTP client of the CLI and of `cairn bench`: where a host is, how its paths are
//! spelled, and what to say when it cannot be reached.

use serde_json::Value;
use std::time::Duration;

/// A host at `base` (e.g. `http://127.0.0.1:8080`), and the connections to it.
#[derive(Clone)]
pub struct HostClient {
    http: reqwest::Client,
    base: String,
}

impl HostClient {
    /// One connection at a time, no time limit: a person's command.
    pub fn new(base: &str) -> HostClient {
        HostClient { http: reqwest::Client::new(), base: base.trim_end_matches('/').to_owned() }
    }

    /// Up to `connections` kept open, each request bounded by `timeout`: a load generator.
    pub fn pooled(base: &str, connections: usize, timeout: Duration) -> reqwest::Result<HostClient> {
        let http = reqwest::Client::builder().pool_max_idle_per_host(connections).timeout(timeout).build()?;
        Ok(HostClient { http, base: base.trim_end_matches('/').to_owned() })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `path` (from `/`) on this host.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path))
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.put(self.url(path))
    }

    /// The JSON answer to `GET path`; `None` when the host cannot be reached or does not
    /// answer JSON.
    pub async fn json(&self, path: &str) -> Option<Value> {
        self.get(path).send().await.ok()?.json().await.ok()
    }

    /// What to tell a person when the host does not answer.
    pub fn unreachable(&self) -> String {
        format!("could not reach the cairn host at {} (is `cairn serve` running?)", self.base)
    }
}

/// `/aggregates/{type}/{id}`, each segment percent-encoded.
pub fn aggregate_path(type_name: &str, id: &str) -> String {
    format!("/aggregates/{}/{}", segment(type_name), segment(id))
}

/// One path segment or query value, percent-encoded (an id may hold any character but `/`).
pub fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn segments_are_percent_encoded_and_paths_built_from_them() {
        assert_eq!(super::segment("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(super::aggregate_path("account", "x/y"), "/aggregates/account/x%2Fy");
        let client = super::HostClient::new("http://127.0.0.1:1/");
        assert_eq!(client.url("/healthz"), "http://127.0.0.1:1/healthz");
    }
}
