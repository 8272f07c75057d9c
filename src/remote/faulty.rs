//! A backend that wraps another and injects the failures of a real network by a plan a test
//! sets at run time: latency, unavailable answers, lost answers, cut transfers and refusals
//! of preconditions that held (mountpoint-s3's `failure_client.rs`).
//!
//! Every decision is drawn from the plan's seed, the request's kind, its key and how many
//! requests of that kind the key has seen: a replayed case meets the same faults on the same
//! requests, however the core's tasks interleave with each other.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;

use super::{
    Backend, ByteStream, Cond, Meta, ObjectInfo, Preconditions, RemoteError, RemoteResult, Written,
};

/// What to inject, each rate in parts per thousand of the requests it applies to. The
/// default injects nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub seed: u64,
    /// Every request first waits a drawn time up to this long.
    pub max_latency: Duration,
    /// Any request is answered `Unavailable` before it reaches the server (a refused
    /// connection, a 503).
    pub unavailable: u16,
    /// A write (upload, copy, delete, marker, metadata) is applied, then answered
    /// `Unavailable`: the connection dropped after the server committed.
    pub lost_answers: u16,
    /// A read (a range, a stream, a download) ends early with `Unavailable`; a stream hands
    /// out its first bytes before it fails, a download leaves a partial file.
    pub cut_transfers: u16,
    /// A conditional write (or delete) whose condition holds is refused with `Conflict`, as
    /// a distributed store catching up after an outage answers 412.
    pub refused_holding: u16,
}

impl FaultPlan {
    /// Whether the plan injects anything at all.
    pub fn is_clean(&self) -> bool {
        self.max_latency.is_zero()
            && self.unavailable == 0
            && self.lost_answers == 0
            && self.cut_transfers == 0
            && self.refused_holding == 0
    }
}

/// How many faults of each kind were injected so far: a test checks that its faults hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    pub delayed: u64,
    pub unavailable: u64,
    pub lost_answers: u64,
    pub cut_transfers: u64,
    pub refused_holding: u64,
}

impl Injected {
    /// Faults that failed a request (latency fails none).
    pub fn failures(&self) -> u64 {
        self.unavailable + self.lost_answers + self.cut_transfers + self.refused_holding
    }
}

/// The plan and its counters, shared: a test keeps a clone to change the plan while the core
/// runs (`set`), as it keeps a `Memory` to edit the remote.
#[derive(Clone, Default)]
pub struct Faults {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    plan: Mutex<FaultPlan>,
    /// Requests seen per (kind, key): the draw's position in the key's own sequence.
    seen: Mutex<HashMap<(Kind, String), u64>>,
    delayed: AtomicU64,
    unavailable: AtomicU64,
    lost_answers: AtomicU64,
    cut_transfers: AtomicU64,
    refused_holding: AtomicU64,
    listed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay whole whatever panicked while holding them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The kinds of request a draw tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Check,
    Scan,
    List,
    Head,
    Range,
    Stream,
    Download,
    Upload,
    Symlink,
    Dir,
    Meta,
    Copy,
    Delete,
}

/// What the draw for one request decided.
#[derive(Debug, Clone, Copy, Default)]
struct Draw {
    latency: Duration,
    unavailable: bool,
    lost: bool,
    cut: bool,
    refused: bool,
}

