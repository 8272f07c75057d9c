//! The `entries` and `blocks` tables: the tree (one row per file, directory, symlink or special file, with
//! its attributes and the base the remote last agreed on), pins, and which blocks of a partly
//! fetched file its data file holds.

use rusqlite::{params, OptionalExtension, Row};

use super::{now_ns, Db, StoreError, StoreResult};
use crate::types::{EntryId, Kind, Special};

impl Kind {
    fn to_sql(self) -> i64 {
        match self {
            Kind::File => 1,
            Kind::Dir => 2,
            Kind::Symlink => 3,
            Kind::Special(Special::Fifo) => 4,
            Kind::Special(Special::Socket) => 5,
            Kind::Special(Special::CharDev(_)) => 6,
            Kind::Special(Special::BlockDev(_)) => 7,
        }
    }

    /// The `rdev` column: a device's number, 0 for everything else.
    fn rdev_sql(self) -> i64 {
        match self {
            Kind::Special(s) => s.rdev() as i64,
            _ => 0,
        }
    }

    fn from_sql(v: i64, rdev: i64) -> rusqlite::Result<Self> {
        match v {
            1 => Ok(Kind::File),
            2 => Ok(Kind::Dir),
            3 => Ok(Kind::Symlink),
            4 => Ok(Kind::Special(Special::Fifo)),
            5 => Ok(Kind::Special(Special::Socket)),
            6 => Ok(Kind::Special(Special::CharDev(rdev as u64))),
            7 => Ok(Kind::Special(Special::BlockDev(rdev as u64))),
            other => Err(rusqlite::Error::IntegralValueOutOfRange(0, other)),
        }
    }
}

/// Bits of `Entry::dirty`: what the remote copy lacks.
pub mod dirty {
    pub const CONTENT: i64 = 1;
    pub const META: i64 = 2;
    /// Written by the kernel straight to the data file (FUSE passthrough), where writes
    /// need not pass the core: after a crash the data file's length is the file's, as for
    /// a held writer, even once the upload was let go (fsync). Set only with `CONTENT`,
    /// and cleared with it.
    pub const PASSTHROUGH: i64 = 4;
}

/// What the remote held for an entry the last time we synced it: the base of later decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    pub key: Option<String>,
    pub etag: Option<String>,
    pub version: Option<String>,
    pub hash: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub id: EntryId,
    /// `None` for the root and for a file that was unlinked while still open.
    pub parent: Option<EntryId>,
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub atime_ns: i64,
    pub target: Option<Vec<u8>>,
    /// The data file in the cache holds the whole content.
    pub local: bool,
    pub synced: Synced,
    pub dirty: i64,
    /// Bumped by every change that must reach the remote; the uploader compares it before
    /// declaring an entry clean, so a change made during an upload is never forgotten.
    pub dirty_seq: i64,
    /// Set on a `.conflict` copy: the entry whose conflict it records. Such a copy stays
    /// local (never uploaded) unless the user keeps both versions.
    pub conflict_of: Option<EntryId>,
    /// A second (third, ...) hard link: the entry that is the inode. This row is only a name
    /// with its own remote key and base; attributes and data are the inode's.
    pub link_of: Option<EntryId>,
    /// The inode's id on the remote (`stratus_link`), set once it has had a second name.
    pub link_group: Option<String>,
    /// Made from a listing alone: the object's metadata is not read yet, so mode, owner and
    /// mtime are defaults (and the listing's last-modified), and a symlink or special file
    /// still shows as a file. Cleared when a HEAD of the object has been applied.
    pub unread: bool,
}

/// The fields of a new entry; the rest start empty.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub parent: EntryId,
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_ns: i64,
    pub target: Option<Vec<u8>>,
    pub local: bool,
    pub synced: Synced,
    pub dirty: i64,
    pub conflict_of: Option<EntryId>,
    /// See [`Entry::unread`].
    pub unread: bool,
}

