//! Which blocks of each file changed since the version the remote holds, so that an upload
//! can send only the parts that changed (a differential upload) and copy the rest on the
//! server.
//!
//! Kept in memory only, and wrong only in the safe direction: a file this run has not seen
//! clean (written before a restart, or changed by a path that does not report here) has no
//! known base, and its next upload is whole. A base also names the data file it was taken on
//! (its inode), so a data file replaced behind our back (a conflict, a remote edit taken in)
//! makes the next upload whole as well.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Mutex;

use super::BLOCK_SIZE;
use crate::types::EntryId;

/// The remote version a file's changes are counted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The ETag of the version at the entry's synced key.
    pub etag: String,
    /// That version's size.
    pub len: u64,
    /// The data file's inode when the base was taken.
    pub ino: u64,
}

/// What an upload may build on: the base and the byte ranges changed since (block-aligned,
/// sorted, merged), as of generation `gen`.
#[derive(Debug, Clone)]
pub struct ChangeSet {
    pub base: Base,
    pub changed: Vec<Range<u64>>,
}

/// A snapshot for an upload: the generation it was taken at (hand it back to
/// [`ChangeLog::landed`]) and the change set, if the base is known.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub gen: u64,
    pub changes: Option<ChangeSet>,
}

/// A block noted before its bytes were written: changed, whatever generation an upload saw.
const PENDING: u64 = u64::MAX;

/// A change spanning more blocks than this (a truncate to terabytes, say) is not tracked block
/// by block: the file's next upload is whole. Keeps a note cheap whatever the range.
const MAX_TRACKED_BLOCKS: u64 = 1 << 14;

#[derive(Debug, Default)]
struct Record {
    /// `None`: unknown since when the file changed; the next upload is whole.
    base: Option<Base>,
    /// Changed blocks, each with the generation of its last change.
    blocks: BTreeMap<u64, u64>,
    /// The generation of the last change not tracked by block (too large, or made behind the
    /// core): while an upload's snapshot predates it, the next upload is whole.
    whole: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    gen: u64,
    files: HashMap<EntryId, Record>,
}

/// The per-file change records of one run.
#[derive(Debug, Default)]
pub struct ChangeLog {
    state: Mutex<State>,
}

impl ChangeLog {
    /// Whether `id` has a record (a base known or not).
    pub fn knows(&self, id: EntryId) -> bool {
        super::blocks::lock(&self.state).files.contains_key(&id)
    }

    /// Starts the record of `id` from `base` (`None`: unknown) unless it has one already.
    /// Callers find the base before they note a file's first change: the entry's synced
    /// version if the entry is clean, else `None`.
    pub fn start(&self, id: EntryId, base: Option<Base>) {
        super::blocks::lock(&self.state)
            .files
            .entry(id)
            .or_insert(Record {
                base,
                ..Record::default()
            });
    }

    /// Bytes `range` of `id` are about to change (`done` false) or have changed (`done`
    /// true). Note both sides of a write: before, so that a write that fails half way still
    /// counts as a change; after, so that an upload that read the file before the bytes
    /// landed does not count them as sent. A file without a record gets an unknown base.
    pub fn note(&self, id: EntryId, range: Range<u64>, done: bool) {
        let mut s = super::blocks::lock(&self.state);
        s.gen += 1;
        let gen = if done { s.gen } else { PENDING };
        let rec = s.files.entry(id).or_default();
        if range.is_empty() {
            return;
        }
        let (first, last) = (range.start / BLOCK_SIZE, (range.end - 1) / BLOCK_SIZE);
        if last - first >= MAX_TRACKED_BLOCKS {
            rec.whole = Some(gen);
            return;
        }
        for b in first..=last {
            rec.blocks.insert(b, gen);
        }
    }

    /// What an upload of `id` starting now may build on.
    pub fn snapshot(&self, id: EntryId) -> Snapshot {
        let s = super::blocks::lock(&self.state);
        let changes = s.files.get(&id).and_then(|rec| {
            if rec.whole.is_some() {
                return None;
            }
            let base = rec.base.clone()?;
            let mut changed: Vec<Range<u64>> = Vec::new();
            for &b in rec.blocks.keys() {
                let r = b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE;
                match changed.last_mut() {
                    Some(last) if last.end == r.start => last.end = r.end,
                    _ => changed.push(r),
                }
            }
            Some(ChangeSet { base, changed })
        });
        Snapshot {
            gen: s.gen,
            changes,
        }
    }

    /// An upload of `id` that took its snapshot at `gen` landed as version `base`: changes
    /// noted up to `gen` are in it; later ones stay. A file with none left loses its record,
    /// so the log holds only files with changes on their way: the next change starts again
    /// from the entry, clean by then at this version (or, in the moment before the uploader
    /// marks it clean, unknown: a whole upload, never a wrong one).
    pub fn landed(&self, id: EntryId, gen: u64, base: Option<Base>) {
        let mut s = super::blocks::lock(&self.state);
        let rec = s.files.entry(id).or_default();
        rec.blocks.retain(|_, g| *g > gen);
        rec.whole = rec.whole.filter(|g| *g > gen);
        rec.base = base;
        if rec.blocks.is_empty() && rec.whole.is_none() {
            s.files.remove(&id);
        }
    }