/// SplitMix64's finalizer: a well-mixed 64-bit value from any input.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a: stable across runs and platforms, unlike `std`'s hasher.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Faults {
    pub fn new(plan: FaultPlan) -> Faults {
        let f = Faults::default();
        f.set(plan);
        f
    }

    /// Replaces the plan; requests from now on follow it.
    pub fn set(&self, plan: FaultPlan) {
        *lock(&self.shared.plan) = plan;
    }

    pub fn plan(&self) -> FaultPlan {
        lock(&self.shared.plan).clone()
    }

    pub fn injected(&self) -> Injected {
        let s = &self.shared;
        Injected {
            delayed: s.delayed.load(Ordering::Relaxed),
            unavailable: s.unavailable.load(Ordering::Relaxed),
            lost_answers: s.lost_answers.load(Ordering::Relaxed),
            cut_transfers: s.cut_transfers.load(Ordering::Relaxed),
            refused_holding: s.refused_holding.load(Ordering::Relaxed),
        }
    }

    /// Listings (scans and lists) the server answered so far, counted once the answer is
    /// in: a test tells from it whether the core can have seen a change made since.
    pub fn listings(&self) -> u64 {
        self.shared.listed.load(Ordering::SeqCst)
    }

    fn draw(&self, kind: Kind, key: &str) -> Draw {
        let plan = self.plan();
        if plan.is_clean() {
            return Draw::default();
        }
        let n = {
            let mut seen = lock(&self.shared.seen);
            let n = seen.entry((kind, key.to_string())).or_insert(0);
            *n += 1;
            *n
        };
        let base = mix(plan.seed ^ mix(fnv(key.as_bytes()) ^ mix(kind as u64 ^ (n << 8))));
        // One independent value per decision.
        let roll = |i: u64| mix(base ^ i);
        let hit = |i: u64, per_mille: u16| roll(i) % 1000 < per_mille as u64;
        let max = plan.max_latency.as_micros() as u64;
        Draw {
            latency: Duration::from_micros(if max == 0 { 0 } else { roll(1) % (max + 1) }),
            unavailable: hit(2, plan.unavailable),
            lost: hit(3, plan.lost_answers),
            cut: hit(4, plan.cut_transfers),
            refused: hit(5, plan.refused_holding),
        }
    }

    fn count(&self, what: &AtomicU64) {
        what.fetch_add(1, Ordering::Relaxed);
    }
}

fn injected(what: &str, key: &str) -> RemoteError {
    RemoteError::unavailable(format!("injected fault: {what} ({key})"))
}

/// The wrapper itself; built by `Remote::faulty`.
pub struct Faulty {
    inner: Box<dyn Backend>,
    faults: Faults,
}

impl Faulty {
    pub fn new(inner: Box<dyn Backend>, faults: Faults) -> Faulty {
        Faulty { inner, faults }
    }

    /// Waits the drawn latency, then fails the request if the draw says it never arrives.
    async fn arrive(&self, kind: Kind, key: &str) -> RemoteResult<Draw> {
        let d = self.faults.draw(kind, key);
        if !d.latency.is_zero() {
            self.faults.count(&self.faults.shared.delayed);
            tokio::time::sleep(d.latency).await;
        }
        if d.unavailable {
            self.faults.count(&self.faults.shared.unavailable);
            return Err(injected("unavailable", key));
        }
        Ok(d)
    }

    /// A write the server applied: its answer is lost if the draw says so.
    fn answer<T>(&self, d: Draw, key: &str, r: RemoteResult<T>) -> RemoteResult<T> {
        match r {
            Ok(_) if d.lost => {
                self.faults.count(&self.faults.shared.lost_answers);
                Err(injected("answer lost after the write was applied", key))
            }
            other => other,
        }
    }

    /// A read the draw cuts short.
    fn cut(&self, d: Draw, key: &str) -> RemoteResult<()> {
        if d.cut {
            self.faults.count(&self.faults.shared.cut_transfers);
            return Err(injected("transfer cut", key));
        }
        Ok(())
    }

    /// Refuses a conditional write whose condition holds, if the draw says so. `expected`
    /// is what the server would compare with: `None` for "nothing there" (a create), the
    /// ETag otherwise; `Ok(())` lets the request go to the server.
    async fn refuse(&self, d: Draw, key: &str, cond: &Cond) -> RemoteResult<()> {
        if !d.refused || matches!(cond, Cond::Overwrite) {
            return Ok(());
        }
        let now = self.inner.head(key, false).await?;
        let holds = match cond {
            Cond::Overwrite => false,
            Cond::Create => now.is_none(),
            Cond::Match { etag: Some(e), .. } => {
                now.as_ref().and_then(|o| o.etag.as_deref()) == Some(e.as_str())
            }
            Cond::Match {
                etag: None,
                version: Some(v),
            } => now.as_ref().and_then(|o| o.version.as_deref()) == Some(v.as_str()),
            Cond::Match { .. } => now.is_some(),
        };
        if holds {
            self.faults.count(&self.faults.shared.refused_holding);
            return Err(RemoteError::Conflict(key.to_string()));
        }
        Ok(())
    }
}

