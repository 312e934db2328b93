//! Load generation for sessile: an HTTP/1.1 keep-alive client with a cookie per virtual user,
//! latency histograms, and a guard for the app processes a run starts. Traffic goes to loopback
//! addresses only.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long one request may take before the load generator gives up on it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// One response, as the load generator sees it.
#[derive(Debug)]
pub struct Answer {
    /// Status, or `None` if the request failed or timed out.
    pub status: Option<StatusCode>,
    /// The `Location` header.
    pub location: Option<String>,
    /// The body as text.
    pub body: String,
    /// How long it took.
    pub latency: Duration,
}

/// A virtual user: a shared connection pool and its own cookie.
#[derive(Clone)]
pub struct User {
    client: HyperClient<HttpConnector, Full<Bytes>>,
    base: String,
    cookie_name: String,
    /// The session cookie's value, if any.
    pub token: Option<String>,
}

/// A keep-alive client for `base` (e.g. `http://127.0.0.1:3000`), shared by many users.
pub fn client() -> HyperClient<HttpConnector, Full<Bytes>> {
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http()
}

impl User {
    /// A user without a session.
    pub fn new(
        client: HyperClient<HttpConnector, Full<Bytes>>,
        base: &str,
        cookie_name: &str,
    ) -> Self {
        assert!(
            base.starts_with("http://127.") || base.starts_with("http://localhost"),
            "load goes to loopback addresses only: {base}"
        );
        Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            cookie_name: cookie_name.to_owned(),
            token: None,
        }
    }

    /// Sends a request with the user's cookie and remembers any new cookie.
    pub async fn send(&mut self, method: Method, path: &str, form: Option<&str>) -> Answer {
        let started = Instant::now();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header(header::COOKIE, format!("{}={t}", self.cookie_name));
        }
        let body = match form {
            Some(f) => {
                req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Full::new(Bytes::from(f.to_owned()))
            }
            None => Full::new(Bytes::new()),
        };
        let Ok(req) = req.body(body) else {
            return failed(started);
        };
        let call = async {
            let res = self.client.request(req).await.ok()?;
            let status = res.status();
            let location = res
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let set = res
                .headers()
                .get_all(header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| {
                    let (first, _) = v.split_once(';').unwrap_or((v, ""));
                    first
                        .strip_prefix(&format!("{}=", self.cookie_name))
                        .map(str::to_owned)
                });
            let bytes = res.into_body().collect().await.ok()?.to_bytes();
            Some((status, location, set, bytes))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
            Ok(Some((status, location, set, bytes))) => {
                if let Some(v) = set {
                    self.token = (!v.is_empty()).then_some(v);
                }
                Answer {
                    status: Some(status),
                    location,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                    latency: started.elapsed(),
                }
            }
            _ => failed(started),
        }
    }
}

fn failed(started: Instant) -> Answer {
    Answer {
        status: None,
        location: None,
        body: String::new(),
        latency: started.elapsed(),
    }
}

/// A latency histogram in microseconds, 1 µs to 60 s, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Milliseconds at quantile `q`.
pub fn ms_at(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// A child process stopped (by its own pid) when dropped.
pub struct Spawned(pub Child);

impl Spawned {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn start(mut cmd: Command, log: &std::path::Path) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {cmd:?}: {e}"));
        Self(child)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `GET base/path` answers 200, for at most `within`.
pub async fn wait_ready(base: &str, path: &str, within: Duration) {
    let mut probe = User::new(client(), base, "unused");
    let deadline = Instant::now() + within;
    while probe.send(Method::GET, path, None).await.status != Some(StatusCode::OK) {
        assert!(
            Instant::now() < deadline,
            "{base}{path} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
