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

/// `stratus conflicts --json` of a mount.
fn conflicts(m: &Mount) -> Vec<serde_json::Value> {
    let o = m.stratus(&["conflicts", m.dir.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array().unwrap().clone()
}

fn open_conflicts(m: &Mount) -> Vec<serde_json::Value> {
    conflicts(m)
        .into_iter()
        .filter(|c| c["resolved_ms"].is_null())
        .collect()
}

/// Every `.conflict` copy in the remote.
fn remote_copies(env: &Env) -> Vec<String> {
    env.remote_files()
        .into_keys()
        .filter(|k| k.contains(".conflict-"))
        .collect()
}

/// `stratus resolve PATH --keep KEEP` on a mount.
fn resolve(m: &Mount, path: &str, keep: &str) -> std::process::Output {
    m.stratus(&["resolve", m.path(path).to_str().unwrap(), "--keep", keep])
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
/// B was offline writing "from B". Under the manual policy the version that reached the
/// remote first (A's) keeps the path and B's goes up as the copy, so that once both mounts
/// have synced, the remote and both mounts hold the same two files and list one open
/// conflict. Returns the copy's name.
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
    // Nothing waits for the user: both versions go up, and sync says a conflict is open.
    let o = b.stratus(&["sync", b.dir.to_str().unwrap(), "--wait", "--timeout", "60"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 open conflicts"));
    b.sync();
    a.sync();
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
    // The same two files, byte for byte, on both mounts and in the remote.
    for m in [a, b] {
        assert_eq!(copies(m, ""), vec![copy.clone()]);
        assert_eq!(read(m, "f.txt"), b"from A");
        assert_eq!(read(m, &copy), b"from B");
        assert_eq!(m.state_of("f.txt"), "conflict");
        assert_eq!(m.state_of(&copy), "conflict");
        assert_eq!(open_conflicts(m).len(), 1, "{:?}", conflicts(m));
    }
    let remote = env.remote_files();
    assert_eq!(remote["f.txt"], b"from A");
    assert_eq!(remote[&copy], b"from B");
    assert_eq!(remote_copies(env), vec![copy.clone()]);
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

/// The conflict is settled on every mount once it is settled on one.
fn settled_everywhere(env: &Env, a: &Mount, b: &Mount) {
    a.sync();
    b.sync();
    a.sync();
    for m in [a, b] {
        assert!(copies(m, "").is_empty() || open_conflicts(m).is_empty());
        assert!(open_conflicts(m).is_empty(), "{:?}", conflicts(m));
        assert_eq!(m.state_of("f.txt"), "synced");
    }
    let _ = env;
}

every_backend!(
    manual_conflict_resolved_by_renaming_the_copy_over,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        let copy = make_conflict(env, &a, &b);
        // Keep the copy's version (B's): rename it over the original, here on A.
        fs::rename(a.path(&copy), a.path("f.txt")).unwrap();
        assert!(copies(&a, "").is_empty());
        agree(env, &a, &b, "f.txt", b"from B");
        settled_everywhere(env, &a, &b);
        assert!(copies(&b, "").is_empty());
        assert!(remote_copies(env).is_empty());
    }
);

every_backend!(
    manual_conflict_resolved_by_deleting_the_copy,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        let copy = make_conflict(env, &a, &b);
        // Keep the version at the path (A's): delete the copy, on B.
        fs::remove_file(b.path(&copy)).unwrap();
        agree(env, &a, &b, "f.txt", b"from A");
        settled_everywhere(env, &a, &b);
        assert!(copies(&a, "").is_empty() && copies(&b, "").is_empty());
        assert!(remote_copies(env).is_empty());
    }
);

every_backend!(
    manual_conflict_resolved_with_the_cli_keeping_both,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        let copy = make_conflict(env, &a, &b);
        // Each mount lists both versions: hash, size, ETag and who wrote them.
        for (m, mine) in [(&a, "path"), (&b, "copy")] {
            let list = conflicts(m);
            assert_eq!(list.len(), 1, "{list:?}");
            let c = &list[0];
            assert_eq!(c["path"], "f.txt");
            assert_eq!(c["copy_path"], copy.as_str());
            assert_eq!(c["mine"], mine, "{c}");
            assert_eq!(c["at_path"]["size"], 6);
            assert_eq!(c["in_copy"]["size"], 6);
            let remote = env.remote_tree();
            for (side, key) in [("at_path", "f.txt"), ("in_copy", copy.as_str())] {
                assert!(
                    c[side]["sha256"].as_str().is_some_and(|h| h.len() == 64),
                    "{c}"
                );
                assert!(c[side]["writer"].as_str().is_some(), "{c}");
                // The ETag recorded is the version's own, not the base's.
                assert!(!c[side]["etag"].is_null(), "{side}: {c}");
                let _ = (&remote, key);
            }
            assert_ne!(c["at_path"]["etag"], c["in_copy"]["etag"]);
            assert_ne!(c["at_path"]["writer"], c["in_copy"]["writer"]);
        }
        let o = resolve(&a, "f.txt", "both");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Both versions stay as ordinary files everywhere.
        agree(env, &a, &b, "f.txt", b"from A");
        agree(env, &a, &b, &copy, b"from B");
        settled_everywhere(env, &a, &b);
        assert_eq!(b.state_of(&copy), "synced");
        let o = a.stratus(&["conflicts", a.dir.to_str().unwrap()]);
        assert!(String::from_utf8_lossy(&o.stdout).contains("resolved (both)"));
        // Resolving again explains itself and succeeds.
        let o = resolve(&b, "f.txt", "remote");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("already settled"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
);

every_backend!(manual_conflict_resolved_with_the_attribute, |env: &Env| {
    let (a, b) = pair(env, &[]);
    let copy = make_conflict(env, &a, &b);
    // On B, "remote" is A's version, which sits at the path: the copy goes.
    let st = Command::new("setfattr")
        .args(["-n", "user.stratus.resolve", "-v", "remote"])
        .arg(b.path("f.txt"))
        .status()
        .unwrap();
    assert!(st.success());
    // The kernel learns of the vanished copy through an invalidation sent right after.
    assert!(eventually(2, || !b.path(&copy).exists()));
    agree(env, &a, &b, "f.txt", b"from A");
    settled_everywhere(env, &a, &b);
    assert!(copies(&a, "").is_empty());
});

every_backend!(
    a_fresh_mount_lists_an_open_conflict_and_local_means_nothing_there,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        let copy = make_conflict(env, &a, &b);
        let c = env
            .try_mount(&env.new_state_dir(), &["--poll-interval", "0"])
            .unwrap();
        let open = open_conflicts(&c);
        assert_eq!(open.len(), 1, "{:?}", conflicts(&c));
        assert_eq!(open[0]["copy_path"], copy.as_str());
        assert!(open[0]["mine"].is_null());
        // Neither version was written on C: "local" is refused with the reason ...
        let o = resolve(&c, "f.txt", "local");
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("neither version"));
        // ... and "copy" keeps B's version on every mount.
        let o = resolve(&c, &copy, "copy");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        c.sync();
        agree(env, &a, &b, "f.txt", b"from B");
        c.sync();
        assert_eq!(read(&c, "f.txt"), b"from B");
        settled_everywhere(env, &a, &b);
        assert!(open_conflicts(&c).is_empty());
    }
);

every_backend!(
    created_on_both_sides_makes_one_conflict_however_many_polls,
    |env: &Env| {
        // Regression: the same new name created on two mounts, one of them offline, got a
        // new `.conflict` copy at every poll (7 after 20 s at a 3 s interval), and a second
        // `resolve` answered EINVAL while the other copies stayed open.
        let args = ["--poll-interval", "1", "--write-back", "0.2"];
        let a = env.try_mount(&env.new_state_dir(), &args).unwrap();
        let b = env.try_mount(&env.new_state_dir(), &args).unwrap();
        offline(&b, true);
        fs::write(a.path("new.txt"), b"made on A").unwrap();
        fs::write(b.path("new.txt"), b"made on B").unwrap();
        a.sync();
        offline(&b, false);
        b.sync();
        // Several polls on each side.
        let polls = |m: &Mount| {
            let v = Command::new("getfattr")
                .args(["--only-values", "-n", "user.stratus.polls"])
                .arg(&m.dir)
                .output()
                .unwrap();
            String::from_utf8_lossy(&v.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (pa, pb) = (polls(&a), polls(&b));
        assert!(eventually(30, || polls(&a) >= pa + 4 && polls(&b) >= pb + 4));
        a.sync();
        b.sync();
        for m in [&a, &b] {
            assert_eq!(copies(m, "").len(), 1, "{:?}", listing(m, ""));
            assert_eq!(open_conflicts(m).len(), 1, "{:?}", conflicts(m));
            assert_eq!(conflicts(m).len(), 1, "{:?}", conflicts(m));
        }
        assert_eq!(remote_copies(env).len(), 1);
        assert_eq!(env.remote_files()["new.txt"], b"made on A");
        let o = resolve(&b, "new.txt", "local");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let o = resolve(&b, "new.txt", "local");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).contains("already settled"));
        agree(env, &a, &b, "new.txt", b"made on B");
        assert!(remote_copies(env).is_empty());
        for m in [&a, &b] {
            assert!(copies(m, "").is_empty(), "{:?}", listing(m, ""));
            assert!(open_conflicts(m).is_empty(), "{:?}", conflicts(m));
        }
    }
);

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
        a.sync();
        b.sync();
        a.sync();
        let remote = env.remote_files()["race.txt"].clone();
        assert!(remote == b"A's edit" || remote == b"B's edit", "{remote:?}");
        let other: &[u8] = if remote == b"A's edit" {
            b"B's edit"
        } else {
            b"A's edit"
        };
        // The first to reach the server keeps the path; the other version is the copy, on
        // both mounts and in the remote.
        let c = remote_copies(env);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(env.remote_files()[&c[0]], other);
        for m in [&a, &b] {
            assert_eq!(copies(m, ""), c, "{:?}", listing(m, ""));
            assert_eq!(read(m, "race.txt"), remote);
            assert_eq!(read(m, &c[0]), other);
        }
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
        // The loser is an ordinary file, on every mount and in the remote.
        agree(&env, &a, &b, &c[0], other);
        assert!(open_conflicts(&a).is_empty() && open_conflicts(&b).is_empty());
        assert_eq!(a.state_of(&c[0]), "synced", "{policy}");
    }
});

