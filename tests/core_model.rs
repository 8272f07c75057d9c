//! The core checked against a model in-process, without FUSE (mountpoint-s3's reftests,
//! redb's fuzzer against a `BTreeMap`): proptest draws windows of operations on one mount's
//! VFS (create/write, truncate, rename, unlink, mkdir, rmdir), conditional edits by a direct
//! client of the remote folder, offline toggles and restarts of the core on its state dir,
//! each window ending in a drain (`sync --wait`). Thousands of cases run in seconds;
//! `tests/sync_model.rs` is the same idea on real mounts of real servers.
//!
//! The model is the tree the mount's user expects, and every version ever acknowledged
//! (the VFS: its `fsync` returned; the direct client: its conditional write succeeded).
//! After each drain:
//! - the mount and the remote hold the same tree, byte for byte;
//! - every version acknowledged in the window is in the remote, at its path or in a
//!   `.conflict` copy;
//! - every path nobody touched in the window holds what it held before;
//! - when only one writer acted, the remote is exactly that writer's tree;
//! - after a restart, the mount holds every version it acknowledged before.
//!
//! `STRATUS_CORE_CASES` (default 1000) and `STRATUS_CORE_SEED` (default 1) set the run.

mod common;

use std::collections::BTreeSet;

use common::direct::{put_if, sha, versions};
use common::inproc::Core;
use common::mount::{Backend, Env};
use common::tree::{content, Tree};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

const FILES: [&str; 5] = ["a", "b", "d/c", "d/e", "f/g"];
const DIRS: [&str; 2] = ["d", "f"];

#[derive(Debug, Clone)]
enum Op {
    Write { file: usize, len: u16 },
    Truncate { file: usize, len: u16 },
    Rename { from: usize, to: usize },
    Unlink { file: usize },
    Mkdir { dir: usize },
    Rmdir { dir: usize },
    Direct { file: usize, len: u16 },
    Offline,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..FILES.len();
    let dir = 0..DIRS.len();
    let len = prop_oneof![0u16..64, 64u16..3000];
    prop_oneof![
        6 => (file.clone(), len.clone()).prop_map(|(file, len)| Op::Write { file, len }),
        1 => (file.clone(), 0u16..100).prop_map(|(file, len)| Op::Truncate { file, len }),
        2 => (file.clone(), file.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => file.clone().prop_map(|file| Op::Unlink { file }),
        1 => dir.clone().prop_map(|dir| Op::Mkdir { dir }),
        1 => dir.prop_map(|dir| Op::Rmdir { dir }),
        3 => (file, len).prop_map(|(file, len)| Op::Direct { file, len }),
        1 => Just(Op::Offline),
        1 => Just(Op::Restart),
    ]
}

/// A case: windows of operations, each ending in a drain.
fn case() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(prop::collection::vec(op(), 0..8), 1..4)
}

/// The tree the core serves.
fn of_core(c: &Core) -> Result<Tree, String> {
    let (files, dirs) = c.tree().map_err(|e| format!("walking the mount: {e}"))?;
    Ok(Tree::normalized(files, dirs))
}

/// What the core can read without the remote (all a restart while offline can show).
fn cached_of_core(c: &Core) -> Result<Tree, String> {
    let (files, dirs) = c
        .cached_tree()
        .map_err(|e| format!("walking the mount: {e}"))?;
    Ok(Tree::normalized(files, dirs))
}

/// The direct client's version of `p` may have been seen by the core (`seen`), so a core
/// op that replaces `p` may replace it without keeping it.
fn forget_seen(acked: &mut Vec<(String, String)>, seen: &BTreeSet<&str>, p: &str) {
    if seen.contains(p) {
        let what = format!("direct wrote {p}");
        acked.retain(|(w, _)| *w != what);
    }
}

fn fail(log: &[String], msg: String) -> TestCaseError {
    TestCaseError::fail(format!("{msg}\nlog:\n{}", log.join("\n")))
}

/// A local-folder remote and its state dirs, on tmpfs where there is one: the model checks
/// logic, not durability, and there an fsync costs nothing (a case takes a few ms, not tens).
fn env() -> Env {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        Env::local_in(shm)
    } else {
        Env::new(Backend::Local)
    }
}

