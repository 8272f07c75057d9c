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
//! The main run puts the remote in memory (`Remote::memory`) behind a fault plan drawn per
//! case (`Remote::faulty`): some cases clean, others with latency, unavailable answers, lost
//! answers, cut transfers or refusals of preconditions that held, each kind at its own rate.
//! The promises stay the same: a fault may delay a sync or fail a read, never lose an
//! acknowledged version or make a writer conflict with itself. The direct client edits the
//! `Memory` handle with conditional writes, as another careful client would. A shorter run
//! keeps the local-folder remote honest too.
//!
//! `STRATUS_CORE_CASES` (default 1000 in memory, a tenth of it on the folder) and
//! `STRATUS_CORE_SEED` (default 1) set the run.

mod common;

use std::collections::BTreeSet;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::direct::{put_if, sha, versions, Version};
use common::inproc::Core;
use common::mount::{Backend, Env};
use common::tree::{content, Tree};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use stratus::remote::{FaultPlan, Faults, Injected, Memory, Remote};
use stratus::vfs::VfsError;

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

/// A fault plan for a case: a third of the cases clean, the others with each kind of fault
/// present or not, at rates that fail a few requests of a case (a shrunk failure keeps only
/// the faults it needs).
fn plan() -> impl Strategy<Value = FaultPlan> {
    let rate = |max: u16| prop_oneof![Just(0u16), 1..max];
    prop_oneof![
        1 => Just(FaultPlan::default()),
        2 => (
            any::<u64>(),
            prop_oneof![5 => Just(0u64), 1 => 1u64..2000],
            rate(150),
            rate(300),
            rate(300),
            rate(300),
        )
            .prop_map(|(seed, latency_us, unavailable, lost, cut, refused)| FaultPlan {
                seed,
                max_latency: Duration::from_micros(latency_us),
                unavailable,
                lost_answers: lost,
                cut_transfers: cut,
                refused_holding: refused,
            }),
    ]
}

/// Where a case's remote lives, and the direct client that edits it.
enum World {
    /// A local folder; the direct client honours `.stratus-lock`.
    Folder(Env),
    /// In memory behind `faults`; the direct client writes conditionally on `mem`, with the
    /// content's SHA-256 in stratus's metadata as another mount would, unless `foreign`.
    Memory {
        mem: Memory,
        faults: Faults,
        plan: FaultPlan,
        foreign: bool,
        tmp: tempfile::TempDir,
    },
}

impl World {
    /// A local-folder remote and its state dirs, on tmpfs where there is one: the model
    /// checks logic, not durability, and there an fsync costs nothing (a case takes a few
    /// ms, not tens).
    fn folder() -> World {
        let shm = std::path::Path::new("/dev/shm");
        World::Folder(if shm.is_dir() {
            Env::local_in(shm)
        } else {
            Env::new(Backend::Local)
        })
    }

    /// The remote in memory behind `plan`. Its direct client writes as another mount, with
    /// the content's hash: a move of a file written by a tool that leaves no hash is not
    /// recognized as done when it is redone after a lost answer or a refused delete (see
    /// `known_a_redone_move_of_a_file_without_our_hash_is_taken_for_an_edit`), so the main
    /// run leaves that case to the folder run, where no fault reaches it.
    fn memory(plan: FaultPlan) -> World {
        World::memory_with(plan, false)
    }