every_backend!(
    a_file_open_here_is_not_swapped_until_it_is_closed,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        fs::write(a.path("f.txt"), b"base").unwrap();
        a.sync();
        b.sync();
        assert_eq!(read(&b, "f.txt"), b"base");
        offline(&b, true);
        fs::write(a.path("f.txt"), b"from A").unwrap();
        a.sync();
        fs::write(b.path("f.txt"), b"from B").unwrap();
        // A reader keeps B's version open while B finds the conflict.
        let held = fs::File::open(b.path("f.txt")).unwrap();
        offline(&b, false);
        let o = b.stratus(&["sync", b.dir.to_str().unwrap()]);
        assert!(o.status.success());
        std::thread::sleep(std::time::Duration::from_secs(3));
        assert!(copies(&b, "").is_empty(), "{:?}", listing(&b, ""));
        assert_eq!(read(&b, "f.txt"), b"from B");
        {
            use std::io::Read;
            let mut s = Vec::new();
            (&held).read_to_end(&mut s).unwrap();
            assert_eq!(s, b"from B");
        }
        drop(held);
        b.sync();
        a.sync();
        let c = copies(&b, "");
        assert_eq!(c.len(), 1, "{:?}", listing(&b, ""));
        assert_eq!(read(&b, "f.txt"), b"from A");
        assert_eq!(read(&b, &c[0]), b"from B");
        assert_eq!(read(&a, &c[0]), b"from B");
    }
);

