//! FUSE passthrough on real mounts: a cached file's reads and writes go from the kernel
//! straight to its data file, and still reach the remote byte for byte, survive a SIGKILL
//! after fsync, keep both versions in a conflict, and show in `stratus status`.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Duration;

use common::mount::{data, eventually, Backend, Env, Mount};

/// Passthrough is asked for (`-o passthrough`): off by default in this release.
const ON: [&str; 4] = ["--write-back", "0.2", "-o", "passthrough"];

fn mount_on(env: &Env) -> Mount {
    env.try_mount(&env.new_state_dir(), &ON).unwrap()
}

/// `(state, reason, opens, fuse_reads, fuse_writes)` from `status --json`.
fn passthrough(m: &Mount) -> (String, String, u64, u64, u64) {
    let s = m.status_json();
    let p = &s["passthrough"];
    (
        p["state"].as_str().unwrap_or("").to_string(),
        p["reason"].as_str().unwrap_or("").to_string(),
        p["opens"].as_u64().unwrap(),
        p["fuse_reads"].as_u64().unwrap(),
        p["fuse_writes"].as_u64().unwrap(),
    )
}

fn offline(m: &Mount, on: bool) {
    let o = m.stratus(&[
        "offline",
        m.dir.to_str().unwrap(),
        if on { "on" } else { "off" },
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Writes `body` into a new file in 1 MiB writes, fsyncs, and reads it back whole.
fn write_fsync_read(m: &Mount, rel: &str, body: &[u8]) {
    let mut f = fs::File::create(m.path(rel)).unwrap();
    for chunk in body.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(fs::read(m.path(rel)).unwrap(), body, "{rel} read back");
}

every_backend!(passthrough_reads_and_writes_land, |env: &Env| {
    let m = mount_on(env);
    let (state, reason, ..) = passthrough(&m);
    assert_eq!(
        state, "on",
        "passthrough should be in use here (reason: {reason})"
    );
    assert!(
        m.status().contains("passthrough:    on"),
        "status says which is in use:\n{}",
        m.status()
    );
    let body = data(13, (9 << 20) + 12_345);
    write_fsync_read(&m, "big.bin", &body);
    // An append through O_APPEND, and a size the kernel learned from the data file.
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.path("big.bin"))
            .unwrap();
        f.write_all(b"appended").unwrap();
    }
    let mut want = body.clone();
    want.extend_from_slice(b"appended");
    assert_eq!(
        fs::metadata(m.path("big.bin")).unwrap().len(),
        want.len() as u64
    );
    // A file written and cut while open: the size shown is the data file's.
    {
        let mut f = fs::File::create(m.path("cut.bin")).unwrap();
        f.write_all(&data(5, 300_000)).unwrap();
        f.set_len(100_000).unwrap();
        f.seek(SeekFrom::End(0)).unwrap();
        f.write_all(b"tail").unwrap();
        assert_eq!(f.metadata().unwrap().len(), 100_004);
    }
    let mut cut = data(5, 100_000);
    cut.extend_from_slice(b"tail");
    let (_, _, opens, reads, writes) = passthrough(&m);
    assert!(opens >= 3, "opens in passthrough mode: {opens}");
    assert_eq!(
        (reads, writes),
        (0, 0),
        "no read or write may reach the daemon"
    );
    m.sync();
    let remote = env.remote_files();
    assert!(remote["big.bin"] == want, "big.bin differs on the remote");
    assert!(remote["cut.bin"] == cut, "cut.bin differs on the remote");
    drop(m);
    // A fresh mount of the same remote reads the same bytes (fetched, then whole: its
    // second read passes through).
    let m2 = mount_on(env);
    assert!(fs::read(m2.path("big.bin")).unwrap() == want);
    assert!(fs::read(m2.path("big.bin")).unwrap() == want);
    assert_eq!(fs::read(m2.path("cut.bin")).unwrap(), cut);
});

/// The data path really is the kernel's: with passthrough on, reading and writing a cached
/// file sends the daemon no read or write request at all; with `-o nopassthrough` the same
/// workload sends hundreds, and status says why it is off.
#[test]
fn the_data_path_skips_the_daemon_only_with_passthrough() {
    let env = Env::new(Backend::Local);
    let body = data(7, 8 << 20);
    let on = mount_on(&env);
    write_fsync_read(&on, "f.bin", &body);
    let (state, _, opens, reads, writes) = passthrough(&on);
    assert_eq!((state.as_str(), reads, writes), ("on", 0, 0));
    assert!(opens >= 2, "{opens}");
    drop(on);
    let off = env
        .try_mount(&env.new_state_dir(), &["--write-back", "0.2"])
        .unwrap();
    write_fsync_read(&off, "g.bin", &body);
    let (state, reason, opens, reads, writes) = passthrough(&off);
    assert_eq!(state, "off");
    assert!(reason.contains("-o passthrough"), "{reason}");
    assert_eq!(opens, 0);
    assert!(
        reads > 0 && writes > 0,
        "reads {reads}, writes {writes} should reach the daemon"
    );
    assert!(
        off.status()
            .contains("passthrough:    off (not asked for: -o passthrough)"),
        "{}",
        off.status()
    );
}

// SIGKILL while a file is open for writing in passthrough mode: what fsync acknowledged is
// there after the remount and goes up, and so does a write made after the fsync (it sat
// in the data file's page cache, which outlives the daemon) and one made after the crash
// through the same descriptor (the kernel still writes the data file for it): the
// remounted daemon holds the file's upload until that descriptor is closed.
every_backend!(
    sigkill_after_fsync_through_passthrough_loses_nothing,
    |env: &Env| {
        let state = env.new_state_dir();
        let m = env.try_mount(&state, &ON).unwrap();
        fs::write(m.path("old.txt"), b"an older file").unwrap();
        let first = data(21, 3 << 20);
        let mut f = fs::File::create(m.path("log.bin")).unwrap();
        f.write_all(&first).unwrap();
        f.sync_data().unwrap();
        // The fsync let the upload go: once it landed, the file must be held again, since
        // the kernel writes on without telling the daemon.
        assert!(
            eventually(30, || env.remote_files().get("log.bin") == Some(&first)),
            "the fsync'd content never reached the remote while the file was open"
        );
        f.write_all(b"after fsync").unwrap();
        // A file never uploaded (offline), opened again to append: it passes through too,
        // and its append, acknowledged without fsync, must survive (the open armed its
        // upload, so the remount takes the data file's length, not the one recorded at the
        // first close).
        offline(&m, true);
        fs::write(m.path("app.txt"), b"head").unwrap();
        let mut app = fs::OpenOptions::new()
            .append(true)
            .open(m.path("app.txt"))
            .unwrap();
        app.write_all(b" and tail").unwrap();
        assert_eq!(passthrough(&m).4, 0, "the writes passed through");
        m.kill9();
        let m = env.try_mount(&state, &ON).unwrap();
        let mut want = first.clone();
        want.extend_from_slice(b"after fsync");
        drop(app);
        assert_eq!(fs::read(m.path("app.txt")).unwrap(), b"head and tail");
        offline(&m, false);
        let got = fs::read(m.path("log.bin")).unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "log.bin differs after the remount");
        // Past the write-back delay: an upload let go at the remount would have run by now.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            m.status_json()["queue"]["waiting_for_writer"].as_u64(),
            Some(1),
            "the file still written through the old descriptor must stay held"
        );
        f.write_all(b", after the crash").unwrap();
        drop(f);
        want.extend_from_slice(b", after the crash");
        m.sync();
        assert!(
            env.remote_files()["log.bin"] == want,
            "log.bin differs on the remote"
        );
        assert_eq!(env.remote_files()["old.txt"], b"an older file");
        assert_eq!(env.remote_files()["app.txt"], b"head and tail");
    }
);

