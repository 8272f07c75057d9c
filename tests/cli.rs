//! The command line as a user meets it: mount errors, status, sync --wait, unmount paths and
//! the per-file state attribute.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::mount::{alive, eventually, Backend, Env, BIN};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn mount_refuses_bad_arguments_with_one_line() {
    let env = Env::new(Backend::Local);
    let mp = env.new_mountpoint();
    let state = env.new_state_dir();
    let run = |remote: &str, mp: &Path| {
        env.stratus(&[
            "mount",
            remote,
            mp.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
    };

    let o = run("ftp://host/x", &mp);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("bad remote"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1);

    let o = run(env.root.to_str().unwrap(), &env.tmp.path().join("nope"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));

    fs::write(mp.join("occupied"), b"x").unwrap();
    let o = run(env.root.to_str().unwrap(), &mp);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not empty"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1);
}

#[test]
fn state_dir_held_by_a_live_mount_is_refused() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    let err = env
        .try_mount(&state, &[])
        .err()
        .expect("second mount must fail");
    assert!(err.contains("held by another live mount"), "{err}");
    drop(m);
    // Once the first mount is gone, the same state dir mounts again.
    let _again = env.mount_state(&state);
}

#[test]
fn unreachable_remote_without_local_state_is_refused() {
    unreachable_remote_without_local_state_is_refused_on(Backend::S3);
}

#[test]
fn gcs_unreachable_remote_without_local_state_is_refused() {
    unreachable_remote_without_local_state_is_refused_on(Backend::Gcs);
}

/// A bucket that does not exist is named as such, in one short line, not retried as an
/// outage (S3 servers answer with a page of XML, which must not reach the user).
fn missing_bucket_is_a_clear_error(backend: Backend) {
    let mut env = Env::new(backend);
    env.bucket = "no-such-bucket".into();
    let err = env
        .try_mount(&env.new_state_dir(), &[])
        .err()
        .expect("must fail");
    assert!(err.contains("bucket or container not found"), "{err}");
    assert!(err.contains("no-such-bucket"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.len() < 300, "{} characters: {err}", err.len());
}

#[test]
fn gcs_missing_bucket_is_a_clear_error() {
    missing_bucket_is_a_clear_error(Backend::Gcs);
}

#[test]
fn s3_missing_bucket_is_a_clear_error() {
    missing_bucket_is_a_clear_error(Backend::S3);
}

#[test]
fn azure_missing_container_is_a_clear_error() {
    missing_bucket_is_a_clear_error(Backend::Azure);
}

/// An endpoint whose host name does not resolve is one readable line.
#[test]
fn unknown_endpoint_is_a_clear_error() {
    let env = Env::new(Backend::S3);
    env.set_endpoint("http://no-such-host.invalid:9000");
    let err = env
        .try_mount(&env.new_state_dir(), &[])
        .err()
        .expect("must fail");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.len() < 300, "{} characters: {err}", err.len());
    assert!(err.contains("no-such-host.invalid"), "{err}");
}

