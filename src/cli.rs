//! The `stratus` command line. It reaches a running mount only through the control
//! attributes (see `control`), never through private channels. Every command that takes a
//! path finds the mount from it (`cli::mounts`) and refuses, writing nothing, a path outside
//! every stratus mount; `--json` makes every command print JSON (`docs/json.md`), errors too.

mod clean;
mod dashboard;
mod mount;
mod mount_helper;
mod mounts;
mod report;
mod show;
mod sync;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::json;

use crate::control;
use crate::daemon::{self, MountConfig, Ready};
use crate::remote::RemoteUrl;
use crate::sync::ConflictPolicy;
use clean::clean;
use mount::{default_state_dir, init_logging, spawn_daemon, state_base, unmount};
use mounts::absolute;
use report::{conflicts, log, pin, queue, resolve, status};
use sync::sync;

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
    /// Print nothing on success (errors still go to stderr), as a mount(8) helper does:
    /// `mount.fuse.stratus` passes it.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

// One value per process, parsed once: the size of the mount variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Mount options, comma-separated as mount(8) passes them: allow_other, allow_root,
        /// ro, rw, uid=N, gid=N, umask=OCTAL, dev, nodev, suid, nosuid, exec, noexec,
        /// default_permissions, state_dir=PATH; _netdev, nofail, noauto, defaults, x-* and
        /// comment=* are ignored. See docs/semantics.md.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// object_store setting for the remote, KEY=VALUE (repeatable), such as
        /// aws_virtual_hosted_style_request=true.
        #[arg(long = "store-opt", value_name = "KEY=VALUE")]
        store_opts: Vec<String>,
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
        /// The space the mount may use (500G, 2T, ...): status shows used / quota, and `df`
        /// on the mount answers from it instead of from the local disk.
        #[arg(long, value_name = "SIZE")]
        quota: Option<String>,
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
        /// Bandwidth limit as rclone writes it: 4M (4 MiB/s each way), 4M:20M
        /// (upload:download), off; units B, K, M, G (binary; a bare number is KiB/s).
        /// Change it on the live mount with `stratus bwlimit`.
        #[arg(long, value_name = "RATE", default_value = "off")]
        bwlimit: String,
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
    /// Set the bandwidth limit of a live mount: 4M, 4M:20M (upload:download) or off.
    Bwlimit {
        path: PathBuf,
        /// 4M, 4M:20M (upload:download), off; units B, K, M, G (binary)
        rate: String,
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
    quiet: bool,
}

impl Out {
    /// Prints `value` as JSON, or `text` for people.
    fn print(&self, value: serde_json::Value, text: impl FnOnce() -> String) {
        if self.json {
            println!("{value}");
        } else if !self.quiet {
            let t = text();
            if !t.is_empty() {
                println!("{}", t.trim_end_matches('\n'));
            }
        }
    }
}

pub fn main() -> ExitCode {
    let cli = match mount_helper::args() {
        Some(args) => Cli::parse_from(args),
        None => Cli::parse(),
    };
    if !matches!(cli.cmd, Cmd::Mount { .. }) {
        // A command whose output goes to a closed pipe (`stratus status | head -1`) ends
        // quietly, as other Unix tools do, instead of panicking in `println!`. The daemon
        // keeps ignoring SIGPIPE: its sockets report a closed peer as an error.
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let out = Out {
        json: cli.json,
        quiet: cli.quiet,
    };
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

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let out = Out {
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.cmd {
        Cmd::Mount {
            remote,
            mountpoint,
            state_dir,
            foreground,
            write_back,
            options,
            store_opts,
            log_file,
            poll_interval,
            conflict,
            cache_size,
            recheck_preconditions,
            metrics,
            quota,
            dashboard,
            dashboard_allow_remote,
            bwlimit,
        } => {
            let bwlimit = crate::remote::Limits::parse(&bwlimit)
                .map_err(|e| anyhow::anyhow!("--bwlimit: {e}"))?;
            let url = RemoteUrl::parse(&remote).map_err(|e| anyhow::anyhow!("bad remote: {e}"))?;
            let mp = absolute(&mountpoint)?;
            let parsed = daemon::parse_mount_options(&options, |k| {
                crate::remote::Remote::is_store_option(&url, k)
            })
            .map_err(anyhow::Error::msg)?;
            let mut opts = Vec::new();
            for o in &store_opts {
                let (k, v) = o
                    .split_once('=')
                    .with_context(|| format!("--store-opt {o}: expected KEY=VALUE"))?;
                opts.push((k.to_string(), v.to_string()));
            }
            for (k, v) in parsed.store {
                eprintln!("stratus: warning: -o {k}=... is deprecated for object_store settings; use --store-opt {k}=...");
                opts.push((k, v));
            }
            let state_dir = match state_dir.or(parsed.mount.state_dir.clone()) {
                Some(d) => absolute(&d)?,
                None => default_state_dir(&url, &mp)?,
            };
            if !(0.0..=86_400.0).contains(&write_back) {
                bail!("--write-back must be between 0 and 86400 seconds");
            }
            if !(0.0..=86_400.0).contains(&poll_interval) {
                bail!("--poll-interval must be between 0 and 86400 seconds");
            }
            let cache_bytes = parse_size(&cache_size).with_context(|| {
                format!("--cache-size {cache_size}: expected a size like 500M or 10G")
            })?;
            let quota =
                match quota {
                    Some(q) => Some(parse_size(&q).filter(|v| *v > 0).with_context(|| {
                        format!("--quota {q}: expected a size like 500G or 2T")
                    })?),
                    None => None,
                };
            let policy = ConflictPolicy::parse(&conflict).with_context(|| {
                format!("--conflict {conflict}: expected manual, newest, local or remote")
            })?;
            let cfg = MountConfig {
                remote: url,
                mountpoint: mp,
                state_dir,
                write_back: Duration::from_secs_f64(write_back),
                store_options: opts,
                mount: parsed.mount,
                fuse_threads: 4,
                poll_interval: (poll_interval > 0.0)
                    .then(|| Duration::from_secs_f64(poll_interval)),
                policy,
                cache_size: cache_bytes,
                recheck_preconditions,
                metrics,
                quota,
                dashboard,
                dashboard_allow_remote,
                bwlimit,
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
                spawn_daemon(&remote, &cfg, cli.verbose, out)
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
        Cmd::Bwlimit { path, rate } => {
            let limits =
                crate::remote::Limits::parse(&rate).map_err(|e| anyhow::anyhow!("bwlimit: {e}"))?;
            let t = mounts::target(&path)?;
            set(&t.root, control::BWLIMIT, limits.to_string().as_bytes())?;
            out.print(
                json!({"mount": t.root, "bwlimit": control::BwLimitReport::of(limits)}),
                || {
                    format!(
                        "{}: bandwidth limit {}",
                        t.root.display(),
                        show::bwlimit(limits)
                    )
                },
            );
            Ok(ExitCode::SUCCESS)
        }
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
        // The kernel refuses every attribute write on a read-only mount before it reaches us.
        Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
            bail!("{}: the mount is read-only (-o ro)", path.display())
        }
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
