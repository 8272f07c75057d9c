//! A remote that goes away and comes back: nothing changes for the user but `stratus status`,
//! and the queue drains once it answers again.

mod common;

use std::fs;

use common::mount::{eventually, Backend, Env};
use common::proxy::Proxy;

fn s3_behind_proxy() -> (Env, Proxy) {
    let env = Env::new(Backend::S3);
    let target = format!("127.0.0.1:{}", env.moto.as_ref().unwrap().port)
        .parse()
        .unwrap();
    let proxy = Proxy::start(target);
    env.set_endpoint(&proxy.endpoint());
    (env, proxy)
}

#[test]
fn s3_outage_queues_then_drains() {
    let (env, proxy) = s3_behind_proxy();
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("before.txt"), b"before").unwrap();
    m.sync();

    proxy.cut();
    fs::create_dir(m.path("offline")).unwrap();
    fs::write(m.path("offline/a.txt"), b"written offline").unwrap();
    fs::write(m.path("before.txt"), b"changed offline").unwrap();
    // Reads of what is cached keep working.
    assert_eq!(fs::read(m.path("before.txt")).unwrap(), b"changed offline");
    assert!(
        eventually(30, || m.health() == "unreachable"),
        "status never noticed the outage:\n{}",
        m.status()
    );
    let s = m.status_json();
    assert!(s["health"]["last_error"].is_string(), "{s}");
    assert_ne!(m.state_of("offline/a.txt"), "synced");
    let o = m.stratus(&["sync", m.dir.to_str().unwrap(), "--wait", "--timeout", "2"]);
    assert!(
        !o.status.success(),
        "sync --wait must time out while the remote is away"
    );

    proxy.restore();
    m.sync();
    assert_eq!(m.health(), "online");
    let files = env.remote_files();
    assert_eq!(files["offline/a.txt"], b"written offline");
    assert_eq!(files["before.txt"], b"changed offline");
}

#[test]
fn s3_remount_while_offline_serves_local_state() {
    let (env, proxy) = s3_behind_proxy();
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("kept.txt"), b"kept").unwrap();
    m.sync();
    m.unmount();

    proxy.cut();
    let m2 = env.mount_state(&state);
    assert_eq!(fs::read(m2.path("kept.txt")).unwrap(), b"kept");
    fs::write(m2.path("new.txt"), b"new while offline").unwrap();
    assert!(eventually(30, || m2.health() == "unreachable"));
    proxy.restore();
    m2.sync();
    assert_eq!(env.remote_files()["new.txt"], b"new while offline");
}

#[test]
fn local_remote_folder_missing_then_back() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("a.txt"), b"a").unwrap();
    m.sync();
    m.unmount();
    // The remote folder is away (an unplugged disk): the mount serves local state.
    let away = env.tmp.path().join("remote-away");
    fs::rename(&env.root, &away).unwrap();
    let m2 = env.mount_state(&state);
    assert_eq!(fs::read(m2.path("a.txt")).unwrap(), b"a");
    fs::write(m2.path("b.txt"), b"b").unwrap();
    assert!(eventually(30, || m2.health() == "unreachable"));
    fs::rename(&away, &env.root).unwrap();
    m2.sync();
    assert_eq!(fs::read(env.root.join("b.txt")).unwrap(), b"b");
}

#[test]
fn uncached_reads_fail_fast_while_the_remote_is_away_and_cached_ones_work() {
    let (env, proxy) = s3_behind_proxy();
    env.put_remote("warm.bin", &common::mount::data(1, 2 << 20));
    env.put_remote("cold.bin", &common::mount::data(2, 2 << 20));
    let m = env.mount();
    assert!(fs::read(m.path("warm.bin")).unwrap() == common::mount::data(1, 2 << 20));
    proxy.cut();
    // Something has to notice the outage first: a write that cannot be uploaded.
    fs::write(m.path("probe.txt"), b"x").unwrap();
    assert!(eventually(30, || m.health() == "unreachable"));
    assert!(fs::read(m.path("warm.bin")).unwrap() == common::mount::data(1, 2 << 20));
    let t = std::time::Instant::now();
    let e = fs::read(m.path("cold.bin")).map(|_| ()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    // A failed read is not a delete, and the data comes once the remote is back.
    assert!(m.path("cold.bin").exists());
    proxy.restore();
    m.sync();
    assert!(fs::read(m.path("cold.bin")).unwrap() == common::mount::data(2, 2 << 20));
}

/// A server that stops answering (SIGSTOP, a network that drops packets silently) keeps its
/// connections open: nothing fails, requests just wait. Status must say so within seconds,
/// not after the HTTP client's timeout; and once it answers again, everything flows.
#[test]
fn s3_a_hung_server_shows_as_unreachable_within_ten_seconds() {
    let (env, proxy) = s3_behind_proxy();
    let m = env.mount();
    fs::write(m.path("before.txt"), b"before").unwrap();
    m.sync();
    assert_eq!(m.health(), "online");

    proxy.hang();
    fs::write(m.path("during.txt"), b"written while the server hangs").unwrap();
    assert!(
        eventually(10, || m.health() == "unreachable"),
        "status still says {} 10 s after the server stopped answering:\n{}",
        m.health(),
        m.status()
    );
    let s = m.status_json();
    assert!(s["health"]["since_ms"].is_i64(), "{s}");
    assert!(
        s["health"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not answered")),
        "{s}"
    );

    proxy.restore();
    m.sync();
    assert_eq!(m.health(), "online");
    assert_eq!(
        env.remote_files()["during.txt"],
        b"written while the server hangs"
    );
}
