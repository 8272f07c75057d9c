//! The `journal` table: the upload queue, which is also the offline queue. One job per
//! entry (`Sync`) or per key to remove (`Delete`), kept in order, held while a writer has the
//! file open, parked after a permanent failure.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rusqlite::{params, OptionalExtension, Row};
use tokio::sync::Notify;

use super::activity::{Event, EventKind, LAST_FULL_SYNC};
use super::entries::Synced;
use super::{now_ms, Db, Store, StoreResult};
use crate::types::EntryId;

/// The uploader's wake-ups, kept beside the journal whose commits cause them.
pub(super) struct Wakeups {
    /// Wakes the idle uploader when a commit queued work it must see before `idle_until`.
    wake: Notify,
    /// When the idle uploader will look at the journal by itself (ms since the epoch), or
    /// `i64::MIN` while it is awake. A commit whose jobs become ready only after this wakes
    /// nobody: during a burst of creates every job waits out the write-back delay, and one
    /// wake-up (with its journal query under the store's lock) per create was most of the
    /// daemon's CPU.
    idle_until: AtomicI64,
    /// A forced sync: also cuts short a backoff after a transient failure.
    kick: Notify,
    /// Forced syncs asked for so far. A poll serves every kick counted before it started, so
    /// a wake-up left over from a kick that a poll already served polls nothing (a `Notify`
    /// keeps one permit: a kick that came while the uploader was busy woke it once more
    /// later, and it polled in the middle of the next round of writes).
    kicks: std::sync::atomic::AtomicU64,
    /// When a FUSE op last changed the tree (ms since the epoch): the uploader stands aside
    /// while the user is busy.
    user_active_ms: AtomicI64,
}

impl Wakeups {
    pub(super) fn new() -> Wakeups {
        Wakeups {
            wake: Notify::new(),
            idle_until: AtomicI64::new(i64::MIN),
            kick: Notify::new(),
            kicks: std::sync::atomic::AtomicU64::new(0),
            user_active_ms: AtomicI64::new(0),
        }
    }

    /// After a commit: `woke` when it queued work to do at once, `wake_at` the earliest time
    /// a job it touched becomes ready.
    pub(super) fn committed(&self, woke: bool, wake_at: Option<i64>) {
        let idle_until = self.idle_until.load(Ordering::SeqCst);
        if woke || wake_at.is_some_and(|t| t < idle_until) {
            self.wake.notify_one();
        }
    }
}

/// Why [`Store::wait_for_jobs`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The wait was over, or a commit queued work that is due.
    Jobs,
    /// A forced sync (`stratus sync`, offline turned off).
    Kick,
}

/// Sets `idle_until` back to "awake" however the wait ends (also when its future is dropped).
struct Awake<'a>(&'a AtomicI64);

impl Drop for Awake<'_> {
    fn drop(&mut self) {
        self.0.store(i64::MIN, Ordering::SeqCst);
    }
}

impl Store {
    /// Waits, for at most `wait`, until a commit queues work due within that time or a sync
    /// is forced. Commits of jobs that become ready only after the wait need not wake the
    /// uploader, which looks by then anyway.
    pub async fn wait_for_jobs(&self, wait: Duration) -> Woken {
        let w = &self.wakeups;
        w.idle_until.store(
            now_ms().saturating_add(wait.as_millis() as i64),
            Ordering::SeqCst,
        );
        let _awake = Awake(&w.idle_until);
        tokio::select! {
            _ = tokio::time::sleep(wait) => Woken::Jobs,
            _ = w.wake.notified() => Woken::Jobs,
            _ = w.kick.notified() => Woken::Kick,
        }
    }

    /// Forces a sync: the uploader stops waiting (for new jobs, out a backoff, or offline)
    /// and polls once the queue is drained.
    pub fn kick(&self) {
        self.wakeups.kicks.fetch_add(1, Ordering::SeqCst);
        self.wakeups.kick.notify_one();
    }

    /// Forced syncs asked for so far: a poll that starts now serves them all.
    pub fn kicks(&self) -> u64 {
        self.wakeups.kicks.load(Ordering::SeqCst)
    }

    /// Completes at the next [`Store::kick`].
    pub async fn kicked(&self) {
        self.wakeups.kick.notified().await
    }

