//! What the tests that run the example as a process share: free loopback ports, the example
//! binary, a minimal HTTP/1.1 client, and bounded polling.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process of this test, killed (by its own handle) when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// Polls `f` until it gives a value, for at most `limit`: for processes this test started to
/// come up, and for Prometheus to have scraped.
pub(crate) fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) set_cookies: Vec<String>,
    pub(crate) body: String,
}

/// One HTTP/1.1 request on its own connection.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    form: &str,
) -> Option<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !cookie.is_empty() {
        req.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", form.len()));
    }
    req.push_str("\r\n");
    req.push_str(form);
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let set_cookies = lines
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("set-cookie").then(|| {
                value
                    .trim()
                    .split(';')
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .collect();
    Some(Reply {
        status,
        set_cookies,
        body: body.to_owned(),
    })
}

/// Logs in as alice on `app` the way a browser does, and reads the profile page.
pub(crate) fn log_in_and_read(app: SocketAddr) {
    let form = http(app, "GET", "/login", "", "").expect("login form");
    let login_csrf = form
        .set_cookies
        .iter()
        .find(|c| c.starts_with("__Host-login-csrf="))
        .expect("login CSRF cookie")
        .clone();
    let at = form
        .body
        .find("name=\"csrf\" value=\"")
        .expect("CSRF field")
        + 19;
    let csrf = &form.body[at..at + 64];
    let done = http(
        app,
        "POST",
        "/login",
        &login_csrf,
        &format!("username=alice&password=wonderland&csrf={csrf}"),
    )
    .expect("login");
    assert_eq!(done.status, 303);
    let sid = done
        .set_cookies
        .iter()
        .find(|c| c.starts_with("sid="))
        .expect("session cookie")
        .clone();
    let profile = http(app, "GET", "/profile", &sid, "").expect("profile");
    assert_eq!(profile.status, 200, "{}", profile.body);
}

/// Starts the example binary on `app`, its metrics page on `metrics`.
pub(crate) fn example(app: SocketAddr, metrics: SocketAddr) -> Proc {
    example_on(app, metrics, None)
}

/// [`example`] with its sessions in Redis at `redis` (else in memory).
pub(crate) fn example_on(app: SocketAddr, metrics: SocketAddr, redis: Option<&str>) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_login"))
        .env("SESSILE_ADDR", app.to_string())
        .env("SESSILE_METRICS_ADDR", metrics.to_string())
        .env("SESSILE_KEYS", format!("1:{}", "ab".repeat(32)))
        .env("REDIS_URL", redis.unwrap_or_default())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the example");
    let proc = Proc(child);
    eventually("the example listens", Duration::from_secs(30), || {
        http(app, "GET", "/healthz", "", "").filter(|r| r.status == 200)
    });
    proc
}

/// Starts chromedriver on a free loopback port; fails with the install command when Chromium or
/// its driver is missing (never skipped).
pub(crate) fn chromedriver() -> (SocketAddr, Proc) {
    for tool in ["chromium", "chromedriver"] {
        assert!(
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "{tool} is not installed: `apt-get install -y chromium chromium-driver` \
             (./scripts/test does it as root)"
        );
    }
    let driver = free_addr();
    let proc = Proc(
        Command::new("chromedriver")
            .arg(format!("--port={}", driver.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    // chromedriver keeps its connections open after `Connection: close`, so readiness is "it
    // accepts a connection"; a WebDriver session then waits for the browser itself.
    eventually("chromedriver listens", Duration::from_secs(30), || {
        TcpStream::connect_timeout(&driver, Duration::from_secs(1)).ok()
    });
    (driver, proc)
}

/// A browser with its own profile (cookie jar), headless.
pub(crate) async fn browser(driver: SocketAddr) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "args": ["--headless=new", "--window-size=1280,1000", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]
        }),
    );
    fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://{driver}"))
        .await
        .expect("a browser session")
}

/// Saves a screenshot of what `b` shows as `name` under the target's test directory
/// (`target/tmp/screenshots/`), and returns its path.
pub(crate) async fn screenshot(b: &fantoccini::Client, name: &str) -> std::path::PathBuf {
    let png = b.screenshot().await.expect("a screenshot");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let path = dir.join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    path
}