/// A whole file the remote holds exactly (clean, no job, not a conflict copy): what
/// [`Db::retire`] may hand to the block cache.
const RETIRABLE: &str =
    "kind = 1 AND local = 1 AND link_of IS NULL AND dirty = 0 AND synced_key IS NOT NULL \
     AND synced_etag IS NOT NULL AND conflict_of IS NULL \
     AND NOT EXISTS (SELECT 1 FROM journal j WHERE j.entry_id = entries.id)";

const ENTRY_COLS: &str = "id, parent, name, kind, mode, uid, gid, size, mtime_ns, ctime_ns, \
     atime_ns, target, local, synced_key, synced_etag, synced_version, synced_hash, dirty, dirty_seq, \
     conflict_of, rdev, link_of, link_group, unread";

fn entry_from_row(r: &Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: EntryId(r.get::<_, i64>(0)? as u64),
        parent: r.get::<_, Option<i64>>(1)?.map(|p| EntryId(p as u64)),
        name: r.get(2)?,
        kind: Kind::from_sql(r.get(3)?, r.get(20)?)?,
        mode: r.get(4)?,
        uid: r.get(5)?,
        gid: r.get(6)?,
        size: r.get::<_, i64>(7)? as u64,
        mtime_ns: r.get(8)?,
        ctime_ns: r.get(9)?,
        atime_ns: r.get(10)?,
        target: r.get(11)?,
        local: r.get(12)?,
        synced: Synced {
            key: r.get(13)?,
            etag: r.get(14)?,
            version: r.get(15)?,
            hash: r.get(16)?,
        },
        dirty: r.get(17)?,
        dirty_seq: r.get(18)?,
        conflict_of: r.get::<_, Option<i64>>(19)?.map(|c| EntryId(c as u64)),
        link_of: r.get::<_, Option<i64>>(21)?.map(|c| EntryId(c as u64)),
        link_group: r.get(22)?,
        unread: r.get(23)?,
    })
}

