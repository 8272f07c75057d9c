//! What this mount knows of the remote's health: reachable or not and since when, the last
//! error, the user's offline switch, and a watch on requests the server leaves unanswered.
//!
//! Owned by the `Remote`, because it gates network traffic: every layer that talks to the
//! remote reads and reports it through `Remote::health()`. In memory only.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A request without a body to send that has had no answer for this long, while nothing else
/// answered either, makes the remote count as unreachable: a hung server (stopped, or a
/// network that drops packets silently) would otherwise look reachable until the HTTP
/// client's own timeout, minutes later.
pub const STALL_MS: i64 = 5_000;

/// The slowest upload, in bytes a second, that is still taken for a server at work: an
/// upload gets the time to send its bytes at this rate on top of [`STALL_MS`].
pub const SLOWEST_SEND: u64 = 64 * 1024;

/// The window a transfer rate is averaged over: long enough that an upload whose parts land
/// a few seconds apart shows a steady rate, short enough that a stalled one drops to zero
/// soon after.
pub const RATE_WINDOW_MS: i64 = 5_000;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Default)]
pub struct Health {
    /// The last request that failed for a reason of the network or the server's availability.
    unreachable: AtomicBool,
    /// The user asked for no network traffic at all.
    offline: AtomicBool,
    last_error: Mutex<Option<(i64, String)>>,
    /// Polls of the remote started and completed, so `stratus sync --wait` can wait for one
    /// that started after it was called.
    polls_started: AtomicU64,
    polls: AtomicU64,
    /// Bytes of file data fetched from the remote since the mount started.
    downloaded: AtomicU64,
    /// Since when the remote is unreachable (ms; 0 while it answers).
    unreachable_since_ms: AtomicI64,
    /// The last time the remote answered anything (ms; 0: never since the mount started).
    last_ok_ms: AtomicI64,
    /// Since when the user has the mount offline (ms; 0 while online).
    offline_since_ms: AtomicI64,
    /// When the last poll of the remote completed (ms; 0: none yet).
    last_poll_ms: AtomicI64,
    /// Objects and bytes under the mount's prefix at the last full listing.
    listed: Mutex<Option<(u64, u64)>>,
    /// The upload in progress: its key, the bytes of its parts the server has taken, and
    /// its size.
    upload: Mutex<Option<(String, Arc<Progress>, u64)>>,
    /// Bytes the server took and bytes that came down, over the last [`RATE_WINDOW_MS`].
    up: Arc<Meter>,
    down: Meter,
    /// Watched requests in flight, by id, with the time each started (plus the allowance
    /// for what it sends).
    in_flight: Mutex<BTreeMap<u64, i64>>,
    next_watch: AtomicU64,
}

/// A watched request in flight; dropping it (answered, failed or abandoned) ends the watch.
pub struct Watch<'a> {
    health: &'a Health,
    id: u64,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        lock(&self.health.in_flight).remove(&self.id);
    }
}

/// Bytes moved over the last [`RATE_WINDOW_MS`], for a transfer rate.
#[derive(Debug, Default)]
pub struct Meter {
    /// (when, bytes), oldest first; nothing older than the window.
    events: Mutex<VecDeque<(i64, u64)>>,
}

impl Meter {
    fn add(&self, bytes: u64) {
        let now = now_ms();
        let mut ev = lock(&self.events);
        Self::forget_old(&mut ev, now);
        ev.push_back((now, bytes));
    }

    fn forget_old(ev: &mut VecDeque<(i64, u64)>, now: i64) {
        while ev.front().is_some_and(|(t, _)| now - t > RATE_WINDOW_MS) {
            ev.pop_front();
        }
    }

    /// Bytes a second over the window.
    fn rate(&self) -> u64 {
        let mut ev = lock(&self.events);
        Self::forget_old(&mut ev, now_ms());
        ev.iter().map(|(_, b)| b).sum::<u64>() * 1000 / RATE_WINDOW_MS as u64
    }
}

