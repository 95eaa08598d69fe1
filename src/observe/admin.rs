//! The admin HTTP server (endpoints in docs/METRICS.md): a small HTTP/1.1 server on hyper, bound only to
//! the listener it is given (`admin.address`).
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | 200, `text/plain; version=0.0.4; charset=utf-8`, the Prometheus exposition |
//! | `GET /ready` | 200 `ready` once every listener is bound; 503 `draining or not ready` otherwise |
//! | `GET /config` | 200, `application/json`, the config in force |
//! | `GET /clusters` | 200, `application/json`, endpoints with health, ejection, active requests |
//! | `POST /reload` | 200 with the reload's message; 400 with the error text when the new config was rejected |
//!
//! `HEAD` is accepted wherever `GET` is. Another method on a known path gets 405 with
//! an `Allow` header; an unknown path gets 404. Bodies end with a line feed.
//!
//! Access: when the handler has a token ([`AdminHandler::token`]), every request
//! without `Authorization: Bearer <token>` gets 401. `POST /reload` from a browser page
//! of another origin gets 403: a request whose `Sec-Fetch-Site` is neither
//! `same-origin` nor `none`, or whose `Origin` names another host than `Host`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// Content type of `GET /metrics` (the Prometheus text format, version 0.0.4).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `serve` waits, after shutdown, for requests being answered to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the admin server shows and does; implemented by the runtime.
#[async_trait::async_trait]
pub trait AdminHandler: Send + Sync {
    /// The Prometheus text exposition (`GET /metrics`).
    fn metrics(&self) -> String;
    /// Whether every listener is bound and the proxy is not draining (`GET /ready`).
    fn ready(&self) -> bool;
    /// The config in force (`GET /config`).
    fn config(&self) -> serde_json::Value;
    /// Each cluster's endpoints with health, ejection state and active requests
    /// (`GET /clusters`).
    fn clusters(&self) -> serde_json::Value;
    /// Re-reads the config file (`POST /reload`): `Ok` with a message for the
    /// operator (including any listener change that needs a restart), or `Err` with
    /// why the new config was rejected.
    async fn reload(&self) -> Result<String, String>;
    /// The bearer token every request must carry (`admin.token_file`).
    ///
    /// By default returns `None`: no token is required.
    fn token(&self) -> Option<&str> {
        None
    }
}

/// Whether `req` carries `Authorization: Bearer <token>` (compared in constant time).
fn authorized(req: &Request<Incoming>, token: &str) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a state-changing request comes from a browser page of another origin.
fn cross_origin(req: &Request<Incoming>) -> bool {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = header("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return true;
        }
    }
    match (header("origin"), header("host")) {
        (None, _) => false,
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
            !origin_host.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
    }
}

