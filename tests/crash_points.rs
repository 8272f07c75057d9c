//! SIGKILL at one exact point: the moment the daemon starts writing an operation's SQLite
//! transaction to the WAL, so that everything the operation did before its commit happened and
//! the commit did not. `strace` injects the signal (`inject=pwrite64:signal=KILL`); the daemon
//! is idle otherwise, so its next WAL write is the operation's commit.
//!
//! scripts/crash.sh finds these windows by chance (random kill moments, thousands of writes);
//! here each one is hit every time.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::mount::{alive, Backend, Env, Mount};

/// Attaches strace to the daemon so that it dies on entering its next `pwrite64` (the next
/// WAL write: data files are only written by `write()` calls, which the tests here avoid).
fn kill_at_next_commit(m: &Mount) -> Child {
    let pid = m.daemon_pid().to_string();
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-p", &pid, "-o", "/dev/null"])
        .args(["-e", "trace=pwrite64", "-e", "inject=pwrite64:signal=KILL"])
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

/// Runs the operation to interrupt in a child process, which fails once the daemon is gone.
fn run(c: &mut Command) {
    let mut child = c.spawn().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the interrupted operation never returned")
        .unwrap();
}

#[test]
fn chmod_interrupted_before_its_commit_changes_nothing() {
    // The control: a metadata change dies with its transaction, and nothing else moves.
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("f"), b"acknowledged").unwrap();
    m.sync();
    let strace = kill_at_next_commit(&m);
    run(Command::new("chmod").arg("600").arg(m.path("f")));
    after_kill(m, strace);

    let m2 = env.mount_state(&state);
    assert_eq!(fs::read(m2.path("f")).unwrap(), b"acknowledged");
    let mode = fs::metadata(m2.path("f")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the chmod never committed");
    m2.sync();
    assert_eq!(env.remote_files()["f"], b"acknowledged");
}

/// `setattr(size)` truncates the cached data file first and commits the new size (and the
/// upload job) after; a SIGKILL in between leaves a file whose stat size is the old one while
/// reads return the truncated data, marked synced, with the old content on the remote for
/// good. Found by scripts/crash.sh (an `open(O_TRUNC)` in flight at the kill).
#[test]
fn truncate_interrupted_before_its_commit() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("f"), b"acknowledged").unwrap();
    m.sync();
    let strace = kill_at_next_commit(&m);
    run(Command::new("truncate").arg("--size=0").arg(m.path("f")));
    after_kill(m, strace);

    let m2 = env.mount_state(&state);
    let stat_len = fs::metadata(m2.path("f")).unwrap().len() as usize;
    let data = fs::read(m2.path("f")).unwrap();
    assert_eq!(
        stat_len,
        data.len(),
        "stat says {stat_len} bytes, a read returns {}",
        data.len()
    );
    m2.sync();
    assert_eq!(
        env.remote_files()["f"],
        data,
        "after the queue drained, the remote differs from the mount"
    );
}

/// A rename over an existing file deletes the replaced file's cached data inside the
/// transaction, before the commit: a SIGKILL in between rolls the rename back but not the
/// delete. The old file is still there, its last acknowledged content is gone (open: EIO),
/// and its upload is parked for good ("the cached data of this file is missing from the state
/// dir"), so `sync --wait` never succeeds again. Found by scripts/crash.sh (an editor-style
/// save, temp file + rename, in flight at the kill).
#[test]
fn rename_over_interrupted_before_its_commit() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("doc"), b"acknowledged version").unwrap();
    fs::write(m.path(".doc.tmp"), b"the new version").unwrap();
    m.sync();
    let strace = kill_at_next_commit(&m);
    run(Command::new("mv")
        .arg(m.path(".doc.tmp"))
        .arg(m.path("doc")));
    after_kill(m, strace);

    let m2 = env.mount_state(&state);
    let doc = fs::read(m2.path("doc")).expect("doc unreadable after the crash");
    let tmp_left = m2.path(".doc.tmp").exists();
    // Either the rename happened (new content, no temp file) or it did not (old content, the
    // temp file still there): nothing else.
    assert!(
        (doc == b"the new version" && !tmp_left) || (doc == b"acknowledged version" && tmp_left),
        "doc holds {:?}, temp file left: {tmp_left}",
        String::from_utf8_lossy(&doc)
    );
    m2.sync();
    assert_eq!(env.remote_files()["doc"], doc);
}

/// The same window in unlink: the data file goes before the commit.
#[test]
fn unlink_interrupted_before_its_commit() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("f"), b"acknowledged").unwrap();
    m.sync();
    let strace = kill_at_next_commit(&m);
    run(Command::new("rm").arg(m.path("f")));
    after_kill(m, strace);

    let m2 = env.mount_state(&state);
    match fs::read(m2.path("f")) {
        Ok(data) => assert_eq!(data, b"acknowledged", "the unlink never committed"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::NotFound,
            "f is neither there nor gone: {e}"
        ),
    }
    m2.sync();
}