fn run_case(env: &Env, windows: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let state = env.new_state_dir();
    let mut core = Some(Core::start(&state, &env.root));
    let mut log: Vec<String> = Vec::new();
    let mut n = 0;
    let mut offline = false;
    for (wi, ops) in windows.iter().enumerate() {
        let start = Tree::of_remote(env);
        let start_versions = versions(env, &FILES);
        let mut model = start.clone();
        let mut direct_model = start.clone();
        // Paths the mount (0) and the direct client (1) touched in this window.
        let mut touched: [BTreeSet<&str>; 2] = Default::default();
        let mut acked: Vec<(String, String)> = Vec::new();
        // What the mount acknowledged in this window (each path is written at most once).
        let mut acked_here: Vec<String> = Vec::new();
        // Paths whose direct version the core may have polled in this window (it went back
        // online after the direct write): the core may replace that version, having seen it.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for op in ops {
            n += 1;
            let tag = format!("w{wi} op{n}");
            let c = core.as_ref().unwrap();
            match *op {
                Op::Write { file, len } => {
                    let p = FILES[file];
                    let parent = p.rsplit_once('/').map(|(d, _)| d);
                    if touched[0].contains(p)
                        || model.is_dir(p)
                        || parent.is_some_and(|d| model.files.contains_key(d))
                    {
                        continue;
                    }
                    let data = content(&format!("{tag} write {p}"), len as usize);
                    let r = parent
                        .map_or(Ok(()), |d| c.mkdirs(d))
                        .and_then(|_| c.write_file(p, &data));
                    log.push(format!("{tag} write {p} ({} bytes): {r:?}", data.len()));
                    r.map_err(|e| fail(&log, format!("write {p}: {e}")))?;
                    if let Some(d) = parent {
                        model.dirs.insert(d.to_string());
                    }
                    model.files.insert(p.to_string(), data.clone());
                    touched[0].insert(p);
                    forget_seen(&mut acked, &seen, p);
                    acked.push((format!("mount wrote {p}"), sha(&data)));
                    acked_here.push(sha(&data));
                }
                Op::Truncate { file, len } => {
                    let p = FILES[file];
                    let Some(old) = model.files.get(p).cloned() else {
                        continue;
                    };
                    if touched[0].contains(p) {
                        continue;
                    }
                    let mut data = old;
                    data.resize(len as usize, 0);
                    let r = c.truncate(p, len as u64);
                    log.push(format!("{tag} truncate {p} to {len}: {r:?}"));
                    r.map_err(|e| fail(&log, format!("truncate {p}: {e}")))?;
                    model.files.insert(p.to_string(), data.clone());
                    touched[0].insert(p);
                    forget_seen(&mut acked, &seen, p);
                    acked.push((format!("mount truncated {p}"), sha(&data)));
                    acked_here.push(sha(&data));
                }
                Op::Rename { from, to } => {
                    let (f, to) = (FILES[from], FILES[to]);
                    let to_parent = to.rsplit_once('/').map(|(d, _)| d);
                    if f == to
                        || !model.files.contains_key(f)
                        || model.is_dir(to)
                        || touched[0].contains(f)
                        || touched[0].contains(to)
                        || to_parent.is_some_and(|d| model.files.contains_key(d))
                    {
                        continue;
                    }
                    let r = to_parent
                        .map_or(Ok(()), |d| c.mkdirs(d))
                        .and_then(|_| c.rename(f, to));
                    log.push(format!("{tag} rename {f} -> {to}: {r:?}"));
                    r.map_err(|e| fail(&log, format!("rename {f} {to}: {e}")))?;
                    if let Some(d) = to_parent {
                        model.dirs.insert(d.to_string());
                    }
                    let data = model.files.remove(f).unwrap();
                    model.files.insert(to.to_string(), data);
                    touched[0].extend([f, to]);
                    forget_seen(&mut acked, &seen, to);
                }
                Op::Unlink { file } => {
                    let p = FILES[file];
                    if !model.files.contains_key(p) || touched[0].contains(p) {
                        continue;
                    }
                    let r = c.unlink(p);
                    log.push(format!("{tag} unlink {p}: {r:?}"));
                    r.map_err(|e| fail(&log, format!("unlink {p}: {e}")))?;
                    model.files.remove(p);
                    touched[0].insert(p);
                    forget_seen(&mut acked, &seen, p);
                }
                Op::Mkdir { dir } => {
                    let d = DIRS[dir];
                    if model.is_dir(d) || model.files.contains_key(d) || touched[0].contains(d) {
                        continue;
                    }
                    let r = c.mkdir(d);
                    log.push(format!("{tag} mkdir {d}: {r:?}"));
                    r.map_err(|e| fail(&log, format!("mkdir {d}: {e}")))?;
                    model.dirs.insert(d.to_string());
                    touched[0].insert(d);
                }
                Op::Rmdir { dir } => {
                    let d = DIRS[dir];
                    if !model.is_dir(d) || model.has_children(d) || touched[0].contains(d) {
                        continue;
                    }
                    let r = c.rmdir(d);
                    log.push(format!("{tag} rmdir {d}: {r:?}"));
                    r.map_err(|e| fail(&log, format!("rmdir {d}: {e}")))?;
                    model.dirs.remove(d);
                    touched[0].insert(d);
                }
                Op::Direct { file, len } => {
                    let p = FILES[file];
                    let parent = p.rsplit_once('/').map(|(d, _)| d);
                    if touched[1].contains(p)
                        || start.is_dir(p)
                        || parent.is_some_and(|d| start.files.contains_key(d))
                    {
                        continue;
                    }
                    let data = content(&format!("{tag} direct write {p}"), len as usize);
                    let r = put_if(env, p, &data, start_versions.get(p));
                    log.push(format!("{tag} direct write {p}: {r:?}"));
                    let saved = r.map_err(|e| fail(&log, format!("direct write {p}: {e}")))?;
                    touched[1].insert(p);
                    if saved {
                        if let Some(d) = parent {
                            direct_model.dirs.insert(d.to_string());
                        }
                        direct_model.files.insert(p.to_string(), data.clone());
                        acked.push((format!("direct wrote {p}"), sha(&data)));
                    }
                }
                Op::Offline => {
                    offline = !offline;
                    c.offline(offline);
                    if !offline {
                        // Back online, the core replays its queue and polls: from here on
                        // it may have seen what the direct client wrote so far.
                        seen.extend(touched[1].iter().copied());
                    }
                    log.push(format!("{tag} offline {offline}"));
                }
                Op::Restart => {
                    let (state, root) = core.take().unwrap().stop();
                    let again = Core::start(&state, &root);
                    log.push(format!("{tag} restarted"));
                    if offline {
                        again.offline(true);
                    }
                    // Everything it acknowledged is still here (at its path, or moved aside
                    // into a copy by a conflict).
                    let held: BTreeSet<String> = cached_of_core(&again)
                        .map_err(|e| fail(&log, e))?
                        .files
                        .values()
                        .map(|v| sha(v))
                        .collect();
                    if let Some(h) = acked_here.iter().find(|h| !held.contains(*h)) {
                        return Err(fail(&log, format!("lost {} at the restart", &h[..12])));
                    }
                    core = Some(again);
                }
            }
        }
        let c = core.as_ref().unwrap();
        if offline {
            offline = false;
            c.offline(false);
        }
        c.drain()
            .map_err(|e| fail(&log, format!("window {wi}: {e}")))?;
        let remote = Tree::of_remote(env);
        let mine = of_core(c).map_err(|e| fail(&log, e))?;
        if mine.digest() != remote.digest() {
            return Err(fail(
                &log,
                format!(
                    "window {wi}: the mount differs from the remote:\nmount: {:?}\nremote: {:?}",
                    mine.digest(),
                    remote.digest()
                ),
            ));
        }
        let held: BTreeSet<String> = remote.files.values().map(|v| sha(v)).collect();
        if let Some((what, h)) = acked.iter().find(|(_, h)| !held.contains(h)) {
            return Err(fail(
                &log,
                format!(
                    "window {wi}: {what} ({}), acknowledged, is in no remote file",
                    &h[..12]
                ),
            ));
        }
        let touched_any: BTreeSet<&str> = touched.iter().flatten().copied().collect();
        for (p, data) in &start.files {
            if !touched_any.contains(p.as_str()) && remote.files.get(p) != Some(data) {
                return Err(fail(&log, format!("window {wi}: {p}, untouched, changed")));
            }
        }
        let only = match (touched[0].is_empty(), touched[1].is_empty()) {
            (false, true) => Some(&model),
            (true, false) => Some(&direct_model),
            _ => None,
        };
        if let Some(only) = only {
            if only.digest() != remote.digest() {
                return Err(fail(
                    &log,
                    format!(
                        "window {wi}: one writer, but the remote is not its tree:\nmodel: {:?}\nremote: {:?}",
                        only.digest(),
                        remote.digest()
                    ),
                ));
            }
        }
        let kept = c
            .keep_all()
            .map_err(|e| fail(&log, format!("window {wi}: keeping both: {e}")))?;
        if kept > 0 {
            c.drain()
                .map_err(|e| fail(&log, format!("window {wi}: after keeping both: {e}")))?;
        }
    }
    Ok(())
}

