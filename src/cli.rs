//! The `stratus` command line. It reaches a running mount only through the control
//! attributes (see `control`), never through private channels.

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::control;
use crate::daemon::{self, MountConfig, Ready, READY_FD_ENV};
use crate::remote::RemoteUrl;
use crate::sync::ConflictPolicy;

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("10G"), Some(10 << 30));
        assert_eq!(parse_size("1.5k"), Some(1536));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("-1G"), None);
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
        /// Log file (the background daemon uses STATE_DIR/stratus.log).
        #[arg(long, hide = true)]
        log_file: Option<PathBuf>,
    },
    /// Unmount cleanly; what is still queued stays queued for the next mount.
    Unmount { mountpoint: PathBuf },
    /// Show whether the remote is reachable, what is queued, and the last error.
    Status { mountpoint: PathBuf },
    /// List open and resolved conflicts.
    Conflicts {
        mountpoint: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
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
        mountpoint: PathBuf,
        /// on or off
        state: String,
    },
    /// Push queued changes and pull remote ones now.
    Sync {
        mountpoint: PathBuf,
        /// Return only once everything queued before this call reached the remote.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds (exit status 1).
        #[arg(long)]
        timeout: Option<f64>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("stratus: {}", chain.join(": "));
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

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    })
}

/// One state dir per (remote, mountpoint) pair, so mounting the same pair again resumes.
fn default_state_dir(remote: &RemoteUrl, mp: &Path) -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(
            std::env::var_os("HOME").context("neither XDG_STATE_HOME nor HOME is set")?,
        )
        .join(".local/state"),
    };
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
    Ok(base
        .join("stratus")
        .join(format!("{slug}-{}", &digest[..12])))
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
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
        Cmd::Unmount { mountpoint } => unmount(&absolute(&mountpoint)?),
        Cmd::Status { mountpoint } => status(&mountpoint),
        Cmd::Sync {
            mountpoint,
            wait,
            timeout,
        } => sync(&mountpoint, wait, timeout.map(Duration::from_secs_f64)),
        Cmd::Conflicts { mountpoint, json } => conflicts(&mountpoint, json),
        Cmd::Resolve { path, keep } => resolve(&path, &keep),
        Cmd::Pin { paths } => pin(&paths, true),
        Cmd::Unpin { paths } => pin(&paths, false),
        Cmd::Offline { mountpoint, state } => {
            let v: &[u8] = match state.as_str() {
                "on" => b"1",
                "off" => b"0",
                other => bail!("offline {other}: expected on or off"),
            };
            control::set(&mountpoint, control::OFFLINE, v).with_context(|| {
                format!("{} is not a running stratus mount", mountpoint.display())
            })?;
            println!(
                "{} is {}",
                mountpoint.display(),
                if v == b"1" { "offline" } else { "online" }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
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
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state dir {}", cfg.state_dir.display()))?;
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
fn pin(paths: &[PathBuf], on: bool) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    for p in paths {
        let r = control::set(p, control::PIN, if on { b"1" } else { b"0" });
        match r {
            Ok(()) if on => println!("pinned {} (downloading in the background)", p.display()),
            Ok(()) => match control::get(p, control::PIN) {
                Ok(v) if v == b"1" => println!(
                    "unpinned {}, but a directory above it is pinned: it stays",
                    p.display()
                ),
                _ => println!("unpinned {}", p.display()),
            },
            Err(e) => {
                eprintln!(
                    "stratus: {} {}: {e}",
                    if on { "pin" } else { "unpin" },
                    p.display()
                );
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn status_of(mp: &Path) -> anyhow::Result<control::Status> {
    let raw = control::get(mp, control::STATUS)
        .with_context(|| format!("{} is not a running stratus mount", mp.display()))?;
    Ok(control::Status::decode(&String::from_utf8_lossy(&raw)))
}

fn unmount(mp: &Path) -> anyhow::Result<ExitCode> {
    let pid = status_of(mp).ok().map(|s| s.pid);
    // Right after a file's last close the kernel may hold the mount a moment longer (EBUSY
    // until the asynchronous release is answered): retried for up to 2 s before giving up.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let out = Command::new("fusermount3").arg("-u").arg(mp).output();
        if matches!(&out, Ok(o) if o.status.success()) {
            break;
        }
        let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())?;
        // SAFETY: NUL-terminated path.
        if unsafe { libc::umount(c.as_ptr()) } == 0 {
            break;
        }
        let busy = std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY);
        if !busy || Instant::now() >= deadline {
            let why = match out {
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
    println!("unmounted {}", mp.display());
    Ok(ExitCode::SUCCESS)
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
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

fn conflicts(mp: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let raw = control::get(mp, control::CONFLICTS)
        .with_context(|| format!("{} is not a running stratus mount", mp.display()))?;
    if json {
        println!("{}", String::from_utf8_lossy(&raw));
        return Ok(ExitCode::SUCCESS);
    }
    let all: Vec<control::ConflictInfo> =
        serde_json::from_slice(&raw).context("reading the conflict list")?;
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
fn resolve(path: &Path, keep: &str) -> anyhow::Result<ExitCode> {
    let Some(k) = crate::types::Keep::parse(keep) else {
        bail!("--keep {keep}: expected path, copy, both, local or remote");
    };
    let last = match control::get(path, control::CONFLICT) {
        Ok(raw) => Some(
            serde_json::from_slice::<control::ConflictInfo>(&raw)
                .context("reading the file's conflict")?,
        ),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => None,
        Err(e) => {
            return Err(e)
                .with_context(|| format!("{} is not in a running stratus mount", path.display()))
        }
    };
    let Some(c) = last else {
        eprintln!(
            "stratus: {}: no conflict recorded for this file",
            path.display()
        );
        return Ok(ExitCode::FAILURE);
    };
    if let (Some(ms), r) = (c.resolved_ms, &c.resolution) {
        println!(
            "{}: its conflict was already settled ({}) at {}; nothing to do",
            path.display(),
            r.as_deref().unwrap_or("?"),
            when(ms)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(why) = k.placed(c.mine.as_deref()) {
        bail!("--keep {keep} for {}: {why}", path.display());
    }
    control::set(path, control::RESOLVE, keep.as_bytes())
        .with_context(|| format!("resolving {}", path.display()))?;
    println!("kept {keep} for {}", path.display());
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

fn human(n: u64) -> String {
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

fn status(mp: &Path) -> anyhow::Result<ExitCode> {
    let s = status_of(mp)?;
    println!("remote:      {}", s.remote);
    println!(
        "reachable:   {}",
        if s.reachable {
            "yes"
        } else {
            "no (changes are queued)"
        }
    );
    println!(
        "queued:      {} entries, {}",
        s.queued_entries,
        human(s.queued_bytes)
    );
    println!("uploading:   {}", s.uploading);
    println!(
        "still open:  {} (uploaded once closed or fsync'd)",
        s.waiting_for_writer
    );
    println!("errors:      {}", s.errors);
    println!(
        "offline:     {}",
        if s.offline {
            "yes (stratus offline MOUNTPOINT off)"
        } else {
            "no"
        }
    );
    println!("conflicts:   {} open", s.open_conflicts);
    match s.preconditions.as_deref() {
        None => {}
        Some("enforced") => println!("preconditions: enforced by the server"),
        Some("ignored") => println!("{}", control::PRECONDITIONS_IGNORED),
        Some(other) => println!("preconditions: {other}"),
    }
    println!(
        "cache:       {} used, budget {}; {} pinned, {} not yet uploaded",
        human(s.cache_used),
        human(s.cache_budget),
        human(s.cache_pinned),
        human(s.cache_dirty)
    );
    let reads = s.cache_hits + s.cache_misses;
    println!(
        "hit ratio:   {} ({} of {} reads served from this disk); {} downloaded since mount",
        if reads == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", s.cache_hits as f64 * 100.0 / reads as f64)
        },
        s.cache_hits,
        reads,
        human(s.downloaded)
    );
    println!("last error:  {}", s.last_error.as_deref().unwrap_or("none"));
    Ok(ExitCode::SUCCESS)
}

/// (started, done) polls of the remote.
fn polls(mp: &Path) -> anyhow::Result<(u64, u64)> {
    let raw = String::from_utf8_lossy(&control::get(mp, control::POLLS)?).to_string();
    let mut it = raw.split_whitespace().map(|v| v.parse().unwrap_or(0));
    Ok((it.next().unwrap_or(0), it.next().unwrap_or(0)))
}

fn sync(mp: &Path, wait: bool, timeout: Option<Duration>) -> anyhow::Result<ExitCode> {
    let (started_before, _) =
        polls(mp).with_context(|| format!("{} is not a running stratus mount", mp.display()))?;
    control::set(mp, control::SYNC, b"1")
        .with_context(|| format!("{} is not a running stratus mount", mp.display()))?;
    if !wait {
        println!("sync requested");
        return Ok(ExitCode::SUCCESS);
    }
    let barrier = String::from_utf8_lossy(&control::get(mp, control::BARRIER)?)
        .trim()
        .to_string();
    let name = format!("{}{barrier}", control::PENDING_PREFIX);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut last_kick = Instant::now();
    loop {
        // Someone is waiting: keep cutting backoffs short, as a user pressing "sync" again
        // would.
        if last_kick.elapsed() >= Duration::from_secs(2) {
            let _ = control::set(mp, control::SYNC, b"1");
            last_kick = Instant::now();
        }
        let pending = control::Pending::decode(&String::from_utf8_lossy(&control::get(mp, &name)?));
        let timed_out = deadline.is_some_and(|d| Instant::now() >= d);
        let stuck = pending.errors;
        if pending.total == stuck {
            // All that can move has moved. Then wait for one listing of the remote that
            // started after this call, so remote changes are in too (none while offline).
            let offline = status_of(mp).map(|s| s.offline).unwrap_or(false);
            if offline || polls(mp)?.1 > started_before {
                if pending.conflicts > 0 {
                    // Both versions of each are on the remote; someone still has to choose.
                    eprintln!(
                        "stratus: {} open conflicts (stratus conflicts {})",
                        pending.conflicts,
                        mp.display()
                    );
                }
                if stuck == 0 {
                    println!("everything queued before this call is on the remote");
                    return Ok(ExitCode::SUCCESS);
                }
                eprintln!("stratus: {} entries failed to sync:", pending.errors);
                print_pending(&pending);
                return Ok(ExitCode::FAILURE);
            }
            if timed_out {
                eprintln!("stratus: timed out waiting for a listing of the remote");
                return Ok(ExitCode::FAILURE);
            }
        } else if timed_out {
            eprintln!("stratus: timed out; {} still pending:", pending.total);
            print_pending(&pending);
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(50));
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
