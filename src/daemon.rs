//! Runs one mount in the foreground: locks the state dir, checks the remote, starts the core
//! (`daemon/wiring.rs`) and serves the FUSE session until unmounted.

mod notify;
mod options;
mod wiring;

pub use notify::Notifier;
pub use options::{parse as parse_mount_options, Access, MountOptions};
pub use wiring::{Core, CoreBuilder};

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use fuser::MountOption;

use crate::cache::FileCache;
use crate::control::{Control, PRECONDITIONS_IGNORED, PRECONDITIONS_META};
use crate::fuse::{StratusFs, View};
use crate::remote::{Preconditions, Remote, RemoteUrl};
use crate::store::{Event, EventKind, Store};
use crate::sync::{ConflictPolicy, SyncConfig};
use crate::vfs::VfsConfig;

/// Environment variable naming the pipe on which a daemon tells its parent it is ready.
pub const READY_FD_ENV: &str = "STRATUS_READY_FD";

#[derive(Debug, Clone)]
pub struct MountConfig {
    pub remote: RemoteUrl,
    pub mountpoint: PathBuf,
    pub state_dir: PathBuf,
    pub write_back: Duration,
    /// object_store settings (`--store-opt`).
    pub store_options: Vec<(String, String)>,
    /// The FUSE side (`-o`).
    pub mount: MountOptions,
    pub fuse_threads: usize,
    pub poll_interval: Option<Duration>,
    pub policy: ConflictPolicy,
    /// Bytes of fetched data to keep; capped by the disk's free space at mount.
    pub cache_size: u64,
    /// Run the precondition check again even if the state dir remembers its answer.
    pub recheck_preconditions: bool,
    /// Where to serve the Prometheus metrics (a loopback IP:PORT), if anywhere.
    pub metrics: Option<String>,
    /// The user's quota for the mount: status shows used / quota, `df` answers from it.
    pub quota: Option<u64>,
    /// Where to serve the web dashboard (IP:PORT), if anywhere.
    pub dashboard: Option<String>,
    /// Allow a non-loopback dashboard address.
    pub dashboard_allow_remote: bool,
    /// `--bwlimit`: upload and download rates (changeable later with `stratus bwlimit`).
    pub bwlimit: crate::remote::Limits,
}

fn disk_reserve(cache: &FileCache) -> anyhow::Result<u64> {
    let (total, _, _) = cache.disk_space()?;
    Ok((1u64 << 30).max(total / 20))
}

/// Space always left free on the state dir's disk: the larger of 1 GiB and 5% of the disk.
/// The budget never goes below 4 MiB, so that a read can always make progress.
fn cache_budget(cache: &FileCache, wanted: u64) -> anyhow::Result<u64> {
    let (_, avail, _) = cache.disk_space()?;
    let margin = disk_reserve(cache)?;
    let room = avail.saturating_sub(margin);
    let budget = wanted.min(room).max(4 << 20);
    if budget < wanted {
        tracing::warn!(
            wanted,
            budget,
            "cache size capped by the free space of the state dir's disk"
        );
    }
    Ok(budget)
}

/// Reports readiness (or the reason for failing) to the `stratus mount` that started us.
pub struct Ready(Option<File>);

impl Ready {
    pub fn from_env() -> Ready {
        let fd = std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<i32>().ok());
        std::env::remove_var(READY_FD_ENV);
        // SAFETY: the parent passed us this descriptor for exactly this purpose, and nothing
        // else in this process owns it.
        Ready(fd.map(|fd| unsafe { File::from_raw_fd(fd) }))
    }

    pub fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(b"ok\n");
        }
    }

    /// A warning the user must see: on `stratus mount`'s stderr (the parent prints `warn:`
    /// lines as they come), or on our own stderr in the foreground.
    pub fn warn(&mut self, msg: &str) {
        match &mut self.0 {
            Some(f) => {
                let _ = f.write_all(format!("warn: {}\n", msg.replace('\n', " ")).as_bytes());
            }
            None => eprintln!("stratus: warning: {msg}"),
        }
    }

    pub fn fail(&mut self, msg: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(format!("error: {}\n", msg.replace('\n', " ")).as_bytes());
        }
    }
}

