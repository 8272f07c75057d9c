//! The `stratus` command line. It reaches a running mount only through the control
//! attributes (see `control`), never through private channels. Every command that takes a
//! path finds the mount from it (`cli::mounts`) and refuses, writing nothing, a path outside
//! every stratus mount; `--json` makes every command print JSON (`docs/json.md`), errors too.

mod dashboard;
mod mounts;
mod show;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::control::{self, LogEntry, Page, QueueEntry};
use crate::daemon::{self, MountConfig, Ready, READY_FD_ENV};
use crate::remote::RemoteUrl;
use crate::sync::ConflictPolicy;
use mounts::{absolute, Target};
use show::{human, when};

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_size};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("-1G"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(90_000));
        assert_eq!(parse_duration("15m"), Some(900_000));
        assert_eq!(parse_duration("2h"), Some(7_200_000));
        assert_eq!(parse_duration("7d"), Some(604_800_000));
        assert_eq!(parse_duration("30"), Some(30_000));
        assert_eq!(parse_duration("soon"), None);
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "stratus",
    version,
    about = "A folder kept in sync with object storage"
)]
struct Cli {
    /// More log output (debug level); STRATUS_LOG overrides it with a full filter.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Print JSON (one document; `log --follow`: one per line); errors too, as
    /// {"error": "..."} with a non-zero exit. See docs/json.md.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mount REMOTE (a directory, file:///path, s3://, az:// or gs://) on MOUNTPOINT.
    Mount {
        remote: String,
        mountpoint: PathBuf,
        /// Where the journal and cached data live (default: one per remote and mountpoint
        /// under $XDG_STATE_HOME/stratus).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Stay in the foreground and log to stderr.
        #[arg(long)]
        foreground: bool,
        /// Seconds a closed file is left alone before it is uploaded.
        #[arg(long, default_value_t = 2.0)]
        write_back: f64,
        /// Extra object_store option, KEY=VALUE (repeatable).
        #[arg(short = 'o', value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Seconds between listings of the remote for changes made elsewhere; 0 turns
        /// polling off (`stratus sync` still polls).
        #[arg(long, default_value_t = 15.0)]
        poll_interval: f64,
        /// How much file data to keep on this disk (500M, 10G, ...): fetched blocks and data
        /// not yet uploaded; the least recently used clean blocks go first, and writers wait
        /// for uploads when unsent data alone fills it. Pinned files come on top. Never more
        /// than the disk's free space minus 5% (at least 1G).
        #[arg(long, default_value = "10G")]
        cache_size: String,
        /// What happens when both sides changed a file: manual, newest, local or remote.
        #[arg(long = "conflict", default_value = "manual", value_name = "POLICY")]
        conflict: String,
        /// Check again whether the server enforces conditional writes (`If-Match`,
        /// `If-None-Match: *`), although the state dir remembers the answer of an earlier mount.
        #[arg(long)]
        recheck_preconditions: bool,
        /// Serve the status figures in the Prometheus text format at http://ADDR/metrics
        /// (a loopback address; port 0 picks a free one, written to STATE_DIR/metrics.addr).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<String>,
        /// Serve the web dashboard at ADDR (default 127.0.0.1:0, a free loopback port);
        /// `stratus dashboard MOUNTPOINT` prints its URL.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0")]
        dashboard: Option<String>,
        /// Allow a non-loopback --dashboard address (reachable from other machines; the
        /// token still guards it).
        #[arg(long)]
        dashboard_allow_remote: bool,
        /// Log file (the background daemon uses STATE_DIR/stratus.log).
        #[arg(long, hide = true)]
        log_file: Option<PathBuf>,
    },
    /// Unmount cleanly; what is still queued stays queued for the next mount.
    Unmount { mountpoint: PathBuf },
    /// Print the URL (token included) of the web dashboard of the mount PATH is in; open it
    /// with xdg-open when there is a display.
    Dashboard {
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Health, queue, statistics and storage of the mount PATH is in.
    Status {
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// The queued operations, in the order they run, with state, tries and last error.
    Queue {
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Try the parked (failed) operations of these paths again now (a directory: all
        /// below it).
        #[arg(long, value_name = "PATH")]
        retry: Vec<PathBuf>,
        /// Try every parked operation again now.
        #[arg(long)]
        all: bool,
    },
    /// The activity log: uploads, downloads, deletes, moves, remote changes, conflicts,
    /// errors and retries, offline switches, mounts.
    Log {
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Keep printing new events as they happen.
        #[arg(short, long)]
        follow: bool,
        /// Only events newer than this (90s, 15m, 2h, 7d).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
        /// At most the newest N events.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
    },
    /// List open and resolved conflicts.
    Conflicts {
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Settle the conflict of PATH (the file or its .conflict copy), on every mount.
    Resolve {
        path: PathBuf,
        /// Which version to keep: path (the file as it is; the copy goes), copy (the copy's
        /// version takes the path), both (the copy becomes an ordinary file), or local /
        /// remote (the version written on this mount / the other one).
        #[arg(long)]
        keep: String,
    },
    /// Keep PATH on this machine: download it (a directory: everything below it, now and
    /// later) in the background and never evict it.
    Pin {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Release PATH to normal eviction.
    Unpin {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Go offline (no network traffic; changes queue) or back online.
    Offline {
        path: PathBuf,
        /// on or off
        state: String,
    },
    /// Housekeeping: settled conflict history, cached data, state dirs of unused mounts.
    /// Never removes anything that has not reached the remote.
    Clean {
        /// A path inside the mount to clean (for --conflicts and --cache).
        path: Option<PathBuf>,
        /// Drop the history of conflicts settled longer ago than AGE (30d, 12h, ...).
        #[arg(long, value_name = "AGE")]
        conflicts: Option<String>,
        /// Evict the mount's clean, unpinned cached data now.
        #[arg(long)]
        cache: bool,
        /// The state dirs (under $XDG_STATE_HOME/stratus) of mounts not used for AGE: listed,
        /// and removed when they hold nothing unsynced.
        #[arg(long, value_name = "AGE")]
        state_dirs: Option<String>,
        /// With --state-dirs: list what would go, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Push queued changes and pull remote ones now.
    Sync {
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Return only once everything queued before this call reached the remote, showing
        /// progress.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit status 1).
        #[arg(long)]
        timeout: Option<f64>,
    },
}

/// Where the CLI's output goes: text for people, or JSON for scripts.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    /// Prints `value` as JSON, or `text` for people.
    fn print(&self, value: serde_json::Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else {
            let t = text();
            if !t.is_empty() {
                println!("{}", t.trim_end_matches('\n'));
            }
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Mount { .. }) {
        // A command whose output goes to a closed pipe (`stratus status | head -1`) ends
        // quietly, as other Unix tools do, instead of panicking in `println!`. The daemon
        // keeps ignoring SIGPIPE: its sockets report a closed peer as an error.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let out = Out { json: cli.json };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            if out.json {
                println!("{}", json!({ "error": chain.join(": ") }));
            } else {
                eprintln!("stratus: {}", chain.join(": "));
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: bool, file: Option<&Path>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATUS_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if verbose {
            "stratus=debug,info"
        } else {
            "info"
        })
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

/// Where the default state dirs live: `$XDG_STATE_HOME/stratus` or
/// `~/.local/state/stratus`.
fn state_base() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_STATE_HOME nor HOME is set")?,
        )
        .join(".local/state"),
    };
    Ok(base.join("stratus"))
}

/// One state dir per (remote, mountpoint) pair, so mounting the same pair again resumes.
fn default_state_dir(remote: &RemoteUrl, mp: &Path) -> anyhow::Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(remote.canonical().as_bytes());
    h.update([0]);
    h.update(mp.as_os_str().as_encoded_bytes());
    let digest = hex::encode(h.finalize());
    let slug: String = mp
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    Ok(state_base()?.join(format!("{slug}-{}", &digest[..12])))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Out { json: cli.json };
    match cli.cmd {
        Cmd::Mount {
            remote,
            mountpoint,
            state_dir,
            foreground,
            write_back,
            options,
            log_file,
            poll_interval,
            conflict,
            cache_size,
            recheck_preconditions,
            metrics,
            dashboard,
            dashboard_allow_remote,
        } => {
            let url = RemoteUrl::parse(&remote).map_err(|e| anyhow::anyhow!("bad remote: {e}"))?;
            let mp = absolute(&mountpoint)?;
            let state_dir = match state_dir {
                Some(d) => absolute(&d)?,
                None => default_state_dir(&url, &mp)?,
            };
            let mut opts = Vec::new();
            for o in &options {
                let (k, v) = o
                    .split_once('=')
                    .with_context(|| format!("-o {o}: expected KEY=VALUE"))?;
                opts.push((k.to_string(), v.to_string()));
            }
            if !(0.0..=86_400.0).contains(&write_back) {
                bail!("--write-back must be between 0 and 86400 seconds");
            }
            if !(0.0..=86_400.0).contains(&poll_interval) {
                bail!("--poll-interval must be between 0 and 86400 seconds");
            }
            let cache_bytes = parse_size(&cache_size).with_context(|| {
                format!("--cache-size {cache_size}: expected a size like 500M or 10G")
            })?;
            let policy = ConflictPolicy::parse(&conflict).with_context(|| {
                format!("--conflict {conflict}: expected manual, newest, local or remote")
            })?;
            let cfg = MountConfig {
                remote: url,
                mountpoint: mp,
                state_dir,
                write_back: Duration::from_secs_f64(write_back),
                options: opts,
                fuse_threads: 4,
                poll_interval: (poll_interval > 0.0)
                    .then(|| Duration::from_secs_f64(poll_interval)),
                policy,
                cache_size: cache_bytes,
                recheck_preconditions,
                metrics,
                dashboard,
                dashboard_allow_remote,
            };
            if foreground {
                init_logging(cli.verbose, log_file.as_deref())?;
                let mut ready = Ready::from_env();
                if let Err(e) = daemon::run(cfg, &mut ready) {
                    let msg = e
                        .chain()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(": ");
                    tracing::error!(error = %msg, "mount failed");
                    ready.fail(&msg);
                    return Err(e);
                }
                Ok(ExitCode::SUCCESS)
            } else {
                spawn_daemon(&remote, &cfg, &options, cli.verbose)
            }
        }
        Cmd::Unmount { mountpoint } => unmount(&mountpoint, out),
        Cmd::Dashboard { path } => dashboard::run(&path, out),
        Cmd::Status { path } => status(&path, out),
        Cmd::Queue { path, retry, all } => queue(&path, &retry, all, out),
        Cmd::Log {
            path,
            follow,
            since,
            limit,
        } => log(&path, follow, since.as_deref(), limit, out),
        Cmd::Sync {
            path,
            wait,
            timeout,
        } => sync(&path, wait, timeout.map(Duration::from_secs_f64), out),
        Cmd::Conflicts { path } => conflicts(&path, out),
        Cmd::Clean {
            path,
            conflicts,
            cache,
            state_dirs,
            dry_run,
        } => clean(
            path.as_deref(),
            conflicts.as_deref(),
            cache,
            state_dirs.as_deref(),
            dry_run,
            out,
        ),
        Cmd::Resolve { path, keep } => resolve(&path, &keep, out),
        Cmd::Pin { paths } => pin(&paths, true, out),
        Cmd::Unpin { paths } => pin(&paths, false, out),
        Cmd::Offline { path, state } => {
            let on = match state.as_str() {
                "on" => true,
                "off" => false,
                other => bail!("offline {other}: expected on or off"),
            };
            let t = mounts::target(&path)?;
            set(&t.root, control::OFFLINE, if on { b"1" } else { b"0" })?;
            out.print(json!({"mount": t.root, "offline": on}), || {
                format!(
                    "{} is {}",
                    t.root.display(),
                    if on { "offline" } else { "online" }
                )
            });
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sets a control attribute; a refusal carries the mount's reason, not just an errno.
fn set(path: &Path, name: &str, value: &[u8]) -> anyhow::Result<()> {
    match control::set(path, name, value) {
        Ok(()) => Ok(()),
        Err(e) => match control::get(path, control::REFUSAL) {
            Ok(why) if e.raw_os_error() != Some(libc::ENOTSUP) => {
                bail!("{}", String::from_utf8_lossy(&why))
            }
            _ => Err(e.into()),
        },
    }
}

fn status_of(root: &Path) -> anyhow::Result<control::Status> {
    let raw = control::get(root, control::STATUS)
        .with_context(|| format!("{} does not answer as a stratus mount", root.display()))?;
    serde_json::from_slice(&raw).context("reading the mount's status")
}

/// Starts `stratus mount --foreground` detached, and returns once it reports the mount live
/// (exit 0) or says why it cannot mount (exit 1, with its one-line reason).
fn spawn_daemon(
    remote: &str,
    cfg: &MountConfig,
    options: &[String],
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    daemon::check_mountpoint(&cfg.mountpoint)?;
    daemon::make_private_dir(&cfg.state_dir)?;
    let log = cfg.state_dir.join("stratus.log");
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the ready pipe");
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_fd = fds[1];
    let mut cmd = Command::new(std::env::current_exe().context("locating the stratus binary")?);
    cmd.arg("mount")
        .arg(remote)
        .arg(&cfg.mountpoint)
        .arg("--foreground")
        .arg("--state-dir")
        .arg(&cfg.state_dir)
        .arg("--write-back")
        .arg(cfg.write_back.as_secs_f64().to_string())
        .arg("--poll-interval")
        .arg(
            cfg.poll_interval
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
                .to_string(),
        )
        .arg("--conflict")
        .arg(cfg.policy.as_str())
        .arg("--cache-size")
        .arg(cfg.cache_size.to_string())
        .arg("--log-file")
        .arg(&log);
    if verbose {
        cmd.arg("-v");
    }
    if cfg.recheck_preconditions {
        cmd.arg("--recheck-preconditions");
    }
    if let Some(m) = &cfg.metrics {
        cmd.arg("--metrics").arg(m);
    }
    if let Some(d) = &cfg.dashboard {
        cmd.arg(format!("--dashboard={d}"));
    }
    if cfg.dashboard_allow_remote {
        cmd.arg("--dashboard-allow-remote");
    }
    for o in options {
        cmd.arg("-o").arg(o);
    }
    cmd.env(READY_FD_ENV, write_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // Keep the write end open across exec for the child alone.
            let flags = libc::fcntl(write_fd, libc::F_GETFD);
            libc::fcntl(write_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    drop(write_end);
    let mut reader = BufReader::new(std::fs::File::from(read_end));
    let mut line = String::new();
    loop {
        line.clear();
        reader
            .read_line(&mut line)
            .context("waiting for the mount daemon")?;
        match line.trim().strip_prefix("warn: ") {
            Some(w) => eprintln!("stratus: warning: {w}"),
            None => break,
        }
    }
    let line = line.trim();
    if line == "ok" {
        println!(
            "mounted {} on {} (state dir {})",
            cfg.remote.canonical(),
            cfg.mountpoint.display(),
            cfg.state_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let _ = child.wait();
    match line.strip_prefix("error: ") {
        Some(reason) => bail!("{reason}"),
        None => bail!("the mount daemon exited early; see {}", log.display()),
    }
}

/// Sets `user.stratus.pin` on each path; every path is tried, and the exit status says
/// whether all of them took it.
fn pin(paths: &[PathBuf], on: bool, out: Out) -> anyhow::Result<ExitCode> {
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

fn unmount(mountpoint: &Path, out: Out) -> anyhow::Result<ExitCode> {
    // Found without asking the mount: a mount whose daemon died must still come off.
    let mp = mounts::mount_of(mountpoint)?.root;
    let pid = status_of(&mp).ok().map(|s| s.pid);
    // Right after a file's last close the kernel may hold the mount a moment longer (EBUSY
    // until the asynchronous release is answered): retried for up to 2 s before giving up.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let o = Command::new("fusermount3").arg("-u").arg(&mp).output();
        if matches!(&o, Ok(o) if o.status.success()) {
            break;
        }
        let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())?;
        // SAFETY: NUL-terminated path.
        if unsafe { libc::umount(c.as_ptr()) } == 0 {
            break;
        }
        let busy = std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY);
        if !busy || Instant::now() >= deadline {
            let why = match o {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            };
            bail!("cannot unmount {}: {why}", mp.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Wait for the daemon to close its journal, so a following mount finds it free.
    if let Some(pid) = pid.filter(|p| *p > 0) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            if std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split(' ').nth(2) == Some("Z"))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    out.print(json!({"unmounted": mp}), || {
        format!("unmounted {}", mp.display())
    });
    Ok(ExitCode::SUCCESS)
}

/// One side of a conflict: hash, size, mtime, ETag and who wrote it.
fn version_line(v: &crate::types::VersionMark, mine: bool) -> String {
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

fn conflicts(path: &Path, out: Out) -> anyhow::Result<ExitCode> {
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
fn resolve(path: &Path, keep: &str, out: Out) -> anyhow::Result<ExitCode> {
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

/// `500M`, `10G`, `1.5T`, `4096`: binary units.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        'T' | 't' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult as f64) as u64)
}

/// `90s`, `15m`, `2h`, `7d`, or plain seconds; in milliseconds.
fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1_000.0),
        'm' => (&s[..s.len() - 1], 60_000.0),
        'h' => (&s[..s.len() - 1], 3_600_000.0),
        'd' => (&s[..s.len() - 1], 86_400_000.0),
        _ => (s, 1_000.0),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * mult) as i64)
}

fn status(path: &Path, out: Out) -> anyhow::Result<ExitCode> {
    let t = mounts::target(path)?;
    let s = status_of(&t.root)?;
    out.print(serde_json::to_value(&s)?, || show::status(&t.root, &s));
    Ok(ExitCode::SUCCESS)
}

/// Every page of a paged attribute (`user.stratus.queue.N`, `user.stratus.log.N.S`).
fn pages<T: serde::de::DeserializeOwned>(
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

fn queue(path: &Path, retry: &[PathBuf], all: bool, out: Out) -> anyhow::Result<ExitCode> {
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

fn log(
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

fn print_event(r: &LogEntry, out: Out) {
    if out.json {
        println!("{}", serde_json::to_value(r).unwrap_or_default());
    } else {
        println!("{}", show::log_row(r));
    }
}

/// (started, done) polls of the remote.
fn polls(mp: &Path) -> anyhow::Result<(u64, u64)> {
    let raw = String::from_utf8_lossy(&control::get(mp, control::POLLS)?).to_string();
    let mut it = raw.split_whitespace().map(|v| v.parse().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
}

/// What `sync --wait` shows while it waits: a bar on a terminal, a plain line every few
/// seconds otherwise (a log file, a CI job), nothing under `--json`.
struct Progress {
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

fn sync(path: &Path, wait: bool, timeout: Option<Duration>, out: Out) -> anyhow::Result<ExitCode> {
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
        progress.show(pending.total, now.queue.bytes, note.as_deref());
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

fn print_pending(pending: &control::Pending) {
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

/// `stratus clean`.
fn clean(
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
fn clean_state_dirs(
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
