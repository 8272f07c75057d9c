//! Writers racing on the same paths: two mounts of one remote and a direct client write,
//! rename and delete the same paths at the same moment, files over the multipart threshold
//! (16 MiB) included. The direct client is the cloud's own API through object_store, with
//! conditional writes as a careful tool would send them; on a local folder it is a program
//! that honours `.stratus-lock`, the folder's only compare-and-swap.
//!
//! Every version a writer was told is saved (a mount: `fsync` and `close` returned; the
//! direct client: a conditional write answered with success) must be in the remote once the
//! queues drained, at its path or in a `.conflict` copy, byte for byte, and both mounts must
//! show exactly what the remote holds.
//!
//! Within a round each writer touches each path at most once and neither mount polls, so
//! every write is based on the round's starting state: a version saved in the round can only
//! be replaced by a writer that had seen it, and within a round nobody has. (Versions from
//! earlier rounds may be deleted or renamed over on purpose.)
//!
//! `STRATUS_RACE_ROUNDS` (default 2) sets the number of rounds and `STRATUS_RACE_SEED` the
//! first seed; `scripts/race.sh` runs many. A failure prints the seed and the operation log.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::sync::Mutex;

use common::direct::{digest, files, put_if, sha, try_files, versions, Version};
use common::mount::{Env, Mount};

const SMALL: [&str; 4] = ["s.txt", "t.txt", "d/x.txt", "d/y.txt"];
const BIG: &str = "big.bin";
/// Over the 16 MiB multipart threshold.
const BIG_SIZE: usize = (16 << 20) + (1 << 20) + 4096;

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

/// Content no other write has: a header naming the write, then filler up to `len`.
fn content(tag: &str, len: usize, seed: u64) -> Vec<u8> {
    let mut v = format!("{tag}\n").into_bytes();
    let mut r = Rng(seed | 1);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len.max(tag.len() + 1));
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write,
    Delete,
    Rename,
}

/// One writer's plan for a round: at most one operation per path.
fn plan(rng: &mut Rng, mount: bool) -> Vec<(Op, &'static str, Option<&'static str>)> {
    let mut free: Vec<&'static str> = SMALL.iter().copied().chain([BIG]).collect();
    let mut out = Vec::new();
    for _ in 0..3 {
        if free.is_empty() {
            break;
        }
        let p = free.remove(rng.below(free.len()));
        let op = match (mount, rng.below(10)) {
            (false, _) => Op::Write,
            (true, 0 | 1) => Op::Delete,
            (true, 2 | 3) if !free.is_empty() => Op::Rename,
            _ => Op::Write,
        };
        let to = (op == Op::Rename).then(|| free.remove(rng.below(free.len())));
        out.push((op, p, to));
    }
    out
}

/// Saved versions: (writer, path, sha256), and the log of everything that was tried.
#[derive(Default)]
struct Ledger {
    saved: Vec<(String, String, String)>,
    log: Vec<String>,
}

fn mount_writer(
    m: &Mount,
    name: &str,
    round: usize,
    seed: u64,
    rng: &mut Rng,
    ledger: &Mutex<Ledger>,
) {
    for (i, (op, p, to)) in plan(rng, true).into_iter().enumerate() {
        let note = |s: String| ledger.lock().unwrap().log.push(s);
        match op {
            Op::Write => {
                let len = if p == BIG {
                    BIG_SIZE
                } else {
                    64 + rng.below(4000)
                };
                let tag = format!("seed {seed} round {round} {name} op {i} write {p}");
                let data = content(&tag, len, rng.next());
                let path = m.path(p);
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                let r = (|| {
                    let mut f = fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&path)?;
                    f.write_all(&data)?;
                    f.sync_all()
                })();
                match r {
                    Ok(()) => {
                        note(format!("{tag}: saved {}", &sha(&data)[..12]));
                        ledger
                            .lock()
                            .unwrap()
                            .saved
                            .push((name.into(), p.into(), sha(&data)));
                    }
                    Err(e) => note(format!("{tag}: {e}")),
                }
            }
            Op::Delete => {
                let r = fs::remove_file(m.path(p));
                note(format!(
                    "seed {seed} round {round} {name} op {i} delete {p}: {r:?}"
                ));
            }
            Op::Rename => {
                let to = to.unwrap();
                fs::create_dir_all(m.path(to).parent().unwrap()).unwrap();
                let r = fs::rename(m.path(p), m.path(to));
                note(format!(
                    "seed {seed} round {round} {name} op {i} rename {p} -> {to}: {r:?}"
                ));
            }
        }
    }
}