/// Creates the state dir if needed and makes it private to the user (0700): it holds the
/// journal, cached file data and the log, whatever mode the files in it get.
pub fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating state dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making state dir {} private", dir.display()))
}

/// Takes every permission of group and others off what the state dir holds (files 0600 at
/// most, directories 0700): the cached copies of the user's files, the journal and the log
/// are the user's alone, also in a state dir an older version left readable.
fn tighten_state_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut tightened = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
        for e in entries {
            let e = e?;
            let m = e.metadata()?;
            let mode = m.permissions().mode() & 0o7777;
            if m.is_dir() {
                stack.push(e.path());
            } else if !m.is_file() {
                continue;
            }
            if mode & 0o077 != 0 {
                std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode & 0o700))
                    .with_context(|| format!("making {} private", e.path().display()))?;
                tightened += 1;
            }
        }
    }
    if tightened > 0 {
        tracing::info!(
            state_dir = %dir.display(),
            files = tightened,
            "state dir was readable by others; made it private"
        );
    }
    Ok(())
}

/// Holds `STATE/lock` for the life of the mount: a second mount of the same state dir fails.
///
/// Except right after an unmount: `umount` returns as soon as the kernel lets go, while the
/// daemon still stops its uploader (up to [`STOP_GRACE`]), so `umount; mount` would find the
/// state dir held. The stopping daemon leaves `STATE/stopping` (see [`mark_stopping`]); a
/// mount that finds the lock held waits for a holder that says it is stopping, and gives a
/// holder that has not said so yet [`SAY_STOPPING`] to say it (xfstests unmounts and mounts
/// the scratch filesystem back to back).
fn lock_state_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let stopping = dir.join("stopping");
    let start = std::time::Instant::now();
    let mut said = false;
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        let is_stopping = std::fs::read_to_string(&stopping).is_ok_and(|p| p.trim() == holder);
        let waited = start.elapsed();
        if !(waited < SAY_STOPPING || (is_stopping && waited < SAY_STOPPING + STOP_GRACE)) {
            bail!(
                "state dir {} is held by another live mount (pid {holder})",
                dir.display()
            );
        }
        if is_stopping && !said {
            tracing::info!(
                pid = holder,
                "waiting for the previous mount of this state dir to finish stopping"
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&stopping);
    f.set_len(0)?;
    write!(f, "{}", std::process::id())?;
    Ok(f)
}

/// How long a stopping daemon may take after the unmount: the uploader's own grace, plus
/// saving the statistics and closing the database.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// How long a lock holder gets to say it is stopping, after `umount` returned.
const SAY_STOPPING: Duration = Duration::from_secs(2);

/// Says, in `STATE/stopping`, that this daemon's mount is gone and it only finishes its work:
/// the next mount of this state dir waits for the lock instead of failing.
fn mark_stopping(dir: &Path) {
    let path = dir.join("stopping");
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| write!(f, "{}", std::process::id()));
    if let Err(e) = written {
        tracing::warn!(error = %e, "could not mark the state dir as stopping");
    }
}

/// Checks that `mp` can be mounted on; a mount left behind by a killed daemon (ENOTCONN) is
/// detached first so that remounting after a crash just works.
pub fn check_mountpoint(mp: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(mp) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %mp.display(), "detaching a dead mount left by a previous daemon");
            let st = std::process::Command::new("fusermount3")
                .arg("-uz")
                .arg(mp)
                .status();
            if !matches!(st, Ok(s) if s.success()) {
                let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes())?;
                // SAFETY: NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            check_mountpoint_fresh(mp)
        }
        _ => check_mountpoint_fresh(mp),
    }
}

