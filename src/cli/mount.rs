//! `stratus mount` (the daemon started detached, reporting back through a pipe), the
//! default state dir, logging, and `stratus unmount`.

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{mounts, status_of, Out};
use crate::daemon::{self, MountConfig, READY_FD_ENV};
use crate::remote::RemoteUrl;

pub(super) fn init_logging(verbose: bool, file: Option<&Path>) -> anyhow::Result<()> {
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
                .mode(0o600)
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
/// `~/.local/state/stratus`; for root with neither set (mount(8) from fstab at boot, a
/// systemd unit), `/var/lib/stratus`.
pub(super) fn state_base() -> anyhow::Result<PathBuf> {
    let base = match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
        (Some(d), _) if !d.is_empty() => PathBuf::from(d),
        (_, Some(h)) if !h.is_empty() => PathBuf::from(h).join(".local/state"),
        // SAFETY: geteuid cannot fail.
        _ if unsafe { libc::geteuid() } == 0 => return Ok(PathBuf::from("/var/lib/stratus")),
        _ => bail!("neither XDG_STATE_HOME nor HOME is set"),
    };
    Ok(base.join("stratus"))
}

/// One state dir per (remote, mountpoint) pair, so mounting the same pair again resumes.
pub(super) fn default_state_dir(remote: &RemoteUrl, mp: &Path) -> anyhow::Result<PathBuf> {
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

/// Starts `stratus mount --foreground` detached, and returns once it reports the mount live
/// (exit 0) or says why it cannot mount (exit 1, with its one-line reason).
pub(super) fn spawn_daemon(
    remote: &str,
    cfg: &MountConfig,
    verbose: bool,
    out: Out,
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
        .arg("--bwlimit")
        .arg(cfg.bwlimit.to_string())
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
    if let Some(q) = cfg.quota {
        cmd.arg("--quota").arg(q.to_string());
    }
    if let Some(d) = &cfg.dashboard {
        cmd.arg(format!("--dashboard={d}"));
    }
    if cfg.dashboard_allow_remote {
        cmd.arg("--dashboard-allow-remote");
    }
    cmd.arg("-o").arg(cfg.mount.to_arg());
    for (k, v) in &cfg.store_options {
        cmd.arg("--store-opt").arg(format!("{k}={v}"));
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
        out.print(
            json!({
                "mounted": cfg.remote.canonical(),
                "mountpoint": cfg.mountpoint,
                "state_dir": cfg.state_dir,
            }),
            || {
                format!(
                    "mounted {} on {} (state dir {})",
                    cfg.remote.canonical(),
                    cfg.mountpoint.display(),
                    cfg.state_dir.display()
                )
            },
        );
        return Ok(ExitCode::SUCCESS);
    }
    let _ = child.wait();
    match line.strip_prefix("error: ") {
        Some(reason) => bail!("{reason}"),
        None => bail!("the mount daemon exited early; see {}", log.display()),
    }
}

pub(super) fn unmount(mountpoint: &Path, out: Out) -> anyhow::Result<ExitCode> {
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
