//! A failed operation leaves no trace, a state dir always mounts again, and the remote ends up
//! as the mount says whatever order the queue ran in: on real mounts.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use common::mount::{data, eventually, Backend, Env, Mount, ObjKind};

const TIB: u64 = 1 << 40;

/// A figure of `stratus status --json` by its path (`queue.entries`, ...), as text.
fn status_line(m: &Mount, path: &str) -> Option<String> {
    let s = m.status_json();
    let v = path.split('.').fold(&s, |v, k| &v[k]);
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(t) => Some(t.clone()),
        other => Some(other.to_string()),
    }
}

// Regression: `truncate -s 20T FILE` answered EFBIG, but 20 TiB had been committed first: the
// file showed that size, the cache counted 20 TiB as dirty (the next small write waited
// minutes for an upload that could not shrink it), and after an unmount the state dir refused
// to mount ("File too large").
every_backend!(a_truncate_the_disk_refuses_changes_nothing, |env: &Env| {
    let m = env.mount();
    fs::write(m.path("f"), b"hello").unwrap();
    m.sync();
    assert_eq!(m.state_of("f"), "synced");
    for size in [20 * TIB, i64::MAX as u64] {
        let err = fs::OpenOptions::new()
            .write(true)
            .open(m.path("f"))
            .unwrap()
            .set_len(size)
            .expect_err("a size past the state dir's largest file must fail");
        assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
        assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 5);
        assert_eq!(fs::read(m.path("f")).unwrap(), b"hello");
        assert_eq!(
            m.state_of("f"),
            "synced",
            "a failed truncate queued an upload"
        );
        assert_eq!(status_line(&m, "queue.entries").as_deref(), Some("0"));
    }

    // The same while a writer has the file open: its size stays what it wrote.
    let mut w = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("f"))
        .unwrap();
    w.write_all(b"abc").unwrap();
    let err = w.set_len(20 * TIB).expect_err("EFBIG");
    assert_eq!(err.raw_os_error(), Some(libc::EFBIG), "{err}");
    assert_eq!(w.metadata().unwrap().len(), 3);
    w.write_all(b"de").unwrap();
    drop(w);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"abcde");
    let cache_dirty: u64 = status_line(&m, "storage.dirty").unwrap().parse().unwrap();
    assert!(
        cache_dirty < 1 << 20,
        "{cache_dirty} bytes counted as dirty"
    );
    m.sync();
    assert!(
        m.status_json()["queue"]["entries"].is_u64(),
        "status must answer"
    );
    assert_eq!(
        env.remote_files().get("f").map(Vec::as_slice),
        Some(&b"abcde"[..])
    );

    // And the state dir mounts again with everything in it.
    let state = m.state.clone();
    m.unmount();
    let m = env.mount_state(&state);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"abcde");
});

/// A state dir whose database records a size no data file can take (as a build before the
/// fix above left it) still mounts: the row is set aside with a warning and the last error
/// in `stratus status`, the file keeps the bytes its data file holds, and what was queued in
/// the state dir still reaches the remote.
#[test]
fn a_state_dir_with_an_impossible_size_still_mounts() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env
        .try_mount(&state, &["--write-back", "3600"])
        .unwrap_or_else(|e| panic!("{e}"));
    fs::write(m.path("f"), b"keep me").unwrap();
    fs::write(m.path("g"), data(1, 100_000)).unwrap();
    let ino = fs::metadata(m.path("f")).unwrap().ino();
    m.unmount();
    assert!(env.remote_files().is_empty(), "still queued, not uploaded");
    {
        let db = rusqlite::Connection::open(state.join("state.db")).unwrap();
        let n = db
            .execute(
                "UPDATE entries SET size = ?1 WHERE id = ?2",
                rusqlite::params![(20 * TIB) as i64, ino as i64],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    let m = env
        .try_mount(&state, &["--write-back", "0.2"])
        .unwrap_or_else(|e| panic!("the state dir must mount: {e}"));
    assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 7);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"keep me");
    assert_eq!(fs::read(m.path("g")).unwrap(), data(1, 100_000));
    let last = status_line(&m, "health.last_error").expect("the set-aside row is reported");
    assert!(
        last.contains("f:") && last.contains("recorded size"),
        "{last}"
    );
    assert!(m.log_tail().contains("recorded size cannot be applied"));
    m.sync();
    let files = env.remote_files();
    assert_eq!(files.get("f").map(Vec::as_slice), Some(&b"keep me"[..]));
    assert_eq!(files.get("g"), Some(&data(1, 100_000)));
}

