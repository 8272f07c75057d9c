//! SIGKILL at one exact point: the moment the daemon starts writing an operation's SQLite
//! transaction to the WAL, so that everything the operation did before its commit happened and
//! the commit did not. `strace` injects the signal on the daemon's first write to
//! `STATE/state.db-wal` (`-P`), so the checkpointer thread, which writes only the database
//! file, can run in the window without taking the kill; with polling off and the upload
//! queue drained, the operation's commit is the only WAL write in that window.
//!
//! Each operation runs in this process and must fail with `ECONNABORTED`: the kernel answers
//! a request that was in flight when the daemon died with that, and one that arrives after
//! with `ENOTCONN`. So a kill that landed before the operation (or never) fails the test
//! instead of passing it vacuously.
//!
//! scripts/crash.sh finds these windows by chance (random kill moments, thousands of writes);
//! here each one is hit every time.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::mount::{alive, Backend, Env, Mount};

/// A mount with nothing running by itself: no polls, so that the only writer of the WAL
/// once `sync` has drained the queue is the operation under test.
fn quiet_mount(env: &Env, state: &std::path::Path) -> Mount {
    env.try_mount(state, &["--write-back", "0.2", "--poll-interval", "0"])
        .unwrap_or_else(|e| panic!("mount failed: {e}"))
}

/// Attaches strace to the daemon so that it dies on entering its next write to the WAL.
fn kill_at_next_wal_write(m: &Mount) -> Child {
    let pid = m.daemon_pid().to_string();
    let wal = fs::canonicalize(m.state.join("state.db-wal")).expect("the WAL exists");
    let writes = "pwrite64,pwritev,pwritev2,write,writev";
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-p", &pid, "-o", "/dev/null", "-P"])
        .arg(&wal)
        .args(["-e", &format!("trace={writes}")])
        .args(["-e", &format!("inject={writes}:signal=KILL")])
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace (apt install strace; scripts/setup.sh does)");
    // Attached once every thread of the daemon names a tracer.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let traced = || {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.filter_map(Result::ok).all(|t| {
                    fs::read_to_string(t.path().join("status"))
                        .map(|s| {
                            s.lines()
                                .any(|l| l.starts_with("TracerPid:") && !l.ends_with("\t0"))
                        })
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
    };
    assert!(
        common::mount::eventually(10, traced),
        "strace did not attach: {:?}",
        rx.try_iter().collect::<Vec<_>>()
    );
    child
}

/// Runs the operation to interrupt on a thread of this process and checks that the daemon
/// died under it: `ECONNABORTED`. `Ok` means the daemon never wrote the WAL for it; `ENOTCONN`
/// means the daemon was dead before the request reached it.
fn interrupted(what: &str, op: impl FnOnce() -> std::io::Result<()> + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(op());
    });
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} never returned"));
    match r {
        Ok(()) => panic!("{what} succeeded: the daemon was not killed at its commit"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::ECONNABORTED),
            "{what} failed with {e}: the daemon was not killed while it ran"
        ),
    }
}

/// Waits until the daemon died, detaches the dead mount, and reaps strace.
fn after_kill(m: Mount, mut strace: Child) {
    let pid = m.daemon_pid();
    assert!(
        common::mount::eventually(10, || !alive(pid)),
        "the daemon survived its commit"
    );
    m.kill9();
    let _ = strace.wait();
}