    fn memory_with(plan: FaultPlan, foreign: bool) -> World {
        let shm = std::path::Path::new("/dev/shm");
        let tmp = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        };
        World::Memory {
            mem: Memory::new(),
            faults: Faults::new(plan.clone()),
            plan,
            foreign,
            tmp: tmp.expect("temp dir"),
        }
    }

    fn new_state_dir(&self) -> PathBuf {
        match self {
            World::Folder(env) => env.new_state_dir(),
            World::Memory { tmp, .. } => tempfile::tempdir_in(tmp.path()).unwrap().keep(),
        }
    }

    /// A mount of the remote on `state`. The faults pause while it starts: a mount whose
    /// first listing fails is another test's matter.
    fn start(&self, state: &std::path::Path) -> Core {
        match self {
            World::Folder(env) => Core::start(state, &env.root),
            World::Memory {
                mem, faults, plan, ..
            } => {
                faults.set(FaultPlan::default());
                let remote = Remote::faulty(Box::new(mem.clone()), faults.clone());
                let core = Core::start_on(state, remote);
                faults.set(plan.clone());
                core
            }
        }
    }

    /// What the remote holds, read back by the direct client.
    fn tree(&self) -> Tree {
        match self {
            World::Folder(env) => Tree::of_remote(env),
            World::Memory { mem, .. } => {
                let (mut files, mut dirs) = (BTreeMap::new(), BTreeSet::new());
                for k in mem.keys() {
                    match k.strip_suffix('/') {
                        Some(d) => {
                            dirs.insert(d.to_string());
                        }
                        None => {
                            if let Some(data) = mem.get(&k) {
                                files.insert(k, data);
                            }
                        }
                    }
                }
                Tree::normalized(files, dirs)
            }
        }
    }

    fn versions(&self) -> BTreeMap<String, Version> {
        match self {
            World::Folder(env) => versions(env, &FILES),
            World::Memory { mem, .. } => FILES
                .iter()
                .filter_map(|p| Some((p.to_string(), (Some(mem.etag(p)?), None))))
                .collect(),
        }
    }

    /// The direct client's conditional write; `Ok(false)` when refused.
    fn put_if(&self, p: &str, data: &[u8], expect: Option<&Version>) -> Result<bool, String> {
        match self {
            World::Folder(env) => put_if(env, p, data, expect),
            World::Memory { mem, foreign, .. } => {
                let meta = stratus::remote::Meta {
                    sha256: (!foreign).then(|| sha(data)),
                    ..Default::default()
                };
                Ok(mem.put_if(p, data, meta, expect.and_then(|v| v.0.as_deref())))
            }
        }
    }

    /// `stratus sync --wait`; with faults, asked again every 2 ms, so a failed job does
    /// not wait out its backoff.
    fn drain(&self, c: &Core) -> Result<(), String> {
        match self {
            World::Memory { plan, .. } if !plan.is_clean() => {
                c.drain_asking_every(Some(Duration::from_millis(2)))
            }
            _ => c.drain(),
        }
    }

    /// Listings the remote answered so far (none counted on the folder, which only polls
    /// when asked).
    fn listings(&self) -> u64 {
        match self {
            World::Folder(_) => 0,
            World::Memory { faults, .. } => faults.listings(),
        }
    }

    fn faulty(&self) -> bool {
        matches!(self, World::Memory { plan, .. } if !plan.is_clean())
    }

    fn injected(&self) -> Injected {
        match self {
            World::Folder(_) => Injected::default(),
            World::Memory { faults, .. } => faults.injected(),
        }
    }

    /// The tree the core serves. A read the faults failed (unavailable, cut) fails as EIO
    /// would; the walk is tried again after a sync, as a user runs `cat` again, and whatever
    /// it serves is checked as any walk is.
    fn of_core(&self, c: &Core) -> Result<Tree, String> {
        let mut tries = 0;
        loop {
            match c.tree() {
                Ok((files, dirs)) => return Ok(Tree::normalized(files, dirs)),
                Err(VfsError::Remote(e)) if e.is_transient() && tries < 50 => {
                    tries += 1;
                    self.drain(c)?;
                }
                Err(e) => return Err(format!("walking the mount: {e}")),
            }
        }
    }
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
/// Adds to `seen` the paths the direct client wrote before a listing that the remote answered
/// since (`direct_at`: the count of listings answered at each direct write). A poll may
/// follow a sync at any time after a failure (the uploader looks again once the remote is
/// back), not only when the test asks.
fn polled_since<'a>(
    world: &World,
    direct_at: &BTreeMap<&'a str, u64>,
    seen: &mut BTreeSet<&'a str>,
) {
    let listed = world.listings();
    seen.extend(
        direct_at
            .iter()
            .filter(|(_, at)| listed > **at)
            .map(|(p, _)| *p),
    );
}

fn forget_seen(acked: &mut Vec<(String, String)>, seen: &BTreeSet<&str>, p: &str) {
    if seen.contains(p) {
        let what = format!("direct wrote {p}");
        acked.retain(|(w, _)| *w != what);
    }
}

fn fail(log: &[String], msg: String) -> TestCaseError {
    TestCaseError::fail(format!("{msg}\nlog:\n{}", log.join("\n")))
}