/// The progress of the upload in progress: bytes the server has taken so far, also counted
/// in the upload rate.
#[derive(Debug)]
pub struct Progress {
    sent: AtomicU64,
    meter: Arc<Meter>,
}

impl Progress {
    /// The server took `bytes` more of the upload (a part, or the whole of a single PUT).
    pub fn add(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Relaxed);
        self.meter.add(bytes);
    }

    /// `bytes` more of the upload are done without being sent (copied on the server).
    pub fn copied(&self, bytes: u64) {
        self.sent.fetch_add(bytes, Relaxed);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }
}

impl Health {
    pub fn record_error(&self, transient: bool, msg: &str) {
        // A permanent error is an answer: the remote is reachable.
        let was = self.unreachable.swap(transient, Relaxed);
        if transient && !was {
            self.unreachable_since_ms.store(now_ms(), Relaxed);
        } else if !transient {
            self.answered();
        }
        *lock(&self.last_error) = Some((now_ms(), msg.to_string()));
    }

    /// A failure that says nothing about the remote (a state dir row set aside at mount):
    /// shown as the last error, reachability left alone.
    pub fn record_local_error(&self, msg: &str) {
        *lock(&self.last_error) = Some((now_ms(), msg.to_string()));
    }

    pub fn record_ok(&self) {
        self.unreachable.store(false, Relaxed);
        self.answered();
    }

    /// The server answered something (an error of ours included).
    pub fn answered(&self) {
        self.unreachable_since_ms.store(0, Relaxed);
        self.last_ok_ms.store(now_ms(), Relaxed);
    }