fn fallocate(f: &fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate(2) on a descriptor the test owns.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset as i64, len as i64) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// Regression: `fallocate -l 200G` succeeded with 54 GB free: the data file was only made
// longer (sparse), so a write into the "reserved" range could still fail for lack of room.
every_backend!(fallocate_reserves_what_it_acknowledges, |env: &Env| {
    let m = env.mount();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("f"))
        .unwrap();
    (&f).write_all(b"head").unwrap();

    // SAFETY: statvfs on a path we own, into a zeroed struct.
    let free = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        let p = std::ffi::CString::new(m.state.to_str().unwrap()).unwrap();
        assert_eq!(libc::statvfs(p.as_ptr(), &mut s), 0);
        s.f_bavail * s.f_frsize
    };
    let err = fallocate(&f, 0, free + (1 << 30)).expect_err("more than the disk holds");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(
        f.metadata().unwrap().len(),
        4,
        "a refused fallocate changed the size"
    );
    // A refused reservation leaves no debt behind: the next small write goes through.
    (&f).write_all(b"!").unwrap();

    let len = 3 << 20;
    fallocate(&f, 0, len).unwrap();
    assert_eq!(f.metadata().unwrap().len(), len);
    drop(f);
    let ino = fs::metadata(m.path("f")).unwrap().ino();
    let data_file = fs::metadata(m.state.join("data").join(ino.to_string())).unwrap();
    assert!(
        data_file.blocks() * 512 >= len,
        "only {} of {len} bytes allocated in the state dir",
        data_file.blocks() * 512
    );
    let mut want = vec![0u8; len as usize];
    want[..5].copy_from_slice(b"head!");
    assert!(
        fs::read(m.path("f")).unwrap() == want,
        "not zeros past the data"
    );
    m.sync();
    assert!(env.remote_files().get("f") == Some(&want));
});