fn unreachable_remote_without_local_state_is_refused_on(backend: Backend) {
    let env = Env::new(backend);
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    env.set_endpoint(&format!("http://127.0.0.1:{port}"));
    let err = env
        .try_mount(&env.new_state_dir(), &[])
        .err()
        .expect("must fail");
    assert!(err.contains("unreachable"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn fusermount_unmount_leaves_the_queue_for_next_time() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env.try_mount(&state, &["--write-back", "3600"]).unwrap();
    fs::write(m.path("q.txt"), b"still queued").unwrap();
    let pid = m.daemon_pid();
    // The kernel may hold the mount for a moment after the last close (EBUSY): retry, as a
    // user would.
    assert!(
        eventually(5, || Command::new("fusermount3")
            .arg("-u")
            .arg(&m.dir)
            .status()
            .unwrap()
            .success()),
        "fusermount3 -u kept failing"
    );
    assert!(
        eventually(20, || !alive(pid)),
        "daemon did not exit after fusermount3 -u"
    );
    assert!(!env.root.join("q.txt").exists());
    // A long write-back again, so the uploader cannot pick the entry up before we look.
    let m2 = env.try_mount(&state, &["--write-back", "3600"]).unwrap();
    assert_eq!(m2.state_of("q.txt"), "pending");
    m2.sync();
    assert_eq!(fs::read(env.root.join("q.txt")).unwrap(), b"still queued");
}

#[test]
fn state_attribute_and_status_follow_the_queue() {
    let env = Env::new(Backend::Local);
    let m = env.mount();
    let mut f = fs::File::create(m.path("open.txt")).unwrap();
    use std::io::Write;
    f.write_all(b"being written").unwrap();
    // Still open for writing: held, so sync --wait times out and names it.
    let o = m.stratus(&["sync", m.dir.to_str().unwrap(), "--wait", "--timeout", "1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("open.txt"), "{}", stderr(&o));
    assert_eq!(m.state_of("open.txt"), "pending");
    assert_eq!(
        m.status_json()["queue"]["waiting_for_writer"],
        1,
        "{}",
        m.status()
    );
    drop(f);
    m.sync();
    assert_eq!(m.state_of("open.txt"), "synced");
    let s = m.status_json();
    assert_eq!(s["health"]["state"], "online", "{s}");
    assert_eq!(s["queue"]["entries"], 0, "{s}");
}

#[test]
fn a_permanent_failure_parks_one_entry_and_the_rest_flows() {
    let env = Env::new(Backend::Local);
    // No polling: a listing that saw their directory before our write would turn the
    // write into EISDIR, which is right but not what this test is about.
    let m = env
        .try_mount(
            &env.new_state_dir(),
            &["--write-back", "0.2", "--poll-interval", "0"],
        )
        .unwrap();
    // Another tool puts a directory where our file is about to go: the remote refuses
    // that write for good, which must not block anything else.
    env.put_remote("clash/inside", b"theirs");
    fs::write(m.path("clash"), b"ours").unwrap();
    assert!(
        eventually(20, || m.state_of("clash") == "error"),
        "state: {}",
        m.state_of("clash")
    );
    fs::write(m.path("fine.txt"), b"fine").unwrap();
    assert!(eventually(20, || env.root.join("fine.txt").exists()));
    let s = m.status_json();
    assert_eq!(s["queue"]["parked"], 1, "{s}");
    assert!(
        s["health"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("is a directory")),
        "{s}"
    );
    // The queue names the parked entry, why, and how often it was tried; the activity log
    // has the failure.
    let q = m.stratus(&["queue", "--json", m.dir.to_str().unwrap()]);
    let q: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
    let clash = q
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["path"] == "clash")
        .unwrap_or_else(|| panic!("clash not queued: {q}"));
    assert_eq!(clash["state"], "parked", "{q}");
    assert_eq!(clash["op"], "upload", "{q}");
    let tries = clash["tries"].as_i64().unwrap();
    assert!(tries >= 1, "{q}");
    assert!(
        clash["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("is a directory")),
        "{q}"
    );
    let log = m.stratus(&["log", "--json", m.dir.to_str().unwrap()]);
    let log: serde_json::Value = serde_json::from_slice(&log.stdout).unwrap();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "error" && e["path"] == "clash"),
        "{log}"
    );
    // A retry asked by path runs it again now (and it fails again: the clash is still there).
    let o = m.stratus(&[
        "queue",
        m.dir.to_str().unwrap(),
        "--retry",
        m.path("clash").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        eventually(20, || {
            let q = m.stratus(&["queue", "--json", m.dir.to_str().unwrap()]);
            let q: serde_json::Value = serde_json::from_slice(&q.stdout).unwrap();
            q.as_array().unwrap().iter().any(|r| {
                r["path"] == "clash" && r["state"] == "parked" && r["tries"].as_i64() > Some(tries)
            })
        }),
        "the retry did not run"
    );
    // A retry of something that is not parked is refused with the mount's reason.
    let o = m.stratus(&[
        "queue",
        m.dir.to_str().unwrap(),
        "--retry",
        m.path("fine.txt").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("nothing parked there"),
        "{}",
        stderr(&o)
    );
    let o = m.stratus(&["sync", m.dir.to_str().unwrap(), "--wait", "--timeout", "20"]);
    assert!(
        !o.status.success(),
        "sync --wait must report the parked entry"
    );
    assert!(stderr(&o).contains("clash"), "{}", stderr(&o));
    // Nothing was lost: our version is still readable, theirs is untouched.
    assert_eq!(fs::read(m.path("clash")).unwrap(), b"ours");
    assert_eq!(fs::read(env.root.join("clash/inside")).unwrap(), b"theirs");
}

#[test]
fn unmount_command_waits_for_the_daemon() {
    let env = Env::new(Backend::Local);
    let m = env.mount();
    let pid = m.daemon_pid();
    let o = Command::new(BIN)
        .args(["unmount", m.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !alive(pid),
        "stratus unmount returned before the daemon exited"
    );
    assert!(fs::read_dir(&m.dir).unwrap().next().is_none());
}

#[test]
fn unknown_object_store_option_is_a_clear_error() {
    let env = Env::new(Backend::S3);
    let err = env
        .try_mount(&env.new_state_dir(), &["-o", "aws_no_such_option=1"])
        .err()
        .expect("must fail");
    assert!(err.contains("aws_no_such_option"), "{err}");
    // A real option is passed through to object_store.
    let m = env
        .try_mount(&env.new_state_dir(), &["-o", "aws_unsigned_payload=true"])
        .unwrap();
    fs::write(m.path("x"), b"x").unwrap();
    m.sync();
    assert_eq!(env.remote_files()["x"], b"x");
}

#[test]
fn default_state_dir_resumes_the_same_pair() {
    let env = Env::new(Backend::Local);
    let xdg = env.tmp.path().join("xdg");
    let mp = env.new_mountpoint();
    let mount = || {
        let o = Command::new(BIN)
            .env("XDG_STATE_HOME", &xdg)
            .args([
                "mount",
                env.root.to_str().unwrap(),
                mp.to_str().unwrap(),
                "--write-back",
                "3600",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    };
    mount();
    fs::write(mp.join("q"), b"queued").unwrap();
    // umount(8) leaves the same clean state as stratus unmount. The kernel may hold the
    // mount for a moment after the last close (EBUSY): retry, as a user would.
    assert!(
        eventually(5, || Command::new("umount")
            .arg(&mp)
            .status()
            .unwrap()
            .success()),
        "umount kept failing"
    );
    let dirs: Vec<_> = fs::read_dir(xdg.join("stratus")).unwrap().collect();
    assert_eq!(dirs.len(), 1, "one state dir per remote and mountpoint");
    let state = dirs.into_iter().next().unwrap().unwrap().path();
    let lock = state.join("lock");
    let pid: u32 = fs::read_to_string(&lock).unwrap().trim().parse().unwrap();
    assert!(
        eventually(20, || !alive(pid)),
        "daemon still running after umount"
    );
    mount();
    assert_eq!(fs::read(mp.join("q")).unwrap(), b"queued");
    let o = Command::new(BIN)
        .args(["sync", mp.to_str().unwrap(), "--wait", "--timeout", "30"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(env.root.join("q")).unwrap(), b"queued");
    let o = Command::new(BIN)
        .args(["unmount", mp.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Each FUSE request logs inside a span naming the op, the request id, the inode and the
/// handle, so a user reading a debug log can tell which lines belong to which request.
#[test]
fn debug_log_lines_carry_the_request_span() {
    let env = Env::new(Backend::Local);
    fs::write(env.root.join("big"), vec![7u8; 3 << 20]).unwrap();
    let m = env.mount();
    assert!(fs::metadata(m.path("no-such-file")).is_err());
    let failed = m.log_lines_with("op failed");
    assert!(
        failed
            .lines()
            .any(|l| l.contains("lookup{req=") && l.contains(" ino=1}")),
        "no lookup span on the failed lookup's line:\n{failed}"
    );
    // The first read of a file never fetched here fetches its blocks inside the read's span,
    // which names the handle.
    assert_eq!(fs::read(m.path("big")).unwrap().len(), 3 << 20);
    let fetches = m.log_lines_with("fetching blocks");
    assert!(
        fetches
            .lines()
            .any(|l| l.contains("read{req=") && l.contains(" fh=")),
        "no read span with a handle on the fetch lines:\n{fetches}"
    );
}
