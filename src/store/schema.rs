//! Append-only schema migrations, versioned by `PRAGMA user_version`.
//!
//! Never edit or remove a step: a state dir written by an older build must open with a newer one.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the tree, what the remote holds for each entry, and the journal (the offline queue).
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE entries (
        -- AUTOINCREMENT: an id is an inode number and is never reused, so neither the kernel
        -- nor an upload in flight can mistake a new entry for a deleted one.
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        parent INTEGER,
        name BLOB NOT NULL,
        kind INTEGER NOT NULL,
        mode INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        atime_ns INTEGER NOT NULL,
        target BLOB,
        local INTEGER NOT NULL DEFAULT 0,
        synced_key TEXT,
        synced_etag TEXT,
        synced_version TEXT,
        synced_hash TEXT,
        dirty INTEGER NOT NULL DEFAULT 0,
        dirty_seq INTEGER NOT NULL DEFAULT 0
     );
     CREATE UNIQUE INDEX entries_by_name ON entries(parent, name) WHERE parent IS NOT NULL;
     CREATE INDEX entries_by_key ON entries(synced_key) WHERE synced_key IS NOT NULL;
     CREATE TABLE journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        entry_id INTEGER,
        delete_key TEXT,
        delete_dir INTEGER NOT NULL DEFAULT 0,
        ready_at_ms INTEGER,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'queued',
        last_error TEXT
     );
     CREATE UNIQUE INDEX journal_by_entry ON journal(entry_id) WHERE entry_id IS NOT NULL;",
    // 2: two-way sync. A delete remembers the version it removes, so a remote edit made
    // meanwhile can win over it; conflicts and their `.conflict` copies.
    "ALTER TABLE journal ADD COLUMN delete_etag TEXT;
     ALTER TABLE entries ADD COLUMN conflict_of INTEGER;
     CREATE TABLE conflicts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        entry_id INTEGER NOT NULL,
        copy_id INTEGER NOT NULL,
        path TEXT NOT NULL,
        copy_path TEXT NOT NULL,
        local_size INTEGER NOT NULL,
        local_mtime_ns INTEGER NOT NULL,
        local_etag TEXT,
        remote_size INTEGER NOT NULL,
        remote_mtime_ns INTEGER,
        remote_etag TEXT,
        remote_version TEXT,
        detected_ms INTEGER NOT NULL,
        policy TEXT NOT NULL,
        resolved_ms INTEGER,
        resolution TEXT
     );
     CREATE INDEX conflicts_open ON conflicts(entry_id) WHERE resolved_ms IS NULL;",
    // 3: the block cache: which blocks of a partly fetched file are in its data file.
    "CREATE TABLE blocks (
        entry_id INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        PRIMARY KEY (entry_id, idx)
     ) WITHOUT ROWID;",
    // 4: indexes for the hot queries. Without them the uploader's wake-up (ready jobs, next
    // ready time) and a directory's link count scanned everything, and creating or deleting
    // files got slower as the queue and the directory grew.
    "CREATE INDEX journal_by_ready ON journal(ready_at_ms);
     CREATE INDEX entries_by_parent_kind ON entries(parent, kind);",
    // 5: pinning ("keep on this device"), set on a file or a directory and inherited by
    // everything below; and an index that makes the sum of whole-file (dirty) bytes cheap, since
    // writers consult it for back-pressure.
    "ALTER TABLE entries ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX entries_pinned ON entries(id) WHERE pinned = 1;
     CREATE INDEX entries_whole_files ON entries(size) WHERE local = 1 AND kind = 1;",
    // 6: the pending delete of a key, which every first upload of a new file looks for; it
    // scanned all queued deletes, thousands after a `rm -r`.
    "CREATE INDEX IF NOT EXISTS journal_by_delete_key ON journal(delete_key, seq) \
     WHERE delete_key IS NOT NULL;",
    // 7: conflicts that sync: the two versions (hash, size, mtime, ETag, writer) as JSON,
    // and which of them this mount wrote ('path', 'copy' or NULL for neither). Copies made
    // before never went up and pointed at the original's key: a whole one goes up now as an
    // ordinary file; one never fetched held nothing the remote lacks and goes. Open conflicts
    // of that kind are closed (both versions are kept); an upload they held now runs, and
    // meets the remote version again as a conflict of the new kind.
    "ALTER TABLE conflicts ADD COLUMN versions TEXT;
     ALTER TABLE conflicts ADD COLUMN mine TEXT;
     UPDATE entries SET synced_key = NULL, synced_etag = NULL, synced_version = NULL,
        synced_hash = NULL, dirty = 3, dirty_seq = dirty_seq + 1
        WHERE conflict_of IS NOT NULL AND local = 1;
     INSERT INTO journal(entry_id, ready_at_ms, state)
        SELECT id, 0, 'queued' FROM entries WHERE conflict_of IS NOT NULL AND local = 1
        AND id NOT IN (SELECT entry_id FROM journal WHERE entry_id IS NOT NULL);
     DELETE FROM blocks WHERE entry_id IN
        (SELECT id FROM entries WHERE conflict_of IS NOT NULL AND local = 0);
     DELETE FROM entries WHERE conflict_of IS NOT NULL AND local = 0;
     UPDATE entries SET conflict_of = NULL WHERE conflict_of IS NOT NULL;
     UPDATE conflicts SET resolved_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000,
        resolution = 'both (upgrade)' WHERE resolved_ms IS NULL;",
    // 8: the content hashes a sync job has sent to the remote since its entry's base (newest
    // last, at most 8). An upload whose answer was lost (the daemon stopped or was killed
    // while it was in flight, the connection dropped) still lands; the next attempt meets it
    // as someone else's version. One of ours is taken as the base instead of a conflict.
    "ALTER TABLE journal ADD COLUMN tried TEXT;",
    // 9: the activity log and the sync statistics (`store::activity`), and the times a job was
    // queued and its entry last closed or changed, for the queue's ages and the time from a
    // close to its upload landing.
    "CREATE TABLE activity (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        path TEXT,
        bytes INTEGER,
        duration_ms INTEGER,
        detail TEXT
     );
     CREATE TABLE stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
     ALTER TABLE journal ADD COLUMN queued_ms INTEGER;
     ALTER TABLE journal ADD COLUMN closed_ms INTEGER;",
    // 10: special files (kinds 4 to 7: fifo, socket, character and block device) and a
    // device's number.
    "ALTER TABLE entries ADD COLUMN rdev INTEGER NOT NULL DEFAULT 0;",
    // 11: hard links. Every name is a row (it has its own key and base on the remote); a
    // second name of an inode points at the row that is the inode (`link_of`), which holds
    // the attributes and the data file. `link_group` is the inode's id on the remote (the
    // `stratus_link` metadata every name carries), so another mount can join the names again.
    "ALTER TABLE entries ADD COLUMN link_of INTEGER;
     ALTER TABLE entries ADD COLUMN link_group TEXT;
     CREATE INDEX entries_by_link ON entries(link_of) WHERE link_of IS NOT NULL;",
    // 12: entries made from a listing alone (a first mount of a bucket): their metadata
    // (mode, owner, mtime, symlink target, special type, hash, link group, conflict mark) is
    // read later, by one HEAD each, in the background or when first needed.
    "ALTER TABLE entries ADD COLUMN unread INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX entries_unread ON entries(id) WHERE unread = 1;",
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dir written by the first release opens, keeps its rows and gains the new
    /// columns.
    #[test]
    fn version_1_database_is_upgraded() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO journal(delete_key, ready_at_ms) VALUES ('a/b', 0)",
            [],
        )
        .unwrap();
        migrate(&conn).unwrap();
        let (key, etag): (String, Option<String>) = conn
            .query_row("SELECT delete_key, delete_etag FROM journal", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((key.as_str(), etag), ("a/b", None));
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn empty_database_reaches_latest_version() {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        // Running again is a no-op, not an error.
        migrate(&conn).unwrap();
    }
}