/// The mount's tree as path -> (kind, content), for comparison with the remote's.
fn mount_tree(root: &Path) -> BTreeMap<String, (ObjKind, Vec<u8>)> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, (ObjKind, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let t = e.file_type().unwrap();
            if t.is_dir() {
                out.insert(rel.clone(), (ObjKind::Dir, vec![]));
                walk(&e.path(), &rel, out);
            } else if t.is_symlink() {
                out.insert(rel, (ObjKind::Symlink, vec![]));
            } else {
                out.insert(rel, (ObjKind::File, fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn remote_tree(env: &Env) -> BTreeMap<String, (ObjKind, Vec<u8>)> {
    env.remote_tree()
        .into_iter()
        .map(|(k, o)| (k, (o.kind, o.data)))
        .collect()
}

/// Both sides agree with `want`: the remote, and the mount after one more poll.
fn assert_trees(env: &Env, m: &Mount, want: &BTreeMap<String, (ObjKind, Vec<u8>)>, when: &str) {
    let paths = |t: &BTreeMap<String, (ObjKind, Vec<u8>)>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(paths(&remote_tree(env)), paths(want), "remote {when}");
    assert!(remote_tree(env) == *want, "remote content {when}");
    m.sync();
    assert_eq!(paths(&mount_tree(&m.dir)), paths(want), "mount {when}");
}

// Regression: on a local-folder remote, directories the mount had renamed or emptied came
// back. The rename queued the old directory's delete behind its children's moves, but a file
// unlinked afterwards queued its own delete behind that: the directory delete ran while the
// folder still held the file, was refused (not empty) and dropped, and the next poll took
// the emptied folder for a new remote directory and put it back into the mount, for good.
every_backend!(
    a_renamed_then_emptied_directory_does_not_come_back,
    |env: &Env| {
        let state = env.new_state_dir();
        let m = env.mount_state(&state);
        fs::create_dir_all(m.path("d/sub/deeper")).unwrap();
        fs::write(m.path("d/sub/deeper/x"), b"x").unwrap();
        fs::write(m.path("d/sub/y"), b"y").unwrap();
        fs::write(m.path("d/z"), b"z").unwrap();
        fs::write(m.path("d/keep"), b"keep").unwrap();
        m.sync();
        m.unmount();

        // Long write-back: nothing runs until the one forced sync below.
        let m = env
            .try_mount(&state, &["--write-back", "3600"])
            .unwrap_or_else(|e| panic!("{e}"));
        fs::rename(m.path("d"), m.path("e")).unwrap();
        fs::remove_file(m.path("e/sub/deeper/x")).unwrap();
        fs::remove_dir(m.path("e/sub/deeper")).unwrap();
        fs::remove_file(m.path("e/sub/y")).unwrap();
        fs::remove_file(m.path("e/z")).unwrap();
        fs::rename(m.path("e/sub"), m.path("moved-sub")).unwrap();
        m.sync();
        let want = mount_tree(&m.dir);
        assert_eq!(
            want.keys().map(String::as_str).collect::<Vec<_>>(),
            ["e", "e/keep", "moved-sub"]
        );
        assert_trees(env, &m, &want, "after the queue drained");
        m.unmount();

        let m = env.mount_state(&state);
        assert_trees(env, &m, &want, "after a remount");
        m.unmount();
        let fresh = env.mount();
        assert_eq!(mount_tree(&fresh.dir), want, "a fresh state dir");
    }
);

// The old directory of a rename used to stay behind in a local-folder remote while a file
// below it was still open for writing: its delete ran before that file's held move.
#[test]
fn a_directory_renamed_around_an_open_writer_does_not_come_back() {
    let env = Env::new(Backend::Local);
    let m = env.mount();
    fs::create_dir_all(m.path("d/sub")).unwrap();
    fs::write(m.path("d/sub/open"), b"first").unwrap();
    fs::write(m.path("d/gone"), b"gone").unwrap();
    m.sync();

    let mut w = fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/sub/open"))
        .unwrap();
    w.write_all(b" second").unwrap();
    fs::rename(m.path("d"), m.path("e")).unwrap();
    fs::remove_file(m.path("e/gone")).unwrap();
    // Let the queue run up to the held file: the delete of `d/gone`, queued last, runs after
    // the directory deletes had their turn.
    let out = m.stratus(&["sync", m.dir.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        eventually(30, || !env.root.join("d/gone").exists()),
        "the queue did not run: {}",
        m.log_tail()
    );
    w.write_all(b" third").unwrap();
    drop(w);
    m.sync();
    let want = mount_tree(&m.dir);
    assert_eq!(
        want.keys().map(String::as_str).collect::<Vec<_>>(),
        ["e", "e/sub", "e/sub/open"]
    );
    assert_trees(&env, &m, &want, "after the writer closed");
    let out = std::process::Command::new("python3")
        .args(["scripts/tree_workload.py", "manifest"])
        .arg(&env.root)
        .output()
        .unwrap();
    let remote_manifest = String::from_utf8(out.stdout).unwrap();
    let out = std::process::Command::new("python3")
        .args(["scripts/tree_workload.py", "manifest"])
        .arg(&m.dir)
        .output()
        .unwrap();
    assert_eq!(remote_manifest, String::from_utf8(out.stdout).unwrap());
    let state = m.state.clone();
    m.unmount();
    let m = env.mount_state(&state);
    assert_trees(&env, &m, &want, "after a remount");
}
