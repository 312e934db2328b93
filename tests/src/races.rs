//! Interleavings that the session layer's promises must survive, written once and run against
//! every store: a login while requests with the old cookie are in flight, and a log-out-everywhere
//! while the user's sessions rotate on two instances.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use http::Method;
use sessile::SaveError;

use crate::{Gate, Jar, Reply, send};

async fn go(app: &Router, method: Method, uri: &str, name: &str, token: Option<&str>) -> Reply {
    let cookie = token.map(|t| format!("{name}={t}"));
    send(app, method, uri, cookie.as_deref(), None).await
}

/// A login (`/login/alice`, on the last app) while a write and a read with the pre-login cookie
/// are held in their handlers (on the first app), and a read and a write with the old cookie
/// arrive just after it. Every one of those responses reaches the browser after the login's, and
/// the browser must still be logged in. The layer must renew on every read (`renew_fraction(0)`),
/// so that the reads would re-issue their cookie.
pub async fn login_survives_late_responses(apps: &[Router], gates: &[Arc<Gate>], name: &str) {
    let (slow, login) = (0, apps.len() - 1);
    let mut jar = Jar::default();
    jar.apply(
        &go(&apps[login], Method::POST, "/set/ann", name, None).await,
        name,
    );
    let old = jar.value.clone().expect("an anonymous session");

    let held = |method: Method, uri: &'static str| {
        let (app, old, name) = (apps[slow].clone(), old.clone(), name.to_owned());
        tokio::spawn(async move { go(&app, method, uri, &name, Some(&old)).await })
    };
    let write = held(Method::POST, "/slow-incr");
    gates[slow].entered.notified().await;
    let read = held(Method::GET, "/slow-read");
    gates[slow].read_entered.notified().await;

    let logged_in = go(&apps[login], Method::POST, "/login/alice", name, Some(&old)).await;
    jar.apply(&logged_in, name);
    let new = jar.value.clone().expect("the login sets a cookie");
    assert_ne!(new, old);

    // Sent with the old cookie before the browser saw the login's response; loaded after it.
    let late_read = go(&apps[slow], Method::GET, "/read", name, Some(&old)).await;
    let late_write = go(&apps[slow], Method::POST, "/set/mallory", name, Some(&old)).await;
    gates[slow].release.notify_one();
    gates[slow].read_release.notify_one();
    let write = write.await.expect("held write");
    let read = read.await.expect("held read");

    for late in [&late_read, &late_write, &write, &read] {
        jar.apply(late, name);
    }
    assert_eq!(
        jar.value.as_deref(),
        Some(new.as_str()),
        "a late response replaced the login's cookie: write {:?}, read {:?}, late read {:?}, \
         late write {:?}",
        write.set_cookie(name),
        read.set_cookie(name),
        late_read.set_cookie(name),
        late_write.set_cookie(name)
    );
    let who = go(&apps[slow], Method::GET, "/whoami", name, Some(&new)).await;
    assert_eq!(who.body, "alice", "the logged-in session still loads");
    assert_eq!(
        read.body, "ann",
        "the held read worked on the pre-login session"
    );
    // Writes made with the pre-login id never reach the logged-in session, and say so.
    for w in [&write, &late_write] {
        assert!(
            matches!(w.save_failed.as_deref(), Some(SaveError::Rotated)),
            "{:?}",
            w.save_failed
        );
    }
    let data = go(&apps[login], Method::GET, "/read", name, Some(&new)).await;
    assert_eq!(data.body, "ann");
    let n = go(&apps[login], Method::GET, "/n", name, Some(&new)).await;
    assert_eq!(n.body, "0");
}

/// What [`logout_everywhere_beats_rotation`] measured.
#[derive(Debug)]
pub struct RotationRace {
    /// Sessions that still loaded as the user's afterwards (must be 0).
    pub survivors: usize,
    /// Successful rotations made by all the rotating sessions.
    pub rotations: u64,
    /// What log-out-everywhere reported it deleted.
    pub destroyed: String,
}

/// `sessions` sessions of one user rotate (`/cycle`) in a loop, alternating between two apps,
/// while the user logs out everywhere on the first. Afterwards no session of the user loads, and
/// every rotation loop has stopped on its own (its next rotation failed).
pub async fn logout_everywhere_beats_rotation(
    apps: [Router; 2],
    name: &str,
    sessions: usize,
) -> RotationRace {
    const MAX_ROTATIONS: u32 = 5_000;
    let mut tokens = Vec::with_capacity(sessions + 1);
    for i in 0..=sessions {
        let r = go(&apps[i % 2], Method::POST, "/login/alice", name, None).await;
        tokens.push(r.cookie_value(name).expect("a logged-in session"));
    }
    let anchor = tokens.pop().expect("one more session");
    let apps = Arc::new(apps);
    // Every rotator has rotated once before the logout starts.
    let started = Arc::new(tokio::sync::Barrier::new(sessions + 1));
    let deadline = Instant::now() + Duration::from_secs(60);
    let rotators: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, mut cur)| {
            let (apps, started, name) = (Arc::clone(&apps), Arc::clone(&started), name.to_owned());
            tokio::spawn(async move {
                let mut rotations = 0u64;
                for k in 0..MAX_ROTATIONS {
                    let app = &apps[(i + k as usize) % 2];
                    let r = go(app, Method::POST, "/cycle", &name, Some(&cur)).await;
                    let next = r.cookie_value(&name).filter(|v| !v.is_empty());
                    if k == 0 {
                        started.wait().await;
                    }
                    match next {
                        Some(v) => {
                            cur = v;
                            rotations += 1;
                        }
                        None => break,
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                }
                (cur, rotations)
            })
        })
        .collect();
    started.wait().await;
    let destroyed = go(
        &apps[0],
        Method::POST,
        "/logout-everywhere",
        name,
        Some(&anchor),
    )
    .await
    .body;
    let mut survivors = 0;
    let mut rotations = 0;
    for r in rotators {
        let (last, n) = r.await.expect("rotator");
        rotations += n;
        let who = go(&apps[1], Method::GET, "/whoami", name, Some(&last)).await;
        survivors += usize::from(who.body == "alice");
    }
    RotationRace {
        survivors,
        rotations,
        destroyed,
    }
}

/// Two apps of different tenants over one store, with the same keys and cookie name: a token of
/// one never works at the other, and logging a user out everywhere in one tenant spares the same
/// user id in the other.
pub async fn tenants_are_isolated(acme: &Router, globex: &Router, name: &str) {
    let a = go(acme, Method::POST, "/login/alice", name, None).await;
    let a = a.cookie_value(name).expect("acme's alice");
    let g = go(globex, Method::POST, "/login/alice", name, None).await;
    let g = g.cookie_value(name).expect("globex's alice");
    // acme's token at globex is no session at all.
    assert_eq!(
        go(globex, Method::GET, "/whoami", name, Some(&a))
            .await
            .body,
        "-"
    );
    assert_eq!(
        go(acme, Method::GET, "/whoami", name, Some(&g)).await.body,
        "-"
    );
    let r = go(acme, Method::POST, "/logout-everywhere", name, Some(&a)).await;
    assert_eq!(r.body, "1", "only acme's alice");
    assert_eq!(
        go(acme, Method::GET, "/whoami", name, Some(&a)).await.body,
        "-"
    );
    assert_eq!(
        go(globex, Method::GET, "/whoami", name, Some(&g))
            .await
            .body,
        "alice",
        "globex's alice is still logged in"
    );
}
