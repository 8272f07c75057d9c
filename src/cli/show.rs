//! How the CLI prints what a mount reports: sizes, times and the status, queue and log
//! tables for people (`--json` prints the structs of `control` instead).

use crate::control::{self, Counters, LogEntry, QueueEntry, Status};

pub fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// A point in time, in UTC.
pub fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// A duration, short: `850 ms`, `2.3 s`, `4 min 10 s`, `3 h 5 min`, `2 d 4 h`.
pub fn span(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{} h {} min", s / 3600, s / 60 % 60),
        _ => format!("{} d {} h", s / 86_400, s / 3600 % 24),
    }
}

/// `when(ms)` with how long ago it was.
pub fn ago(ms: Option<i64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => format!(
            "{} ({} ago)",
            when(t),
            span(crate::store::now_ms().saturating_sub(t))
        ),
    }
}

fn counters(c: &Counters) -> String {
    format!(
        "{} files up ({}), {} down ({}), {} deleted, {} moved, {} remote changes, \
         {} conflicts opened, {} settled, {} failed, {} retried",
        c.uploaded_files,
        human(c.uploaded_bytes),
        c.downloaded_files,
        human(c.downloaded_bytes),
        c.deleted,
        c.moved,
        c.remote_changes,
        c.conflicts_opened,
        c.conflicts_settled,
        c.failed,
        c.retried
    )
}

pub fn status(mountpoint: &std::path::Path, s: &Status) -> String {
    let mut o = String::new();
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<16}{v}\n"));
    line("mount:", mountpoint.display().to_string());
    line("remote:", s.remote.clone());
    let h = &s.health;
    line(
        "state:",
        match h.state.as_str() {
            "offline" => format!(
                "offline since {} (stratus offline {} off); changes are queued",
                ago(h.since_ms),
                mountpoint.display()
            ),
            "unreachable" => format!(
                "remote unreachable since {}; changes are queued",
                ago(h.since_ms)
            ),
            other => other.to_string(),
        },
    );
    line("last contact:", ago(h.last_contact_ms));
    line("last poll:", ago(h.last_poll_ms));
    line(
        "last full sync:",
        if s.queue.entries > 0 {
            format!("{} entries still queued", s.queue.entries)
        } else {
            ago(h.last_full_sync_ms)
        },
    );
    line(
        "transfer:",
        format!(
            "up {}/s, down {}/s (last 5 s)",
            human(h.upload_rate),
            human(h.download_rate)
        ),
    );
    let q = &s.queue;
    line(
        "queued:",
        format!(
            "{} entries, {}; {} uploading ({}); oldest queued {}",
            q.entries,
            human(q.bytes),
            q.uploading,
            match &q.uploading_path {
                Some(p) => format!(
                    "{}: {} of {}",
                    p,
                    human(q.uploading_done),
                    human(q.uploading_bytes)
                ),
                None => human(q.uploading_bytes),
            },
            q.oldest_ms
                .map(|t| format!("{} ago", span(crate::store::now_ms() - t)))
                .unwrap_or_else(|| "-".into())
        ),
    );
    line(
        "still open:",
        format!("{} (uploaded once closed or fsync'd)", q.waiting_for_writer),
    );
    line(
        "parked:",
        if q.parked == 0 {
            "0".into()
        } else {
            format!(
                "{} failed for good (stratus queue {} shows why; --retry to try again)",
                q.parked,
                mountpoint.display()
            )
        },
    );
    line(
        "conflicts:",
        format!("{} open, {} settled", s.conflicts.open, s.conflicts.settled),
    );
    let t = &s.totals;
    line("since mount:", counters(&t.since_mount));
    line("all time:", counters(&t.lifetime));
    line(
        "sync:",
        format!(
            "success rate {}; close to upload: average {}, 95th percentile {}",
            t.success_rate
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            t.sync_time_avg_ms.map(span).unwrap_or_else(|| "-".into()),
            t.sync_time_p95_ms.map(span).unwrap_or_else(|| "-".into())
        ),
    );
    let st = &s.storage;
    line(
        "cache:",
        format!(
            "{} used, budget {}; {} pinned, {} not yet uploaded",
            human(st.cache_used),
            human(st.cache_budget),
            human(st.pinned),
            human(st.dirty)
        ),
    );
    line(
        "space:",
        match st.quota {
            Some(q) => format!(
                "{} of the {} quota ({:.1}%){}",
                human(st.used),
                human(q),
                st.used as f64 * 100.0 / q as f64,
                if st.used > q { "; over quota" } else { "" }
            ),
            None => format!("{} in the mount (no quota set: --quota)", human(st.used)),
        },
    );
    line("bandwidth:", bwlimit_report(&s.bwlimit));
    let p = &s.passthrough;
    line(
        "passthrough:",
        match (p.state.as_str(), &p.reason) {
            ("on", _) => format!(
                "on ({} files opened so since mount: the kernel reads and writes their cached data directly)",
                p.opens
            ),
            (state, Some(why)) => format!("{state} ({why})"),
            (state, None) => state.to_string(),
        },
    );
    let reads = st.cache_hits + st.cache_misses;
    line(
        "hit ratio:",
        format!(
            "{} ({} of {} reads served from this disk)",
            if reads == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", st.cache_hits as f64 * 100.0 / reads as f64)
            },
            st.cache_hits,
            reads
        ),
    );
    line(
        "remote usage:",
        match (st.remote_objects, st.remote_bytes) {
            (Some(n), Some(b)) => format!("{n} objects, {} (at the last listing)", human(b)),
            _ => "not listed yet".into(),
        },
    );
    // One line that scripts and the tests grep for, unpadded.
    match s.preconditions.as_deref() {
        None => {}
        Some("enforced") => o.push_str("preconditions: enforced by the server\n"),
        Some("ignored") => o.push_str(&format!("{}\n", control::PRECONDITIONS_IGNORED)),
        Some(other) => o.push_str(&format!("preconditions: {other}\n")),
    }
    let mut line = |k: &str, v: String| o.push_str(&format!("{k:<16}{v}\n"));
    line(
        "last error:",
        match (&h.last_error, h.last_error_ms) {
            (Some(e), Some(t)) => format!("{} ({})", crate::remote::brief_text(e), ago(Some(t))),
            (Some(e), None) => crate::remote::brief_text(e),
            _ => "none".into(),
        },
    );
    o
}