    /// Records that the user changed something in the mount just now.
    pub fn user_was_active(&self) {
        self.wakeups
            .user_active_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// When the user last changed something in the mount (ms since the epoch).
    pub fn user_active_ms(&self) -> i64 {
        self.wakeups.user_active_ms.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Make the remote match this entry's current state and path.
    Sync(EntryId),
    /// Remove a key that no entry owns any more; `etag` is the version the delete meant to
    /// remove, so a remote edit made since can win over it.
    Delete {
        key: String,
        dir: bool,
        etag: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Uploading,
    Parked,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Uploading => "uploading",
            JobState::Parked => "parked",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub seq: i64,
    pub kind: JobKind,
    pub attempts: i64,
    pub state: JobState,
    pub last_error: Option<String>,
    /// Content hashes this job has sent to the remote (a sync of a file), oldest first: a
    /// version at the key with one of them is ours, whether or not we heard the answer.
    pub tried: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub entries: u64,
    pub bytes: u64,
    pub held: u64,
    pub parked: u64,
    pub uploading: u64,
    /// Bytes of the files being uploaded now.
    pub uploading_bytes: u64,
    pub max_seq: i64,
    pub last_error: Option<String>,
    /// When the oldest unfinished job was queued (ms).
    pub oldest_ms: Option<i64>,
}

fn job_from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
    let entry: Option<i64> = r.get(1)?;
    let key: Option<String> = r.get(2)?;
    let kind = match (entry, key) {
        (Some(id), _) => JobKind::Sync(EntryId(id as u64)),
        (None, Some(key)) => JobKind::Delete {
            key,
            dir: r.get(3)?,
            etag: r.get(7)?,
        },
        (None, None) => return Err(rusqlite::Error::InvalidQuery),
    };
    let state: String = r.get(5)?;
    Ok(Job {
        seq: r.get(0)?,
        kind,
        attempts: r.get(4)?,
        state: match state.as_str() {
            "uploading" => JobState::Uploading,
            "parked" => JobState::Parked,
            _ => JobState::Queued,
        },
        last_error: r.get(6)?,
        tried: r
            .get::<_, Option<String>>(8)?
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

const JOB_COLS: &str =
    "seq, entry_id, delete_key, delete_dir, attempts, state, last_error, delete_etag, tried";

/// How many hashes a job remembers having sent (`Job::tried`).
const TRIED_KEPT: usize = 8;

impl Db<'_> {
    /// Queued deletes, for the poller: a key deleted here but edited remotely comes back.
    pub fn pending_deletes(&self) -> StoreResult<Vec<Job>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM journal WHERE delete_key IS NOT NULL ORDER BY seq"
        ))?;
        let rows = st.query_map([], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The oldest queued delete of the file at `key`, as the version it means to remove
    /// (`Some(None)`: whatever is there).
    pub fn pending_file_delete(&self, key: &str) -> StoreResult<Option<Option<String>>> {
        let mut st = self.conn.prepare_cached(
            "SELECT delete_etag FROM journal WHERE delete_key = ?1 AND delete_dir = 0 \
             ORDER BY seq LIMIT 1",
        )?;
        Ok(st.query_row([key], |r| r.get(0)).optional()?)
    }

    /// Queues (or re-arms) the sync of `id`, keeping its place in the queue if it had one.
    /// `ready_at_ms = None` holds the job until an open writer lets go.
    pub fn enqueue_sync(
        &self,
        id: EntryId,
        dirty: i64,
        ready_at_ms: Option<i64>,
    ) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE entries SET dirty = dirty | ?2, dirty_seq = dirty_seq + 1 WHERE id = ?1",
            params![id.0 as i64, dirty],
        )?;
        let mut st = self.conn.prepare_cached(
            "INSERT INTO journal(entry_id, ready_at_ms, state, queued_ms, closed_ms) \
             VALUES (?1, ?2, 'queued', ?3, CASE WHEN ?2 IS NULL THEN NULL ELSE ?3 END) \
             ON CONFLICT(entry_id) WHERE entry_id IS NOT NULL DO UPDATE SET \
             closed_ms = CASE WHEN journal.ready_at_ms IS NULL OR excluded.ready_at_ms IS NULL \
             THEN journal.closed_ms ELSE excluded.closed_ms END, \
             ready_at_ms = CASE WHEN journal.ready_at_ms IS NULL THEN NULL ELSE excluded.ready_at_ms END, \
             state = CASE WHEN state = 'parked' THEN 'queued' ELSE state END, \
             attempts = CASE WHEN state = 'parked' THEN 0 ELSE attempts END",
        )?;
        st.execute(params![id.0 as i64, ready_at_ms, super::now_ms()])?;
        self.wake_by(ready_at_ms);
        Ok(())
    }

    /// Records that a job becomes ready at `ready_at_ms` (never, while held: `None`).
    fn wake_by(&self, ready_at_ms: Option<i64>) {
        if let Some(t) = ready_at_ms {
            self.wake_at
                .set(Some(self.wake_at.get().map_or(t, |w| w.min(t))));
        }
    }

    /// Sets when a queued sync may run, without counting it as a new change.
    pub fn set_ready(&self, id: EntryId, ready_at_ms: Option<i64>) -> StoreResult<()> {
        let mut st = self.conn.prepare_cached(
            "UPDATE journal SET ready_at_ms = ?2, \
                 closed_ms = CASE WHEN ?2 IS NULL THEN closed_ms ELSE ?3 END WHERE entry_id = ?1",
        )?;
        st.execute(params![id.0 as i64, ready_at_ms, super::now_ms()])?;
        self.wake_by(ready_at_ms);
        Ok(())
    }

    pub fn enqueue_delete(&self, key: &str, dir: bool, etag: Option<&str>) -> StoreResult<()> {
        self.conn.execute(
            "INSERT INTO journal(delete_key, delete_dir, delete_etag, ready_at_ms, state, \
             queued_ms, closed_ms) VALUES (?1, ?2, ?3, 0, 'queued', ?4, ?4)",
            params![key, dir, etag, super::now_ms()],
        )?;
        self.woke.set(true);
        Ok(())
    }

    /// The unfinished jobs that still change remote keys below the directory `dir_key`:
    /// deletes of keys below it, and syncs of entries whose remote copy sits below it (a
    /// move away, not run yet). `except` is the asking job. Answers how many there are and
    /// the latest time one of them becomes ready (`None` when one waits for a writer, the
    /// user or a conflict: held, parked or in conflict).
    pub fn jobs_below(&self, dir_key: &str, except: i64) -> StoreResult<(u64, Option<i64>)> {
        // Keys that start with `dir_key/`: from `dir_key/` up to, not including, `dir_key0`
        // ('0' follows '/'), a range both key indexes answer.
        let from = format!("{dir_key}/");
        let to = format!("{dir_key}0");
        let mut st = self.conn.prepare_cached(
            "SELECT count(*), max(ready_at_ms), \
             coalesce(sum(ready_at_ms IS NULL OR state = 'parked' OR entry_id IN \
               (SELECT entry_id FROM conflicts WHERE resolved_ms IS NULL)), 0) \
             FROM (SELECT seq, entry_id, ready_at_ms, state FROM journal \
                   WHERE delete_key >= ?1 AND delete_key < ?2 AND seq != ?3 \
                   UNION ALL \
                   SELECT j.seq, j.entry_id, j.ready_at_ms, j.state FROM entries e \
                   JOIN journal j ON j.entry_id = e.id \
                   WHERE e.synced_key >= ?1 AND e.synced_key < ?2)",
        )?;
        let (n, latest, stuck): (i64, Option<i64>, i64) = st
            .query_row(params![from, to, except], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
        Ok((n as u64, if stuck > 0 { None } else { latest }))
    }

    /// Puts a job back in the queue, at its place, to be taken again at `ready_at_ms`.
    pub fn defer_job(&self, seq: i64, ready_at_ms: i64) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET state = 'queued', ready_at_ms = ?2 WHERE seq = ?1",
            params![seq, ready_at_ms],
        )?;
        self.wake_by(Some(ready_at_ms));
        Ok(())
    }

