//! Bad input gets a clear error and loses nothing: damaged state databases, remote keys that
//! are not POSIX paths, names and paths over the limits.

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;

use common::mount::{Backend, Env};

#[test]
fn corrupt_state_database_is_refused_and_left_untouched() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(state.join("state.db"), &garbage).unwrap();
    let err = env
        .try_mount(&state, &[])
        .err()
        .expect("a corrupt database must be refused");
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        fs::read(state.join("state.db")).unwrap(),
        garbage,
        "database was modified"
    );
}

#[test]
fn newer_state_database_is_refused_and_left_untouched() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    {
        let c = rusqlite::Connection::open(state.join("state.db")).unwrap();
        c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 999;")
            .unwrap();
    }
    let before = fs::read(state.join("state.db")).unwrap();
    let err = env
        .try_mount(&state, &[])
        .err()
        .expect("a newer database must be refused");
    assert!(err.contains("newer"), "{err}");
    assert_eq!(fs::read(state.join("state.db")).unwrap(), before);
}

#[test]
fn local_remote_names_that_cannot_be_keys_are_skipped() {
    let env = Env::new(Backend::Local);
    fs::write(env.root.join("good.txt"), b"good").unwrap();
    let bad = std::ffi::OsStr::from_bytes(b"bad\xff.txt");
    fs::write(env.root.join(bad), b"bad").unwrap();
    let m = env.mount();
    let names: Vec<_> = fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("good.txt")]);
    // Skipped, never deleted.
    m.sync();
    assert!(env.root.join(bad).exists());
    assert!(m.log_tail().contains("not UTF-8"), "no warning logged");
}

#[test]
fn s3_keys_that_are_not_paths_are_skipped_or_settled() {
    keys_that_are_not_paths_are_skipped_or_settled(Backend::S3);
}

#[test]
fn azure_keys_that_are_not_paths_are_skipped_or_settled() {
    keys_that_are_not_paths_are_skipped_or_settled(Backend::Azure);
}

#[test]
fn gcs_keys_that_are_not_paths_are_skipped_or_settled() {
    keys_that_are_not_paths_are_skipped_or_settled(Backend::Gcs);
}

fn keys_that_are_not_paths_are_skipped_or_settled(backend: Backend) {
    let env = Env::new(backend);
    env.put_remote("ok.txt", b"fine");
    env.put_remote("a//b", b"");
    env.put_remote("x/./y", b"");
    env.put_remote("../escape", b"");
    env.put_remote(&format!("{}/long", "n".repeat(300)), b"long");
    env.put_remote("both", b"file and dir");
    env.put_remote("both/child", b"child");
    // Another tool's `dir/` marker: a directory on S3 and GCS. On Azure (where stratus marks folders
    // with metadata instead) it is a name with an empty last component, skipped like `a//b`.
    env.put_remote("marker/", b"");
    let m = env.mount();
    let mut names: Vec<String> = fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // A key that is not a valid path is skipped whole, directories it would imply included.
    if matches!(backend, Backend::S3 | Backend::Gcs) {
        assert_eq!(names, vec!["both", "marker", "ok.txt"]);
        assert!(m.path("marker").is_dir());
    } else {
        assert_eq!(names, vec!["both", "ok.txt"]);
    }
    assert!(m.path("both").is_dir());
    assert_eq!(fs::read(m.path("both/child")).unwrap(), b"child");
    assert_eq!(fs::read(m.path("ok.txt")).unwrap(), b"fine");
    assert!(
        m.log_tail().contains("not a valid path"),
        "no warning logged"
    );
    // Nothing was deleted from the remote: neither the skipped keys nor the settled ones.
    m.sync();
    let tree = env.remote_tree();
    let long = format!("{}/long", "n".repeat(300));
    for key in [
        "a//b",
        "x/./y",
        "../escape",
        long.as_str(),
        "both",
        "both/child",
    ] {
        assert!(
            tree.contains_key(key),
            "{key} is gone from the remote: {:?}",
            tree.keys()
        );
    }
    assert_eq!(tree["both/child"].data, b"child");
}

#[test]
fn s3_paths_over_the_key_limit_get_enametoolong() {
    let env = Env::new(Backend::S3);
    let m = env.mount();
    let part = "d".repeat(250);
    let mut path = m.dir.clone();
    let mut depth = 0;
    let err = loop {
        path = path.join(&part);
        match fs::create_dir(&path) {
            Ok(()) => depth += 1,
            Err(e) => break e,
        }
        assert!(depth < 10, "the key limit was never enforced");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    // 4 levels of 251 bytes fit in S3's 1024-byte keys under the "data/" prefix; 5 do not.
    assert_eq!(depth, 4);
}

#[test]
fn a_full_state_disk_gives_enospc_and_loses_nothing() {
    use std::io::Write;
    use std::process::Command;
    // The state dir sits on a 64 MiB tmpfs; the remote (a local folder) elsewhere.
    let env = Env::new(common::mount::Backend::Local);
    let disk = env.tmp.path().join("small-disk");
    fs::create_dir(&disk).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64M", "tmpfs"])
        .arg(&disk)
        .status()
        .unwrap()
        .success();
    assert!(ok, "could not mount a tmpfs (this test needs root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _disk = Unmount(disk.clone());
    let state = disk.join("state");
    let m = env.mount_state(&state);
    fs::write(m.path("before.txt"), b"written before").unwrap();
    m.sync();
    // Write until the disk says no.
    let mut f = fs::File::create(m.path("big.bin")).unwrap();
    let block = vec![7u8; 1 << 20];
    let mut acked = 0u64;
    let err = loop {
        match f.write_all(&block) {
            Ok(()) => acked += block.len() as u64,
            Err(e) => break e,
        }
        assert!(
            acked < 128 << 20,
            "no ENOSPC after {acked} bytes on a 64 MiB disk"
        );
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    // Everything acknowledged is there, and the mount still works: its size, other files,
    // a new file, a delete that makes room, and the upload of what was written.
    assert!(fs::metadata(m.path("big.bin")).unwrap().len() >= acked);
    assert_eq!(fs::read(m.path("before.txt")).unwrap(), b"written before");
    fs::write(m.path("after.txt"), b"small").unwrap();
    m.sync();
    assert_eq!(
        fs::metadata(env.root.join("big.bin")).unwrap().len(),
        fs::metadata(m.path("big.bin")).unwrap().len()
    );
    fs::remove_file(m.path("big.bin")).unwrap();
    fs::write(m.path("later.bin"), vec![1u8; 8 << 20]).unwrap();
    m.sync();
    assert_eq!(fs::read(env.root.join("after.txt")).unwrap(), b"small");
    assert!(!env.root.join("big.bin").exists());
    assert_eq!(
        fs::metadata(env.root.join("later.bin")).unwrap().len(),
        8 << 20
    );
}