/// A remote change arrives while the file is open here in passthrough mode (written from
/// scratch): nothing of the local version is lost; once closed, both versions are kept.
#[test]
fn a_conflict_while_open_in_passthrough_keeps_both_versions() {
    let env = Env::new(Backend::S3);
    let args = [
        "--poll-interval",
        "0",
        "--write-back",
        "0.2",
        "-o",
        "passthrough",
    ];
    let a = env.try_mount(&env.new_state_dir(), &args).unwrap();
    let b = env.try_mount(&env.new_state_dir(), &args).unwrap();
    fs::write(a.path("f.txt"), b"base").unwrap();
    a.sync();
    b.sync();
    assert_eq!(fs::read(b.path("f.txt")).unwrap(), b"base");
    // B rewrites it from scratch, in passthrough mode, and keeps it open.
    let mut held = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(b.path("f.txt"))
        .unwrap();
    held.write_all(b"from B, ").unwrap();
    assert_eq!(passthrough(&b).4, 0, "B's write passed through");
    fs::write(a.path("f.txt"), b"from A").unwrap();
    a.sync();
    // B polls while its file is open: its version stays.
    let o = b.stratus(&["sync", b.dir.to_str().unwrap()]);
    assert!(o.status.success());
    std::thread::sleep(Duration::from_secs(2));
    held.write_all(b"still writing").unwrap();
    assert_eq!(fs::read(b.path("f.txt")).unwrap(), b"from B, still writing");
    drop(held);
    b.sync();
    a.sync();
    b.sync();
    let names: Vec<String> = fs::read_dir(b.dir.clone())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let copy = names
        .iter()
        .find(|n| n.contains(".conflict-"))
        .unwrap_or_else(|| panic!("a conflict copy expected: {names:?}"))
        .clone();
    let remote = env.remote_files();
    let mut versions = vec![remote["f.txt"].clone(), remote[&copy].clone()];
    versions.sort();
    assert_eq!(
        versions,
        vec![b"from A".to_vec(), b"from B, still writing".to_vec()]
    );
}

/// `mmap`, `close`, then writes through the mapping (a common idiom): with passthrough the
/// kernel writes the data file after the close, so the close is finished only when the
/// mapping goes, and those writes reach the remote.
#[test]
fn writes_through_a_mapping_that_outlives_close_reach_the_remote() {
    let env = Env::new(Backend::Local);
    let m = mount_on(&env);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(m.path("mapped.bin"))
        .unwrap();
    f.set_len(8192).unwrap();
    // SAFETY: a shared mapping of 8 KiB of a file this test just sized to 8 KiB.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED);
    drop(f);
    // Longer than the write-back delay: an upload let go at the close would have run.
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: writes inside the mapping made above.
    unsafe {
        std::ptr::copy_nonoverlapping(b"late write".as_ptr(), addr as *mut u8, 10);
        libc::msync(addr, 8192, libc::MS_SYNC);
        libc::munmap(addr, 8192);
    }
    assert!(
        eventually(10, || env
            .remote_files()
            .get("mapped.bin")
            .is_some_and(|d| d.starts_with(b"late write"))),
        "the write through the mapping never reached the remote"
    );
    let mut s = Vec::new();
    fs::File::open(m.path("mapped.bin"))
        .unwrap()
        .read_to_end(&mut s)
        .unwrap();
    assert_eq!(&s[..10], b"late write");
    let mut tail = [0u8; 4];
    fs::File::open(m.path("mapped.bin"))
        .unwrap()
        .read_exact_at(&mut tail, 8188)
        .unwrap();
    assert_eq!(tail, [0; 4]);
}
