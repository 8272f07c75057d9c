//! Reading on demand through the block cache, on real mounts over both remotes: ranged
//! fetches, the size budget, version pinning, and what works offline.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use common::mount::{data, Env, Mount};

const MIB: u64 = 1 << 20;

/// A figure from `stratus status`, in bytes (`downloaded`, `cache_used` ...).
fn status_figure(m: &Mount, key: &str) -> u64 {
    let raw = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.stratus.status"])
        .arg(&m.dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&raw.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no {key} in status: {text}"))
        .parse()
        .unwrap()
}

fn cache_attr(m: &Mount, rel: &str) -> String {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.stratus.cache"])
        .arg(m.path(rel))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        if md.is_file() {
            total += std::os::unix::fs::MetadataExt::blocks(&md) * 512;
        }
    }
    total
}

both!(a_small_read_fetches_only_around_it, |env: &Env| {
    let size = 48 * MIB as usize;
    env.put_remote("big.bin", &data(7, size));
    let m = env.mount();
    assert_eq!(cache_attr(&m, "big.bin"), "none");
    let mut f = fs::File::open(m.path("big.bin")).unwrap();
    let at = 20 * MIB + 12345;
    f.seek(SeekFrom::Start(at)).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact(&mut buf).unwrap();
    assert!(buf == data(7, size)[at as usize..at as usize + 4096]);
    let got = status_figure(&m, "downloaded");
    assert!(
        (4096..=2 * MIB).contains(&got),
        "read 4 KiB, downloaded {got} bytes"
    );
    assert_eq!(cache_attr(&m, "big.bin"), "partial");
});

both!(the_cache_stays_within_its_budget, |env: &Env| {
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("f{i}.bin"), data(100 + i, 12 * MIB as usize + 777)))
        .collect();
    for (name, body) in &files {
        env.put_remote(name, body);
    }
    let state = env.new_state_dir();
    let m = env
        .try_mount(&state, &["--write-back", "0.2", "--cache-size", "8M"])
        .unwrap();
    // Read everything twice over, each time checking every byte.
    for _ in 0..2 {
        for (name, body) in &files {
            assert!(
                fs::read(m.path(name)).unwrap() == *body,
                "{name} read back wrong"
            );
            // The budget (8 MiB) plus one batch of blocks in flight (a sequential reader
            // fetches up to 17 blocks at once) is the bound.
            let used = du(&state.join("data"));
            assert!(used <= 8 * MIB + 17 * MIB, "data on disk: {used} bytes");
        }
    }
    assert!(status_figure(&m, "cache_used") <= 8 * MIB + 17 * MIB);
});

both!(a_replaced_object_never_yields_a_mix, |env: &Env| {
    let size = 6 * MIB as usize;
    env.put_remote("doc.bin", &data(1, size));
    let m = env.mount();
    let mut f = fs::File::open(m.path("doc.bin")).unwrap();
    let mut first = vec![0u8; 4096];
    f.read_exact(&mut first).unwrap();
    assert!(first == data(1, size)[..4096]);
    // Another client replaces the object between two reads of the same open file.
    env.put_remote("doc.bin", &data(2, size));
    f.seek(SeekFrom::Start(4 * MIB)).unwrap();
    let mut later = vec![0u8; 4096];
    match f.read_exact(&mut later) {
        // Either a clean error...
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO)),
        // ...or, never, the other version's bytes under this handle.
        Ok(()) => assert!(
            later == data(1, size)[4 * MIB as usize..4 * MIB as usize + 4096],
            "mixed versions"
        ),
    }
    drop(f);
    // The next open, after the mount has seen the change, reads the new version whole.
    m.sync();
    assert!(fs::read(m.path("doc.bin")).unwrap() == data(2, size));
});

both!(
    offline_reads_of_cached_data_work_and_others_fail_fast,
    |env: &Env| {
        env.put_remote("cached.bin", &data(3, 3 * MIB as usize));
        env.put_remote("cold.bin", &data(4, 3 * MIB as usize));
        let m = env.mount();
        assert!(fs::read(m.path("cached.bin")).unwrap() == data(3, 3 * MIB as usize));
        assert_eq!(cache_attr(&m, "cached.bin"), "full");
        let o = m.stratus(&["offline", m.dir.to_str().unwrap(), "on"]);
        assert!(o.status.success());
        assert!(fs::read(m.path("cached.bin")).unwrap() == data(3, 3 * MIB as usize));
        let t = std::time::Instant::now();
        let e = fs::read(m.path("cold.bin")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(
            t.elapsed() < std::time::Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        // A failed read is not a delete.
        assert!(m.path("cold.bin").exists());
        let o = m.stratus(&["offline", m.dir.to_str().unwrap(), "off"]);
        assert!(o.status.success());
        assert!(fs::read(m.path("cold.bin")).unwrap() == data(4, 3 * MIB as usize));
    }
);

both!(cached_data_survives_a_remount, |env: &Env| {
    env.put_remote("keep.bin", &data(5, 2 * MIB as usize));
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    assert!(fs::read(m.path("keep.bin")).unwrap() == data(5, 2 * MIB as usize));
    m.unmount();
    let m2 = env.mount_state(&state);
    assert_eq!(cache_attr(&m2, "keep.bin"), "full");
    assert!(fs::read(m2.path("keep.bin")).unwrap() == data(5, 2 * MIB as usize));
    assert_eq!(
        status_figure(&m2, "downloaded"),
        0,
        "re-read after remount must come from the cache"
    );
});

both!(corrupt_data_is_never_served, |env: &Env| {
    use sha2::Digest;
    let body = data(9, 3 * MIB as usize);
    let good = hex::encode(sha2::Sha256::digest(&body));
    let bad = hex::encode(sha2::Sha256::digest(b"something else"));
    env.put_remote_claiming_hash("good.bin", &body, &good);
    env.put_remote_claiming_hash("bad.bin", &body, &bad);
    let m = env.mount();
    assert!(fs::read(m.path("good.bin")).unwrap() == body);
    let e = fs::read(m.path("bad.bin")).map(|_| ()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    // It stays refused, and says so.
    assert!(fs::read(m.path("bad.bin")).is_err());
    assert_eq!(m.state_of("bad.bin"), "error");
    assert_ne!(cache_attr(&m, "bad.bin"), "full");
    assert!(m.log_tail().contains("does not match"), "no log line");
});