/// The bandwidth limit for people: `upload 4 MiB/s, download 20 MiB/s`, `no limit`.
pub fn bwlimit(l: crate::remote::Limits) -> String {
    bwlimit_report(&control::BwLimitReport::of(l))
}

fn bwlimit_report(b: &control::BwLimitReport) -> String {
    let one = |r: Option<u64>| {
        r.map(|v| format!("{}/s", human(v)))
            .unwrap_or("no limit".into())
    };
    match (b.upload, b.download) {
        (None, None) => "no limit (--bwlimit, stratus bwlimit)".into(),
        (u, d) if u == d => format!("{} each way ({})", one(u), b.text),
        (u, d) => format!("upload {}, download {} ({})", one(u), one(d), b.text),
    }
}

pub fn queue_header() -> String {
    format!(
        "{:>6}  {:<8}  {:<18}  {:>5}  {:>10}  {:>10}  PATH",
        "SEQ", "OP", "STATE", "TRIES", "AGE", "BYTES"
    )
}

pub fn queue_row(r: &QueueEntry) -> String {
    let now = crate::store::now_ms();
    let mut state = r.state.clone();
    if let Some(t) = r.next_try_ms {
        state = format!("{state} ({})", span(t - now));
    }
    let mut s = format!(
        "{:>6}  {:<8}  {:<18}  {:>5}  {:>10}  {:>10}  {}",
        r.seq,
        r.op,
        state,
        r.tries,
        r.queued_ms
            .map(|q| span(now - q))
            .unwrap_or_else(|| "-".into()),
        if r.bytes > 0 {
            human(r.bytes)
        } else {
            "-".into()
        },
        r.path
    );
    if let Some(e) = &r.last_error {
        s.push_str(&format!("\n{:>8}last error: {e}", ""));
    }
    s
}

pub fn log_row(e: &LogEntry) -> String {
    let mut s = format!(
        "{}  {:<13}  {}",
        when(e.at_ms),
        e.kind,
        e.path.as_deref().unwrap_or("-")
    );
    if let Some(b) = e.bytes {
        s.push_str(&format!("  {}", human(b)));
    }
    if let Some(d) = e.duration_ms {
        s.push_str(&format!("  in {}", span(d)));
    }
    if let Some(d) = &e.detail {
        s.push_str(&format!("  ({d})"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans() {
        assert_eq!(span(850), "850 ms");
        assert_eq!(span(2300), "2.3 s");
        assert_eq!(span(250_000), "4 min 10 s");
        assert_eq!(span(3 * 3_600_000 + 300_000), "3 h 5 min");
        assert_eq!(span(2 * 86_400_000 + 4 * 3_600_000), "2 d 4 h");
    }

    #[test]
    fn sizes() {
        assert_eq!(human(3), "3 B");
        assert_eq!(human(1536), "1.5 KiB");
    }
}
