//! The daemon's HTTP endpoints, on loopback only: `--metrics ADDR` serves the status figures
//! in the Prometheus text format (as rclone's and JuiceFS's daemons do), served by hyper (one
//! connection per task, HTTP/1.1); `--dashboard` serves the web dashboard ([`dashboard`]).

pub mod dashboard;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::control::{Control, Counters, Status};

/// Binds `addr`, which must be a loopback address: the figures name the remote and the
/// mount's activity, and are served without authentication.
pub async fn bind_loopback(addr: &str) -> anyhow::Result<TcpListener> {
    let parsed: SocketAddr = addr
        .parse()
        .map_err(|_| anyhow::anyhow!("--metrics {addr}: expected IP:PORT, like 127.0.0.1:9150"))?;
    if !parsed.ip().is_loopback() {
        anyhow::bail!(
            "--metrics {addr}: the metrics are served on a loopback address only (127.0.0.1 or ::1)"
        );
    }
    TcpListener::bind(parsed)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics {addr}: {e}"))
}

fn reply(status: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, control: Arc<Control>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let control = control.clone();
                async move { Ok::<_, Infallible>(metrics_answer(&req, &control)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(conn), service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection failed");
            }
        });
    }
}

fn metrics_answer(
    req: &Request<hyper::body::Incoming>,
    control: &Control,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => match control.status() {
            Ok(s) => reply(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                prometheus(&s),
            ),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("{e}\n"),
            ),
        },
        (&Method::GET, _) => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ),
    }
}

/// A counter's name, help text and figure.
type Counter = (&'static str, &'static str, fn(&Counters) -> u64);

/// The status in the Prometheus text exposition format.
pub fn prometheus(s: &Status) -> String {
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(
            o,
            "# HELP stratus_{name} {help}\n# TYPE stratus_{name} {kind}"
        );
        for (labels, v) in samples {
            let _ = writeln!(o, "stratus_{name}{labels} {v}");
        }
    };
    let state = s.health.state.as_str();
    metric(
        "health",
        "gauge",
        "1 for the mount's current state: online, offline (by the user) or unreachable.",
        &[
            ("{state=\"online\"}", (state == "online") as u8 as f64),
            ("{state=\"offline\"}", (state == "offline") as u8 as f64),
            (
                "{state=\"unreachable\"}",
                (state == "unreachable") as u8 as f64,
            ),
        ],
    );
    let secs = |ms: Option<i64>| ms.map(|v| v as f64 / 1000.0).unwrap_or(0.0);
    metric(
        "last_contact_timestamp_seconds",
        "gauge",
        "When the remote last answered (0: not since the mount started).",
        &[("", secs(s.health.last_contact_ms))],
    );
    metric(
        "last_full_sync_timestamp_seconds",
        "gauge",
        "When everything queued had last reached the remote (0: not now).",
        &[("", secs(s.health.last_full_sync_ms))],
    );
    let q = &s.queue;
    metric(
        "queue_entries",
        "gauge",
        "Operations queued for the remote.",
        &[("", q.entries as f64)],
    );
    metric(
        "queue_bytes",
        "gauge",
        "Bytes of file content queued for the remote.",
        &[("", q.bytes as f64)],
    );
    metric(
        "queue_parked",
        "gauge",
        "Operations that failed for good and wait for the user.",
        &[("", q.parked as f64)],
    );
    let counters: [Counter; 11] = [
        ("uploaded_files", "Files uploaded.", |c| c.uploaded_files),
        ("uploaded_bytes", "Bytes uploaded.", |c| c.uploaded_bytes),
        ("downloaded_files", "Files downloaded whole.", |c| {
            c.downloaded_files
        }),
        ("downloaded_bytes", "Bytes of file data fetched.", |c| {
            c.downloaded_bytes
        }),
        ("deleted", "Remote deletes made.", |c| c.deleted),
        ("moved", "Remote moves made.", |c| c.moved),
        ("remote_changes", "Changes made elsewhere taken in.", |c| {
            c.remote_changes
        }),
        ("conflicts_opened", "Conflicts found.", |c| {
            c.conflicts_opened
        }),
        ("conflicts_settled", "Conflicts settled.", |c| {
            c.conflicts_settled
        }),
        ("failed", "Operations that failed for good.", |c| c.failed),
        ("retried", "Failed attempts tried again.", |c| c.retried),
    ];
    for (name, help, get) in counters {
        metric(
            &format!("{name}_total"),
            "counter",
            &format!("{help} Over the life of the state dir."),
            &[("", get(&s.totals.lifetime) as f64)],
        );
    }
    metric(
        "sync_time_seconds",
        "gauge",
        "From a file's close to its upload landing, over the last uploads.",
        &[
            ("{stat=\"avg\"}", secs(s.totals.sync_time_avg_ms)),
            ("{stat=\"p95\"}", secs(s.totals.sync_time_p95_ms)),
        ],
    );
    let st = &s.storage;
    metric(
        "cache_bytes",
        "gauge",
        "File data on this disk, by kind.",
        &[
            ("{kind=\"used\"}", st.cache_used as f64),
            ("{kind=\"budget\"}", st.cache_budget as f64),
            ("{kind=\"pinned\"}", st.pinned as f64),
            ("{kind=\"dirty\"}", st.dirty as f64),
        ],
    );
    metric(
        "cache_reads_total",
        "counter",
        "Reads that reached the daemon, by whether their data was here.",
        &[
            ("{result=\"hit\"}", st.cache_hits as f64),
            ("{result=\"miss\"}", st.cache_misses as f64),
        ],
    );
    metric(
        "used_bytes",
        "gauge",
        "Bytes of every file in the mount.",
        &[("", st.used as f64)],
    );
    if let Some(q) = st.quota {
        metric(
            "quota_bytes",
            "gauge",
            "The quota set for the mount (--quota).",
            &[("", q as f64)],
        );
    }
    if let (Some(n), Some(b)) = (st.remote_objects, st.remote_bytes) {
        metric(
            "remote_objects",
            "gauge",
            "Objects under the mount's prefix at the last listing.",
            &[("", n as f64)],
        );
        metric(
            "remote_bytes",
            "gauge",
            "Bytes under the mount's prefix at the last listing.",
            &[("", b as f64)],
        );
    }
    metric(
        "conflicts_open",
        "gauge",
        "Conflicts waiting to be settled.",
        &[("", s.conflicts.open as f64)],
    );
    o
}