#[test]
fn the_core_agrees_with_its_model() {
    let cases: u32 = std::env::var("STRATUS_CORE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("STRATUS_CORE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    eprintln!("core model: seed {seed}, {cases} cases (STRATUS_CORE_SEED={seed})");
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    });
    let result = runner.run(&case(), |windows| {
        let env = env();
        run_case(&env, &windows)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, windows)) => panic!(
            "core model failed with STRATUS_CORE_SEED={seed}\nshrunk case: {windows:#?}\n{why}"
        ),
        Err(e) => panic!("core model, seed {seed}: {e}"),
    }
}

// Regression (found by this test): a truncate committed the new size with its upload ready
// and cut the data file after; an uploader that took the job in between sent the old bytes
// as the new version and marked the file clean. The remote kept the old content, the mount
// showed the cut one, and the next remote edit replaced the truncate silently. The window
// is short, so the case runs many times.
#[test]
fn regression_a_truncate_is_uploaded_after_the_cut() {
    for _ in 0..40 {
        let env = env();
        let windows = vec![
            vec![Op::Write { file: 1, len: 61 }],
            vec![
                Op::Truncate { file: 1, len: 32 },
                Op::Write { file: 3, len: 324 },
                Op::Direct { file: 1, len: 17 },
            ],
        ];
        if let Err(e) = run_case(&env, &windows) {
            panic!("{e}");
        }
    }
}

