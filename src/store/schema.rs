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
