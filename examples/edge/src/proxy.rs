//! The proxy itself: a tower `Service` per connection, forwarding to the node the balancer picks.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sessile_affinity::{Lease, Pick, RouteHint, route_key};
use tokio::net::TcpListener;

use crate::control::{Control, EdgeConfig, Failure};

/// What the router sends to instances.
pub(crate) type ClientBody = BoxBody<Bytes, hyper::Error>;
/// What the router answers with: an instance's body, streamed, or its own short error page.
pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Nodes a request is tried on at most (only requests without a body are tried again).
const ATTEMPTS: usize = 3;

/// sessile's `REROUTE_HEADER`: why a request is not on its hinted node (`down` or `overload`).
const REROUTE_HEADER: &str = "x-sessile-reroute";

/// The router: share it (it is an `Arc` inside) between connections.
#[derive(Clone)]
pub struct Edge {
    inner: Arc<Inner>,
}

struct Inner {
    control: Arc<Control>,
    client: Client<HttpConnector, ClientBody>,
    config: EdgeConfig,
    /// Requests without a session so far.
    visitors: std::sync::atomic::AtomicU64,
}

impl Edge {
    /// A router over `control`'s nodes.
    pub fn new(control: Arc<Control>, config: EdgeConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector);
        Self {
            inner: Arc::new(Inner {
                control,
                client,
                config,
                visitors: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The service for one client connection from `peer`.
    pub fn service(&self, peer: SocketAddr) -> EdgeService {
        EdgeService {
            edge: self.clone(),
            peer,
        }
    }

    /// The control this router routes with.
    pub fn control(&self) -> &Arc<Control> {
        &self.inner.control
    }

    async fn forward(self, peer: SocketAddr, req: Request<Incoming>) -> Response<ProxyBody> {
        let inner = &self.inner;
        let cookie = session_cookie(req.headers(), &inner.config.cookie_name);
        let hint = cookie.as_deref().and_then(RouteHint::from_cookie);
        // A visitor without a session has nothing on any node yet: its requests are spread (a
        // fixed sequence, so placements are reproducible) until a response brings a hint.
        let key = {
            let n = inner
                .visitors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            route_key(&n.to_le_bytes())
        };
        let (mut parts, body) = req.into_parts();
        let bodiless = body.is_end_stream();
        prepare_request(&mut parts.headers, peer);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        let mut body = Some(body.boxed());
        // Safe to send again after it may have reached an instance: an idempotent method
        // (RFC 9110, 9.2.2) without a body.
        let replayable = bodiless && parts.method.is_idempotent();
        let mut refused: Vec<Arc<str>> = Vec::new();
        for _ in 0..ATTEMPTS {
            let Some(lease) = inner.control.balancer().pick(hint, key) else {
                metrics::counter!("sessile_edge_no_node_total").increment(1);
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no instance can take this request",
                );
            };
            let node = lease.node().clone();
            if refused.contains(&node.id) {
                break;
            }
            let this_body = match body.take() {
                Some(b) => b,
                None if bodiless => Empty::new().map_err(|n| match n {}).boxed(),
                None => break,
            };
            let Ok(uri) = Uri::try_from(format!("http://{}{}", node.addr, path)) else {
                return error(StatusCode::BAD_GATEWAY, "bad instance address");
            };
            let mut up = Request::from_parts(parts.clone(), this_body);
            *up.uri_mut() = uri;
            // Tells the instance why the session is not on its node (only this router says so).
            let reroute = match lease.pick() {
                Pick::Rerouted => Some("down"),
                Pick::Overflow => Some("overload"),
                Pick::Sticky | Pick::Hashed => None,
            };
            match reroute {
                Some(why) => {
                    up.headers_mut()
                        .insert(REROUTE_HEADER, HeaderValue::from_static(why));
                }
                None => {
                    up.headers_mut().remove(REROUTE_HEADER);
                }
            }
            metrics::counter!("sessile_edge_requests_total", "node" => node.id.to_string(), "route" => lease.pick().as_str())
                .increment(1);
            let tracked = Tracked::new(lease);
            let call = inner.client.request(up);
            match tokio::time::timeout(inner.config.request_timeout, call).await {
                Ok(Ok(response)) => {
                    inner.control.answered(&node.id);
                    let (mut head, body) = response.into_parts();
                    strip_hop_by_hop(&mut head.headers);
                    let body = LeasedBody {
                        inner: body.boxed(),
                        _lease: tracked,
                    };
                    return Response::from_parts(head, body.boxed());
                }
                Ok(Err(e)) if e.is_connect() => {
                    // Not sent: any request may go to the next node.
                    tracing::warn!(node = %node.id, error = %e, "instance refused the connection");
                    inner.control.failed(&node.id, Failure::Connect);
                    refused.push(node.id.clone());
                }
                Ok(Err(e)) if replayable => {
                    // Perhaps sent on a connection the instance had closed (it restarted, or
                    // died): sent again on a new connection, which tells.
                    tracing::debug!(node = %node.id, error = %e, "request failed; sending it again");
                    inner.control.failed(&node.id, Failure::Other);
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = %node.id, error = %e, "instance failed the request");
                    inner.control.failed(&node.id, Failure::Other);
                    return error(StatusCode::BAD_GATEWAY, "the instance failed the request");
                }
                Err(_) => {
                    inner.control.failed(&node.id, Failure::Timeout);
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the instance did not answer in time",
                    );
                }
            }
        }
        error(StatusCode::BAD_GATEWAY, "no instance could be reached")
    }
}