// Regression (found by this test): a file replaced by a write (O_TRUNC, then the data)
// queued an upload of the emptied file, which started before the first write and landed as
// the core stopped; its answer never came. After the restart the written content met that
// empty version at the key as another writer's, and became a conflict with ourselves (and
// the empty version, torn by the write, failed its checksum on reads). A job now remembers
// the hashes it sent.
#[test]
fn regression_an_upload_whose_answer_was_lost_is_ours() {
    for _ in 0..30 {
        let env = env();
        let windows = vec![
            vec![Op::Direct { file: 3, len: 100 }],
            vec![Op::Write { file: 3, len: 18 }, Op::Restart],
        ];
        if let Err(e) = run_case(&env, &windows) {
            panic!("{e}");
        }
    }
}

// Regression (found by this test, seed 2): a move of a file another tool wrote (no hash in
// its metadata) whose server-side copy landed as the core stopped. After the restart the
// retried copy met its own copy as another writer's version (a folder's copy has a new
// ETag), took it as a conflict, and the old name came back with the next poll.
#[test]
fn regression_a_copy_whose_answer_was_lost_is_ours() {
    for _ in 0..30 {
        let env = env();
        let windows = vec![
            vec![Op::Direct { file: 1, len: 53 }],
            vec![Op::Rename { from: 1, to: 0 }, Op::Offline, Op::Restart],
        ];
        if let Err(e) = run_case(&env, &windows) {
            panic!("{e}");
        }
    }
}

// Regression (found by this test, seed 11): a restart while offline, offline set again at
// once with its kick; the new uploader had passed its offline check and polled on that kick.
// The mount thus knew a remote version written while it was offline, and its next write
// replaced that version instead of meeting it as a conflict.
#[test]
fn regression_no_poll_while_offline() {
    for _ in 0..40 {
        let env = env();
        let windows = vec![vec![
            Op::Offline,
            Op::Direct { file: 2, len: 47 },
            Op::Restart,
            Op::Write { file: 3, len: 59 },
            Op::Write { file: 2, len: 3 },
        ]];
        if let Err(e) = run_case(&env, &windows) {
            panic!("{e}");
        }
    }
}

// Regression: a metadata change (chmod) of a file never read whole, on a remote that cannot
// replace metadata in place (a local folder; S3 above CopyObject's 5 GiB), made the uploader
// download the object into a new data file and rename it over the old one, without the
// file's gate. A reader that had the file open kept the old, sparse data file, now taken
// for whole: its reads of blocks never fetched returned zeros as the file's content. The
// uploader now fills the file through the block cache, in place and under the gate.
#[test]
fn regression_a_reader_keeps_its_data_when_the_uploader_fetches_the_file() {
    use stratus::cache::BLOCK_SIZE;
    use stratus::vfs::SetAttr;
    let dir = tempfile::tempdir().unwrap();
    let (state, remote) = (dir.path().join("state"), dir.path().join("remote"));
    std::fs::create_dir_all(&remote).unwrap();
    let data: Vec<u8> = (0..3 * BLOCK_SIZE + 100)
        .map(|i| (i % 251) as u8 + 1)
        .collect();
    std::fs::write(remote.join("f"), &data).unwrap();
    let c = Core::start(&state, &remote);
    let id = c.resolve("f").unwrap();
    let fh = c.vfs.open(id, false, false).unwrap().0;
    // One block fetched: the rest of the data file is a hole.
    assert_eq!(c.vfs.read(fh, 0, 4096).unwrap(), data[..4096]);
    c.vfs
        .setattr(
            id,
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        )
        .unwrap();
    c.drain().unwrap();
    let at = 2 * BLOCK_SIZE as usize;
    let got = c.vfs.read(fh, at as u64, 4096).unwrap();
    assert!(
        got == data[at..at + 4096],
        "a read through the handle open across the upload returned other bytes (zeros: {})",
        got.iter().all(|b| *b == 0)
    );
    c.vfs.release(fh).unwrap();
    assert_eq!(c.read_file("f").unwrap(), data);
    c.stop();
}
