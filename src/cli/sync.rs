//! `stratus sync`: ask for a sync now, and with `--wait`, wait for it with progress.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::show::{self, human};
use super::{mounts, set, status_of, Out};
use crate::control;

/// (started, done) polls of the remote.
pub(super) fn polls(mp: &Path) -> anyhow::Result<(u64, u64)> {
    let raw = String::from_utf8_lossy(&control::get(mp, control::POLLS)?).to_string();
    let mut it = raw.split_whitespace().map(|v| v.parse().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
}

/// What `sync --wait` shows while it waits: a bar on a terminal, a plain line every few
/// seconds otherwise (a log file, a CI job), nothing under `--json`.
pub(super) struct Progress {
    tty: bool,
    quiet: bool,
    start: Instant,
    files0: u64,
    bytes0: u64,
    last_line: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new(out: Out, files0: u64, bytes0: u64) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            quiet: out.json,
            start: Instant::now(),
            files0,
            bytes0,
            last_line: None,
            drawn: false,
        }
    }

    fn show(&mut self, files_left: u64, bytes_left: u64, note: Option<&str>) {
        if self.quiet || (self.files0 == 0 && files_left == 0) {
            return;
        }
        let files0 = self.files0.max(files_left);
        let bytes0 = self.bytes0.max(bytes_left);
        let done_b = bytes0 - bytes_left;
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = done_b as f64 / secs;
        let eta = if rate > 0.0 && bytes_left > 0 {
            format!(
                ", ETA {}",
                show::span((bytes_left as f64 / rate * 1000.0) as i64)
            )
        } else {
            String::new()
        };
        let text = format!(
            "{}/{} entries, {}/{} ({}/s){eta}{}",
            files0 - files_left,
            files0,
            human(done_b),
            human(bytes0),
            human(rate as u64),
            note.map(|n| format!("; {n}")).unwrap_or_default()
        );
        if self.tty {
            let frac = if bytes0 > 0 {
                done_b as f64 / bytes0 as f64
            } else if files0 > 0 {
                (files0 - files_left) as f64 / files0 as f64
            } else {
                1.0
            };
            let filled = (frac * 24.0).round() as usize;
            eprint!(
                "\r\x1b[2K[{}{}] {text}",
                "#".repeat(filled.min(24)),
                ".".repeat(24 - filled.min(24))
            );
            self.drawn = true;
        } else if self
            .last_line
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            eprintln!("sync: {text}");
            self.last_line = Some(Instant::now());
        }
    }

    fn done(&mut self) {
        if self.drawn {
            eprintln!();
            self.drawn = false;
        }
    }
}

pub(super) fn sync(
    path: &Path,
    wait: bool,
    timeout: Option<Duration>,
    out: Out,
) -> anyhow::Result<ExitCode> {
    let t = mounts::target(path)?;
    let mp = t.root.as_path();
    let s = status_of(mp)?;
    if s.health.state == "offline" {
        bail!(
            "{} is offline: nothing goes to the remote ({} entries stay queued); \
             stratus offline {} off to go online",
            mp.display(),
            s.queue.entries,
            mp.display()
        );
    }
    let (started_before, _) = polls(mp)?;
    set(mp, control::SYNC, b"1")?;
    if !wait {
        if s.health.state == "unreachable" {
            let why = s.health.last_error.clone().unwrap_or_default();
            if out.json {
                println!(
                    "{}",
                    json!({"requested": true, "reachable": false, "queued": s.queue.entries, "error": why})
                );
            } else {
                eprintln!(
                    "stratus: the remote is unreachable ({why}); {} entries stay queued and \
                     go when it answers",
                    s.queue.entries
                );
            }
            return Ok(ExitCode::FAILURE);
        }
        out.print(json!({"requested": true, "reachable": true}), || {
            "sync requested".into()
        });
        return Ok(ExitCode::SUCCESS);
    }
    let barrier = String::from_utf8_lossy(&control::get(mp, control::BARRIER)?)
        .trim()
        .to_string();
    let name = format!("{}{barrier}", control::PENDING_PREFIX);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut last_kick = Instant::now();
    let first = control::Pending::decode(&String::from_utf8_lossy(&control::get(mp, &name)?));
    let mut progress = Progress::new(out, first.total, s.queue.bytes);
    let finish = |progress: &mut Progress, ok: bool, pending: &control::Pending, msg: &str| {
        progress.done();
        if out.json {
            println!(
                "{}",
                json!({
                    "synced": ok,
                    "pending": pending.total,
                    "failed": pending.errors,
                    "open_conflicts": pending.conflicts,
                    "message": msg,
                })
            );
        } else if ok {
            println!("{msg}");
        } else {
            eprintln!("stratus: {msg}");
            print_pending(pending);
        }
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    };
    loop {
        // Someone is waiting: keep cutting backoffs short, as a user pressing "sync" again
        // would.
        if last_kick.elapsed() >= Duration::from_secs(2) {
            let _ = control::set(mp, control::SYNC, b"1");
            last_kick = Instant::now();
        }
        let pending = control::Pending::decode(&String::from_utf8_lossy(&control::get(mp, &name)?));
        let now = status_of(mp)?;
        if now.health.state == "offline" {
            return finish(
                &mut progress,
                false,
                &pending,
                &format!("the mount went offline; {} still pending:", pending.total),
            );
        }
        let note = (now.health.state == "unreachable").then(|| {
            format!(
                "waiting for the remote ({})",
                now.health.last_error.as_deref().unwrap_or("unreachable")
            )
        });
        progress.show(
            pending.total,
            now.queue.bytes.saturating_sub(now.queue.uploading_done),
            note.as_deref(),
        );
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        let stuck = pending.errors;
        if pending.total == stuck {
            // All that can move has moved. Then wait for one listing of the remote that
            // started after this call, so remote changes are in too.
            if polls(mp)?.1 > started_before {
                if pending.conflicts > 0 && !out.json {
                    progress.done();
                    // Both versions of each are on the remote; someone still has to choose.
                    eprintln!(
                        "stratus: {} open conflicts (stratus conflicts {})",
                        pending.conflicts,
                        mp.display()
                    );
                }
                if stuck == 0 {
                    return finish(
                        &mut progress,
                        true,
                        &pending,
                        "everything queued before this call is on the remote",
                    );
                }
                return finish(
                    &mut progress,
                    false,
                    &pending,
                    &format!("{} entries failed to sync:", pending.errors),
                );
            }
            if timed_out {
                return finish(
                    &mut progress,
                    false,
                    &pending,
                    "timed out waiting for a listing of the remote",
                );
            }
        } else if timed_out {
            return finish(
                &mut progress,
                false,
                &pending,
                &format!("timed out; {} still pending:", pending.total),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(super) fn print_pending(pending: &control::Pending) {
    for p in pending.oldest.iter().take(20) {
        eprintln!(
            "  {} {}{}",
            p.state,
            p.path,
            p.error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
    }
    if pending.total > 20 {
        eprintln!("  ... and {} more", pending.total - 20);
    }
}