/// Serves the admin routes on `listener` until `shutdown` completes, then stops
/// accepting, lets requests being answered finish (up to 5 s) and returns.
///
/// Accept errors (such as running out of file descriptors) are logged and retried
/// after a short pause; they never end the server.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn AdminHandler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let handler = handler.clone();
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(route(&*handler, req).await) }
                    });
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(error) = conn.await {
                            tracing::debug!(%peer, %error, "admin connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "admin server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::debug!("admin server: gave up waiting for open connections");
        }
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn with_newline(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(value) {
        Ok(body) => response(StatusCode::OK, JSON, with_newline(body)),
        Err(error) => response(
            StatusCode::INTERNAL_SERVER_ERROR,
            TEXT,
            format!("cannot serialise: {error}\n"),
        ),
    }
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = response(
        StatusCode::METHOD_NOT_ALLOWED,
        TEXT,
        format!("method not allowed; use {allow}\n"),
    );
    resp.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    resp
}

async fn route(handler: &dyn AdminHandler, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if let Some(token) = handler.token() {
        if !authorized(&req, token) {
            let mut resp = response(
                StatusCode::UNAUTHORIZED,
                TEXT,
                "missing or wrong bearer token\n".to_owned(),
            );
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    let method = req.method();
    if method == Method::POST && cross_origin(&req) {
        crate::observe::rate_limited!(
            tracing::Level::WARN,
            path = req.uri().path(),
            "admin: refused a cross-origin POST"
        );
        return response(
            StatusCode::FORBIDDEN,
            TEXT,
            "cross-origin requests may not change state\n".to_owned(),
        );
    }
    let readable = method == Method::GET || method == Method::HEAD;
    match req.uri().path() {
        "/metrics" | "/ready" | "/config" | "/clusters" if !readable => {
            method_not_allowed("GET, HEAD")
        }
        "/metrics" => response(StatusCode::OK, METRICS_CONTENT_TYPE, handler.metrics()),
        "/ready" => {
            if handler.ready() {
                response(StatusCode::OK, TEXT, "ready\n".to_owned())
            } else {
                response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    TEXT,
                    "draining or not ready\n".to_owned(),
                )
            }
        }
        "/config" => json(&handler.config()),
        "/clusters" => json(&handler.clusters()),
        "/reload" if method != Method::POST => method_not_allowed("POST"),
        "/reload" => match handler.reload().await {
            Ok(message) => response(StatusCode::OK, TEXT, with_newline(message)),
            Err(error) => {
                tracing::warn!(%error, "config reload rejected");
                response(StatusCode::BAD_REQUEST, TEXT, with_newline(error))
            }
        },
        _ => response(StatusCode::NOT_FOUND, TEXT, "not found\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper::header::HOST;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Fake {
        ready: AtomicBool,
        reload_result: Mutex<Result<String, String>>,
        reloads: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl AdminHandler for Fake {
        fn metrics(&self) -> String {
            "# TYPE metaproxy_config_reloads_total counter\n\
             metaproxy_config_reloads_total{result=\"ok\"} 3\n"
                .to_owned()
        }
        fn ready(&self) -> bool {
            self.ready.load(Ordering::SeqCst)
        }
        fn config(&self) -> serde_json::Value {
            serde_json::json!({"listeners": [{"name": "dubbo-in"}]})
        }
        fn clusters(&self) -> serde_json::Value {
            serde_json::json!({"demo-v1": [{"address": "127.0.0.1:20881", "healthy": true}]})
        }
        async fn reload(&self) -> Result<String, String> {
            self.reloads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            self.reload_result
                .lock()
                .map(|r| r.clone())
                .unwrap_or_else(|e| e.into_inner().clone())
        }
    }

    struct Server {
        addr: SocketAddr,
        fake: Arc<Fake>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = Arc::new(Fake {
            ready: AtomicBool::new(true),
            reload_result: Mutex::new(Ok("reloaded: 2 routes, 3 clusters".to_owned())),
            reloads: AtomicUsize::new(0),
        });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, fake.clone(), async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            fake,
            stop: Some(tx),
            task,
        }
    }

    struct Reply {
        status: StatusCode,
        content_type: String,
        allow: Option<String>,
        body: String,
    }

    /// One request with hyper's HTTP/1.1 client on a fresh connection.
    async fn call(addr: SocketAddr, method: Method, path: &str) -> Reply {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let header = |name| {
            resp.headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().expect("ascii").to_owned())
        };
        let content_type = header(CONTENT_TYPE).unwrap_or_default();
        let allow = header(ALLOW);
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            content_type,
            allow,
            body: String::from_utf8(body.to_vec()).expect("utf-8"),
        }
    }

    #[tokio::test]
    async fn every_route_answers_with_its_status_and_type() {
        let server = start().await;
        let a = server.addr;

        let r = call(a, Method::GET, "/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(
            r.content_type.starts_with("text/plain; version=0.0.4"),
            "{}",
            r.content_type
        );
        assert!(r
            .body
            .contains("metaproxy_config_reloads_total{result=\"ok\"} 3"));

        let r = call(a, Method::GET, "/ready").await;
        assert_eq!((r.status, r.body.trim()), (StatusCode::OK, "ready"));
        assert!(r.content_type.starts_with("text/plain"));
        server.fake.ready.store(false, Ordering::SeqCst);
        let r = call(a, Method::GET, "/ready").await;
        assert_eq!(
            (r.status, r.body.trim()),
            (StatusCode::SERVICE_UNAVAILABLE, "draining or not ready")
        );

        let r = call(a, Method::GET, "/config").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(v["listeners"][0]["name"], "dubbo-in");

        let r = call(a, Method::GET, "/clusters?verbose=1").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.content_type, "application/json");
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json");
        assert_eq!(v["demo-v1"][0]["healthy"], true);

        let r = call(a, Method::POST, "/reload").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.trim(), "reloaded: 2 routes, 3 clusters");
        *server.fake.reload_result.lock().expect("lock") =
            Err("config.yaml: clusters[0].endpoints: empty".to_owned());
        let r = call(a, Method::POST, "/reload").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.body.trim(), "config.yaml: clusters[0].endpoints: empty");
        assert_eq!(server.fake.reloads.load(Ordering::SeqCst), 2);

        let r = call(a, Method::HEAD, "/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.body.is_empty(), "HEAD has no body");
    }

    #[tokio::test]
    async fn wrong_method_is_405_and_unknown_path_is_404() {
        let server = start().await;
        let a = server.addr;
        for path in ["/metrics", "/ready", "/config", "/clusters"] {
            let r = call(a, Method::POST, path).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(r.allow.as_deref(), Some("GET, HEAD"), "{path}");
        }
        let r = call(a, Method::GET, "/reload").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.allow.as_deref(), Some("POST"));
        assert_eq!(
            server.fake.reloads.load(Ordering::SeqCst),
            0,
            "GET must not reload"
        );
        for path in ["/", "/metric", "/metrics/x", "/stats"] {
            let r = call(a, Method::GET, path).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn speaks_plain_http_1_1_on_the_wire() {
        let server = start().await;
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
        assert!(raw.ends_with("\r\n\r\nready\n"), "{raw}");
        // Garbage instead of a request: an error status, not a hang or a crash.
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        s.write_all(b"\x00\x01 not http\r\n\r\n")
            .await
            .expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
            .await
            .expect("server closes the connection")
            .expect("read");
        assert!(
            raw.is_empty() || raw.starts_with(b"HTTP/1.1 400"),
            "{raw:?}"
        );
        // And the server still serves.
        assert_eq!(
            call(server.addr, Method::GET, "/ready").await.status,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn serve_stops_on_shutdown_even_with_an_idle_connection_open() {
        let mut server = start().await;
        // An idle keep-alive connection that has been served once.
        let stream = TcpStream::connect(server.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        let conn_task = tokio::spawn(conn);
        let req = Request::builder()
            .uri("/ready")
            .header(HOST, "x")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let _ = resp.into_body().collect().await;

        let _ = server.stop.take().map(|tx| tx.send(()));
        tokio::time::timeout(Duration::from_secs(3), &mut server.task)
            .await
            .expect("serve returns promptly after shutdown")
            .expect("serve did not panic");
        // The listening socket is closed: new connections are refused.
        assert!(TcpStream::connect(server.addr).await.is_err());
        // The idle connection was closed by the server.
        tokio::time::timeout(Duration::from_secs(3), conn_task)
            .await
            .expect("idle connection closed")
            .expect("join")
            .expect("clean close");
    }

    /// The real registry behind the admin server, read back with a Prometheus parser.
    struct Live(Arc<super::super::metrics::Metrics>);

    #[async_trait::async_trait]
    impl AdminHandler for Live {
        fn metrics(&self) -> String {
            self.0.render()
        }
        fn ready(&self) -> bool {
            true
        }
        fn config(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
        fn clusters(&self) -> serde_json::Value {
            serde_json::json!([])
        }
        async fn reload(&self) -> Result<String, String> {
            self.0.config_reload(false);
            Err("invalid".to_owned())
        }
    }

    #[tokio::test]
    async fn metrics_route_serves_the_registry() {
        let metrics = super::super::metrics::Metrics::new();
        metrics.request("dubbo-in", "all", "demo-v1").add(41);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Arc::new(Live(metrics.clone())),
            async move {
                let _ = rx.await;
            },
        ));
        metrics.request("dubbo-in", "all", "demo-v1").inc();
        assert_eq!(
            call(addr, Method::POST, "/reload").await.status,
            StatusCode::BAD_REQUEST
        );
        let r = call(addr, Method::GET, "/metrics").await;
        let scrape = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_owned())))
            .expect("parses");
        let value = |name: &str, label: (&str, &str)| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
                .map(|s| s.value.clone())
        };
        assert_eq!(
            value("metaproxy_requests_total", ("cluster", "demo-v1")),
            Some(prometheus_parse::Value::Counter(42.0))
        );
        assert_eq!(
            value("metaproxy_config_reloads_total", ("result", "error")),
            Some(prometheus_parse::Value::Counter(1.0))
        );
        let _ = tx.send(());
        task.await.expect("serve ends");
    }
}