fn run_case(world: &World, windows: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let state = world.new_state_dir();
    let mut core = Some(world.start(&state));
    let mut log: Vec<String> = Vec::new();
    let mut n = 0;
    let mut offline = false;
    for (wi, ops) in windows.iter().enumerate() {
        let start = world.tree();
        let start_versions = world.versions();
        let mut model = start.clone();
        let mut direct_model = start.clone();
        // Paths the mount (0) and the direct client (1) touched in this window.
        let mut touched: [BTreeSet<&str>; 2] = Default::default();
        let mut acked: Vec<(String, String)> = Vec::new();
        // What the mount acknowledged in this window (each path is written at most once).
        let mut acked_here: Vec<String> = Vec::new();
        // Paths whose direct version the core may have polled in this window (it went back
        // online after the direct write, or a listing was answered since): the core may
        // replace that version, having seen it.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut direct_at: BTreeMap<&str, u64> = BTreeMap::new();
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
                    polled_since(world, &direct_at, &mut seen);
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
                    match r {
                        // A file not cached here is fetched first; a fault may fail that
                        // fetch, and the truncate with it: nothing changed.
                        Err(VfsError::Remote(e)) if e.is_transient() && world.faulty() => continue,
                        r => r.map_err(|e| fail(&log, format!("truncate {p}: {e}")))?,
                    }
                    model.files.insert(p.to_string(), data.clone());
                    touched[0].insert(p);
                    polled_since(world, &direct_at, &mut seen);
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
                    polled_since(world, &direct_at, &mut seen);
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
                    polled_since(world, &direct_at, &mut seen);
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
                    let r = world.put_if(p, &data, start_versions.get(p));
                    log.push(format!("{tag} direct write {p}: {r:?}"));
                    let saved = r.map_err(|e| fail(&log, format!("direct write {p}: {e}")))?;
                    touched[1].insert(p);
                    direct_at.insert(p, world.listings());
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
                    let (state, _) = core.take().unwrap().stop();
                    let again = world.start(&state);
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
        world
            .drain(c)
            .map_err(|e| fail(&log, format!("window {wi}: {e}")))?;
        let remote = world.tree();
        let mine = world.of_core(c).map_err(|e| fail(&log, e))?;
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
            world
                .drain(c)
                .map_err(|e| fail(&log, format!("window {wi}: after keeping both: {e}")))?;
        }
    }
    Ok(())
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs `cases` cases drawn from `strategy` with the run's seed; each case runs in the world
/// `world` makes for it.
fn run_model<T: std::fmt::Debug>(
    what: &str,
    cases: u32,
    strategy: impl Strategy<Value = T>,
    test: impl Fn(T) -> Result<(), TestCaseError>,
) {
    let seed = env_number("STRATUS_CORE_SEED").unwrap_or(1);
    eprintln!("core model ({what}): seed {seed}, {cases} cases (STRATUS_CORE_SEED={seed})");
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    });
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, case)) => panic!(
            "core model ({what}) failed with STRATUS_CORE_SEED={seed}\nshrunk case: {case:#?}\n{why}"
        ),
        Err(e) => panic!("core model ({what}), seed {seed}: {e}"),
    }
}

fn cases() -> u32 {
    env_number("STRATUS_CORE_CASES").unwrap_or(1000) as u32
}

#[test]
fn the_core_agrees_with_its_model_over_a_faulty_remote() {
    let total = Arc::new(Mutex::new(Injected::default()));
    let sum = total.clone();
    run_model(
        "memory, faults",
        cases(),
        (plan(), case()),
        move |(plan, windows)| {
            let clean = plan.is_clean();
            let lat = plan.max_latency;
            let world = World::memory(plan);
            let t0 = std::time::Instant::now();
            let r = run_case(&world, &windows);
            eprintln!(
                "TIMING clean={clean} lat={} ms={}",
                !lat.is_zero(),
                t0.elapsed().as_millis()
            );
            let (i, mut t) = (world.injected(), sum.lock().unwrap());
            t.delayed += i.delayed;
            t.unavailable += i.unavailable;
            t.lost_answers += i.lost_answers;
            t.cut_transfers += i.cut_transfers;
            t.refused_holding += i.refused_holding;
            r
        },
    );
    // The faults met the requests they are for: a plan that injects nothing would prove
    // nothing about them.
    let t = *total.lock().unwrap();
    eprintln!("core model: injected {t:?}");
    if cases() >= 500 {
        assert!(
            t.unavailable > 50
                && t.lost_answers > 50
                && t.refused_holding > 50
                && t.cut_transfers > 5
                && t.delayed > 500,
            "too few faults injected: {t:?}"
        );
    }
}

#[test]
fn the_core_agrees_with_its_model_over_a_folder() {
    run_model("folder", (cases() / 10).max(1), case(), |windows| {
        run_case(&World::folder(), &windows)
    });
}