every_backend!(
    a_users_file_with_the_copys_name_is_never_overwritten,
    |env: &Env| {
        let (a, b) = pair(env, &[]);
        fs::write(a.path("f.txt"), b"base").unwrap();
        a.sync();
        b.sync();
        offline(&b, true);
        fs::write(a.path("f.txt"), b"from A").unwrap();
        a.sync();
        fs::write(b.path("f.txt"), b"from B").unwrap();
        // Every name the copy could take in the next half minute already exists: half as
        // files here on B, half as objects another tool wrote on the remote.
        let now = chrono::Utc::now();
        let mut taken = Vec::new();
        for s in 0..30 {
            let at = now + chrono::Duration::seconds(s);
            let name = format!("f.conflict-{}.txt", at.format("%Y%m%d-%H%M%S"));
            let mine = format!("the user's own {name}").into_bytes();
            if s % 2 == 0 {
                fs::write(b.path(&name), &mine).unwrap();
            } else {
                env.put_remote(&name, &mine);
            }
            taken.push((name, mine));
        }
        offline(&b, false);
        b.sync();
        a.sync();
        b.sync();
        for (name, mine) in &taken {
            assert_eq!(&read(&b, name), mine, "{name} on B");
            assert_eq!(&read(&a, name), mine, "{name} on A");
            assert_eq!(
                env.remote_files().get(name),
                Some(mine),
                "{name} on the remote"
            );
        }
        let open = open_conflicts(&b);
        assert_eq!(open.len(), 1, "{:?}", conflicts(&b));
        let copy = open[0]["copy_path"].as_str().unwrap().to_string();
        assert!(!taken.iter().any(|(n, _)| *n == copy), "{copy}");
        assert_eq!(read(&a, &copy), b"from B");
        assert_eq!(env.remote_files()[&copy], b"from B");
    }
);
