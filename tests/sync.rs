//! Two-way sync through real mounts: two mounts of the same remote (two state dirs), each
//! row of the decision table reached by what users do, conflicts kept and resolved every way
//! the issue names, and the remote and both mounts agreeing at the end.

mod common;

use std::fs;
use std::process::Command;

use common::mount::{eventually, Env, Mount};

/// Two mounts of one remote. Polling is off: each test says when a side looks (`stratus sync`
/// lists the remote), except where the poll interval itself is under test.
fn pair(env: &Env, extra: &[&str]) -> (Mount, Mount) {
    let mut args = vec!["--poll-interval", "0"];
    if !extra.contains(&"--write-back") {
        args.extend_from_slice(&["--write-back", "0.2"]);
    }
    args.extend_from_slice(extra);
    let a = env.try_mount(&env.new_state_dir(), &args).unwrap();
    let b = env.try_mount(&env.new_state_dir(), &args).unwrap();
    (a, b)
}

/// `stratus sync --wait` where an open conflict may hold an entry: that must be the only
/// thing it reports.
fn sync_tolerating_conflicts(m: &Mount) {
    let o = m.stratus(&["sync", m.dir.to_str().unwrap(), "--wait", "--timeout", "60"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success()
            || (err.contains("wait for a conflict") && err.contains("0 entries failed")),
        "sync failed: {err}"
    );
}

fn offline(m: &Mount, on: bool) {
    let o = m.stratus(&[
        "offline",
        m.dir.to_str().unwrap(),
        if on { "on" } else { "off" },
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn read(m: &Mount, p: &str) -> Vec<u8> {
    fs::read(m.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// `.conflict` copies in a directory of the mount.
fn copies(m: &Mount, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(m.path(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".conflict-"))
        .collect();
    v.sort();
    v
}

fn listing(m: &Mount, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(m.path(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Both mounts hold `path` (both A's and B's view) with `want`, and so does the remote.
fn agree(env: &Env, a: &Mount, b: &Mount, path: &str, want: &[u8]) {
    a.sync();
    b.sync();
    a.sync();
    assert_eq!(read(a, path), want, "mount A, {path}");
    assert_eq!(read(b, path), want, "mount B, {path}");
    assert_eq!(
        env.remote_files().get(path).map(Vec::as_slice),
        Some(want),
        "remote, {path}"
    );
}

/// A conflict on B's `f.txt`: A and B both had "base"; A wrote "from A" and uploaded it while
/// B was offline writing "from B". Returns the name of B's `.conflict` copy.
fn make_conflict(env: &Env, a: &Mount, b: &Mount) -> String {
    fs::write(a.path("f.txt"), b"base").unwrap();
    a.sync();
    b.sync();
    assert_eq!(read(b, "f.txt"), b"base");
    offline(b, true);
    fs::write(a.path("f.txt"), b"from A").unwrap();
    a.sync();
    fs::write(b.path("f.txt"), b"from B").unwrap();
    offline(b, false);
    let o = b.stratus(&["sync", b.dir.to_str().unwrap(), "--wait", "--timeout", "60"]);
    // The conflict holds B's upload, and sync says so.
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 wait for a conflict"));
    let c = copies(b, "");
    assert_eq!(
        c.len(),
        1,
        "one conflict copy expected: {:?}",
        listing(b, "")
    );
    let copy = c[0].clone();
    assert!(
        copy.starts_with("f.conflict-") && copy.ends_with(".txt"),
        "{copy}"
    );
    // Manual policy: the local version stays at the path, the remote one beside it.
    assert_eq!(read(b, "f.txt"), b"from B");
    assert_eq!(read(b, &copy), b"from A");
    assert_eq!(b.state_of("f.txt"), "conflict");
    assert_eq!(b.state_of(&copy), "conflict");
    // Nothing was uploaded over A's version, and the copy stays local.
    let remote = env.remote_files();
    assert_eq!(remote["f.txt"], b"from A");
    assert!(!remote.contains_key(&copy));
    copy
}

every_backend!(changes_flow_both_ways, |env: &Env| {
    let (a, b) = pair(env, &[]);
    fs::create_dir_all(a.path("docs/deep")).unwrap();
    fs::write(a.path("docs/deep/x.txt"), b"one").unwrap();
    fs::write(a.path("top.txt"), b"top").unwrap();
    a.sync();
    b.sync();
    assert_eq!(read(&b, "docs/deep/x.txt"), b"one");
    assert_eq!(read(&b, "top.txt"), b"top");
    // Edited on B: A sees the new content, with no stale page cache.
    assert_eq!(read(&a, "top.txt"), b"top");
    fs::write(b.path("top.txt"), b"top, edited on B").unwrap();
    b.sync();
    a.sync();
    assert_eq!(read(&a, "top.txt"), b"top, edited on B");
    // Renamed and deleted on B: A follows.
    fs::rename(b.path("docs/deep/x.txt"), b.path("docs/y.txt")).unwrap();
    fs::remove_file(b.path("top.txt")).unwrap();
    b.sync();
    a.sync();
    assert_eq!(listing(&a, ""), vec!["docs"]);
    assert_eq!(listing(&a, "docs"), vec!["deep", "y.txt"]);
    assert_eq!(read(&a, "docs/y.txt"), b"one");
    // A directory removed on A disappears on B.
    fs::remove_dir(a.path("docs/deep")).unwrap();
    a.sync();
    b.sync();
    assert_eq!(listing(&b, "docs"), vec!["y.txt"]);
    assert!(copies(&a, "").is_empty() && copies(&b, "").is_empty());
});

every_backend!(
    remote_changes_appear_within_one_poll_interval,
    |env: &Env| {
        // Long enough that a listing plus a download on a loaded machine fits in the margin,
        // short enough that an interval not kept (a missed tick, a default taking over) shows.
        const INTERVAL_S: f64 = 3.0;
        const MARGIN_S: f64 = 1.5;
        let a = env
            .try_mount(&env.new_state_dir(), &["--write-back", "0.2"])
            .unwrap();
        let b = env
            .try_mount(
                &env.new_state_dir(),
                &[
                    "--write-back",
                    "0.2",
                    "--poll-interval",
                    &INTERVAL_S.to_string(),
                ],
            )
            .unwrap();
        fs::write(a.path("news.txt"), b"fresh").unwrap();
        a.sync();
        // The file is on the remote from here on; B's next poll is at most one interval away.
        // No `stratus sync` on B: its poller alone brings the file in.
        let confirmed = std::time::Instant::now();
        let deadline = confirmed + std::time::Duration::from_secs_f64(INTERVAL_S + MARGIN_S);
        while fs::read(b.path("news.txt")).ok().as_deref() != Some(b"fresh") {
            assert!(
                std::time::Instant::now() < deadline,
                "B did not see the new file within one poll interval ({INTERVAL_S} s) plus \
                 {MARGIN_S} s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
);

every_backend!(
    manual_conflict_resolved_by_renaming_the_copy_over,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        let copy = make_conflict(env, &a, &b);
        // Keep the remote version: rename the copy over the original.
        fs::rename(b.path(&copy), b.path("f.txt")).unwrap();
        assert!(copies(&b, "").is_empty());
        agree(env, &a, &b, "f.txt", b"from A");
        assert_eq!(b.state_of("f.txt"), "synced");
        assert!(!env.remote_files().keys().any(|k| k.contains(".conflict-")));
    }
);

every_backend!(
    manual_conflict_resolved_by_deleting_the_copy,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        let copy = make_conflict(env, &a, &b);
        // Keep the local version: delete the copy; B's version goes up over A's.
        fs::remove_file(b.path(&copy)).unwrap();
        agree(env, &a, &b, "f.txt", b"from B");
        assert!(copies(&a, "").is_empty() && copies(&b, "").is_empty());
    }
);

every_backend!(
    manual_conflict_resolved_with_the_cli_keeping_both,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        let copy = make_conflict(env, &a, &b);
        let o = b.stratus(&["conflicts", b.dir.to_str().unwrap(), "--json"]);
        assert!(o.status.success());
        let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["path"], "f.txt");
        assert_eq!(list[0]["copy_path"], copy.as_str());
        assert!(list[0]["resolved_ms"].is_null());
        let o = b.stratus(&[
            "resolve",
            b.path("f.txt").to_str().unwrap(),
            "--keep",
            "both",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Both versions become ordinary files everywhere.
        agree(env, &a, &b, "f.txt", b"from B");
        agree(env, &a, &b, &copy, b"from A");
        let o = b.stratus(&["conflicts", b.dir.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("resolved (both)"));
    }
);

every_backend!(manual_conflict_resolved_with_the_attribute, |env: &Env| {
    let (a, b) = pair(env, &[]);
    let copy = make_conflict(env, &a, &b);
    let st = Command::new("setfattr")
        .args(["-n", "user.stratus.resolve", "-v", "remote"])
        .arg(b.path("f.txt"))
        .status()
        .unwrap();
    assert!(st.success());
    // The kernel learns of the vanished copy through an invalidation sent right after.
    assert!(eventually(2, || !b.path(&copy).exists()));
    agree(env, &a, &b, "f.txt", b"from A");
});

every_backend!(identical_edits_are_not_a_conflict, |env: &Env| {
    let (a, b) = pair(env, &[]);
    fs::write(a.path("same.txt"), b"v1").unwrap();
    a.sync();
    b.sync();
    offline(&b, true);
    fs::write(a.path("same.txt"), b"v2 on both").unwrap();
    a.sync();
    fs::write(b.path("same.txt"), b"v2 on both").unwrap();
    offline(&b, false);
    b.sync();
    assert!(copies(&b, "").is_empty(), "{:?}", listing(&b, ""));
    agree(env, &a, &b, "same.txt", b"v2 on both");
});

every_backend!(an_edit_wins_over_a_delete_on_either_side, |env: &Env| {
    let (a, b) = pair(env, &[]);
    fs::write(a.path("kept.txt"), b"v1").unwrap();
    fs::write(a.path("back.txt"), b"v1").unwrap();
    a.sync();
    b.sync();
    offline(&b, true);
    // Deleted on B, edited on A: the edit comes back to B.
    fs::remove_file(b.path("back.txt")).unwrap();
    fs::write(a.path("back.txt"), b"edited on A").unwrap();
    // Edited on B, deleted on A: B's version stays and goes up again.
    fs::write(b.path("kept.txt"), b"edited on B").unwrap();
    fs::remove_file(a.path("kept.txt")).unwrap();
    a.sync();
    offline(&b, false);
    b.sync();
    assert_eq!(read(&b, "back.txt"), b"edited on A");
    agree(env, &a, &b, "back.txt", b"edited on A");
    agree(env, &a, &b, "kept.txt", b"edited on B");
});

every_backend!(
    a_directory_deleted_remotely_keeps_local_changes,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        fs::create_dir(a.path("d")).unwrap();
        fs::write(a.path("d/old.txt"), b"old").unwrap();
        a.sync();
        b.sync();
        offline(&b, true);
        fs::write(b.path("d/new.txt"), b"made on B").unwrap();
        fs::remove_file(a.path("d/old.txt")).unwrap();
        fs::remove_dir(a.path("d")).unwrap();
        a.sync();
        offline(&b, false);
        b.sync();
        assert_eq!(listing(&b, "d"), vec!["new.txt"]);
        agree(env, &a, &b, "d/new.txt", b"made on B");
        assert!(!a.path("d/old.txt").exists());
    }
);

every_backend!(
    racing_uploads_have_one_winner_and_keep_the_other,
    |env: &Env| {
        let (a, b) = pair(env, &["--write-back", "3600"]);
        fs::write(a.path("race.txt"), b"start").unwrap();
        a.sync();
        b.sync();
        fs::write(a.path("race.txt"), b"A's edit").unwrap();
        fs::write(b.path("race.txt"), b"B's edit").unwrap();
        // Both push at once; the server takes exactly one conditional write.
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| {
                a.stratus(&["sync", a.dir.to_str().unwrap(), "--wait", "--timeout", "30"])
            });
            let hb = s.spawn(|| {
                b.stratus(&["sync", b.dir.to_str().unwrap(), "--wait", "--timeout", "30"])
            });
            (ha.join().unwrap(), hb.join().unwrap())
        });
        let _ = (ra, rb);
        sync_tolerating_conflicts(&a);
        sync_tolerating_conflicts(&b);
        let remote = env.remote_files()["race.txt"].clone();
        assert!(remote == b"A's edit" || remote == b"B's edit", "{remote:?}");
        let (winner, loser) = if remote == b"A's edit" {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(copies(winner, "").is_empty());
        let c = copies(loser, "");
        assert_eq!(
            c.len(),
            1,
            "the losing side keeps the other version: {:?}",
            listing(loser, "")
        );
        // The loser's own version stays at the path; the winner's is in the copy.
        assert_eq!(read(loser, &c[0]), remote);
        assert_ne!(read(loser, "race.txt"), remote);
    }
);

every_backend!(policies_decide_at_once_and_keep_the_loser, |env: &Env| {
    for (policy, stays) in [
        ("local", b"from B" as &[u8]),
        ("remote", b"from A"),
        ("newest", b"from B"),
    ] {
        let env = Env::new(env.backend);
        let (a, b) = pair(&env, &["--conflict", policy]);
        fs::write(a.path("f.txt"), b"base").unwrap();
        a.sync();
        b.sync();
        offline(&b, true);
        fs::write(a.path("f.txt"), b"from A").unwrap();
        a.sync();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(b.path("f.txt"), b"from B").unwrap();
        offline(&b, false);
        b.sync();
        b.sync();
        let c = copies(&b, "");
        assert_eq!(c.len(), 1, "{policy}: {:?}", listing(&b, ""));
        let other: &[u8] = if stays == b"from A" {
            b"from B"
        } else {
            b"from A"
        };
        assert_eq!(
            read(&b, &c[0]),
            other,
            "{policy}: the losing version is kept"
        );
        assert_ne!(b.state_of("f.txt"), "conflict", "{policy}: decided at once");
        agree(&env, &a, &b, "f.txt", stays);
        assert!(
            !env.remote_files().contains_key(&c[0]),
            "{policy}: the copy stays local"
        );
    }
});