impl Db<'_> {
    pub fn get(&self, id: EntryId) -> StoreResult<Option<Entry>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {ENTRY_COLS} FROM entries WHERE id = ?1"))?;
        Ok(st.query_row([id.0 as i64], entry_from_row).optional()?)
    }

    pub fn must_get(&self, id: EntryId) -> StoreResult<Entry> {
        self.get(id)?.ok_or(StoreError::Missing(id))
    }

    pub fn lookup(&self, parent: EntryId, name: &[u8]) -> StoreResult<Option<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 AND name = ?2"
        ))?;
        Ok(st
            .query_row(params![parent.0 as i64, name], entry_from_row)
            .optional()?)
    }

    pub fn children(&self, parent: EntryId) -> StoreResult<Vec<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE parent = ?1 ORDER BY name"
        ))?;
        let rows = st.query_map([parent.0 as i64], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn subdir_count(&self, parent: EntryId) -> StoreResult<u64> {
        let mut st = self
            .conn
            .prepare_cached("SELECT count(*) FROM entries WHERE parent = ?1 AND kind = 2")?;
        Ok(st.query_row([parent.0 as i64], |r| r.get::<_, i64>(0))? as u64)
    }

    pub fn has_children(&self, parent: EntryId) -> StoreResult<bool> {
        let mut st = self
            .conn
            .prepare_cached("SELECT 1 FROM entries WHERE parent = ?1 LIMIT 1")?;
        Ok(st.exists([parent.0 as i64])?)
    }

    /// Every entry below `dir`, depth first.
    pub fn descendants(&self, dir: EntryId) -> StoreResult<Vec<Entry>> {
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for c in self.children(d)? {
                if c.kind == Kind::Dir {
                    stack.push(c.id);
                }
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The entry's path relative to the mount root, `None` when it is unlinked.
    pub fn path_of(&self, id: EntryId) -> StoreResult<Option<Vec<u8>>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut cur = id;
        while cur != EntryId::ROOT {
            let mut st = self
                .conn
                .prepare_cached("SELECT parent, name FROM entries WHERE id = ?1")?;
            let row: Option<(Option<i64>, Vec<u8>)> = st
                .query_row([cur.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some((Some(p), name)) => {
                    parts.push(name);
                    cur = EntryId(p as u64);
                }
                _ => return Ok(None),
            }
        }
        parts.reverse();
        Ok(Some(parts.join(&b'/')))
    }

    /// The live entry at a relative path, if any.
    pub fn resolve(&self, path: &[u8]) -> StoreResult<Option<Entry>> {
        let mut cur = match self.get(EntryId::ROOT)? {
            Some(e) => e,
            None => return Ok(None),
        };
        for part in path.split(|b| *b == b'/').filter(|p| !p.is_empty()) {
            match self.lookup(cur.id, part)? {
                Some(e) => cur = e,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    pub fn insert_root(&self, mode: u32, uid: u32, gid: u32, synced: &Synced) -> StoreResult<()> {
        let now = now_ns();
        self.conn.execute(
            "INSERT OR IGNORE INTO entries(id, parent, name, kind, mode, uid, gid, size, mtime_ns, \
             ctime_ns, atime_ns, local, synced_key) VALUES (1, NULL, x'', 2, ?1, ?2, ?3, 0, ?4, ?4, ?4, 1, ?5)",
            params![mode, uid, gid, now, synced.key],
        )?;
        Ok(())
    }

    pub fn insert(&self, e: &NewEntry) -> StoreResult<Entry> {
        let id = self.insert_quick(e)?;
        self.must_get(id)
    }

    /// [`Db::insert`] without reading the row back: `populate` inserts a whole listing.
    pub fn insert_quick(&self, e: &NewEntry) -> StoreResult<EntryId> {
        let mut st = self.conn.prepare_cached(
            "INSERT INTO entries(parent, name, kind, mode, uid, gid, size, mtime_ns, ctime_ns, atime_ns, \
             target, local, synced_key, synced_etag, synced_version, synced_hash, dirty, dirty_seq, \
             conflict_of, rdev, unread) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, 0, ?17, ?18, ?19)",
        )?;
        st.execute(params![
            e.parent.0 as i64,
            e.name,
            e.kind.to_sql(),
            e.mode,
            e.uid,
            e.gid,
            e.size as i64,
            e.mtime_ns,
            now_ns(),
            e.target,
            e.local,
            e.synced.key,
            e.synced.etag,
            e.synced.version,
            e.synced.hash,
            e.dirty,
            e.conflict_of.map(|c| c.0 as i64),
            e.kind.rdev_sql(),
            e.unread,
        ])?;
        Ok(EntryId(self.conn.last_insert_rowid() as u64))
    }

    /// Up to `limit` entries whose metadata is still unread, oldest first (a listing's
    /// order), from id `after` on.
    pub fn unread_after(&self, after: EntryId, limit: usize) -> StoreResult<Vec<EntryId>> {
        let mut st = self.conn.prepare_cached(
            "SELECT id FROM entries WHERE unread = 1 AND id > ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = st.query_map(params![after.0 as i64, limit as i64], |r| {
            Ok(EntryId(r.get::<_, i64>(0)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many entries still wait for their metadata.
    pub fn unread_count(&self) -> StoreResult<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM entries WHERE unread = 1", [], |r| {
                r.get::<_, i64>(0)
            })? as u64)
    }

    pub fn set_unread(&self, id: EntryId, unread: bool) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET unread = ?2 WHERE id = ?1",
            params![id.0 as i64, unread],
        )?;
        Ok(())
    }

    /// Writes back every attribute of `e` (the caller read, changed and hands it back) except
    /// `local`: whether the data file is whole changes only through [`Db::set_local`] and
    /// [`Db::retire`], which keep the block list in step, so a copy read before a retire
    /// cannot write a stale `local` back over it.
    pub fn update(&self, e: &Entry) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "UPDATE entries SET parent = ?2, name = ?3, mode = ?4, uid = ?5, gid = ?6, size = ?7, \
             mtime_ns = ?8, ctime_ns = ?9, atime_ns = ?10, target = ?11, dirty = ?12 \
             WHERE id = ?1",
        )?;
        st.execute(params![
            e.id.0 as i64,
            e.parent.map(|p| p.0 as i64),
            e.name,
            e.mode,
            e.uid,
            e.gid,
            e.size as i64,
            e.mtime_ns,
            e.ctime_ns,
            e.atime_ns,
            e.target,
            e.dirty,
        ])?;
        Ok(())
    }

    pub fn set_size_mtime(&self, id: EntryId, size: u64, mtime_ns: i64) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "UPDATE entries SET size = ?2, mtime_ns = ?3, ctime_ns = max(ctime_ns, ?3) WHERE id = ?1",
        )?;
        st.execute(params![id.0 as i64, size as i64, mtime_ns])?;
        Ok(())
    }

    /// Whether the data file holds the whole content. Either way the block list goes: a
    /// complete file needs none, and `false` means the data file is no longer valid.
    pub fn set_local(&self, id: EntryId, local: bool) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET local = ?2 WHERE id = ?1",
            params![id.0 as i64, local],
        )?;
        self.conn
            .execute("DELETE FROM blocks WHERE entry_id = ?1", [id.0 as i64])?;
        Ok(())
    }

    /// Blocks of a partly fetched file that its data file holds.
    pub fn blocks_of(&self, id: EntryId) -> StoreResult<Vec<u64>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT idx FROM blocks WHERE entry_id = ?1")?;
        let rows = st.query_map([id.0 as i64], |r| Ok(r.get::<_, i64>(0)? as u64))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn add_blocks(&self, id: EntryId, idx: &[u64]) -> StoreResult<()> {
        let mut st = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO blocks(entry_id, idx) VALUES (?1, ?2)")?;
        for i in idx {
            st.execute(params![id.0 as i64, *i as i64])?;
        }
        Ok(())
    }

    /// Forgets a cached block; false when it was not listed (the file became complete, or
    /// was replaced, since the block was cached).
    pub fn drop_block(&self, id: EntryId, idx: u64) -> StoreResult<bool> {
        let n = self.conn.execute(
            "DELETE FROM blocks WHERE entry_id = ?1 AND idx = ?2",
            params![id.0 as i64, idx as i64],
        )?;
        Ok(n == 1)
    }

    /// Ids of every entry, for the sweep of data files at start.
    pub fn entry_ids(&self) -> StoreResult<std::collections::HashSet<u64>> {
        let mut st = self.conn.prepare("SELECT id FROM entries")?;
        let rows = st.query_map([], |r| Ok(r.get::<_, i64>(0)? as u64))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Turns a whole, clean file into a fully cached one: its data file stays as it is, but
    /// its blocks are listed, so they count against the cache budget and can be evicted like
    /// fetched ones. Only a file the remote holds exactly (clean, no job) qualifies; returns
    /// the file's size, or `None` when it did not qualify.
    pub fn retire(&self, id: EntryId, block_size: u64) -> StoreResult<Option<u64>> {
        let size: Option<i64> = self
            .conn
            .query_row(
                &format!("SELECT size FROM entries WHERE id = ?1 AND {RETIRABLE}"),
                [id.0 as i64],
                |r| r.get(0),
            )
            .optional()?;
        let Some(size) = size else {
            return Ok(None);
        };
        self.conn
            .execute("UPDATE entries SET local = 0 WHERE id = ?1", [id.0 as i64])?;
        let n = (size as u64).div_ceil(block_size);
        let idx: Vec<u64> = (0..n).collect();
        self.add_blocks(id, &idx)?;
        Ok(Some(size as u64))
    }

    /// Whole files that [`Db::retire`] would take: at start, before anything is open.
    pub fn retirable(&self) -> StoreResult<Vec<EntryId>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT id FROM entries WHERE {RETIRABLE}"))?;
        let rows = st.query_map([], |r| Ok(EntryId(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Bytes of files whose data file is whole and not yet handed to the block cache: what
    /// was written here and waits for (or is in) its upload. Each file's size is rounded up
    /// to `unit`, the disk's allocation unit, as `du` counts it.
    pub fn whole_file_bytes(&self, unit: u64) -> StoreResult<u64> {
        Ok(self.conn.query_row(
            "SELECT coalesce(sum((size + ?1 - 1) / ?1 * ?1), 0) FROM entries \
             WHERE local = 1 AND kind = 1",
            [unit as i64],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    pub fn set_pinned(&self, id: EntryId, on: bool) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET pinned = ?2 WHERE id = ?1",
            params![id.0 as i64, on],
        )?;
        Ok(())
    }

    /// The pinned entry nearest to `id`: itself or an ancestor, since a directory's pin is
    /// inherited by everything below it.
    pub fn pinned_by(&self, id: EntryId) -> StoreResult<Option<EntryId>> {
        let mut st = self.conn.prepare_cached(
            "WITH RECURSIVE up(id, parent, pinned, depth) AS ( \
                SELECT id, parent, pinned, 0 FROM entries WHERE id = ?1 \
                UNION ALL \
                SELECT e.id, e.parent, e.pinned, up.depth + 1 FROM entries e JOIN up ON e.id = up.parent \
             ) SELECT id FROM up WHERE pinned = 1 ORDER BY depth LIMIT 1",
        )?;
        Ok(st
            .query_row([id.0 as i64], |r| Ok(EntryId(r.get::<_, i64>(0)? as u64)))
            .optional()?)
    }

    pub fn any_pinned(&self) -> StoreResult<bool> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM entries WHERE pinned = 1 LIMIT 1", [], |_| {
                Ok(())
            })
            .optional()?
            .is_some())
    }

    /// Cached blocks of files not wholly local, all files together.
    /// Bytes the listed blocks occupy in their data files: each block's length within its
    /// file (the last one is short) rounded up to `unit`, the disk's allocation unit.
    pub fn block_bytes(&self, block_size: u64, unit: u64) -> StoreResult<u64> {
        Ok(self.conn.query_row(
            "SELECT coalesce(sum((min(?1, max(e.size - b.idx * ?1, 0)) + ?2 - 1) / ?2 * ?2), 0) \
             FROM blocks b JOIN entries e ON e.id = b.entry_id",
            [block_size as i64, unit as i64],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Every file that is pinned, directly or through a directory above it.
    pub fn pinned_files(&self) -> StoreResult<Vec<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "WITH RECURSIVE down(id) AS ( \
                SELECT id FROM entries WHERE pinned = 1 AND (parent IS NOT NULL OR id = 1) \
                UNION \
                SELECT e.id FROM entries e JOIN down ON e.parent = down.id \
             ) SELECT {ENTRY_COLS} FROM entries WHERE kind = 1 AND link_of IS NULL \
             AND id IN (SELECT id FROM down)"
        ))?;
        let rows = st.query_map([], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every cached block with its file's size, for rebuilding the eviction order at start.
    pub fn all_blocks(&self) -> StoreResult<Vec<(EntryId, u64, u64)>> {
        let mut st = self.conn.prepare(
            "SELECT b.entry_id, b.idx, e.size FROM blocks b JOIN entries e ON e.id = b.entry_id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                EntryId(r.get::<_, i64>(0)? as u64),
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_synced(&self, id: EntryId, synced: &Synced) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET synced_key = ?2, synced_etag = ?3, synced_version = ?4, synced_hash = ?5 \
             WHERE id = ?1",
            params![id.0 as i64, synced.key, synced.etag, synced.version, synced.hash],
        )?;
        Ok(())
    }

    pub fn delete_entry(&self, id: EntryId) -> StoreResult<()> {
        self.conn
            .execute("DELETE FROM entries WHERE id = ?1", [id.0 as i64])?;
        self.conn
            .execute("DELETE FROM blocks WHERE entry_id = ?1", [id.0 as i64])?;
        self.conn
            .execute("DELETE FROM journal WHERE entry_id = ?1", [id.0 as i64])?;
        Ok(())
    }

    /// Live entries (other than `except`) whose remote copy sits at `key`.
    pub fn owners_of_key(&self, key: &str, except: Option<EntryId>) -> StoreResult<Vec<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE synced_key = ?1 AND parent IS NOT NULL AND id != ?2 \
             AND conflict_of IS NULL"
        ))?;
        let rows = st.query_map(
            params![key, except.map(|e| e.0 as i64).unwrap_or(-1)],
            entry_from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Entries unlinked while open; after a restart nothing holds them any more.
    pub fn orphans(&self) -> StoreResult<Vec<EntryId>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM entries WHERE parent IS NULL AND id != 1")?;
        let rows = st.query_map([], |r| Ok(EntryId(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Bytes of every file in the tree (what a quota counts).
    pub fn file_bytes(&self) -> StoreResult<u64> {
        let v: i64 = self.conn.query_row(
            "SELECT coalesce(sum(size), 0) FROM entries WHERE kind = 1 AND parent IS NOT NULL \
             AND link_of IS NULL",
            [],
            |r| r.get(0),
        )?;
        Ok(v as u64)
    }

    pub fn entry_count(&self) -> StoreResult<u64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM entries", [], |r| r.get::<_, i64>(0))?
            as u64)
    }

    /// Complete files and their recorded sizes, for recovery at start.
    /// Whole files not yet uploaded since the kernel wrote them directly
    /// (`dirty::PASSTHROUGH`): their data file, not the recorded size, is the truth.
    pub fn passthrough_written(&self) -> StoreResult<Vec<EntryId>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM entries WHERE kind = 1 AND local = 1 AND (dirty & ?1) != 0")?;
        let rows = st.query_map([dirty::PASSTHROUGH], |r| {
            Ok(EntryId(r.get::<_, i64>(0)? as u64))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn complete_files(&self) -> StoreResult<Vec<(EntryId, u64)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, size FROM entries WHERE kind = 1 AND local = 1")?;
        let rows = st.query_map([], |r| {
            Ok((
                EntryId(r.get::<_, i64>(0)? as u64),
                r.get::<_, i64>(1)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every entry, for the poller's comparison with a listing.
    pub fn all_entries(&self) -> StoreResult<Vec<Entry>> {
        let mut st = self
            .conn
            .prepare(&format!("SELECT {ENTRY_COLS} FROM entries"))?;
        let rows = st.query_map([], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn set_conflict_of(&self, id: EntryId, of: Option<EntryId>) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET conflict_of = ?2 WHERE id = ?1",
            params![id.0 as i64, of.map(|o| o.0 as i64)],
        )?;
        Ok(())
    }

    /// Makes `id` a further name of the inode `of` (or, with `None`, an inode of its own).
    pub fn set_link_of(&self, id: EntryId, of: Option<EntryId>) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET link_of = ?2, local = CASE WHEN ?2 IS NULL THEN local ELSE 0 END \
             WHERE id = ?1",
            params![id.0 as i64, of.map(|o| o.0 as i64)],
        )?;
        Ok(())
    }

    pub fn set_link_group(&self, id: EntryId, group: Option<&str>) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET link_group = ?2 WHERE id = ?1",
            params![id.0 as i64, group],
        )?;
        Ok(())
    }

    /// The further names of the inode `id` (not counting its own row).
    pub fn links_of(&self, id: EntryId) -> StoreResult<Vec<Entry>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE link_of = ?1 AND parent IS NOT NULL ORDER BY id"
        ))?;
        let rows = st.query_map([id.0 as i64], entry_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many names the inode `id` has (its own row's, if it has one, and its links).
    pub fn link_count(&self, id: EntryId) -> StoreResult<u32> {
        let mut st = self.conn.prepare_cached(
            "SELECT count(*) FROM entries WHERE (id = ?1 OR link_of = ?1) AND parent IS NOT NULL",
        )?;
        Ok(st.query_row([id.0 as i64], |r| r.get::<_, i64>(0))? as u32)
    }

    /// The inode of the live entry named `name` in `parent`: the entry itself, or, for a
    /// further hard link, the entry it links to.
    pub fn lookup_inode(&self, parent: EntryId, name: &[u8]) -> StoreResult<Option<Entry>> {
        match self.lookup(parent, name)? {
            Some(Entry {
                link_of: Some(of), ..
            }) => self.get(of),
            other => Ok(other),
        }
    }

    /// The inode a remote object with link group `group` and content `hash` joins: the
    /// entry that is that group's inode here, holding the same content. A name whose content
    /// differs (another tool edited it) stays a file of its own.
    pub fn find_link_inode(&self, group: &str, hash: Option<&str>) -> StoreResult<Option<Entry>> {
        let Some(hash) = hash else {
            return Ok(None);
        };
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLS} FROM entries WHERE link_group = ?1 AND link_of IS NULL \
             AND parent IS NOT NULL AND synced_hash = ?2 ORDER BY id LIMIT 1"
        ))?;
        Ok(st
            .query_row(params![group, hash], entry_from_row)
            .optional()?)
    }

    /// Joins the entry `id`, just made from a remote object carrying link group `group`, to
    /// that group's inode, or makes it the inode when it is the first name seen.
    pub fn join_link_group(&self, id: EntryId, group: &str, hash: Option<&str>) -> StoreResult<()> {
        match self.find_link_inode(group, hash)? {
            Some(inode) if inode.id != id => self.set_link_of(id, Some(inode.id)),
            _ => self.set_link_group(id, Some(group)),
        }
    }

    /// The inode `primary` loses its own name but keeps its other names: it takes over the
    /// name, key and base of its link `link`, whose row goes. The inode keeps its id (the
    /// kernel's inode number), data and attributes; the key it had is the caller's to delete.
    pub fn take_name_of_link(&self, primary: EntryId, link: &Entry) -> StoreResult<()> {
        self.conn.execute(
            "DELETE FROM journal WHERE entry_id = ?1",
            [link.id.0 as i64],
        )?;
        self.conn
            .execute("DELETE FROM entries WHERE id = ?1", [link.id.0 as i64])?;
        self.conn.execute(
            "UPDATE entries SET parent = ?2, name = ?3 WHERE id = ?1",
            params![primary.0 as i64, link.parent.map(|p| p.0 as i64), link.name],
        )?;
        self.set_synced(primary, &link.synced)
    }

    /// Marks an entry clean: the remote holds what it shows. Drops its sync job.
    pub fn mark_clean(&self, id: EntryId) -> StoreResult<()> {
        self.conn
            .execute("UPDATE entries SET dirty = 0 WHERE id = ?1", [id.0 as i64])?;
        self.conn
            .execute("DELETE FROM journal WHERE entry_id = ?1", [id.0 as i64])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;

    /// Regression: ids were SQLite rowids and the newest one was reused after a delete. An
    /// upload in flight for a deleted directory then recorded its key on the new entry, and
    /// the next sync of that entry copied a directory over a file ("Is a directory").
    #[test]
    fn regression_entry_ids_are_never_reused() {
        let (_d, s) = store();
        let a = file(&s, "a");
        s.write(|db| db.delete_entry(a)).unwrap();
        let b = file(&s, "b");
        assert!(b.0 > a.0);
    }

    #[test]
    fn paths_and_resolution() {
        let (_d, s) = store();
        let a = file(&s, "a");
        assert_eq!(s.read(|db| db.path_of(a)).unwrap(), Some(b"a".to_vec()));
        assert_eq!(
            s.read(|db| db.resolve(b"a")).unwrap().map(|e| e.id),
            Some(a)
        );
        assert!(s.read(|db| db.resolve(b"a/b")).unwrap().is_none());
    }
}
