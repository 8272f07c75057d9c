//! Schedules the sync engine's work on one task: journal jobs, then a poll when one is due,
//! standing aside while the user is busy, idle while offline, until shutdown.
//!
//! One task runs jobs and polls in turn, so a poll never races an upload.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::conflict::Conflicts;
use super::poller::Poller;
use super::uploader::{Settled, Uploader};
use super::{Invalidation, Shared, SyncConfig, SyncError};
use crate::cache::{FileCache, FileGate};
use crate::remote::Remote;
use crate::store::{now_ms, Store};

/// How late the idle uploader may take a job that is not ready yet, so that one wake-up
/// serves many jobs of a burst. Small against the write-back delay.
const WAKE_SLACK: Duration = Duration::from_millis(50);

/// The uploader waits for this much quiet from the user before its next job (the default of
/// `SyncConfig::user_quiet`) ...
pub const USER_QUIET: Duration = Duration::from_millis(20);
/// ... but not longer than this in one go, and then runs jobs for at least this long.
const YIELD_AT_MOST: Duration = Duration::from_secs(2);
const RUN_AT_LEAST: Duration = Duration::from_secs(1);

/// The uploader, the poller and the conflict engine they share, with the loop that runs them.
pub struct Engine {
    ctx: Arc<Shared>,
    uploader: Uploader,
    poller: Arc<Poller>,
}

impl Engine {
    pub fn new(
        store: Arc<Store>,
        cache: FileCache,
        files: Arc<dyn FileGate>,
        remote: Arc<Remote>,
        cfg: SyncConfig,
        notices: Option<std::sync::mpsc::Sender<Invalidation>>,
    ) -> Engine {
        let ctx = Arc::new(Shared {
            store,
            cache,
            files,
            remote,
            cfg,
            notices,
        });
        let conflicts = Conflicts::new(ctx.clone());
        Engine {
            uploader: Uploader::new(ctx.clone(), conflicts.clone()),
            poller: Arc::new(Poller::new(ctx.clone(), conflicts)),
            ctx,
        }
    }

    /// The metadata reader: its background run, and reads on demand for the core, which
    /// block on `rt` (called from FUSE threads, outside the runtime).
    pub fn meta_reader(&self, rt: tokio::runtime::Handle) -> Arc<super::MetaReader> {
        Arc::new(super::MetaReader::new(self.ctx.clone(), rt))
    }

    /// The poller, for a poll outside the loop (a test racing polls against opens).
    pub fn poller(&self) -> Arc<Poller> {
        self.poller.clone()
    }

