//! A loopback TCP proxy between a client and a server that can lose a reply on purpose: it
//! forwards the next request, swallows the server's answer, closes the connection, and holds
//! new connections until told to let them through.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

/// The proxy; dropping it stops accepting connections.
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    upstream: SocketAddr,
    /// Lose the reply to the next request any connection sends.
    cut_next: AtomicBool,
    /// Hold the reply to the next request for this long (ms; 0: no delay).
    delay_next_ms: std::sync::atomic::AtomicU64,
    /// Signalled once a reply was lost and its connection closed.
    cut: Notify,
    /// While true, new connections wait before they reach the server.
    held: watch::Sender<bool>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            upstream,
            cut_next: AtomicBool::new(false),
            delay_next_ms: std::sync::atomic::AtomicU64::new(0),
            cut: Notify::new(),
            held: watch::channel(false).0,
        });
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(serve(client, Arc::clone(&state)));
                }
            }
        });
        Self { addr, state, task }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Arms the proxy: the next request is forwarded, its reply dropped, and its connection
    /// closed; from then on, new connections are held until [`release`](Self::release).
    pub fn lose_next_reply(&self) {
        self.state.cut_next.store(true, Ordering::SeqCst);
    }

    /// Delays the reply to the next request by `by`: the server has run it, the client hears of it
    /// late. Other connections are not held.
    pub fn delay_next_reply(&self, by: std::time::Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX).max(1);
        self.state.delay_next_ms.store(ms, Ordering::SeqCst);
    }

    /// Waits until the armed reply was lost.
    pub async fn reply_lost(&self) {
        self.state.cut.notified().await;
    }

    /// Lets held connections through.
    pub fn release(&self) {
        self.state.held.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, state: Arc<State>) {
    let mut held = state.held.subscribe();
    if held.wait_for(|h| !*h).await.is_err() {
        return;
    }
    let Ok(mut server) = TcpStream::connect(state.upstream).await else {
        return;
    };
    let (mut up, mut down) = ([0u8; 16 * 1024], [0u8; 16 * 1024]);
    loop {
        tokio::select! {
            n = client.read(&mut up) => {
                let Ok(n @ 1..) = n else { return };
                if server.write_all(&up[..n]).await.is_err() {
                    return;
                }
                let delay = state.delay_next_ms.swap(0, Ordering::SeqCst);
                if delay > 0 {
                    let Ok(n @ 1..) = server.read(&mut down).await else { return };
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    if client.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                    continue;
                }
                if state.cut_next.swap(false, Ordering::SeqCst) {
                    // The server runs the request; its reply goes nowhere.
                    let _ = server.read(&mut down).await;
                    state.held.send_replace(true);
                    drop(client);
                    drop(server);
                    state.cut.notify_one();
                    return;
                }
            }
            n = server.read(&mut down) => {
                let Ok(n @ 1..) = n else { return };
                if client.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