fn check_mountpoint_fresh(mp: &Path) -> anyhow::Result<()> {
    let m =
        std::fs::metadata(mp).with_context(|| format!("mountpoint {} is missing", mp.display()))?;
    if !m.is_dir() {
        bail!("mountpoint {} is not a directory", mp.display());
    }
    let parent = mp.parent().unwrap_or(Path::new("/"));
    if let Ok(pm) = std::fs::metadata(parent) {
        if pm.dev() != m.dev() && is_mounted(mp) {
            bail!("mountpoint {} is already a mount", mp.display());
        }
    }
    if std::fs::read_dir(mp)
        .with_context(|| format!("reading mountpoint {}", mp.display()))?
        .next()
        .is_some()
    {
        bail!("mountpoint {} is not empty", mp.display());
    }
    Ok(())
}

/// Whether `mp` appears in the mount table.
pub fn is_mounted(mp: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = mp.to_string_lossy();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| p.replace("\\040", " ") == want)
}

/// Mounts and serves until unmounted (by `stratus unmount`, fusermount3 -u, umount or a
/// signal). What is still queued stays in the journal for the next mount.
pub fn run(cfg: MountConfig, ready: &mut Ready) -> anyhow::Result<()> {
    let systemd = Notifier::from_env();
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    cfg.mount
        .check_allowed(
            euid,
            std::fs::read_to_string("/etc/fuse.conf").ok().as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
    make_private_dir(&cfg.state_dir)?;
    tighten_state_dir(&cfg.state_dir)?;
    let _lock = lock_state_dir(&cfg.state_dir)?;
    check_mountpoint(&cfg.mountpoint)?;

    let core = CoreBuilder::open(&cfg.state_dir, &cfg.remote, &cfg.store_options)?;
    let identity = core.identity().to_string();
    if cfg.mount.read_only {
        core.remote().set_read_only();
    }
    core.remote().set_bwlimit(cfg.bwlimit);

    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let sync_cfg = SyncConfig {
        default_uid: uid,
        default_gid: gid,
        poll_interval: cfg.poll_interval,
        policy: cfg.policy,
        writer: writer_label(&cfg.mountpoint),
        user_quiet: crate::sync::USER_QUIET,
    };
    let populated = core.store().read(|db| db.meta_get("populated"))?.is_some();
    let check = core.runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(30), core.remote().check()).await
    });
    let check = match check {
        Ok(r) => r,
        Err(_) => Err(crate::remote::RemoteError::unavailable(
            "no answer within 30 s",
        )),
    };
    match check {
        Ok(()) => core.populate(&sync_cfg)?,
        Err(e) if e.is_transient() && populated => {
            tracing::warn!(error = %e, "remote unreachable; serving from local state");
            core.remote().health().record_error(true, &e.to_string());
        }
        Err(e) if e.is_transient() => {
            bail!(
                "remote {identity} unreachable and no local state to serve from: {}",
                e.brief()
            )
        }
        Err(e) => bail!("remote {identity} refused us: {}", e.brief()),
    }

    // A read-only mount skips the check: it writes a scratch object.
    let reachable = core.remote().health().is_reachable() && !cfg.mount.read_only;
    check_preconditions(
        core.runtime(),
        core.store(),
        core.remote(),
        reachable && cfg.recheck_preconditions,
        reachable,
        ready,
    )?;
    if let Some(Preconditions::Ignored { .. }) = remembered_preconditions(core.store())? {
        core.remote().set_preconditions_ignored(true);
    }

    let vfs_cfg = VfsConfig {
        write_back: cfg.write_back,
        default_uid: uid,
        default_gid: gid,
        fetch_timeout: Duration::from_secs(120),
        cache_budget: cache_budget(core.cache(), cfg.cache_size)?,
        disk_reserve: disk_reserve(core.cache())?,
        quota: cfg.quota,
    };
    let (notices, invalidations) = std::sync::mpsc::channel();
    let core = core.start(vfs_cfg, sync_cfg, Some(notices))?;

    let control = Arc::new(Control::new(core.vfs().clone(), identity.clone()));
    if let Some(addr) = &cfg.metrics {
        let listener = core.runtime().block_on(crate::web::bind_loopback(addr))?;
        tracing::info!(addr = %listener.local_addr()?, "serving metrics");
        crate::web::dashboard::write_private(
            &cfg.state_dir.join("metrics.addr"),
            &listener.local_addr()?.to_string(),
        )?;
        core.runtime()
            .spawn(crate::web::serve_metrics(listener, control.clone()));
    }
    serve_dashboard(&cfg, &core, &control)?;
    let m = &cfg.mount;
    let fs = StratusFs::new(
        control,
        View {
            read_only: m.read_only,
            uid: m.uid,
            gid: m.gid,
            umask: m.umask.unwrap_or(0),
            passthrough: m.passthrough,
        },
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(identity.clone()),
        MountOption::Subtype("stratus".into()),
        MountOption::DefaultPermissions,
        if m.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        },
        if m.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        },
        if m.exec {
            MountOption::Exec
        } else {
            MountOption::NoExec
        },
        if m.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    // Nobody but the mounting user gets in unless the options say so, root included (FUSE's
    // own default, and what every other FUSE filesystem does).
    config.acl = match m.access {
        Access::Owner => fuser::SessionACL::Owner,
        Access::OwnerAndRoot => fuser::SessionACL::RootAndOwner,
        Access::Everyone => fuser::SessionACL::All,
    };
    config.n_threads = Some(cfg.fuse_threads);
    let mut session = match fuser::Session::new(fs, &cfg.mountpoint, &config) {
        Ok(s) => s,
        Err(e) if euid != 0 && e.kind() == std::io::ErrorKind::PermissionDenied => {
            bail!("{}", explain_denied(&e))
        }
        Err(e) => {
            return Err(e).with_context(|| format!("mounting on {}", cfg.mountpoint.display()))
        }
    };
    crate::fuse::forward_invalidations(session.notifier(), invalidations);
    let mut unmounter = session.unmount_callable();
    let stopping = systemd.clone();
    core.runtime().spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal received; unmounting");
        stopping.send("STOPPING=1");
        if let Err(e) = unmounter.unmount() {
            tracing::warn!(error = %e, "unmount failed");
        }
    });
    tracing::info!(mountpoint = %cfg.mountpoint.display(), remote = %identity, "mount is live");
    record(core.store(), EventKind::Mount, &cfg.mountpoint);
    ready.ok();
    systemd.send("READY=1");
    let served = session.run();
    // Unmounted by umount or fusermount3 -u (a signal has said it already: systemd takes
    // the second as the same state).
    systemd.send("STOPPING=1");
    mark_stopping(&cfg.state_dir);
    tracing::info!("unmounted; stopping the uploader");
    record(core.store(), EventKind::Unmount, &cfg.mountpoint);
    let fetched = core.remote().health().downloaded();
    if let Err(e) = core.store().write(|db| {
        db.bump(
            &crate::store::counter(EventKind::Download, true),
            fetched as i64,
        )
    }) {
        tracing::warn!(error = %e, "could not save the download statistics");
    }
    core.shutdown(Duration::from_secs(10));
    served.context("serving the mount")?;
    Ok(())
}