    /// Runs until `shutdown` turns true: drains ready jobs oldest first, then polls the
    /// remote when the poll interval is up or a sync was asked for. A job interrupted by
    /// shutdown stays queued.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let store = &self.ctx.store;
        let cfg = &self.ctx.cfg;
        let mut pause_until: Option<Instant> = None;
        // The first poll comes once the queue left by the previous run has replayed.
        let mut poll_due = cfg.poll_interval.is_some();
        let mut next_poll = cfg.poll_interval.map(|d| Instant::now() + d);
        let mut was_unreachable = false;
        let mut yielding_since = None;
        // Kicks served by the last poll that went through (`Store::kicks`); none yet, also
        // of those asked for before this task first ran.
        let mut served_kicks = 0;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if let Some(wait) = self.yield_to_user(&mut yielding_since) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = store.kicked() => {}
                    _ = shutdown.changed() => return,
                }
                continue;
            }
            if self.ctx.remote.health().is_offline() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = store.kicked() => {}
                    _ = shutdown.changed() => return,
                }
                // Back online: replay the queue, then look at the remote.
                poll_due = true;
                continue;
            }
            if let Some(until) = pause_until {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    _ = store.kicked() => {}
                    _ = shutdown.changed() => return,
                }
                pause_until = None;
            }
            // A read-only mount leaves the queue of an earlier mount queued: it never writes.
            let next = if self.ctx.remote.is_read_only() {
                Ok(None)
            } else {
                self.uploader.next_job()
            };
            let job = match next {
                Ok(Some(j)) => j,
                Ok(None) => {
                    // Polling off (`--poll-interval 0`) means off: the remote change a job
                    // learnt of comes in with the next `stratus sync`. (Found by the race
                    // test: a mount polled halfway through a round of writes.)
                    let wanted = self.uploader.take_poll_wanted() && cfg.poll_interval.is_some();
                    // Offline may have been turned on since the check above, with a kick
                    // that would poll: offline means no traffic at all. (Found by the core
                    // model test: a poll slipped through as offline was set, and the mount
                    // then replaced a remote version it should not have known yet.)
                    if self.ctx.remote.health().is_offline() {
                        continue;
                    }
                    let kicked = store.kicks() > served_kicks;
                    if poll_due
                        || kicked
                        || wanted
                        || next_poll.is_some_and(|t| Instant::now() >= t)
                    {
                        let kicks = store.kicks();
                        match self
                            .poller
                            .poll()
                            .instrument(tracing::info_span!("poll"))
                            .await
                        {
                            Ok(()) => {
                                self.ctx.remote.health().record_ok();
                                poll_due = false;
                                served_kicks = kicks;
                                next_poll = cfg.poll_interval.map(|d| Instant::now() + d);
                            }
                            Err(e) => {
                                let transient =
                                    matches!(&e, SyncError::Remote(r) if r.is_transient());
                                tracing::warn!(error = %e, "poll failed");
                                self.ctx
                                    .remote
                                    .health()
                                    .record_error(transient, &e.to_string());
                                was_unreachable |= transient;
                                pause_until = Some(Instant::now() + Duration::from_secs(2));
                                next_poll = cfg.poll_interval.map(|d| Instant::now() + d);
                            }
                        }
                        continue;
                    }
                    let next = store.read(|db| db.next_ready_at()).ok().flatten();
                    let mut wait = next
                        .map(|t| Duration::from_millis((t - now_ms()).max(0) as u64))
                        .unwrap_or(Duration::from_secs(3600));
                    if next.is_some() {
                        // Jobs queued in a burst become ready a fraction of a millisecond
                        // apart: take them in batches rather than waking for each.
                        wait = wait.max(WAKE_SLACK);
                    }
                    if let Some(t) = next_poll {
                        wait = wait.min(t.saturating_duration_since(Instant::now()));
                    }
                    tokio::select! {
                        // A kick is seen through `Store::kicks` above.
                        _ = store.wait_for_jobs(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the journal");
                    pause_until = Some(Instant::now() + Duration::from_secs(5));
                    continue;
                }
            };
            let span = tracing::info_span!("job", seq = job.seq);
            let result = tokio::select! {
                r = self.uploader.run_job(&job).instrument(span) => r,
                _ = shutdown.changed() => {
                    self.uploader.requeue(&job);
                    return;
                }
            };
            match self.uploader.settle(&job, result) {
                Settled::Done => {
                    if was_unreachable {
                        // The remote is back: once the queue has replayed, look at it.
                        was_unreachable = false;
                        poll_due = true;
                    }
                }
                Settled::Unreachable { retry_in } => {
                    was_unreachable = true;
                    pause_until = Some(Instant::now() + retry_in);
                }
                Settled::Later => {}
            }
        }
    }

    /// How long to stand aside before the next job because the user is busy in the mount:
    /// during a burst of creates or unlinks an upload (hashing, a write and an fsync into a
    /// local folder, several commits) competed with the FUSE threads for the CPU, the disk
    /// and the store's lock, and halved the create rate. The jobs are already committed, so
    /// waiting loses nothing; after `YIELD_AT_MOST` of a burst, jobs run for `RUN_AT_LEAST`
    /// regardless, so a busy mount still uploads.
    fn yield_to_user(&self, since: &mut Option<Instant>) -> Option<Duration> {
        let quiet = self.ctx.cfg.user_quiet;
        let quiet_for = now_ms() - self.ctx.store.user_active_ms();
        if quiet_for >= quiet.as_millis() as i64 {
            *since = None;
            return None;
        }
        let started = *since.get_or_insert_with(Instant::now);
        let yielded = started.elapsed();
        if yielded >= YIELD_AT_MOST + RUN_AT_LEAST {
            *since = Some(Instant::now());
        } else if yielded >= YIELD_AT_MOST {
            return None;
        }
        Some(quiet.saturating_sub(Duration::from_millis(quiet_for.max(0) as u64)))
    }
}
