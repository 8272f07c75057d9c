//! The local web dashboard (`--dashboard`): one embedded page and a small JSON API over the
//! control protocol, behind a token. It reads `Control::status` and the control attributes,
//! and changes state only through `Control::setxattr`, so it adds no second way to do anything.

use std::convert::Infallible;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{
    HeaderValue, CONTENT_TYPE, COOKIE, HOST, LOCATION, ORIGIN, REFERER, SET_COOKIE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::control::{self, Control, Refusal};

/// The page: hand-written HTML with inline CSS and JS; nothing is fetched from elsewhere.
const PAGE: &str = include_str!("dashboard.html");
const COOKIE_NAME: &str = "stratus_dashboard";

/// Binds `addr` (IP:PORT). A non-loopback address needs `allow_remote`, and says in the log
/// that the page is then reachable from other machines (still behind the token).
pub async fn bind(addr: &str, allow_remote: bool) -> anyhow::Result<TcpListener> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("--dashboard {addr}: expected IP:PORT, like 127.0.0.1:0"))?;
    if !parsed.ip().is_loopback() {
        if !allow_remote {
            anyhow::bail!(
                "--dashboard {addr}: not a loopback address; add --dashboard-allow-remote to serve \
                 the dashboard to other machines"
            );
        }
        tracing::warn!(
            %addr,
            "the dashboard listens on a non-loopback address (--dashboard-allow-remote): other \
             machines can reach it, and only its token keeps them out"
        );
    }
    TcpListener::bind(parsed)
        .await
        .map_err(|e| anyhow::anyhow!("--dashboard {addr}: {e}"))
}

/// 32 random bytes from the kernel, in hex.
pub fn new_token() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// Writes `text` to `path`, readable by the owner only, from the moment it exists.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// The URL a user opens: loopback even when bound to every address.
pub fn url(local: SocketAddr, token: &str) -> String {
    let host = if local.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if local.is_ipv6() {
        format!("[{}]", local.ip())
    } else {
        local.ip().to_string()
    };
    format!("http://{host}:{}/?token={token}", local.port())
}

struct Dashboard {
    control: Arc<Control>,
    token: String,
    local: SocketAddr,
}

/// Serves the dashboard on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, control: Arc<Control>, token: String) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let d = Arc::new(Dashboard {
        control,
        token,
        local,
    });
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let d = d.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let d = d.clone();
                async move { Ok::<_, Infallible>(d.answer(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await
            {
                tracing::debug!(error = %e, "dashboard connection failed");
            }
        });
    }
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn body(status: StatusCode, ctype: &'static str, b: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(b.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    body(status, "application/json", v.to_string())
}

fn json_bytes(b: Vec<u8>) -> Response<Full<Bytes>> {
    body(StatusCode::OK, "application/json", b)
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": msg.into() }))
}

fn refused(r: Refusal) -> Response<Full<Bytes>> {
    let status = match r.errno {
        libc::ENOENT => StatusCode::NOT_FOUND,
        libc::EINVAL => StatusCode::BAD_REQUEST,
        _ => StatusCode::CONFLICT,
    };
    error(status, r.message)
}

/// Compares in time independent of where the strings differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn query(req: &Request<hyper::body::Incoming>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

impl Dashboard {
    fn cookie_ok(&self, req: &Request<hyper::body::Incoming>) -> bool {
        req.headers().get_all(COOKIE).iter().any(|h| {
            h.to_str().unwrap_or("").split(';').any(|c| {
                c.trim()
                    .strip_prefix(COOKIE_NAME)
                    .and_then(|v| v.strip_prefix('='))
                    .is_some_and(|v| same(v, &self.token))
            })
        })
    }

    /// The origins the page itself is served from.
    fn own_origin(&self, origin: &str, req: &Request<hyper::body::Incoming>) -> bool {
        let port = self.local.port();
        let mut own = vec![
            format!("http://{}", self.local),
            format!("http://localhost:{port}"),
        ];
        if self.local.ip().is_unspecified() {
            own.push(format!("http://127.0.0.1:{port}"));
            if let Some(h) = req.headers().get(HOST).and_then(|h| h.to_str().ok()) {
                own.push(format!("http://{h}"));
            }
        }
        own.iter().any(|o| o == origin)
    }