/// One line that says what to do when the kernel refused a user's mount: /dev/fuse is not
/// open to them, or fusermount3 refused.
fn explain_denied(e: &std::io::Error) -> String {
    let dev = std::fs::metadata("/dev/fuse").ok();
    let open = OpenOptions::new().read(true).write(true).open("/dev/fuse");
    match (dev, open) {
        (None, _) => "cannot mount: /dev/fuse is missing (as root: modprobe fuse)".to_string(),
        (Some(_), Err(_)) => "cannot mount: /dev/fuse is not open to this user (as root: chmod 0666 /dev/fuse, or add the user to the group owning it), or mount as root".to_string(),
        (Some(_), Ok(_)) => format!(
            "cannot mount: {} (check that fusermount3 is installed set-uid root, from the fuse3 package)",
            e.to_string().trim()
        ),
    }
}

/// Puts a mount or unmount in the activity log; a failure is logged, never fatal.
fn record(store: &Store, kind: EventKind, mountpoint: &Path) {
    let e = Event::new(kind).path(mountpoint.display().to_string());
    if let Err(err) = store.write(|db| db.record(&e)) {
        tracing::warn!(error = %err, "could not write the activity log");
    }
}

fn remembered_preconditions(store: &Store) -> anyhow::Result<Option<Preconditions>> {
    Ok(store
        .read(|db| db.meta_get(PRECONDITIONS_META))?
        .and_then(|v| Preconditions::decode(&v)))
}

