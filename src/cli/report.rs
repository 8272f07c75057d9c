//! The commands that show and steer a running mount: status, queue, log, conflicts,
//! resolve, pin and unpin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::json;

use super::show::{self, when};
use super::{mounts, parse_duration, set, status_of, Out};
use crate::control::{self, LogEntry, Page, QueueEntry};

/// Sets `user.stratus.pin` on each path; every path is tried, and the exit status says
/// whether all of them took it.
pub(super) fn pin(paths: &[PathBuf], on: bool, out: Out) -> anyhow::Result<ExitCode> {
    let verb = if on { "pin" } else { "unpin" };
    let mut results = Vec::new();
    let mut failed = false;
    for p in paths {
        let r = mounts::target(p).and_then(|t| {
            set(&t.path, control::PIN, if on { b"1" } else { b"0" })?;
            let kept = !on && matches!(control::get(&t.path, control::PIN), Ok(v) if v == b"1");
            Ok(kept)
        });
        match r {
            Ok(kept) => {
                if !out.json {
                    if on {
                        println!("pinned {} (downloading in the background)", p.display());
                    } else if kept {
                        println!(
                            "unpinned {}, but a directory above it is pinned: it stays",
                            p.display()
                        );
                    } else {
                        println!("unpinned {}", p.display());
                    }
                }
                results.push(json!({"path": p, "ok": true, "still_pinned_by_a_parent": kept}));
            }
            Err(e) => {
                if !out.json {
                    eprintln!("stratus: {verb} {}: {e:#}", p.display());
                }
                results.push(json!({"path": p, "ok": false, "error": format!("{e:#}")}));
                failed = true;
            }
        }
    }
    if out.json {
        println!("{}", serde_json::Value::Array(results));
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One side of a conflict: hash, size, mtime, ETag and who wrote it.
pub(super) fn version_line(v: &crate::types::VersionMark, mine: bool) -> String {
    let hash = v
        .sha256
        .as_deref()
        .map(|h| h.chars().take(16).collect::<String>())
        .unwrap_or_else(|| "-".into());
    let mtime = v
        .mtime_ns
        .map(|ns| when(ns / 1_000_000))
        .unwrap_or_else(|| "-".into());
    format!(
        "sha256 {hash}, {} bytes, modified {mtime}, etag {}, by {}{}",
        v.size,
        v.etag.as_deref().unwrap_or("-"),
        v.writer.as_deref().unwrap_or("unknown"),
        if mine { " (this mount)" } else { "" }
    )
}

pub(super) fn conflicts(path: &Path, out: Out) -> anyhow::Result<ExitCode> {
    let t = mounts::target(path)?;
    let raw = control::get(&t.root, control::CONFLICTS)
        .with_context(|| format!("reading the conflicts of {}", t.root.display()))?;
    let all: Vec<control::ConflictInfo> =
        serde_json::from_slice(&raw).context("reading the conflict list")?;
    if out.json {
        println!("{}", serde_json::to_value(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no conflicts");
    }
    for c in &all {
        let state = match (&c.resolved_ms, &c.resolution) {
            (None, _) => "OPEN".to_string(),
            (Some(ms), r) => format!("resolved ({}) {}", r.as_deref().unwrap_or("?"), when(*ms)),
        };
        println!("{state}: {}", c.path);
        println!("  conflict copy: {}", c.copy_path);
        println!(
            "  at the path:   {}",
            version_line(&c.at_path, c.mine.as_deref() == Some("path"))
        );
        println!(
            "  in the copy:   {}",
            version_line(&c.in_copy, c.mine.as_deref() == Some("copy"))
        );
        println!("  detected {} (policy {})", when(c.detected_ms), c.policy);
    }
    Ok(ExitCode::SUCCESS)
}

/// Settles the conflict of `path`; a conflict already settled is reported, not an error.
pub(super) fn resolve(path: &Path, keep: &str, out: Out) -> anyhow::Result<ExitCode> {
    let Some(k) = crate::types::Keep::parse(keep) else {
        bail!("--keep {keep}: expected path, copy, both, local or remote");
    };
    let t = mounts::target(path)?;
    let last = match control::get(&t.path, control::CONFLICT) {
        Ok(raw) => Some(
            serde_json::from_slice::<control::ConflictInfo>(&raw)
                .context("reading the file's conflict")?,
        ),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some(c) = last else {
        bail!("{}: no conflict recorded for this file", path.display());
    };
    if let (Some(ms), r) = (c.resolved_ms, &c.resolution) {
        out.print(
            json!({"path": t.path, "already_settled": true, "resolution": r, "resolved_ms": ms}),
            || {
                format!(
                    "{}: its conflict was already settled ({}) at {}; nothing to do",
                    path.display(),
                    r.as_deref().unwrap_or("?"),
                    when(ms)
                )
            },
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(why) = k.placed(c.mine.as_deref()) {
        bail!("--keep {keep} for {}: {why}", path.display());
    }
    set(&t.path, control::RESOLVE, keep.as_bytes())
        .with_context(|| format!("resolving {}", path.display()))?;
    out.print(json!({"path": t.path, "kept": keep}), || {
        format!("kept {keep} for {}", path.display())
    });
    Ok(ExitCode::SUCCESS)
}

pub(super) fn status(path: &Path, out: Out) -> anyhow::Result<ExitCode> {
    let t = mounts::target(path)?;
    let s = status_of(&t.root)?;
    out.print(serde_json::to_value(&s)?, || show::status(&t.root, &s));
    Ok(ExitCode::SUCCESS)
}

/// Every page of a paged attribute (`user.stratus.queue.N`, `user.stratus.log.N.S`).
pub(super) fn pages<T: serde::de::DeserializeOwned>(
    root: &Path,
    name: impl Fn(i64) -> String,
    from: i64,
    mut each: impl FnMut(T) -> bool,
) -> anyhow::Result<i64> {
    let mut at = from;
    loop {
        let raw = control::get(root, &name(at))
            .with_context(|| format!("reading from the stratus mount {}", root.display()))?;
        let page: Page<T> = serde_json::from_slice(&raw).context("reading the mount's answer")?;
        for r in page.rows {
            if !each(r) {
                return Ok(at);
            }
        }
        match page.next {
            Some(n) => at = n,
            None => return Ok(at),
        }
    }
}

pub(super) fn queue(
    path: &Path,
    retry: &[PathBuf],
    all: bool,
    out: Out,
) -> anyhow::Result<ExitCode> {
    let t = mounts::target(path)?;
    if all || !retry.is_empty() {
        let mut done = Vec::new();
        if all {
            set(&t.root, control::RETRY, b"all")?;
            done.push(t.root.clone());
        }
        for p in retry {
            let pt = mounts::target(p)?;
            set(&pt.path, control::RETRY, b"1")
                .with_context(|| format!("retrying {}", p.display()))?;
            done.push(pt.path);
        }
        out.print(json!({ "retried": done }), || {
            done.iter()
                .map(|p| format!("retrying the parked operations of {}", p.display()))
                .collect::<Vec<_>>()
                .join("\n")
        });
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<QueueEntry> = Vec::new();
    pages(
        &t.root,
        |n| format!("{}{n}", control::QUEUE_PREFIX),
        0,
        |r| {
            rows.push(r);
            true
        },
    )?;
    out.print(serde_json::to_value(&rows)?, || {
        if rows.is_empty() {
            return "the queue is empty: everything is on the remote".into();
        }
        let mut s = show::queue_header();
        for r in &rows {
            s.push('\n');
            s.push_str(&show::queue_row(r));
        }
        s
    });
    Ok(ExitCode::SUCCESS)
}

pub(super) fn log(
    path: &Path,
    follow: bool,
    since: Option<&str>,
    limit: usize,
    out: Out,
) -> anyhow::Result<ExitCode> {
    let t = mounts::target(path)?;
    let since_ms = match since {
        Some(s) => {
            let d = parse_duration(s).with_context(|| {
                format!("--since {s}: expected a duration like 90s, 15m, 2h or 7d")
            })?;
            crate::store::now_ms() - d
        }
        None => 0,
    };
    let head: i64 = String::from_utf8_lossy(&control::get(&t.root, control::LOG_HEAD)?)
        .trim()
        .parse()
        .unwrap_or(0);
    // Ids are handed out in order and only the oldest rows are ever dropped: the newest
    // `limit` events are those after `head - limit`.
    let from = head.saturating_sub(limit as i64).max(0);
    let name = |n: i64| format!("{}{n}.{since_ms}", control::LOG_PREFIX);
    let mut rows: Vec<LogEntry> = Vec::new();
    let mut last = from;
    pages(&t.root, name, from, |r: LogEntry| {
        last = r.id;
        rows.push(r);
        true
    })?;
    if out.json && !follow {
        println!("{}", serde_json::to_value(&rows)?);
    } else {
        for r in &rows {
            print_event(r, out);
        }
    }
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(Duration::from_millis(500));
        pages(&t.root, name, last, |r: LogEntry| {
            last = r.id;
            print_event(&r, out);
            true
        })
        .context("the mount went away")?;
        let _ = std::io::stdout().flush();
    }
}

pub(super) fn print_event(r: &LogEntry, out: Out) {
    if out.json {
        println!("{}", serde_json::to_value(r).unwrap_or_default());
    } else {
        println!("{}", show::log_row(r));
    }
}