fn direct_writer(
    env: &Env,
    round: usize,
    seed: u64,
    rng: &mut Rng,
    start: &BTreeMap<String, Version>,
    ledger: &Mutex<Ledger>,
) {
    for (i, (_, p, _)) in plan(rng, false).into_iter().enumerate() {
        let len = if p == BIG {
            BIG_SIZE
        } else {
            64 + rng.below(4000)
        };
        let tag = format!("seed {seed} round {round} D op {i} write {p}");
        let data = content(&tag, len, rng.next());
        let r = put_if(env, p, &data, start.get(p));
        let mut l = ledger.lock().unwrap();
        l.log.push(format!("{tag} {}: {r:?}", &sha(&data)[..12]));
        if r == Ok(true) {
            l.saved.push(("D".into(), p.into(), sha(&data)));
        }
    }
}

fn drain(a: &Mount, b: &Mount) {
    for m in [a, b, a, b] {
        m.sync();
    }
}

fn run(env: &Env) {
    let rounds: usize = std::env::var("STRATUS_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("STRATUS_RACE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let args = ["--write-back", "0.05", "--poll-interval", "0"];
    let a = env.try_mount(&env.new_state_dir(), &args).unwrap();
    let b = env.try_mount(&env.new_state_dir(), &args).unwrap();
    let mut all_log: Vec<String> = Vec::new();
    for round in 0..rounds {
        let s = seed.wrapping_mul(1_000).wrapping_add(round as u64);
        let start = versions(env, &[SMALL[0], SMALL[1], SMALL[2], SMALL[3], BIG]);
        let ledger = Mutex::new(Ledger::default());
        std::thread::scope(|sc| {
            sc.spawn(|| mount_writer(&a, "A", round, s, &mut Rng(s * 3 + 1), &ledger));
            sc.spawn(|| mount_writer(&b, "B", round, s, &mut Rng(s * 5 + 7), &ledger));
            sc.spawn(|| direct_writer(env, round, s, &mut Rng(s * 7 + 11), &start, &ledger));
        });
        drain(&a, &b);
        let ledger = ledger.into_inner().unwrap();
        all_log.extend(ledger.log.iter().cloned());
        let remote = digest(&env.remote_files());
        let held: BTreeSet<&String> = remote.values().collect();
        let why = || {
            format!(
                "seed {seed}, round {round}\nlog:\n{}\nremote: {remote:#?}\nA:\n{}\nB:\n{}",
                all_log.join("\n"),
                a.log_tail(),
                b.log_tail()
            )
        };
        for (who, path, hash) in &ledger.saved {
            assert!(
                held.contains(hash),
                "{who}'s saved write of {path} ({}) is in no remote object\n{}",
                &hash[..12],
                why()
            );
        }
        // Both mounts show exactly what the remote holds.
        let shown = |m: &Mount| {
            try_files(&m.dir).unwrap_or_else(|e| panic!("reading the mount: {e}\n{}", why()))
        };
        assert_eq!(
            digest(&shown(&a)),
            remote,
            "mount A differs from the remote\n{}",
            why()
        );
        assert_eq!(
            digest(&shown(&b)),
            remote,
            "mount B differs from the remote\n{}",
            why()
        );
        // Settle the round's conflicts by dropping the copies (on A), so rounds stay small.
        for name in files(&a.dir).keys().filter(|k| k.contains(".conflict-")) {
            fs::remove_file(a.path(name)).unwrap();
        }
        drain(&a, &b);
        assert!(
            !env.remote_files().keys().any(|k| k.contains(".conflict-")),
            "copies deleted on A stay in the remote\n{}",
            why()
        );
    }
}

every_backend!(
    writers_racing_on_the_same_paths_lose_no_saved_version,
    |env: &Env| run(env)
);
