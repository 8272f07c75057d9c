//! A property test of two-way sync: rounds of random writes and deletes on two mounts (both
//! offline) and on the remote directly, so that within a round no side sees the others'
//! changes, then a full sync. After each round every version that was the last write of some side in that
//! round still exists in some file (a mount or the remote); at the end, once the conflicts are
//! kept with `both`, both mounts and the remote hold the same tree.
//!
//! Reproducible from the seed in the test name; on failure the operation log is printed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use common::mount::{Env, Mount};

const PATHS: [&str; 5] = ["a.txt", "b.txt", "c", "d/e.txt", "d/f"];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn sync_all(m: &Mount) {
    let o = m.stratus(&["sync", m.dir.to_str().unwrap(), "--wait", "--timeout", "60"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success()
            || (err.contains("wait for a conflict") && err.contains("0 entries failed")),
        "sync failed: {err}\n{}",
        m.log_tail()
    );
}

/// Every file of a mount, by path.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push((e.path(), rel));
            } else if ft.is_file() {
                out.insert(rel, fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Settles every open conflict with `both`, so that all versions become ordinary files.
fn keep_all(m: &Mount) {
    let o = m.stratus(&["conflicts", m.dir.to_str().unwrap(), "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for c in list.as_array().unwrap() {
        if c["resolved_ms"].is_null() {
            let path = m.path(c["path"].as_str().unwrap());
            let o = m.stratus(&["resolve", path.to_str().unwrap(), "--keep", "both"]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

fn run(env: &Env, seed: u64, rounds: usize) {
    let args = ["--write-back", "0.1", "--poll-interval", "0"];
    let a = env.try_mount(&env.new_state_dir(), &args).unwrap();
    let b = env.try_mount(&env.new_state_dir(), &args).unwrap();
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut log: Vec<String> = Vec::new();
    let mut n = 0u64;
    let offline = |m: &Mount, on: bool| {
        let o = m.stratus(&[
            "offline",
            m.dir.to_str().unwrap(),
            if on { "on" } else { "off" },
        ]);
        assert!(o.status.success());
    };
    for round in 0..rounds {
        // Both mounts offline while the round's operations happen, so that no side sees
        // another's changes before the round ends: the writes are truly concurrent. (A
        // version uploaded and then blindly overwritten by another tool is not a loss
        // stratus could prevent.)
        offline(&a, true);
        offline(&b, true);
        // side -> path -> the content of that side's last write this round
        let mut last: BTreeMap<&str, BTreeMap<&str, Vec<u8>>> = BTreeMap::new();
        for side in ["A", "B", "remote"] {
            for _ in 0..3 {
                let path = PATHS[rng.below(PATHS.len())];
                let delete = rng.below(4) == 0;
                n += 1;
                let content = format!("round {round} {side} op {n} seed {seed}\n").into_bytes();
                match (side, delete) {
                    ("remote", true) => continue,
                    ("remote", false) => env.put_remote(path, &content),
                    (_, true) => {
                        let m = if side == "A" { &a } else { &b };
                        if fs::remove_file(m.path(path)).is_ok() {
                            last.entry(side).or_default().remove(path);
                            log.push(format!("r{round} {side} delete {path}"));
                        }
                        continue;
                    }
                    (_, false) => {
                        let m = if side == "A" { &a } else { &b };
                        if let Some(parent) = m.path(path).parent() {
                            fs::create_dir_all(parent).unwrap();
                        }
                        fs::write(m.path(path), &content).unwrap();
                    }
                }
                log.push(format!(
                    "r{round} {side} write {path}: {}",
                    String::from_utf8_lossy(&content).trim()
                ));
                last.entry(side).or_default().insert(path, content);
            }
        }
        offline(&a, false);
        offline(&b, false);
        for _ in 0..2 {
            sync_all(&a);
            sync_all(&b);
        }
        // Every last write of this round survives somewhere.
        let mut everywhere: BTreeSet<Vec<u8>> = BTreeSet::new();
        everywhere.extend(files(&a.dir).into_values());
        everywhere.extend(files(&b.dir).into_values());
        everywhere.extend(env.remote_files().into_values());
        for (side, writes) in &last {
            for (path, content) in writes {
                assert!(
                    everywhere.contains(content),
                    "seed {seed}: {side}'s last write to {path} in round {round} was lost: {:?}\nlog:\n{}\nA:\n{}\nB:\n{}",
                    String::from_utf8_lossy(content),
                    log.join("\n"),
                    a.log_tail(),
                    b.log_tail()
                );
            }
        }
        keep_all(&a);
        keep_all(&b);
        for _ in 0..2 {
            sync_all(&a);
            sync_all(&b);
        }
    }
    // Both mounts and the remote agree.
    let (fa, fb, fr) = (files(&a.dir), files(&b.dir), env.remote_files());
    assert_eq!(
        fa.keys().collect::<Vec<_>>(),
        fr.keys().collect::<Vec<_>>(),
        "seed {seed}: A vs remote\nlog:\n{}",
        log.join("\n")
    );
    assert_eq!(
        fb.keys().collect::<Vec<_>>(),
        fr.keys().collect::<Vec<_>>(),
        "seed {seed}: B vs remote\nlog:\n{}",
        log.join("\n")
    );
    assert!(
        fa == fr && fb == fr,
        "seed {seed}: contents differ\nlog:\n{}",
        log.join("\n")
    );
}

every_backend!(random_rounds_seed_1, |env: &Env| run(env, 1, 4));
every_backend!(random_rounds_seed_2, |env: &Env| run(env, 2, 4));
every_backend!(random_rounds_seed_3, |env: &Env| run(env, 3, 4));