/// Checks once per state dir (the state dir belongs to one bucket and prefix) whether the
/// server enforces the preconditions every upload relies on, and warns on every mount while
/// it does not. A check that cannot finish (the server is down, refuses the scratch write) is
/// logged and tried again at the next mount: it must never keep a mount from serving.
fn check_preconditions(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    remote: &Remote,
    recheck: bool,
    reachable: bool,
    ready: &mut Ready,
) -> anyhow::Result<()> {
    let known = remembered_preconditions(store)?;
    let verdict = match known {
        Some(v) if !recheck => v,
        None if !reachable => return Ok(()),
        _ => {
            let probe = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), remote.probe_preconditions()).await
            });
            match probe {
                Ok(None) => return Ok(()),
                Ok(Some(Ok(v))) => {
                    tracing::info!(answer = %v.encode(), "checked the server's preconditions");
                    store.write(|db| db.meta_set(PRECONDITIONS_META, &v.encode()))?;
                    v
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "could not check the server's preconditions; trying again at the next mount");
                    return Ok(());
                }
                Err(_) => {
                    tracing::warn!("the server's precondition check got no answer within 30 s; trying again at the next mount");
                    return Ok(());
                }
            }
        }
    };
    if let Preconditions::Ignored { what } = &verdict {
        tracing::warn!(found = %what, "{PRECONDITIONS_IGNORED}");
        ready.warn(PRECONDITIONS_IGNORED);
    }
    Ok(())
}

/// `host:mountpoint`, what the `stratus_writer` metadata says about us (at most 200 bytes:
/// S3 allows 2 KiB of metadata in all).
fn writer_label(mountpoint: &std::path::Path) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer outlives the call and its length is passed.
    let host =
        if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0 {
            let n = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            String::from_utf8_lossy(&buf[..n]).into_owned()
        } else {
            "unknown".to_string()
        };
    let mut label = format!("{host}:{}", mountpoint.display());
    if label.len() > 200 {
        let mut cut = 200;
        while !label.is_char_boundary(cut) {
            cut -= 1;
        }
        label.truncate(cut);
    }
    label
}

/// Serves the web dashboard when `--dashboard` asked for it: a fresh token for this mount,
/// and the token and URL in the state dir, owner-only. Without the flag no port opens, and
/// files of an earlier mount are removed so that nothing points at a dead page.
fn serve_dashboard(cfg: &MountConfig, core: &Core, control: &Arc<Control>) -> anyhow::Result<()> {
    use crate::web::dashboard;
    let (token_file, url_file) = (
        cfg.state_dir.join("dashboard.token"),
        cfg.state_dir.join("dashboard.url"),
    );
    let _ = std::fs::remove_file(&url_file);
    let _ = std::fs::remove_file(&token_file);
    let Some(addr) = &cfg.dashboard else {
        return Ok(());
    };
    let listener = core
        .runtime()
        .block_on(dashboard::bind(addr, cfg.dashboard_allow_remote))?;
    let local = listener.local_addr()?;
    let token = dashboard::new_token()?;
    let url = dashboard::url(local, &token);
    dashboard::write_private(&token_file, &token)?;
    dashboard::write_private(&url_file, &url)?;
    control.set_dashboard_url(url);
    tracing::info!(addr = %local, "serving the dashboard");
    core.runtime()
        .spawn(dashboard::serve(listener, control.clone(), token));
    Ok(())
}