    /// Held jobs whose writer is gone (the daemon restarted): they are ready now.
    pub fn release_held(&self, ready_at_ms: i64) -> StoreResult<Vec<EntryId>> {
        let mut st = self.conn.prepare(
            "SELECT entry_id FROM journal WHERE ready_at_ms IS NULL AND entry_id IS NOT NULL",
        )?;
        let ids: Vec<EntryId> = st
            .query_map([], |r| Ok(EntryId(r.get::<_, i64>(0)? as u64)))?
            .collect::<Result<_, _>>()?;
        self.conn.execute(
            "UPDATE journal SET ready_at_ms = ?1 WHERE ready_at_ms IS NULL",
            [ready_at_ms],
        )?;
        self.conn.execute(
            "UPDATE journal SET state = 'queued' WHERE state = 'uploading'",
            [],
        )?;
        Ok(ids)
    }

    /// The oldest job that may run now, skipping parked and held ones.
    ///
    /// Walking the queue in order from its head is what finds it at once while a backlog
    /// drains; but after a burst of creates the head is thousands of jobs still in their
    /// write-back delay, and the walk read all of them for every job run (a delete, a
    /// mkdir), under the writer's lock. So: a short walk from the head, and if that finds
    /// nothing, the walk starts at the oldest ready job, found through `journal_by_ready`.
    pub fn next_job(&self, now_ms: i64) -> StoreResult<Option<Job>> {
        const HEAD: i64 = 64;
        // The oldest job that may run among `seq` in `?2..?3`.
        let mut within = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM journal WHERE seq >= ?2 AND seq < ?3 AND state != 'parked' \
             AND ready_at_ms IS NOT NULL AND ready_at_ms <= ?1 \
             ORDER BY seq LIMIT 1"
        ))?;
        let mut head = self
            .conn
            .prepare_cached("SELECT seq FROM journal ORDER BY seq LIMIT 1 OFFSET ?1")?;
        // The first seq past the head, if the queue is longer than that.
        let head_end: Option<i64> = head.query_row([HEAD], |r| r.get(0)).optional()?;
        let head_end = head_end.unwrap_or(i64::MAX);
        let found = within
            .query_row(params![now_ms, i64::MIN, head_end], job_from_row)
            .optional()?;
        if found.is_some() || head_end == i64::MAX {
            return Ok(found);
        }
        let mut oldest_ready = self.conn.prepare_cached(
            "SELECT min(seq) FROM journal INDEXED BY journal_by_ready WHERE ready_at_ms <= ?1",
        )?;
        let from: Option<i64> = oldest_ready.query_row([now_ms], |r| r.get(0))?;
        let Some(from) = from else {
            return Ok(None);
        };
        Ok(within
            .query_row(params![now_ms, from.max(head_end), i64::MAX], job_from_row)
            .optional()?)
    }

    /// When the next not-yet-ready job becomes ready.
    pub fn next_ready_at(&self) -> StoreResult<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT min(ready_at_ms) FROM journal WHERE state != 'parked' AND ready_at_ms IS NOT NULL",
            [],
            |r| r.get(0),
        )?)
    }

    pub fn job_for(&self, id: EntryId) -> StoreResult<Option<Job>> {
        let mut st = self.conn.prepare_cached(&format!(
            "SELECT {JOB_COLS} FROM journal WHERE entry_id = ?1"
        ))?;
        Ok(st.query_row([id.0 as i64], job_from_row).optional()?)
    }

    pub fn set_job_state(&self, seq: i64, state: JobState) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET state = ?2 WHERE seq = ?1",
            params![seq, state.as_str()],
        )?;
        Ok(())
    }

    /// A transient failure: the job stays first in line, retried after `retry_at_ms`.
    pub fn retry_job(&self, seq: i64, error: &str, retry_at_ms: i64) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET state = 'queued', attempts = attempts + 1, last_error = ?2, \
             ready_at_ms = CASE WHEN ready_at_ms IS NULL THEN NULL ELSE ?3 END WHERE seq = ?1",
            params![seq, error, retry_at_ms],
        )?;
        self.record_failure(seq, EventKind::Retry, error)
    }

    /// A permanent failure: the job waits for the user (or a later change) instead of
    /// blocking the rest of the queue.
    pub fn park_job(&self, seq: i64, error: &str) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET state = 'parked', attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            params![seq, error],
        )?;
        self.record_failure(seq, EventKind::Error, error)
    }

    /// The path a job works on, as the queue and the activity log show it: the entry's path,
    /// or the key a delete removes.
    pub fn job_path(&self, kind: &JobKind) -> StoreResult<String> {
        Ok(match kind {
            JobKind::Sync(id) => self
                .path_of(*id)?
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_else(|| format!("(unlinked entry {})", id.0)),
            JobKind::Delete { key, .. } => key.trim_end_matches('/').to_string(),
        })
    }

    fn record_failure(&self, seq: i64, kind: EventKind, error: &str) -> StoreResult<()> {
        let Some(job) = self.job(seq)? else {
            return Ok(());
        };
        let path = self.job_path(&job.kind)?;
        self.record(&Event::new(kind).path(path).detail(error))
    }

    /// The job `seq`, if it has not finished.
    pub fn job(&self, seq: i64) -> StoreResult<Option<Job>> {
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT {JOB_COLS} FROM journal WHERE seq = ?1"))?;
        Ok(st.query_row([seq], job_from_row).optional()?)
    }

    /// Milliseconds from the job's entry's last close (or change) to now: how long the
    /// change took to reach the remote, once it has.
    pub fn job_age_since_close(&self, seq: i64) -> StoreResult<Option<i64>> {
        let closed: Option<i64> = self
            .conn
            .query_row("SELECT closed_ms FROM journal WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .optional()?
            .flatten();
        Ok(closed.map(|c| (super::now_ms() - c).max(0)))
    }

    /// Records, before it goes out, that the job sends content with hash `sha256` (or the
    /// copy named by a `copy of` mark).
    pub fn note_tried(&self, seq: i64, sha256: &str) -> StoreResult<()> {
        let cur: Option<String> = self
            .conn
            .query_row("SELECT tried FROM journal WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .optional()?
            .flatten();
        let mut tried: Vec<&str> = cur
            .as_deref()
            .map(|t| t.lines().collect())
            .unwrap_or_default();
        if tried.last() == Some(&sha256) {
            return Ok(());
        }
        tried.push(sha256);
        let keep = &tried[tried.len().saturating_sub(TRIED_KEPT)..];
        self.conn.execute(
            "UPDATE journal SET tried = ?2 WHERE seq = ?1",
            params![seq, keep.join("\n")],
        )?;
        Ok(())
    }

    pub fn remove_job(&self, seq: i64) -> StoreResult<()> {
        self.conn
            .execute("DELETE FROM journal WHERE seq = ?1", [seq])?;
        let empty: bool = self
            .conn
            .prepare_cached("SELECT NOT EXISTS (SELECT 1 FROM journal)")?
            .query_row([], |r| r.get(0))?;
        if empty {
            // Everything queued has reached the remote.
            self.set_stat(LAST_FULL_SYNC, super::now_ms())?;
        }
        Ok(())
    }

    /// Finishes a sync: the remote now holds `synced`. The job and the dirty bits go only if
    /// nothing changed since `seen_dirty_seq`; otherwise the job stays for another round.
    pub fn complete_sync(
        &self,
        seq: i64,
        id: EntryId,
        seen_dirty_seq: i64,
        synced: &Synced,
    ) -> StoreResult<bool> {
        self.set_synced(id, synced)?;
        let changed = self.conn.execute(
            "UPDATE entries SET dirty = 0 WHERE id = ?1 AND dirty_seq = ?2",
            params![id.0 as i64, seen_dirty_seq],
        )?;
        if changed == 1 {
            self.remove_job(seq)?;
            Ok(true)
        } else {
            self.set_job_state(seq, JobState::Queued)?;
            Ok(false)
        }
    }

    /// Makes every waiting job run at once (a forced sync): write-back delays and backoffs
    /// are cut short, parked jobs get another try; held ones still wait for their writer.
    pub fn retry_now(&self, now_ms: i64) -> StoreResult<()> {
        self.conn.execute(
            "UPDATE journal SET ready_at_ms = ?1 WHERE ready_at_ms > ?1",
            [now_ms],
        )?;
        self.conn.execute(
            "UPDATE journal SET state = 'queued' WHERE state = 'parked'",
            [],
        )?;
        self.woke.set(true);
        Ok(())
    }

    /// Cuts the write-back delay of queued jobs short (not held ones, not parked ones): the
    /// cache is full of data waiting for upload.
    pub fn hurry(&self, now_ms: i64) -> StoreResult<()> {
        let n = self.conn.execute(
            "UPDATE journal SET ready_at_ms = ?1 WHERE ready_at_ms > ?1 AND state = 'queued'",
            [now_ms],
        )?;
        if n > 0 {
            self.woke.set(true);
        }
        Ok(())
    }

    pub fn queue_stats(&self) -> StoreResult<QueueStats> {
        #[allow(clippy::type_complexity)]
        let (entries, bytes, held, parked, uploading, max_seq, uploading_bytes): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(CASE WHEN e.kind = 1 AND (e.dirty & 1) = 1 THEN e.size ELSE 0 END), 0), \
             coalesce(sum(j.ready_at_ms IS NULL), 0), coalesce(sum(j.state = 'parked'), 0), \
             coalesce(sum(j.state = 'uploading'), 0), \
             coalesce((SELECT max(seq) FROM journal), 0), \
             coalesce(sum(CASE WHEN j.state = 'uploading' AND e.kind = 1 AND (e.dirty & 1) = 1 \
             THEN e.size ELSE 0 END), 0) \
             FROM journal j LEFT JOIN entries e ON e.id = j.entry_id",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )?;
        let max_seq = max_seq.max(self.journal_barrier()?);
        let last_error = self
            .conn
            .query_row(
                "SELECT last_error FROM journal WHERE last_error IS NOT NULL ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(QueueStats {
            entries: entries as u64,
            bytes: bytes as u64,
            held: held as u64,
            parked: parked as u64,
            uploading: uploading as u64,
            uploading_bytes: uploading_bytes as u64,
            max_seq,
            last_error,
            oldest_ms: self
                .conn
                .query_row("SELECT min(queued_ms) FROM journal", [], |r| r.get(0))?,
        })
    }

    /// Parks jobs go back in line now: one (by `seq`) or all; answers how many.
    pub fn retry_parked(&self, seq: Option<i64>, now_ms: i64) -> StoreResult<usize> {
        let n = self.conn.execute(
            "UPDATE journal SET state = 'queued', ready_at_ms = ?2 \
             WHERE state = 'parked' AND (?1 IS NULL OR seq = ?1)",
            params![seq, now_ms],
        )?;
        if n > 0 {
            self.woke.set(true);
        }
        Ok(n)
    }

    /// The highest journal sequence number handed out so far, including finished jobs.
    pub fn journal_barrier(&self) -> StoreResult<i64> {
        Ok(self.conn.query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0)",
            [],
            |r| r.get(0),
        )?)
    }

    /// Jobs at or below `barrier` that have not finished, oldest first.
    pub fn pending_up_to(&self, barrier: i64) -> StoreResult<Vec<Job>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {JOB_COLS} FROM journal WHERE seq <= ?1 ORDER BY seq"
        ))?;
        let rows = st.query_map([barrier], job_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;
    use crate::store::dirty;

    #[test]
    fn a_job_keeps_its_place_and_a_held_job_stays_held() {
        let (_d, s) = store();
        let (a, b) = (file(&s, "a"), file(&s, "b"));
        s.write(|db| db.enqueue_sync(a, dirty::CONTENT, Some(0)))
            .unwrap();
        s.write(|db| db.enqueue_sync(b, dirty::CONTENT, Some(0)))
            .unwrap();
        // A later change to `a` does not send it behind `b`.
        s.write(|db| db.enqueue_sync(a, dirty::META, Some(0)))
            .unwrap();
        let first = s.read(|db| db.next_job(10)).unwrap().unwrap();
        assert_eq!(first.kind, JobKind::Sync(a));
        // Held by a writer: skipped, and a rename-style re-queue does not release it.
        s.write(|db| db.enqueue_sync(a, 0, None)).unwrap();
        s.write(|db| db.enqueue_sync(a, 0, Some(0))).unwrap();
        let next = s.read(|db| db.next_job(10)).unwrap().unwrap();
        assert_eq!(next.kind, JobKind::Sync(b));
        // Until the writer lets go.
        s.write(|db| db.set_ready(a, Some(0))).unwrap();
        let next = s.read(|db| db.next_job(10)).unwrap().unwrap();
        assert_eq!(next.kind, JobKind::Sync(a));
        let e = s.read(|db| db.must_get(a)).unwrap();
        assert_eq!(e.dirty, dirty::CONTENT | dirty::META);
    }

    /// A ready job behind a long queue of jobs still in their write-back delay is found
    /// (through the ready index), and order still wins among ready ones.
    #[test]
    fn next_job_looks_past_a_long_head_of_waiting_jobs() {
        let (_d, s) = store();
        let waiting: Vec<EntryId> = (0..100).map(|i| file(&s, &format!("w{i}"))).collect();
        for id in &waiting {
            s.write(|db| db.enqueue_sync(*id, dirty::CONTENT, Some(1_000)))
                .unwrap();
        }
        s.write(|db| db.enqueue_delete("gone", false, None))
            .unwrap();
        s.write(|db| db.enqueue_delete("gone2", false, None))
            .unwrap();
        let next = s.read(|db| db.next_job(10)).unwrap().unwrap();
        assert!(matches!(next.kind, JobKind::Delete { ref key, .. } if key == "gone"));
        assert_eq!(
            s.read(|db| db.pending_file_delete("gone2")).unwrap(),
            Some(None)
        );
        assert_eq!(s.read(|db| db.pending_file_delete("w1")).unwrap(), None);
        // Once the head is ready, it goes first again.
        let first = s.read(|db| db.next_job(1_000)).unwrap().unwrap();
        assert_eq!(first.kind, JobKind::Sync(waiting[0]));
    }

    /// What holds a directory's delete back: only jobs on keys strictly below it (not `d.x`,
    /// `dd` or `d` itself), counted with when they can run.
    #[test]
    fn jobs_below_a_directory_are_those_under_its_prefix() {
        let (_d, s) = store();
        s.write(|db| db.enqueue_delete("d", true, None)).unwrap();
        let dir_job = s.read(|db| db.next_job(10)).unwrap().unwrap().seq;
        for k in ["d.x", "dd", "c/d/x"] {
            s.write(|db| db.enqueue_delete(k, false, None)).unwrap();
        }
        assert_eq!(s.read(|db| db.jobs_below("d", dir_job)).unwrap().0, 0);

        s.write(|db| db.enqueue_delete("d/sub/x", false, None))
            .unwrap();
        // A file whose base is still below `d`, its move not run yet, due at 5000.
        let moved = file(&s, "moved");
        s.write(|db| {
            db.set_synced(
                moved,
                &Synced {
                    key: Some("d/moved".into()),
                    ..Default::default()
                },
            )?;
            db.enqueue_sync(moved, 0, Some(5_000))
        })
        .unwrap();
        assert_eq!(
            s.read(|db| db.jobs_below("d", dir_job)).unwrap(),
            (2, Some(5_000))
        );
        // Held by a writer: no time can be named.
        s.write(|db| db.set_ready(moved, None)).unwrap();
        assert_eq!(s.read(|db| db.jobs_below("d", dir_job)).unwrap(), (2, None));
    }

    #[test]
    fn a_change_during_upload_keeps_the_job() {
        let (_d, s) = store();
        let a = file(&s, "a");
        s.write(|db| db.enqueue_sync(a, dirty::CONTENT, Some(0)))
            .unwrap();
        let job = s.read(|db| db.next_job(10)).unwrap().unwrap();
        let seen = s.read(|db| db.must_get(a)).unwrap().dirty_seq;
        // The user writes again while the upload runs.
        s.write(|db| db.enqueue_sync(a, dirty::CONTENT, Some(0)))
            .unwrap();
        let synced = Synced {
            key: Some("a".into()),
            ..Default::default()
        };
        let clean = s
            .write(|db| db.complete_sync(job.seq, a, seen, &synced))
            .unwrap();
        assert!(!clean);
        assert!(s.read(|db| db.job_for(a)).unwrap().is_some());
        let seen = s.read(|db| db.must_get(a)).unwrap().dirty_seq;
        assert!(s
            .write(|db| db.complete_sync(job.seq, a, seen, &synced))
            .unwrap());
        assert!(s.read(|db| db.job_for(a)).unwrap().is_none());
        assert_eq!(s.read(|db| db.must_get(a)).unwrap().dirty, 0);
    }

    #[test]
    fn parked_jobs_leave_the_queue_until_retried() {
        let (_d, s) = store();
        let (a, b) = (file(&s, "a"), file(&s, "b"));
        s.write(|db| db.enqueue_sync(a, dirty::CONTENT, Some(0)))
            .unwrap();
        s.write(|db| db.enqueue_sync(b, dirty::CONTENT, Some(0)))
            .unwrap();
        let ja = s.read(|db| db.next_job(10)).unwrap().unwrap();
        s.write(|db| db.park_job(ja.seq, "403")).unwrap();
        assert_eq!(
            s.read(|db| db.next_job(10)).unwrap().unwrap().kind,
            JobKind::Sync(b)
        );
        let q = s.read(|db| db.queue_stats()).unwrap();
        assert_eq!((q.entries, q.parked), (2, 1));
        assert_eq!(q.last_error.as_deref(), Some("403"));
        s.write(|db| db.retry_now(10)).unwrap();
        assert_eq!(
            s.read(|db| db.next_job(10)).unwrap().unwrap().kind,
            JobKind::Sync(a)
        );
    }
}