impl Backend for Faulty {
    fn max_key_len(&self) -> usize {
        self.inner.max_key_len()
    }

    fn check_name(&self, name: &str) -> Result<(), String> {
        self.inner.check_name(name)
    }

    fn has_dir_markers(&self) -> bool {
        self.inner.has_dir_markers()
    }

    fn check(&self) -> BoxFuture<'_, RemoteResult<()>> {
        Box::pin(async move {
            self.arrive(Kind::Check, "").await?;
            self.inner.check().await
        })
    }

    fn probe_preconditions(&self) -> Option<BoxFuture<'_, RemoteResult<Preconditions>>> {
        self.inner.probe_preconditions()
    }

    fn set_preconditions_ignored(&self, ignored: bool) {
        self.inner.set_preconditions_ignored(ignored)
    }

    fn listing_has_meta(&self) -> bool {
        self.inner.listing_has_meta()
    }

    fn scan(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>> {
        Box::pin(async move {
            self.arrive(Kind::Scan, "").await?;
            let r = self.inner.scan().await;
            self.faults.shared.listed.fetch_add(1, Ordering::SeqCst);
            r
        })
    }

    fn list(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>> {
        Box::pin(async move {
            self.arrive(Kind::List, "").await?;
            let r = self.inner.list().await;
            self.faults.shared.listed.fetch_add(1, Ordering::SeqCst);
            r
        })
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
    ) -> BoxFuture<'a, RemoteResult<Option<ObjectInfo>>> {
        Box::pin(async move {
            self.arrive(Kind::Head, key).await?;
            self.inner.head(key, dir).await
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        if_match: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<Bytes>> {
        Box::pin(async move {
            let d = self.arrive(Kind::Range, key).await?;
            let got = self.inner.get_range(key, range, if_match).await?;
            self.cut(d, key)?;
            Ok(got)
        })
    }

    fn get_stream<'a>(
        &'a self,
        key: &'a str,
        if_match: Option<&'a str>,
    ) -> Option<BoxFuture<'a, RemoteResult<ByteStream>>> {
        let inner = self.inner.get_stream(key, if_match)?;
        Some(Box::pin(async move {
            let d = self.arrive(Kind::Stream, key).await?;
            let body = inner.await?;
            if !d.cut {
                return Ok(body);
            }
            self.faults.count(&self.faults.shared.cut_transfers);
            // The first chunk arrives, then the connection drops.
            let failure = injected("transfer cut", key);
            let cut: ByteStream = body
                .take(1)
                .chain(futures::stream::once(async move { Err(failure) }))
                .boxed();
            Ok(cut)
        }))
    }

    fn download<'a>(&'a self, key: &'a str, dest: &'a Path) -> BoxFuture<'a, RemoteResult<u64>> {
        Box::pin(async move {
            let d = self.arrive(Kind::Download, key).await?;
            let n = self.inner.download(key, dest).await?;
            if d.cut {
                // What a dropped connection leaves behind: the first half of the bytes.
                let f = std::fs::OpenOptions::new().write(true).open(dest)?;
                f.set_len(n / 2)?;
            }
            self.cut(d, key)?;
            Ok(n)
        })
    }

    fn upload_file<'a>(
        &'a self,
        key: &'a str,
        src: &'a Path,
        size: u64,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            let d = self.arrive(Kind::Upload, key).await?;
            self.refuse(d, key, cond).await?;
            let r = self.inner.upload_file(key, src, size, meta, cond).await;
            self.answer(d, key, r)
        })
    }

    fn put_symlink<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            let d = self.arrive(Kind::Symlink, key).await?;
            self.refuse(d, key, cond).await?;
            let r = self.inner.put_symlink(key, meta, cond).await;
            self.answer(d, key, r)
        })
    }

    fn put_dir<'a>(&'a self, key: &'a str, meta: &'a Meta) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            let d = self.arrive(Kind::Dir, key).await?;
            let r = self.inner.put_dir(key, meta).await;
            self.answer(d, key, r)
        })
    }

    fn update_meta<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
        size: u64,
    ) -> BoxFuture<'a, RemoteResult<Option<Written>>> {
        Box::pin(async move {
            let d = self.arrive(Kind::Meta, key).await?;
            self.refuse(d, key, cond).await?;
            let r = self.inner.update_meta(key, meta, cond, size).await;
            self.answer(d, key, r)
        })
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        source: Option<&'a str>,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            let d = self.arrive(Kind::Copy, to).await?;
            self.refuse(d, to, cond).await?;
            let r = self.inner.copy(from, to, source, cond).await;
            self.answer(d, to, r)
        })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
        expect: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<()>> {
        Box::pin(async move {
            let d = self.arrive(Kind::Delete, key).await?;
            if let (false, Some(e)) = (dir, expect) {
                let cond = Cond::Match {
                    etag: Some(e.to_string()),
                    version: None,
                };
                self.refuse(d, key, &cond).await?;
            }
            let r = self.inner.delete(key, dir, expect).await;
            self.answer(d, key, r)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Memory, Remote};
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn every(plan: FaultPlan) -> FaultPlan {
        FaultPlan { seed: 7, ..plan }
    }

    fn unavailable<T: std::fmt::Debug>(r: &RemoteResult<T>) -> bool {
        matches!(r, Err(RemoteError::Unavailable { .. }))
    }

    #[test]
    fn a_lost_answer_leaves_the_write_applied() {
        let (mem, tmp) = (Memory::new(), tempfile::tempdir().unwrap());
        let faults = Faults::new(every(FaultPlan {
            lost_answers: 1000,
            ..FaultPlan::default()
        }));
        let remote = Remote::faulty(Box::new(mem.clone()), faults.clone());
        let src = tmp.path().join("src");
        std::fs::write(&src, b"mine").unwrap();
        rt().block_on(async {
            let r = remote
                .upload_file("a", &src, 4, &Meta::default(), &Cond::Create)
                .await;
            assert!(unavailable(&r), "{r:?}");
            assert_eq!(mem.get("a").unwrap(), b"mine");
            // The retry meets the version it wrote: refused, as the server refuses a second
            // create. The uploader must know that version as its own.
            let again = remote
                .upload_file("a", &src, 4, &Meta::default(), &Cond::Create)
                .await;
            assert!(matches!(again, Err(RemoteError::Conflict(_))), "{again:?}");
            let etag = mem.etag("a");
            let r = remote.delete("a", false, etag.as_deref()).await;
            assert!(unavailable(&r));
            assert!(mem.get("a").is_none());
            // Reads have no answer to lose.
            mem.put("b", b"theirs", Meta::default());
            assert_eq!(
                &remote.get_range("b", 0..6, None).await.unwrap()[..],
                b"theirs"
            );
        });
        assert_eq!(faults.injected().lost_answers, 2);
    }

    #[test]
    fn an_unavailable_remote_applies_nothing() {
        let (mem, tmp) = (Memory::new(), tempfile::tempdir().unwrap());
        let faults = Faults::new(every(FaultPlan {
            unavailable: 1000,
            ..FaultPlan::default()
        }));
        let remote = Remote::faulty(Box::new(mem.clone()), faults.clone());
        let src = tmp.path().join("src");
        std::fs::write(&src, b"mine").unwrap();
        mem.put("b", b"theirs", Meta::default());
        rt().block_on(async {
            assert!(unavailable(
                &remote
                    .upload_file("a", &src, 4, &Meta::default(), &Cond::Overwrite)
                    .await
            ));
            assert!(unavailable(&remote.delete("b", false, None).await));
            assert!(unavailable(&remote.list().await));
            assert!(unavailable(&remote.head("b", false).await));
        });
        assert_eq!(mem.keys(), ["b"]);
        assert_eq!(faults.injected().unavailable, 4);
        // Back to clean, at once.
        faults.set(FaultPlan::default());
        rt().block_on(async { assert_eq!(remote.list().await.unwrap().len(), 1) });
        assert_eq!(faults.injected().unavailable, 4);
    }

    #[test]
    fn a_cut_transfer_fails_after_its_first_bytes() {
        let (mem, tmp) = (Memory::new(), tempfile::tempdir().unwrap());
        let faults = Faults::new(every(FaultPlan {
            cut_transfers: 1000,
            ..FaultPlan::default()
        }));
        let remote = Remote::faulty(Box::new(mem.clone()), faults.clone());
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        mem.put("big", &data, Meta::default());
        let dest = tmp.path().join("dest");
        rt().block_on(async {
            assert!(unavailable(&remote.get_range("big", 0..10, None).await));
            let mut body = remote.get_stream("big", None).await.unwrap().unwrap();
            let first = body.next().await.unwrap().unwrap();
            assert!(!first.is_empty() && data.starts_with(&first));
            assert!(unavailable(&body.next().await.unwrap()));
            assert!(unavailable(&remote.download("big", &dest).await));
            // What the cut left behind is short, never whole.
            assert!(std::fs::metadata(&dest).unwrap().len() < data.len() as u64);
        });
        assert_eq!(faults.injected().cut_transfers, 3);
    }

    #[test]
    fn a_refusal_whose_condition_held_changes_nothing() {
        let (mem, tmp) = (Memory::new(), tempfile::tempdir().unwrap());
        let faults = Faults::new(every(FaultPlan {
            refused_holding: 1000,
            ..FaultPlan::default()
        }));
        let remote = Remote::faulty(Box::new(mem.clone()), faults.clone());
        let src = tmp.path().join("src");
        std::fs::write(&src, b"mine").unwrap();
        let base = mem.put("a", b"base", Meta::default());
        let holds = Cond::Match {
            etag: base.etag.clone(),
            version: None,
        };
        rt().block_on(async {
            let r = remote
                .upload_file("a", &src, 4, &Meta::default(), &holds)
                .await;
            assert!(matches!(r, Err(RemoteError::Conflict(_))), "{r:?}");
            let r = remote.delete("a", false, base.etag.as_deref()).await;
            assert!(matches!(r, Err(RemoteError::Conflict(_))), "{r:?}");
            // Unconditional writes have no condition to refuse.
            remote
                .upload_file("c", &src, 4, &Meta::default(), &Cond::Overwrite)
                .await
                .unwrap();
        });
        assert_eq!(mem.get("a").unwrap(), b"base");
        assert_eq!(mem.etag("a"), base.etag);
        assert_eq!(faults.injected().refused_holding, 2);
    }

    /// The outcome of each of a fixed series of requests, under `plan`.
    fn outcomes(plan: FaultPlan) -> (Vec<bool>, Injected) {
        let mem = Memory::new();
        mem.put("k", b"data", Meta::default());
        let faults = Faults::new(plan);
        let remote = Remote::faulty(Box::new(mem), faults.clone());
        let got = rt().block_on(async {
            let mut out = Vec::new();
            for i in 0..100u64 {
                out.push(remote.get_range("k", 0..4, None).await.is_ok());
                out.push(remote.head(&format!("k{}", i % 3), false).await.is_ok());
            }
            out
        });
        (got, faults.injected())
    }

    #[test]
    fn the_same_seed_injects_the_same_faults() {
        let plan = |seed| FaultPlan {
            seed,
            unavailable: 100,
            cut_transfers: 100,
            max_latency: Duration::from_micros(50),
            ..FaultPlan::default()
        };
        let (a, hits) = outcomes(plan(1));
        assert_eq!(outcomes(plan(1)).0, a);
        assert_ne!(outcomes(plan(2)).0, a);
        // Near the rates asked for: 10% of 200 unavailable, 10% of the 100 ranges cut.
        assert!((8..40).contains(&hits.unavailable), "{hits:?}");
        assert!((3..25).contains(&hits.cut_transfers), "{hits:?}");
        assert!(hits.delayed > 150, "{hits:?}");
        let (clean, none) = outcomes(FaultPlan::default());
        assert!(clean.iter().all(|ok| *ok));
        assert_eq!(none, Injected::default());
    }
}