    /// A state-changing request must come from the page: its Origin (or, without one, its
    /// Referer) is the dashboard's own.
    fn same_origin(&self, req: &Request<hyper::body::Incoming>) -> bool {
        if let Some(o) = req.headers().get(ORIGIN) {
            return o.to_str().is_ok_and(|o| self.own_origin(o, req));
        }
        match req.headers().get(REFERER).and_then(|r| r.to_str().ok()) {
            Some(r) => url::Url::parse(r)
                .is_ok_and(|u| self.own_origin(u.origin().ascii_serialization().as_str(), req)),
            None => false,
        }
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let q = query(&req);
        let by_query = param(&q, "token").is_some_and(|t| same(t, &self.token));
        if by_query && req.method() == Method::GET && req.uri().path() == "/" {
            // The token leaves the address bar: from now on the cookie carries it.
            let mut r = empty(StatusCode::SEE_OTHER);
            r.headers_mut()
                .insert(LOCATION, HeaderValue::from_static("/"));
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{COOKIE_NAME}={}; HttpOnly; SameSite=Strict; Path=/",
                self.token
            )) {
                r.headers_mut().insert(SET_COOKIE, v);
            }
            return r;
        }
        if !(by_query || self.cookie_ok(&req)) {
            return empty(StatusCode::UNAUTHORIZED);
        }
        if req.method() == Method::POST {
            if !self.same_origin(&req) {
                return error(StatusCode::FORBIDDEN, "cross-origin request refused");
            }
            let path = req.uri().path().to_string();
            let raw = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            };
            let args: serde_json::Value = if raw.is_empty() {
                serde_json::json!({})
            } else {
                match serde_json::from_slice(&raw) {
                    Ok(v) => v,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad JSON: {e}")),
                }
            };
            return self.change(&path, &args);
        }
        if req.method() != Method::GET {
            return error(StatusCode::METHOD_NOT_ALLOWED, "GET or POST only");
        }
        if req.uri().path() == "/api/text" {
            // A read may fetch from the remote, which blocks: not on the server's threads.
            let control = self.control.clone();
            let path = param(&q, "path").unwrap_or("").to_string();
            return match tokio::task::spawn_blocking(move || control.text_at(&path)).await {
                Ok(Ok(Ok(text))) => json(StatusCode::OK, &serde_json::json!({ "text": text })),
                Ok(Ok(Err(why))) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "text": null, "why": why }),
                ),
                Ok(Err(r)) => refused(r),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
        }
        self.read(req.uri().path(), &q)
    }

    fn read(&self, path: &str, q: &[(String, String)]) -> Response<Full<Bytes>> {
        let c = &self.control;
        let root = |name: String| match c.get_at("", &name) {
            Ok(b) => json_bytes(b),
            Err(r) => refused(r),
        };
        match path {
            "/" | "/index.html" => body(StatusCode::OK, "text/html; charset=utf-8", PAGE),
            "/api/status" => match c.status() {
                Ok(s) => json(StatusCode::OK, &serde_json::to_value(s).unwrap_or_default()),
                Err(e) => refused(e.into()),
            },
            "/api/queue" => root(format!(
                "{}{}",
                control::QUEUE_PREFIX,
                param(q, "after").unwrap_or("0")
            )),
            "/api/log" => {
                let after: i64 = param(q, "after").and_then(|a| a.parse().ok()).unwrap_or(0);
                root(format!("{}{after}.0", control::LOG_PREFIX))
            }
            "/api/conflicts" => root(control::CONFLICTS.to_string()),
            "/api/tree" => match c.tree(param(q, "path").unwrap_or("")) {
                Ok(t) => json(StatusCode::OK, &serde_json::to_value(t).unwrap_or_default()),
                Err(e) => refused(e.into()),
            },
            _ => error(StatusCode::NOT_FOUND, "no such page"),
        }
    }

    /// Each action is the attribute write the CLI makes for the same command.
    fn change(&self, path: &str, args: &serde_json::Value) -> Response<Full<Bytes>> {
        let s = |k: &str| args.get(k).and_then(|v| v.as_str());
        let flag = |k: &str| match args.get(k) {
            Some(serde_json::Value::Bool(b)) => Some(*b),
            Some(serde_json::Value::String(v)) => match v.as_str() {
                "on" | "1" | "true" => Some(true),
                "off" | "0" | "false" => Some(false),
                _ => None,
            },
            _ => None,
        };
        let (at, name, value) = match path {
            "/api/sync" => ("", control::SYNC, "1"),
            "/api/offline" => match flag("on") {
                Some(on) => ("", control::OFFLINE, if on { "1" } else { "0" }),
                None => return error(StatusCode::BAD_REQUEST, "offline: expected on: on|off"),
            },
            "/api/resolve" => match (s("path"), s("keep")) {
                (Some(p), Some(k)) => (p, control::RESOLVE, k),
                _ => return error(StatusCode::BAD_REQUEST, "resolve: expected path and keep"),
            },
            "/api/pin" => match (s("path"), flag("on")) {
                (Some(p), Some(on)) => (p, control::PIN, if on { "1" } else { "0" }),
                _ => return error(StatusCode::BAD_REQUEST, "pin: expected path and on"),
            },
            "/api/retry" => match (s("path"), flag("all")) {
                (_, Some(true)) => ("", control::RETRY, "all"),
                (Some(p), _) => (p, control::RETRY, "1"),
                _ => return error(StatusCode::BAD_REQUEST, "retry: expected path or all"),
            },
            _ => return error(StatusCode::NOT_FOUND, "no such action"),
        };
        match self.control.set_at(at, name, value) {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "ok": true })),
            Err(r) => refused(r),
        }
    }
}
