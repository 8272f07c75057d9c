//! Seeing what the sync does, as a user of the CLI does: `status --json` figures checked
//! against what the test did, `queue` while offline, the activity log across a remount,
//! `--json` everywhere, and the safe edges (paths outside a mount, a closed pipe).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use common::mount::{eventually, Backend, Env, Mount, BIN};
use serde_json::Value;

fn json(m: &Mount, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = m.stratus(&a);
    assert!(
        o.status.success(),
        "stratus {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {:?}", o.stdout))
}

fn mp(m: &Mount) -> &str {
    m.dir.to_str().unwrap()
}

/// (kind, path, bytes) of every event in the log.
fn events(m: &Mount) -> Vec<(String, String, Option<u64>)> {
    json(m, &["log", mp(m), "--limit", "1000"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap_or("").to_string(),
                e["bytes"].as_u64(),
            )
        })
        .collect()
}

#[test]
fn status_counts_what_was_uploaded_and_the_log_keeps_it_across_a_remount() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env.mount_state(&state);
    fs::write(m.path("small.txt"), b"0123456789").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/mid.bin"), vec![7u8; 2000]).unwrap();
    fs::write(m.path("d/big.bin"), vec![9u8; 70_000]).unwrap();
    m.sync();

    let s = m.status_json();
    for scope in ["since_mount", "lifetime"] {
        assert_eq!(s["totals"][scope]["uploaded_files"], 3, "{scope}: {s}");
        assert_eq!(s["totals"][scope]["uploaded_bytes"], 72_010, "{scope}: {s}");
        assert_eq!(s["totals"][scope]["failed"], 0, "{scope}: {s}");
    }
    assert_eq!(s["health"]["state"], "online", "{s}");
    assert!(s["health"]["last_full_sync_ms"].is_i64(), "{s}");
    assert!(s["health"]["last_poll_ms"].is_i64(), "{s}");
    assert_eq!(s["queue"]["entries"], 0, "{s}");
    assert_eq!(s["totals"]["success_rate"], 1.0, "{s}");
    assert!(s["totals"]["sync_time_avg_ms"].is_i64(), "{s}");
    assert!(s["totals"]["sync_time_p95_ms"].is_i64(), "{s}");
    // The listing that `sync --wait` waited for counted what is under the prefix.
    assert_eq!(s["storage"]["remote_bytes"], 72_010, "{s}");

    let ev = events(&m);
    for (path, bytes) in [
        ("small.txt", 10),
        ("d/mid.bin", 2000),
        ("d/big.bin", 70_000),
    ] {
        assert!(
            ev.contains(&("upload".into(), path.into(), Some(bytes))),
            "no upload of {path} with {bytes} bytes in {ev:?}"
        );
    }
    assert!(ev.iter().any(|e| e.0 == "create" && e.1 == "d"), "{ev:?}");
    assert_eq!(ev.first().map(|e| e.0.as_str()), Some("mount"), "{ev:?}");
    // The text form names the same upload.
    let text = String::from_utf8_lossy(&m.stratus(&["log", mp(&m)]).stdout).to_string();
    assert!(
        text.lines()
            .any(|l| l.contains("upload") && l.contains("d/big.bin") && l.contains("68.4 KiB")),
        "{text}"
    );

    // After a remount the totals of this mount start again; those of the state dir and
    // the log stay.
    m.unmount();
    let m = env.mount_state(&state);
    let s = m.status_json();
    assert_eq!(s["totals"]["since_mount"]["uploaded_files"], 0, "{s}");
    assert_eq!(s["totals"]["lifetime"]["uploaded_files"], 3, "{s}");
    let kinds: Vec<String> = events(&m).into_iter().map(|e| e.0).collect();
    let tail: Vec<&str> = kinds
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["unmount", "mount"], "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| *k == "upload").count(),
        3,
        "{kinds:?}"
    );
    // --limit and --since bound what is shown.
    assert_eq!(
        json(&m, &["log", mp(&m), "--limit", "2"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        json(&m, &["log", mp(&m), "--since", "0s"])
            .as_array()
            .unwrap()
            .len()
            <= 1
    );
}

#[test]
fn queue_while_offline_lists_exactly_the_operations_waiting() {
    let env = Env::new(Backend::Local);
    let m = env
        .try_mount(&env.new_state_dir(), &["--write-back", "0.2"])
        .unwrap();
    fs::write(m.path("old.txt"), b"gone soon").unwrap();
    fs::write(m.path("y.txt"), b"moves").unwrap();
    m.sync();

    let o = m.stratus(&["offline", mp(&m), "on"]);
    assert!(o.status.success());
    fs::write(m.path("a.txt"), b"new file").unwrap();
    fs::create_dir(m.path("b")).unwrap();
    fs::write(m.path("b/c.txt"), vec![1u8; 5000]).unwrap();
    fs::remove_file(m.path("old.txt")).unwrap();
    fs::rename(m.path("y.txt"), m.path("z.txt")).unwrap();

    let q = json(&m, &["queue", mp(&m)]);
    let got: BTreeSet<(String, String, u64)> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_string(),
                r["path"].as_str().unwrap().to_string(),
                r["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, u64)> = [
        ("upload", "a.txt", 8),
        ("mkdir", "b", 0),
        ("upload", "b/c.txt", 5000),
        ("delete", "old.txt", 0),
        ("move", "z.txt", 0),
    ]
    .into_iter()
    .map(|(o, p, b)| (o.to_string(), p.to_string(), b))
    .collect();
    assert_eq!(got, want, "{q}");
    // Oldest first, as they will run.
    let seqs: Vec<i64> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let s = m.status_json();
    assert_eq!(s["health"]["state"], "offline", "{s}");
    assert!(s["health"]["since_ms"].is_i64(), "{s}");
    assert_eq!(s["queue"]["entries"], 5, "{s}");
    assert!(s["queue"]["oldest_ms"].is_i64(), "{s}");

    // A sync while offline says so and fails; nothing moves.
    let o = m.stratus(&["sync", mp(&m)]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is offline"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!env.root.join("a.txt").exists());

    let o = m.stratus(&["offline", mp(&m), "off"]);
    assert!(o.status.success());
    m.sync();
    assert_eq!(json(&m, &["queue", mp(&m)]), Value::Array(vec![]));
    let kinds: Vec<String> = events(&m).into_iter().map(|e| e.0).collect();
    for k in ["offline", "online", "delete", "move"] {
        assert!(kinds.iter().any(|x| x == k), "no {k} in {kinds:?}");
    }
}

#[test]
fn commands_refuse_a_path_outside_every_mount_and_write_nothing() {
    let env = Env::new(Backend::Local);
    let m = env.mount();
    let outside = env.tmp.path().join("ordinary.txt");
    fs::write(&outside, b"mine").unwrap();
    let o = outside.to_str().unwrap();
    for args in [
        vec!["pin", o],
        vec!["unpin", o],
        vec!["resolve", o, "--keep", "both"],
        vec!["offline", o, "on"],
        vec!["status", o],
        vec!["queue", o],
        vec!["log", o],
        vec!["sync", o],
        vec!["conflicts", o],
        vec!["queue", mp(&m), "--retry", o],
    ] {
        let out = m.stratus(&args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("is not inside a stratus mount"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    // Nothing was written on the user's own file.
    let attrs = Command::new("getfattr")
        .args(["-d", "-m", "-"])
        .arg(&outside)
        .output()
        .unwrap();
    let attrs = String::from_utf8_lossy(&attrs.stdout);
    assert!(!attrs.contains("stratus"), "{attrs}");
    // Under --json the error is JSON too, with a non-zero exit.
    let out = m.stratus(&["pin", "--json", o]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], false, "{v}");
    let out = m.stratus(&["status", "--json", o]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("not inside a stratus mount")),
        "{v}"
    );
}

#[test]
fn any_path_inside_a_mount_finds_it_and_a_closed_pipe_ends_quietly() {
    let env = Env::new(Backend::Local);
    let m = env.mount();
    fs::create_dir_all(m.path("sub/deeper")).unwrap();
    fs::write(m.path("sub/deeper/f.txt"), b"x").unwrap();
    m.sync();
    let s = json(&m, &["status", m.path("sub/deeper").to_str().unwrap()]);
    assert_eq!(s["health"]["state"], "online", "{s}");
    let o = m.stratus(&["pin", m.path("sub/deeper/f.txt").to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(fs::read_to_string(m.path("sub/deeper/f.txt")).unwrap(), "x");

    // `stratus status MNT | head -1` with head long gone: the write fails, quietly.
    for args in [
        vec!["status", mp(&m)],
        vec!["conflicts", mp(&m)],
        vec!["log", mp(&m)],
    ] {
        let mut fds = [0i32; 2];
        // SAFETY: pipe fills the array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both are fresh descriptors owned here; the read end closes at once.
        let (read_end, write_end) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(read_end);
        let out = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::from(write_end))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.trim().is_empty(), "{args:?}: {err}");
    }
}

/// Sets the modification time of every file in `dir` two days back.
fn age(dir: &std::path::Path) {
    for f in fs::read_dir(dir).unwrap() {
        let f = f.unwrap().path();
        let ok = Command::new("touch")
            .args(["-d", "2 days ago"])
            .arg(&f)
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

#[test]
fn clean_drops_settled_history_evicts_clean_data_and_only_state_dirs_with_nothing_unsynced() {
    let env = Env::new(Backend::Local);
    let xdg = env.tmp.path().join("xdg");
    let base = xdg.join("stratus");
    let clean = |args: &[&str]| {
        let mut a = vec!["clean"];
        a.extend_from_slice(args);
        let out = Command::new(BIN)
            .args(&a)
            .env("XDG_STATE_HOME", &xdg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "clean {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };

    // Three state dirs, as old mounts leave them: one fully synced, one whose offline
    // write never went up, one in use by a live mount.
    let synced = base.join("synced-1");
    let m = env.mount_state(&synced);
    fs::write(m.path("f"), b"up").unwrap();
    m.sync();
    m.unmount();
    let unsynced = base.join("unsynced-2");
    let m = env.mount_state(&unsynced);
    assert!(m.stratus(&["offline", mp(&m), "on"]).status.success());
    fs::write(m.path("never-sent"), b"only here").unwrap();
    m.unmount();
    let live = base.join("live-3");
    let m = env.mount_state(&live);
    for d in [&synced, &unsynced, &live] {
        age(d);
    }

    // Every state dir is private to its user.
    for d in [&synced, &unsynced, &live] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(d).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", d.display());
    }
    let listed = clean(&["--state-dirs", "1d", "--dry-run"]);
    assert!(
        listed.contains(&format!("would remove  {}", synced.display())),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("keep    {}", unsynced.display()))
            && listed.contains("1 operations"),
        "{listed}"
    );
    assert!(
        listed.contains(&format!("keep    {}  (in use", live.display())),
        "{listed}"
    );
    assert!(synced.exists(), "a dry run removed something");
    // Used within the last 3 days: nothing is old enough.
    assert!(clean(&["--state-dirs", "3d"]).contains("no state dirs unused"));
    clean(&["--state-dirs", "1d"]);
    assert!(!synced.exists());
    assert!(unsynced.join("state.db").exists());
    assert!(live.join("state.db").exists());

    // --cache: fetched data goes, and comes back when read.
    env.put_remote("big.bin", &vec![5u8; 3 << 20]);
    m.sync();
    assert_eq!(fs::read(m.path("big.bin")).unwrap().len(), 3 << 20);
    let used = |m: &Mount| m.status_json()["storage"]["cache_used"].as_u64().unwrap();
    assert!(used(&m) >= 3 << 20, "{}", used(&m));
    let out = m.stratus(&["clean", mp(&m), "--cache"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(used(&m) < 1 << 20, "{} bytes still cached", used(&m));
    assert_eq!(fs::read(m.path("big.bin")).unwrap(), vec![5u8; 3 << 20]);

    // --conflicts: a settled conflict's history goes once it is older than asked.
    fs::write(m.path("c.txt"), b"base").unwrap();
    m.sync();
    assert!(m.stratus(&["offline", mp(&m), "on"]).status.success());
    fs::write(m.path("c.txt"), b"mine").unwrap();
    env.put_remote("c.txt", b"theirs");
    assert!(m.stratus(&["offline", mp(&m), "off"]).status.success());
    m.sync();
    let all = json(&m, &["conflicts", mp(&m)]);
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let s = m.status_json();
    assert_eq!(s["conflicts"]["open"], 1, "{s}");
    assert_eq!(s["totals"]["since_mount"]["conflicts_opened"], 1, "{s}");
    let o = m.stratus(&[
        "resolve",
        m.path("c.txt").to_str().unwrap(),
        "--keep",
        "both",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = m.status_json();
    assert_eq!(s["conflicts"]["open"], 0, "{s}");
    assert_eq!(s["conflicts"]["settled"], 1, "{s}");
    assert_eq!(s["totals"]["since_mount"]["conflicts_settled"], 1, "{s}");
    let out = m.stratus(&["clean", mp(&m), "--conflicts", "1d"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("history of 0 settled"));
    std::thread::sleep(std::time::Duration::from_millis(50));
    let out = m.stratus(&["clean", mp(&m), "--conflicts", "0s"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("history of 1 settled"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(json(&m, &["conflicts", mp(&m)]), Value::Array(vec![]));
}

/// One GET of `path` from the daemon's HTTP endpoint: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn metrics_serve_the_status_figures_to_prometheus_on_loopback_only() {
    let env = Env::new(Backend::Local);
    let state = env.new_state_dir();
    let m = env
        .try_mount(&state, &["--metrics", "127.0.0.1:0"])
        .unwrap();
    fs::write(m.path("a.bin"), vec![1u8; 1234]).unwrap();
    fs::write(m.path("b.bin"), vec![2u8; 766]).unwrap();
    m.sync();
    let addr = fs::read_to_string(state.join("metrics.addr")).unwrap();
    let (status, body) = http_get(&addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("stratus_uploaded_files_total"), 2.0);
    assert_eq!(value("stratus_uploaded_bytes_total"), 2000.0);
    assert_eq!(value("stratus_queue_entries"), 0.0);
    assert_eq!(value("stratus_health{state=\"online\"}"), 1.0);
    assert!(
        body.contains("# TYPE stratus_uploaded_bytes_total counter"),
        "{body}"
    );
    assert!(http_get(&addr, "/other").0.contains("404"));

    // Anything but loopback is refused, in one line, and nothing mounts.
    let err = env
        .try_mount(&env.new_state_dir(), &["--metrics", "0.0.0.0:0"])
        .err()
        .expect("a non-loopback metrics address must be refused");
    assert!(err.contains("loopback"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_quota_is_shown_as_used_of_quota_and_df_answers_from_it() {
    let env = Env::new(Backend::Local);
    let m = env
        .try_mount(&env.new_state_dir(), &["--quota", "10M"])
        .unwrap();
    fs::write(m.path("a.bin"), vec![1u8; 3 << 20]).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/b.bin"), vec![2u8; 1 << 20]).unwrap();
    let s = m.status_json();
    assert_eq!(s["storage"]["quota"], 10 << 20, "{s}");
    assert_eq!(s["storage"]["used"], 4 << 20, "{s}");
    let text = m.status();
    assert!(
        text.contains("4.0 MiB of the 10.0 MiB quota (40.0%)"),
        "{text}"
    );

    // `df` on the mount: the quota's size, and what the files leave of it.
    let c = std::ffi::CString::new(mp(&m)).unwrap();
    // SAFETY: a NUL-terminated path and a zeroed struct statvfs fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    let (total, avail) = (
        st.f_blocks * st.f_frsize as u64,
        st.f_bavail * st.f_frsize as u64,
    );
    let slack = st.f_frsize as u64;
    assert!(total.abs_diff(10 << 20) <= slack, "total {total}");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let c2 = std::ffi::CString::new(mp(&m)).unwrap();
    assert_eq!(unsafe { libc::statvfs(c2.as_ptr(), &mut st) }, 0);
    let avail2 = st.f_bavail * st.f_frsize as u64;
    assert!(
        avail2.abs_diff(6 << 20) <= slack,
        "avail {avail} then {avail2}"
    );
    // A bad size is one line.
    let err = env
        .try_mount(&env.new_state_dir(), &["--quota", "lots"])
        .err()
        .unwrap();
    assert!(err.contains("--quota lots"), "{err}");
}

/// A large upload shows how far it got, part by part: status names the file and the bytes
/// the server has taken of it. The parts go through a proxy that slows every chunk down.
#[test]
fn s3_status_shows_a_large_upload_part_by_part() {
    use common::fault_proxy::{FaultProxy, Faults};
    let env = Env::new(Backend::S3);
    let target = format!("127.0.0.1:{}", env.moto.as_ref().unwrap().port)
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(target);
    env.set_endpoint(&proxy.endpoint());
    let m = env
        .try_mount(&env.new_state_dir(), &["--write-back", "0"])
        .unwrap();
    let size: u64 = 40 << 20;
    proxy.set(Faults::latency(
        std::time::Duration::ZERO,
        std::time::Duration::from_millis(3),
    ));
    // Someone follows the activity log while the file goes up.
    let mut follow = Command::new(BIN)
        .args(["log", "--follow", "--json", "-n", "0", mp(&m)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    fs::write(m.path("big.bin"), vec![7u8; size as usize]).unwrap();
    // `sync --wait` not on a terminal: plain progress lines on stderr.
    let waiter = Command::new(BIN)
        .args(["sync", "--wait", "--timeout", "120", mp(&m)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        let s = m.status_json();
        let q = s["queue"].clone();
        if q["uploading_path"] == "big.bin" {
            let done = q["uploading_done"].as_u64().unwrap();
            assert_eq!(q["uploading_bytes"], size, "{q}");
            seen.push(done);
            if done > 0 && done < size {
                // A part landed in the last moment: the upload rate counts it, and no more
                // than the server took.
                let rate = s["health"]["upload_rate"].as_u64().unwrap();
                assert!(
                    rate > 0 && rate <= done,
                    "upload rate {rate} with {done} taken"
                );
                break;
            }
        }
        if q["entries"] == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        seen.iter().any(|d| *d > 0 && *d < size),
        "no partial progress seen: {seen:?}"
    );
    proxy.clear();
    let waited = waiter.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&waited.stderr);
    assert!(waited.status.success(), "{err}");
    assert!(
        err.lines()
            .any(|l| l.starts_with("sync: 0/1 entries") && l.contains("40.0 MiB")),
        "no progress line: {err}"
    );
    m.sync();
    assert_eq!(
        env.remote_files()["big.bin"].len() as u64,
        size,
        "the file did not arrive whole"
    );
    // A file another machine wrote comes down: the download rate shows it.
    env.put_remote("down.bin", &vec![9u8; 8 << 20]);
    assert!(
        eventually(30, || m.path("down.bin").exists()),
        "down.bin never appeared"
    );
    assert_eq!(fs::read(m.path("down.bin")).unwrap().len(), 8 << 20);
    let rate = m.status_json()["health"]["download_rate"].as_u64().unwrap();
    assert!(rate > 0, "no download rate right after reading 8 MiB");
    // The follower printed the upload as it landed, one JSON object per line.
    use std::io::BufRead;
    let lines = std::io::BufReader::new(follow.stdout.take().unwrap());
    let mut got = None;
    for line in lines.lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["kind"] == "upload" && v["path"] == "big.bin" {
            got = Some(v);
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(
        got.expect("log --follow never showed the upload")["bytes"],
        size
    );
}
