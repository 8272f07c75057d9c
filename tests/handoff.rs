//! The hand-off between the sync engine and the block cache, in-process (no FUSE): the
//! filesystem core, the store and the poller over a local-folder remote in a temp dir.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use stratus::cache::BLOCK_SIZE;
use stratus::daemon::CoreBuilder;
use stratus::remote::RemoteUrl;
use stratus::sync::{ConflictPolicy, SyncConfig};
use stratus::types::EntryId;
use stratus::vfs::VfsConfig;

/// Versions written to the remote; each has its own fill byte and its own length, so a read
/// tells which version it saw and whether it saw all of it.
const FILLS: u64 = 250;

fn fill_of(version: u64) -> u8 {
    (version % FILLS + 1) as u8
}

fn len_of_fill(fill: u8) -> usize {
    // From half a block to about a block and a half: one or two blocks per version.
    (BLOCK_SIZE / 2) as usize + fill as usize * 4099
}

/// Writes version `v` of `name` the way another program would: a new file renamed over the
/// old one (so the local remote sees a new version every time).
fn put_remote(root: &Path, name: &str, v: u64) {
    let fill = fill_of(v);
    let tmp = root.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, vec![fill; len_of_fill(fill)]).unwrap();
    std::fs::rename(&tmp, root.join(name)).unwrap();
}

struct Core {
    // Before the temp dir: dropped first, so that the core stops before its dirs go.
    core: stratus::daemon::Core,
    remote_root: PathBuf,
    _dir: tempfile::TempDir,
}

/// The core as the daemon starts it, minus FUSE; its engine idles (no polling, no jobs),
/// and the test polls directly.
fn core(name: &str) -> Core {
    let dir = tempfile::tempdir().unwrap();
    let remote_root = dir.path().join("remote");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&remote_root).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    put_remote(&remote_root, name, 0);

    let parts = CoreBuilder::open(&state, &RemoteUrl::Local(remote_root.clone()), &[]).unwrap();
    let sync_cfg = SyncConfig {
        default_uid: 0,
        default_gid: 0,
        poll_interval: None,
        policy: ConflictPolicy::Manual,
        writer: "test:handoff".into(),
        user_quiet: stratus::sync::USER_QUIET,
    };
    parts.populate(&sync_cfg).unwrap();
    let vfs_cfg = VfsConfig {
        write_back: Duration::from_secs(5),
        default_uid: 0,
        default_gid: 0,
        fetch_timeout: Duration::from_secs(30),
        cache_budget: 1 << 30,
        disk_reserve: 0,
        quota: None,
    };
    Core {
        core: parts.start(vfs_cfg, sync_cfg, None).unwrap(),
        remote_root,
        _dir: dir,
    }
}

/// The poller takes a remote change only for a closed file, and replaces or deletes its data
/// file. It used to check "closed" (`Store::is_busy`) and then do that without the file's
/// gate, while `Vfs::open` opened the data file first and counted the handle after: an open
/// between the two kept a data file the poller then deleted, and its reads returned the
/// zeros of that orphaned sparse file (the fetched blocks landed in the new one) as the
/// file's content. Now the open registers under the gate before it opens the data file, and
/// the poller works under the same gate only while no handle is open.
///
/// Readers open, read everything and close in a loop while another thread writes a new
/// version to the remote and polls, a few thousand times. A read may fail (EIO: the remote
/// moved on since the version it was opened at), but an open must succeed, and what a read
/// returns must be one whole version: one fill byte, never zero, at that version's length.
///
/// The race was real: against the code before the gate this test read a run of zeros in
/// each of two runs (once at the 33rd remote version); taking the read-only open out from
/// under the gate again brings it back, as zeros or as an open that fails with ENOENT
/// (the data file deleted between its creation and its opening).
#[test]
fn open_never_sees_data_swapped_by_the_poller() {
    let c = core("f");
    let id = c
        .core
        .vfs()
        .lookup(EntryId::ROOT, std::ffi::OsStr::new("f"))
        .unwrap()
        .ino;
    let id = EntryId(id);
    let done = AtomicBool::new(false);
    let version = AtomicU64::new(0);
    let (reads, failed, taken) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    const POLLS: u64 = 1000;
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    let (fh, _) = c.core.vfs().open(id, false, false).unwrap_or_else(|e| {
                        done.store(true, Ordering::Relaxed);
                        // The data file deleted between the open's two steps.
                        panic!("an open of the file failed: {e:?}")
                    });
                    let got = c.core.vfs().read(fh, 0, (2 * BLOCK_SIZE) as u32);
                    c.core.vfs().release(fh).unwrap();
                    let data = match got {
                        Ok(d) => d,
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) % 2000 == 0 {
                                eprintln!("read failed: {e:?}");
                            }
                            // The remote moved on; give the poller room to take it.
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                    };
                    reads.fetch_add(1, Ordering::Relaxed);
                    let fill = data.first().copied().unwrap_or(0);
                    let whole = fill != 0
                        && data.len() == len_of_fill(fill)
                        && data.iter().all(|b| *b == fill);
                    if !whole {
                        done.store(true, Ordering::Relaxed);
                        let zeros = data.iter().filter(|b| **b == 0).count();
                        panic!(
                            "a read returned {} bytes that are not one version \
                             (first byte {fill}, {zeros} zero bytes), at remote version {}",
                            data.len(),
                            version.load(Ordering::Relaxed)
                        );
                    }
                    // Leave the file closed for a moment now and then, so that polls take
                    // changes (a file open all the time is never swapped).
                    std::thread::yield_now();
                }
            });
        }
        for v in 1..=POLLS {
            if done.load(Ordering::Relaxed) {
                break;
            }
            let etag = |c: &Core| {
                let e = c.core.vfs().store().read(|db| db.must_get(id)).unwrap();
                e.synced.etag
            };
            let before = etag(&c);
            put_remote(&c.remote_root, "f", v);
            version.store(v, Ordering::Relaxed);
            // Polls until one finds the file closed and takes the new version.
            for _ in 0..1000 {
                c.core.poll().unwrap();
                if etag(&c) != before {
                    taken.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            // Let the readers fetch this version before the remote moves on (a fetch of a
            // version the remote no longer holds fails, and proves nothing).
            let seen = reads.load(Ordering::Relaxed);
            let until = std::time::Instant::now() + Duration::from_millis(20);
            while reads.load(Ordering::Relaxed) < seen + 2 && std::time::Instant::now() < until {
                std::thread::yield_now();
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    let (reads, failed, taken) = (reads.into_inner(), failed.into_inner(), taken.into_inner());
    eprintln!("{reads} whole reads, {failed} failed reads, {taken} of {POLLS} versions taken");
    // The race is exercised only if the poller took most versions and reads succeeded.
    assert!(taken > POLLS / 2, "only {taken} versions were taken");
    assert!(reads > 1000, "only {reads} reads succeeded");
}
