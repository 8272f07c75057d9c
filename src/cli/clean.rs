//! `stratus clean`: settled conflict history, clean cached data, state dirs of unused mounts.
//! It never removes anything that has not reached the remote.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::json;

use super::mounts::{self, Target};
use super::show::{self, human};
use super::{parse_duration, set, state_base, status_of, Out};
use crate::control;

/// `stratus clean`.
pub(super) fn clean(
    path: Option<&Path>,
    conflicts: Option<&str>,
    cache: bool,
    state_dirs: Option<&str>,
    dry_run: bool,
    out: Out,
) -> anyhow::Result<ExitCode> {
    if conflicts.is_none() && !cache && state_dirs.is_none() {
        bail!("clean: say what to clean: --conflicts AGE, --cache or --state-dirs AGE");
    }
    let mut report = serde_json::Map::new();
    if conflicts.is_some() || cache {
        let t = mounts::target(path.unwrap_or(Path::new(".")))?;
        if let Some(age) = conflicts {
            let d = parse_duration(age)
                .with_context(|| format!("--conflicts {age}: expected a duration like 30d"))?;
            let count = |t: &Target| -> anyhow::Result<usize> {
                let raw = control::get(&t.root, control::CONFLICTS)?;
                Ok(serde_json::from_slice::<Vec<control::ConflictInfo>>(&raw)?.len())
            };
            let before = count(&t)?;
            set(
                &t.root,
                control::FORGET_SETTLED,
                (crate::store::now_ms() - d).to_string().as_bytes(),
            )?;
            let dropped = before.saturating_sub(count(&t)?);
            if !out.json {
                println!("dropped the history of {dropped} settled conflicts older than {age}");
            }
            report.insert("conflicts_dropped".into(), json!(dropped));
        }
        if cache {
            let before = status_of(&t.root)?.storage.cache_used;
            set(&t.root, control::EVICT, b"1")?;
            let after = status_of(&t.root)?.storage.cache_used;
            if !out.json {
                println!(
                    "evicted {} of clean cached data ({} still cached: pinned, open or not uploaded)",
                    human(before.saturating_sub(after)),
                    human(after)
                );
            }
            report.insert("cache_freed".into(), json!(before.saturating_sub(after)));
        }
    }
    if let Some(age) = state_dirs {
        let d = parse_duration(age)
            .with_context(|| format!("--state-dirs {age}: expected a duration like 30d"))?;
        let rows = clean_state_dirs(&state_base()?, d, dry_run)?;
        if !out.json {
            if rows.is_empty() {
                println!("no state dirs unused for {age}");
            }
            for r in &rows {
                println!("{}", r["line"].as_str().unwrap_or_default());
            }
        }
        report.insert("state_dirs".into(), json!(rows));
    }
    if out.json {
        println!("{}", serde_json::Value::Object(report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The state dirs under `base` not used for `age_ms`: each listed with what it still holds
/// unsynced, and removed (unless `dry_run`) only when that is nothing and no mount holds it.
pub(super) fn clean_state_dirs(
    base: &Path,
    age_ms: i64,
    dry_run: bool,
) -> anyhow::Result<Vec<serde_json::Value>> {
    use std::os::fd::AsRawFd;
    let mut rows = Vec::new();
    let Ok(dirs) = std::fs::read_dir(base) else {
        return Ok(rows);
    };
    let now = std::time::SystemTime::now();
    let mut dirs: Vec<PathBuf> = dirs.filter_map(|d| d.ok().map(|d| d.path())).collect();
    dirs.sort();
    for dir in dirs {
        let db = dir.join("state.db");
        if !db.is_file() {
            continue;
        }
        // Last used: the newest write to its database (the WAL too).
        let used = ["state.db", "state.db-wal", "stratus.log"]
            .iter()
            .filter_map(|f| {
                std::fs::metadata(dir.join(f))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .max()
            .unwrap_or(now);
        let idle_ms = now.duration_since(used).unwrap_or_default().as_millis() as i64;
        if idle_ms < age_ms {
            continue;
        }
        // Held for the rest of the check: a mount starting meanwhile waits or fails.
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("lock"))
            .with_context(|| format!("opening {}", dir.join("lock").display()))?;
        // SAFETY: flock on a descriptor we own.
        let free = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        let mut row = json!({
            "dir": dir,
            "last_used_ms": crate::store::now_ms() - idle_ms,
        });
        let (action, line) = if !free {
            (
                "kept",
                format!("keep    {}  (in use by a running mount)", dir.display()),
            )
        } else {
            let read = crate::store::unsynced_in(&db);
            // Reading checkpoints the WAL into state.db: that is no use of the state dir,
            // and must not make it look fresh to the next run.
            let _ = std::fs::File::options()
                .write(true)
                .open(&db)
                .and_then(|f| f.set_modified(used));
            match read {
                Err(e) => (
                    "kept",
                    format!("keep    {}  (cannot read its database: {e})", dir.display()),
                ),
                Ok((jobs, bytes)) => {
                    row["unsynced_operations"] = json!(jobs);
                    row["unsynced_bytes"] = json!(bytes);
                    if jobs > 0 {
                        (
                            "kept",
                            format!(
                                "keep    {}  (unused for {}, but {jobs} operations ({}) never reached                                  the remote: mount it again to send them)",
                                dir.display(),
                                show::span(idle_ms),
                                human(bytes)
                            ),
                        )
                    } else if dry_run {
                        (
                            "would remove",
                            format!(
                                "would remove  {}  (unused for {}, nothing unsynced)",
                                dir.display(),
                                show::span(idle_ms)
                            ),
                        )
                    } else {
                        std::fs::remove_dir_all(&dir)
                            .with_context(|| format!("removing {}", dir.display()))?;
                        (
                            "removed",
                            format!(
                                "removed {}  (unused for {}, nothing unsynced)",
                                dir.display(),
                                show::span(idle_ms)
                            ),
                        )
                    }
                }
            }
        };
        row["action"] = json!(action);
        row["line"] = json!(line);
        rows.push(row);
    }
    Ok(rows)
}