// Regression (found by this test): a truncate committed the new size with its upload ready
// and cut the data file after; an uploader that took the job in between sent the old bytes
// as the new version and marked the file clean. The remote kept the old content, the mount
// showed the cut one, and the next remote edit replaced the truncate silently. The window
// is short, so the case runs many times.
#[test]
fn regression_a_truncate_is_uploaded_after_the_cut() {
    for _ in 0..40 {
        let world = World::folder();
        let windows = vec![
            vec![Op::Write { file: 1, len: 61 }],
            vec![
                Op::Truncate { file: 1, len: 32 },
                Op::Write { file: 3, len: 324 },
                Op::Direct { file: 1, len: 17 },
            ],
        ];
        if let Err(e) = run_case(&world, &windows) {
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
        let world = World::folder();
        let windows = vec![
            vec![Op::Direct { file: 3, len: 100 }],
            vec![Op::Write { file: 3, len: 18 }, Op::Restart],
        ];
        if let Err(e) = run_case(&world, &windows) {
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
        let world = World::folder();
        let windows = vec![
            vec![Op::Direct { file: 1, len: 53 }],
            vec![Op::Rename { from: 1, to: 0 }, Op::Offline, Op::Restart],
        ];
        if let Err(e) = run_case(&world, &windows) {
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
        let world = World::folder();
        let windows = vec![vec![
            Op::Offline,
            Op::Direct { file: 2, len: 47 },
            Op::Restart,
            Op::Write { file: 3, len: 59 },
            Op::Write { file: 2, len: 3 },
        ]];
        if let Err(e) = run_case(&world, &windows) {
            panic!("{e}");
        }
    }
}

// Regression (found by this test over the faulty remote): a delete conditioned on the version
// we knew, refused by the server although the key still held that version (a distributed
// store catching up answers 412 so), was taken for an edit made elsewhere: "the edit wins",
// nothing was retried, and the next poll brought the unlinked file back, on the mount and
// on the remote. Each seed refuses a different share of the requests.
#[test]
fn regression_a_refused_delete_whose_version_held_is_retried() {
    let mut refused = 0;
    for seed in 0..20 {
        let world = World::memory(FaultPlan {
            seed,
            refused_holding: 500,
            ..FaultPlan::default()
        });
        let windows = vec![
            vec![Op::Direct { file: 0, len: 40 }],
            vec![Op::Unlink { file: 0 }],
        ];
        if let Err(e) = run_case(&world, &windows) {
            panic!("seed {seed}: {e}");
        }
        refused += world.injected().refused_holding;
    }
    assert!(refused > 5, "only {refused} refusals injected");
}

// Regression (found by this test over the faulty remote, seed 1): the upload of a file just
// emptied by O_TRUNC was applied and its answer lost; a poll ran before the retry, saw a new
// version at the key of a file with local changes, and made it a conflict with ourselves:
// our own (torn) upload stayed at the path, failing its checksum on every read, and the
// written content went into a `.conflict` copy. The poller now leaves an entry whose job
// sent a version unheard to that job, which knows its own versions (`Job::tried`).
#[test]
fn regression_a_poll_leaves_a_lost_upload_to_its_job() {
    use Op::*;
    for i in 0..10 {
        let world = World::memory(FaultPlan {
            seed: 8739263729536079318,
            max_latency: Duration::from_micros(2850),
            lost_answers: 274,
            cut_transfers: 155,
            ..FaultPlan::default()
        });
        let windows = vec![
            vec![
                Rename { from: 0, to: 0 },
                Unlink { file: 4 },
                Write { file: 0, len: 2 },
                Offline,
            ],
            vec![
                Rmdir { dir: 1 },
                Rename { from: 4, to: 2 },
                Unlink { file: 1 },
                Write { file: 0, len: 37 },
                Mkdir { dir: 0 },
                Rmdir { dir: 1 },
                Offline,
            ],
            vec![
                Mkdir { dir: 0 },
                Write { file: 3, len: 53 },
                Offline,
                Unlink { file: 2 },
                Unlink { file: 3 },
                Write { file: 1, len: 1454 },
            ],
        ];
        if let Err(e) = run_case(&world, &windows) {
            panic!("run {i}: {e}");
        }
        assert!(world.injected().lost_answers > 0);
    }
}

// Regression (found by this test over the faulty remote, seed 2): a move whose server-side
// copy was refused at its empty new name (a refusal whose condition held) fell back to an
// upload, refused in turn; the refusal was taken for "deleted remotely since", which reset
// the entry's base. The old key, still holding the file, belonged to no entry any more, and
// the next poll brought the old name back beside the new one.
#[test]
fn regression_a_move_refused_at_its_new_name_keeps_its_old_key() {
    let mut refused = 0;
    for _ in 0..10 {
        let world = World::memory(FaultPlan {
            seed: 8369689070796229380,
            refused_holding: 65,
            ..FaultPlan::default()
        });
        let windows = vec![
            vec![Op::Write { file: 3, len: 0 }],
            vec![Op::Rename { from: 3, to: 2 }],
        ];
        if let Err(e) = run_case(&world, &windows) {
            panic!("{e}");
        }
        refused += world.injected().refused_holding;
    }
    assert!(refused > 0);
}

// Known, not fixed (found by this test over the faulty remote, seed 3, with a direct client
// that leaves no hash): a move of a file another tool wrote copies it to the new name, then
// its delete of the old name is refused although the key holds that version (or the copy's
// answer is lost). The job runs again, its copy meets the first copy at the new name, and
// cannot tell it for its own: no hash to compare, a new ETag (Memory and Azure copies get
// one; a single-part S3 copy keeps its MD5), and no stratus mtime. It is taken for an edit
// elsewhere, and the old name stays on the remote and comes back. Run it with `--ignored`.
#[test]
#[ignore]
fn known_a_redone_move_of_a_file_without_our_hash_is_taken_for_an_edit() {
    for _ in 0..10 {
        let world = World::memory_with(
            FaultPlan {
                seed: 5872675536437068660,
                refused_holding: 91,
                ..FaultPlan::default()
            },
            true,
        );
        let windows = vec![
            vec![Op::Direct { file: 0, len: 0 }],
            vec![Op::Rename { from: 0, to: 1 }],
        ];
        if let Err(e) = run_case(&world, &windows) {
            panic!("{e}");
        }
    }
}

// Known, not fixed (found by this test over the faulty remote, seed 6): a move of a file edited
// elsewhere at its old name "takes the edit" (copy_refused): the entry gets the edit's size and
// loses its local data at once, but its base still names our version at the old key until the
// old key's delete goes through. When that delete fails (here refused though its condition
// held, and retried; a transient error does the same), a read in between fetches the old key
// pinned to our version, which is gone: it fails with "the object changed since this file was
// opened" until the job runs again. Run it with `--ignored`.
#[test]
#[ignore]
fn known_a_move_that_took_an_edit_reads_nothing_until_its_delete_is_through() {
    use Op::*;
    for i in 0..10 {
        let world = World::memory(FaultPlan {
            seed: 4834635918477592538,
            refused_holding: 60,
            ..FaultPlan::default()
        });
        let windows = vec![
            vec![
                Direct { file: 0, len: 4 },
                Write { file: 4, len: 1917 },
                Rename { from: 0, to: 3 },
                Write { file: 0, len: 21 },
            ],
            vec![
                Direct { file: 4, len: 60 },
                Direct { file: 4, len: 22 },
                Rename { from: 4, to: 0 },
                Write { file: 1, len: 2030 },
                Direct { file: 1, len: 21 },
                Restart,
            ],
        ];
        if let Err(e) = run_case(&world, &windows) {
            panic!("run {i}: {e}");
        }
    }
}

// Regression (found by this test over the faulty remote, seed 5): a sync asked for while a job
// waited out a failure was served by a poll that ran before the job; the job then settled a
// conflict (a move onto a name edited elsewhere, which brings the moved file back at its old
// name), and the wait returned with the mount one poll behind the remote. With faults, the
// test's drain now ends with a poll that started once the queue was empty.
#[test]
fn regression_a_drain_ends_with_a_poll_after_the_last_job() {
    use Op::*;
    for i in 0..10 {
        let world = World::memory(FaultPlan {
            seed: 2865661933967660093,
            unavailable: 25,
            lost_answers: 175,
            refused_holding: 119,
            ..FaultPlan::default()
        });
        let windows = vec![
            vec![
                Write { file: 0, len: 22 },
                Write { file: 3, len: 69 },
                Truncate { file: 2, len: 52 },
                Direct { file: 1, len: 1922 },
            ],
            vec![
                Direct { file: 3, len: 36 },
                Restart,
                Rename { from: 0, to: 3 },
                Offline,
                Write { file: 3, len: 51 },
            ],
        ];
        if let Err(e) = run_case(&world, &windows) {
            panic!("run {i}: {e}");
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