/// The router's service for one connection.
#[derive(Clone)]
pub struct EdgeService {
    edge: Edge,
    peer: SocketAddr,
}

impl tower_service::Service<Request<Incoming>> for EdgeService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let (edge, peer) = (self.edge.clone(), self.peer);
        Box::pin(async move { Ok(edge.forward(peer, req).await) })
    }
}

/// Accepts connections on `listener` and serves them with `edge` until `shutdown` completes.
pub async fn serve(listener: TcpListener, edge: Edge, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(edge.service(peer));
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
    }
}

/// The first session cookie named `name` whose value carries a route hint, else the first.
fn session_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut first = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for pair in value.split(';') {
            let Some((n, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if n != name {
                continue;
            }
            if RouteHint::from_cookie(v).is_some() {
                return Some(v.to_owned());
            }
            first.get_or_insert_with(|| v.to_owned());
        }
    }
    first
}

/// Headers that belong to one connection and are not forwarded (RFC 9110, 7.6.1), plus those
/// the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Strips hop-by-hop headers and sets the forwarding headers.
fn prepare_request(headers: &mut HeaderMap, peer: SocketAddr) {
    strip_hop_by_hop(headers);
    let ip = peer.ip().to_string();
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) if !before.trim().is_empty() => format!("{before}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::try_from(forwarded_for) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
}

fn error(status: StatusCode, message: &'static str) -> Response<ProxyBody> {
    let mut res = Response::new(
        Full::new(Bytes::from_static(message.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// A request in flight on a node, counted in the in-flight gauge until dropped.
struct Tracked {
    lease: Lease,
}

impl Tracked {
    fn new(lease: Lease) -> Self {
        metrics::gauge!("sessile_edge_in_flight", "node" => lease.node().id.to_string())
            .increment(1.0);
        Self { lease }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        metrics::gauge!("sessile_edge_in_flight", "node" => self.lease.node().id.to_string())
            .decrement(1.0);
    }
}

/// An instance's response body, streamed; the request counts as in flight until it ends.
struct LeasedBody {
    inner: BoxBody<Bytes, hyper::Error>,
    _lease: Tracked,
}

impl Body for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::HOST, HeaderValue::from_static("example.test"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::COOKIE, HeaderValue::from_static("sid=abc"));
        prepare_request(&mut h, "127.0.0.9:5000".parse().expect("addr"));
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "example.test");
        assert_eq!(h[header::COOKIE], "sid=abc");
    }

    #[test]
    fn the_session_cookie_with_a_hint_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; sid=garbage"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("other=1; sid=0000abcd-node-b.sealed"),
        );
        assert_eq!(
            session_cookie(&h, "sid").as_deref(),
            Some("0000abcd-node-b.sealed")
        );
        assert_eq!(session_cookie(&h, "nope"), None);
        let mut g = HeaderMap::new();
        g.insert(header::COOKIE, HeaderValue::from_static("sid=garbage"));
        assert_eq!(session_cookie(&g, "sid").as_deref(), Some("garbage"));
    }
}