    /// The data file of `id` changed by a path that does not note its ranges (anything but
    /// the core's write and truncate, such as writes the kernel would pass straight to the
    /// data file): its next upload must be whole. Whoever adds such a path calls this.
    pub fn untracked_change(&self, id: EntryId) {
        let mut s = super::blocks::lock(&self.state);
        s.gen += 1;
        let gen = s.gen;
        s.files.entry(id).or_default().whole = Some(gen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = BLOCK_SIZE;

    fn base(etag: &str) -> Base {
        Base {
            etag: etag.into(),
            len: 100 * MB,
            ino: 7,
        }
    }

    #[test]
    fn a_huge_change_is_not_tracked_by_block_and_makes_the_next_upload_whole() {
        let log = ChangeLog::default();
        log.start(EntryId(1), Some(base("a")));
        // A truncate to 8 EiB notes at once (no block-by-block walk).
        log.note(EntryId(1), 5..i64::MAX as u64, false);
        log.note(EntryId(1), 5..i64::MAX as u64, true);
        let snap = log.snapshot(EntryId(1));
        assert!(
            snap.changes.is_none(),
            "a huge change must make the upload whole"
        );
        // The whole upload lands: the next small change builds on it again.
        log.landed(EntryId(1), snap.gen, Some(base("b")));
        log.start(EntryId(1), Some(base("b")));
        log.note(EntryId(1), 0..1, true);
        assert!(log.snapshot(EntryId(1)).changes.is_some());
        // An untracked change made while an upload ran survives that upload's landing.
        let snap = log.snapshot(EntryId(1));
        log.untracked_change(EntryId(1));
        log.landed(EntryId(1), snap.gen, Some(base("c")));
        // The next write starts its record as any write does, and notes its block.
        log.start(EntryId(1), Some(base("c")));
        log.note(EntryId(1), 0..1, true);
        assert!(
            log.snapshot(EntryId(1)).changes.is_none(),
            "an untracked change after the snapshot was forgotten"
        );
    }

    #[test]
    fn a_file_first_seen_dirty_has_no_base() {
        let log = ChangeLog::default();
        let id = EntryId(5);
        log.note(id, 0..10, true);
        assert!(log.snapshot(id).changes.is_none());
    }

    #[test]
    fn changes_are_block_aligned_and_merged() {
        let log = ChangeLog::default();
        let id = EntryId(5);
        log.start(id, Some(base("e1")));
        log.note(id, 3 * MB + 5..3 * MB + 6, true);
        log.note(id, 4 * MB..4 * MB + 1, true);
        log.note(id, 10 * MB - 1..10 * MB + 1, true);
        let c = log.snapshot(id).changes.unwrap();
        assert_eq!(c.changed, vec![3 * MB..5 * MB, 9 * MB..11 * MB]);
    }

    #[test]
    fn changes_after_the_snapshot_survive_the_upload() {
        let log = ChangeLog::default();
        let id = EntryId(5);
        log.start(id, Some(base("e1")));
        log.note(id, 0..1, true);
        let snap = log.snapshot(id);
        log.note(id, 2 * MB..2 * MB + 1, true);
        // Noted before its bytes landed, never after: must not be taken as sent.
        log.note(id, 50 * MB..50 * MB + 1, false);
        log.landed(id, snap.gen, Some(base("e2")));
        let c = log.snapshot(id).changes.unwrap();
        assert_eq!(c.base.etag, "e2");
        assert_eq!(c.changed, vec![2 * MB..3 * MB, 50 * MB..51 * MB]);
    }

    #[test]
    fn an_untracked_change_makes_the_next_upload_whole() {
        let log = ChangeLog::default();
        let id = EntryId(5);
        log.start(id, Some(base("e1")));
        log.untracked_change(id);
        assert!(log.snapshot(id).changes.is_none());
    }

    #[test]
    fn an_unknown_base_becomes_known_once_an_upload_lands() {
        let log = ChangeLog::default();
        let id = EntryId(5);
        log.note(id, 0..1, true);
        let snap = log.snapshot(id);
        assert!(snap.changes.is_none());
        log.note(id, MB..MB + 1, true);
        log.landed(id, snap.gen, Some(base("e2")));
        let c = log.snapshot(id).changes.unwrap();
        assert_eq!(c.base.etag, "e2");
        assert_eq!(c.changed.len(), 1);
        assert_eq!(c.changed[0], MB..2 * MB);
        log.landed(id, snap.gen, None);
        assert!(log.snapshot(id).changes.is_none());
    }

    #[test]
    fn a_file_with_nothing_left_to_send_leaves_the_log() {
        let log = ChangeLog::default();
        let id = EntryId(5);
        log.start(id, Some(base("e1")));
        log.note(id, 0..1, true);
        let snap = log.snapshot(id);
        log.landed(id, snap.gen, Some(base("e2")));
        assert!(!log.knows(id));
    }
}