fn path_cstring(p: &std::path::Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

#[test]
fn chmod_interrupted_before_its_commit_changes_nothing() {
    // The control: a metadata change dies with its transaction, and nothing else moves.
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = quiet_mount(&env, &state);
    fs::write(m.path("f"), b"acknowledged").unwrap();
    m.sync();
    let strace = kill_at_next_wal_write(&m);
    let f = m.path("f");
    interrupted("chmod", move || {
        fs::set_permissions(f, fs::Permissions::from_mode(0o600))
    });
    after_kill(m, strace);

    let m2 = quiet_mount(&env, &state);
    assert_eq!(fs::read(m2.path("f")).unwrap(), b"acknowledged");
    let mode = fs::metadata(m2.path("f")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the chmod never committed");
    m2.sync();
    assert_eq!(env.remote_files()["f"], b"acknowledged");
}

/// `setattr(size)` commits the new size (and the upload job) first and cuts the cached data
/// file after. It used to be the other way round: a SIGKILL in between left a file whose stat
/// size was the old one while reads returned the truncated data, marked synced, with the old
/// content on the remote for good. Found by scripts/crash.sh (an `open(O_TRUNC)` in flight at
/// the kill).
#[test]
fn truncate_interrupted_before_its_commit_changes_nothing() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = quiet_mount(&env, &state);
    fs::write(m.path("f"), b"acknowledged").unwrap();
    m.sync();
    let strace = kill_at_next_wal_write(&m);
    let f = path_cstring(&m.path("f"));
    interrupted("truncate", move || {
        // SAFETY: NUL-terminated path.
        match unsafe { libc::truncate(f.as_ptr(), 0) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    });
    after_kill(m, strace);

    let m2 = quiet_mount(&env, &state);
    let stat_len = fs::metadata(m2.path("f")).unwrap().len();
    let data = fs::read(m2.path("f")).unwrap();
    assert_eq!(
        (stat_len, String::from_utf8_lossy(&data).as_ref()),
        (12, "acknowledged"),
        "the truncate never committed: stat size and content must be the acknowledged ones"
    );
    m2.sync();
    assert_eq!(env.remote_files()["f"], b"acknowledged");
}

/// A rename over an existing file deletes the replaced file's cached data once the
/// transaction has committed. It used to do so inside the transaction, before the commit: a
/// SIGKILL in between rolled the rename back but not the delete. The old file was still
/// there, its last acknowledged content gone (open: EIO), and its upload parked for good
/// ("the cached data of this file is missing from the state dir"), so `sync --wait` never
/// succeeded again. Found by scripts/crash.sh (an editor-style save, temp file + rename, in
/// flight at the kill).
#[test]
fn rename_over_interrupted_before_its_commit_changes_nothing() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = quiet_mount(&env, &state);
    fs::write(m.path("doc"), b"acknowledged version").unwrap();
    fs::write(m.path(".doc.tmp"), b"the new version").unwrap();
    m.sync();
    let strace = kill_at_next_wal_write(&m);
    let (from, to): (PathBuf, PathBuf) = (m.path(".doc.tmp"), m.path("doc"));
    interrupted("rename", move || fs::rename(from, to));
    after_kill(m, strace);

    let m2 = quiet_mount(&env, &state);
    let doc = fs::read(m2.path("doc")).expect("doc unreadable after the crash");
    assert_eq!(
        String::from_utf8_lossy(&doc),
        "acknowledged version",
        "the rename never committed"
    );
    assert_eq!(
        fs::read(m2.path(".doc.tmp")).expect("the temp file is gone"),
        b"the new version"
    );
    m2.sync();
    let remote = env.remote_files();
    assert_eq!(remote["doc"], b"acknowledged version");
    assert_eq!(remote[".doc.tmp"], b"the new version");
}

/// The same window in unlink: the data file goes after the commit, never before.
#[test]
fn unlink_interrupted_before_its_commit_changes_nothing() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = quiet_mount(&env, &state);
    fs::write(m.path("f"), b"acknowledged").unwrap();
    m.sync();
    let strace = kill_at_next_wal_write(&m);
    let f = m.path("f");
    interrupted("unlink", move || fs::remove_file(f));
    after_kill(m, strace);

    let m2 = quiet_mount(&env, &state);
    assert_eq!(
        fs::read(m2.path("f")).expect("f unreadable after the crash"),
        b"acknowledged",
        "the unlink never committed"
    );
    m2.sync();
    assert_eq!(env.remote_files()["f"], b"acknowledged");
}
