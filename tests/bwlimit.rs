//! `--bwlimit` and `stratus bwlimit` on real mounts over moto: the limit holds uploads and
//! downloads back, can be lifted on a live mount, shows in status, and a bad value is refused
//! in one line.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::mount::{data, Backend, Env, Mount};

const MIB: u64 = 1 << 20;

fn bwlimit(m: &Mount, rate: &str) -> std::process::Output {
    m.stratus(&["bwlimit", m.dir.to_str().unwrap(), rate])
}

/// Writes `name` through the mount and waits until the remote holds it; how long that took.
fn upload(env: &Env, m: &Mount, name: &str, body: &[u8]) -> Duration {
    let t = Instant::now();
    fs::write(m.path(name), body).unwrap();
    m.sync();
    let took = t.elapsed();
    assert!(
        env.remote_files().get(name).map(Vec::as_slice) == Some(body),
        "{name} on the remote"
    );
    took
}

#[test]
fn the_limit_holds_uploads_and_downloads_back_and_lifts_on_a_live_mount() {
    let env = Env::new(Backend::S3);
    let m = env
        .try_mount(
            &env.new_state_dir(),
            &["--write-back", "0.2", "--bwlimit", "1M"],
        )
        .unwrap();
    // Status shows the limit: JSON, text and the attribute.
    let s = m.status_json();
    assert_eq!(s["bwlimit"]["upload"], MIB, "{s}");
    assert_eq!(s["bwlimit"]["download"], MIB, "{s}");
    assert_eq!(s["bwlimit"]["text"], "1M", "{s}");
    assert!(m.status().contains("1.0 MiB/s each way"), "{}", m.status());
    let attr = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.stratus.bwlimit"])
        .arg(&m.dir)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&attr.stdout), "1M");

    // 4 MiB at 1 MiB/s: at least 3 s, whatever the link could do.
    let limited = upload(&env, &m, "slow.bin", &data(1, 4 * MIB as usize));
    assert!(
        limited >= Duration::from_secs(3),
        "4 MiB went up in {limited:?} under --bwlimit 1M"
    );

    // Lifted on the live mount: the next upload is not held back.
    let o = bwlimit(&m, "off");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(m.status_json()["bwlimit"]["upload"].is_null());
    let free = upload(&env, &m, "fast.bin", &data(2, 4 * MIB as usize));
    assert!(
        free * 2 < limited,
        "unlimited upload took {free:?}, the limited one {limited:?}"
    );

    // Download only (upload:download): an uncached read of 4 MiB takes at least 3 s.
    let o = bwlimit(&m, "off:1M");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = m.status_json();
    assert!(s["bwlimit"]["upload"].is_null(), "{s}");
    assert_eq!(s["bwlimit"]["download"], MIB, "{s}");
    let body = data(3, 4 * MIB as usize);
    env.put_remote("down.bin", &body);
    m.sync();
    let t = Instant::now();
    assert!(fs::read(m.path("down.bin")).unwrap() == body);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "4 MiB came down in {took:?} under a 1 MiB/s download limit"
    );
    // Held back, not failed: the remote never looked unreachable.
    assert_eq!(m.health(), "online");
}

#[test]
fn a_bad_rate_is_refused_in_one_line() {
    let env = Env::new(Backend::Local);
    let m = env.mount();
    for bad in ["fast", "4X", "1M:2M:3M"] {
        let o = bwlimit(&m, bad);
        assert!(!o.status.success(), "bwlimit {bad} was taken");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(bad), "{err}");
    }
    // Nothing changed.
    assert_eq!(m.status_json()["bwlimit"]["text"], "off");
    // At mount time too, before anything starts.
    let o = env.stratus(&[
        "mount",
        "--state-dir",
        env.new_state_dir().to_str().unwrap(),
        env.remote_url().as_str(),
        env.new_mountpoint().to_str().unwrap(),
        "--bwlimit",
        "lots",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--bwlimit"), "{err}");
}