    /// Starts watching a request; see [`STALL_MS`].
    pub fn watch(&self) -> Watch<'_> {
        self.watch_sending(0)
    }

    /// Starts watching a request that sends `bytes`: it is allowed the time to send them at
    /// [`SLOWEST_SEND`] bytes a second before its silence counts.
    pub fn watch_sending(&self, bytes: u64) -> Watch<'_> {
        self.watch_paced(bytes, SLOWEST_SEND)
    }

    /// Starts watching a request that moves `bytes` at no less than `rate` bytes a second
    /// (a bandwidth limit may set it below [`SLOWEST_SEND`]): allowed the time that takes
    /// before its silence counts.
    pub fn watch_paced(&self, bytes: u64, rate: u64) -> Watch<'_> {
        let id = self.next_watch.fetch_add(1, Relaxed);
        let allowance = (bytes.saturating_mul(1000) / rate.max(1)) as i64;
        lock(&self.in_flight).insert(id, now_ms().saturating_add(allowance));
        Watch { health: self, id }
    }

    /// Since when the server has left a watched request unanswered, if for longer than
    /// [`STALL_MS`] with no answer to anything since it was sent.
    fn stalled_since(&self) -> Option<i64> {
        let oldest = *lock(&self.in_flight).values().min()?;
        let quiet = self.last_ok_ms.load(Relaxed) < oldest;
        (quiet && now_ms() - oldest > STALL_MS).then_some(oldest)
    }

    /// Whether any watched request is waiting for an answer.
    pub fn waiting(&self) -> bool {
        !lock(&self.in_flight).is_empty()
    }

    /// An upload of `size` bytes to `key` starts; the counter it answers goes up as its parts
    /// are taken (a single PUT: all at once, at its end).
    pub fn start_upload(&self, key: &str, size: u64) -> Arc<Progress> {
        let sent = Arc::new(Progress {
            sent: AtomicU64::new(0),
            meter: self.up.clone(),
        });
        *lock(&self.upload) = Some((key.to_string(), sent.clone(), size));
        sent
    }

    pub fn end_upload(&self) {
        *lock(&self.upload) = None;
    }

    /// The upload in progress: key, bytes taken by the server so far, size.
    pub fn upload_progress(&self) -> Option<(String, u64, u64)> {
        lock(&self.upload)
            .as_ref()
            .map(|(k, sent, size)| (k.clone(), sent.sent().min(*size), *size))
    }

    /// Takes the mount offline (no network traffic) or back online; answers whether that
    /// changed anything.
    pub fn set_offline(&self, on: bool) -> bool {
        let was = self.offline.swap(on, Relaxed);
        if was != on {
            self.offline_since_ms
                .store(if on { now_ms() } else { 0 }, Relaxed);
        }
        was != on
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Relaxed)
    }

    /// Neither a failed request nor a server that stopped answering says otherwise.
    pub fn is_reachable(&self) -> bool {
        !self.unreachable.load(Relaxed) && self.stalled_since().is_none()
    }

    /// The last error and when it happened; a server that stopped answering says so.
    pub fn last_error(&self) -> Option<(i64, String)> {
        if !self.unreachable.load(Relaxed) {
            if let Some(since) = self.stalled_since() {
                return Some((
                    since + STALL_MS,
                    format!(
                        "the remote has not answered for {} s",
                        (now_ms() - since) / 1000
                    ),
                ));
            }
        }
        lock(&self.last_error).clone()
    }

    /// Since when the remote is unreachable, when it is.
    pub fn unreachable_since(&self) -> Option<i64> {
        if self.unreachable.load(Relaxed) {
            return Some(self.unreachable_since_ms.load(Relaxed)).filter(|v| *v > 0);
        }
        self.stalled_since()
    }

    /// Since when the mount is offline, when it is.
    pub fn offline_since(&self) -> Option<i64> {
        let v = self.offline_since_ms.load(Relaxed);
        (self.is_offline() && v > 0).then_some(v)
    }

    /// The last time the remote answered.
    pub fn last_ok(&self) -> Option<i64> {
        Some(self.last_ok_ms.load(Relaxed)).filter(|v| *v > 0)
    }

    /// A poll of the remote started.
    pub fn poll_started(&self) {
        self.polls_started.fetch_add(1, Relaxed);
    }

    /// A poll of the remote completed.
    pub fn poll_done(&self) {
        self.polls.fetch_add(1, Relaxed);
        self.last_poll_ms.store(now_ms(), Relaxed);
        self.answered();
    }

    /// Polls started and completed.
    pub fn polls(&self) -> (u64, u64) {
        (self.polls_started.load(Relaxed), self.polls.load(Relaxed))
    }

    /// When the last poll completed.
    pub fn last_poll(&self) -> Option<i64> {
        Some(self.last_poll_ms.load(Relaxed)).filter(|v| *v > 0)
    }

    /// `n` bytes of file data arrived from the remote.
    pub fn add_downloaded(&self, n: u64) {
        self.downloaded.fetch_add(n, Relaxed);
        self.down.add(n);
    }

    /// Upload and download rates, bytes a second over the last [`RATE_WINDOW_MS`].
    pub fn rates(&self) -> (u64, u64) {
        (self.up.rate(), self.down.rate())
    }

    /// Bytes of file data fetched since the mount started.
    pub fn downloaded(&self) -> u64 {
        self.downloaded.load(Relaxed)
    }

    /// A full listing of the remote found `objects` objects holding `bytes`.
    pub fn listed(&self, objects: u64, bytes: u64) {
        *lock(&self.listed) = Some((objects, bytes));
    }

    /// Objects and bytes under the mount's prefix at the last full listing.
    pub fn remote_usage(&self) -> Option<(u64, u64)> {
        *lock(&self.listed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_left_unanswered_makes_the_remote_unreachable_until_anything_answers() {
        let h = Health::default();
        h.record_ok();
        let w = h.watch();
        assert!(h.is_reachable(), "a fresh request is no stall");
        // Backdate the request past the stall limit.
        *lock(&h.in_flight).values_mut().next().unwrap() -= STALL_MS + 1000;
        h.last_ok_ms.store(now_ms() - STALL_MS - 2000, Relaxed);
        assert!(!h.is_reachable());
        assert!(h.unreachable_since().is_some());
        assert!(h.last_error().unwrap().1.contains("has not answered"));
        // Any answer ends it; so does the request going away.
        h.answered();
        assert!(h.is_reachable());
        drop(w);
        assert!(!h.waiting());
    }
}
