//! The login example in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, started by this test on loopback) driven over WebDriver. It logs in,
//! increments the counter, logs out, logs in again, and logs out everywhere from a second browser
//! profile, checking what the user sees at each step.
//!
//! When Chromium or its driver is missing the test fails with the command that installs them; it
//! is never skipped. `./scripts/test` installs them on Debian when it runs as root.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use support::{browser, chromedriver, example, free_addr, screenshot};

async fn text(b: &Client) -> String {
    b.find(Locator::Css("body"))
        .await
        .expect("a body")
        .text()
        .await
        .expect("its text")
}

/// The value the profile page shows for `fact` (a row of its table).
async fn fact(b: &Client, fact: &str) -> String {
    b.find(Locator::XPath(&format!(
        "//th[normalize-space()='{fact}']/following-sibling::td"
    )))
    .await
    .unwrap_or_else(|e| panic!("no {fact:?} on the page: {e}"))
    .text()
    .await
    .expect("its text")
}

/// Clicks the button labelled `label`, a form's submit, and waits for the next page. The click
/// returns once the form is sent, so this marks the current document and polls (bounded) until
/// the browser shows one without the mark; errors while the page changes are retried.
async fn click(b: &Client, label: &str) {
    b.execute("window.sessileOldPage = true;", vec![])
        .await
        .expect("mark the page");
    b.find(Locator::XPath(&format!(
        "//button[normalize-space()='{label}']"
    )))
    .await
    .unwrap_or_else(|e| panic!("no button {label:?}: {e}"))
    .click()
    .await
    .expect("click");
    let start = Instant::now();
    loop {
        let old = b
            .execute("return window.sessileOldPage === true;", vec![])
            .await;
        if let Ok(serde_json::Value::Bool(false)) = old {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "clicking {label:?} did not load a new page (last answer: {old:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn log_in(b: &Client, app: SocketAddr, user: &str, password: &str) {
    b.goto(&format!("http://{app}/login"))
        .await
        .expect("login page");
    for (field, value) in [("username", user), ("password", password)] {
        b.find(Locator::Css(&format!("input[name={field}]")))
            .await
            .expect("a login field")
            .send_keys(value)
            .await
            .expect("typing");
    }
    click(b, "Log in").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_logs_in_counts_logs_out_and_is_logged_out_everywhere_in_chromium() {
    let (driver, _driver) = chromedriver();
    let (app, metrics) = (free_addr(), free_addr());
    let _example = example(app, metrics);

    let a = browser(driver).await;
    a.goto(&format!("http://{app}/")).await.expect("home");
    assert!(text(&a).await.contains("You are not logged in."));

    log_in(&a, app, "alice", "wrong").await;
    assert!(text(&a).await.contains("Wrong user name or password"));

    log_in(&a, app, "alice", "wonderland").await;
    assert_eq!(a.current_url().await.expect("url").path(), "/profile");
    assert_eq!(fact(&a, "User").await, "alice");
    assert_eq!(fact(&a, "Counter").await, "0");

    click(&a, "Increment counter").await;
    click(&a, "Increment counter").await;
    assert_eq!(fact(&a, "Counter").await, "2");

    click(&a, "Log out").await;
    assert!(text(&a).await.contains("You are not logged in."));
    a.goto(&format!("http://{app}/profile"))
        .await
        .expect("profile");
    assert_eq!(a.current_url().await.expect("url").path(), "/login");

    // Log in again, and on a second device (another browser profile).
    log_in(&a, app, "alice", "wonderland").await;
    assert_eq!(fact(&a, "Counter").await, "0", "a new session");
    let b = browser(driver).await;
    log_in(&b, app, "alice", "wonderland").await;
    assert_eq!(fact(&b, "User").await, "alice");

    click(&b, "Log out everywhere").await;
    assert!(text(&b).await.contains("You are not logged in."));
    a.refresh().await.expect("reload");
    assert_eq!(
        a.current_url().await.expect("url").path(),
        "/login",
        "the first device was logged out too"
    );

    // The operator's page on the admin listener shows this instance's figures.
    a.goto(&format!("http://{metrics}/status"))
        .await
        .expect("status page");
    let status = text(&a).await;
    // On the memory store: no breaker to show.
    assert!(status.contains("Store circuit breaker: none"), "{status}");
    assert!(
        status.contains("sessile_sessions_created_total"),
        "{status}"
    );
    let shot = screenshot(&a, "status.png").await;
    eprintln!("status page: {}", shot.display());

    a.close().await.expect("close");
    b.close().await.expect("close");
}
