//! The bandwidth limit (`--bwlimit`, `stratus bwlimit`): one token bucket shared by every
//! upload and one by every download, applied where file bytes leave for or arrive from the
//! remote, whichever the backend.
//!
//! Owned by the `Remote`, like the health and the offline switch, because it gates network
//! traffic. Backends pace through [`pace_up`] and [`pace_down`], which reach the limit of the
//! `Remote` whose request is running (a task-local, as `note_sent` does), so a backend needs
//! no handle on it: uploads pay for each request body (a whole small file, or one part of a
//! multipart upload) before it goes out, downloads for each chunk of a body as it arrives,
//! which holds the server back through TCP's flow control.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A rate in bytes a second; 0 is no limit. Parsed once from rclone's syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rate(pub u64);

impl Rate {
    pub const OFF: Rate = Rate(0);

    pub fn is_off(self) -> bool {
        self.0 == 0
    }

    /// `off`, or a number with an optional binary unit as rclone reads it: `B`, `K`
    /// (KiB/s, also the unit of a bare number), `M`, `G`, `T`; `1.5M` is allowed.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("off") || t.is_empty() {
            return Ok(Rate::OFF);
        }
        let bad = || format!("bad rate {s:?}: expected off or a size such as 512K, 4M, 1G");
        let (num, mult) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let mult: u64 = match c.to_ascii_uppercase() {
                    'B' => 1,
                    'K' => 1 << 10,
                    'M' => 1 << 20,
                    'G' => 1 << 30,
                    'T' => 1 << 40,
                    _ => return Err(bad()),
                };
                (&t[..i], mult)
            }
            _ => (t, 1 << 10),
        };
        let n: f64 = num.parse().map_err(|_| bad())?;
        if !n.is_finite() || n < 0.0 {
            return Err(bad());
        }
        Ok(Rate((n * mult as f64).round() as u64))
    }
}

impl std::fmt::Display for Rate {
    /// `off`, or the rate in rclone's units (`4M`, `512K`, `1.5G`): what [`Rate::parse`]
    /// reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        for (unit, mult) in [
            ("T", 1u64 << 40),
            ("G", 1 << 30),
            ("M", 1 << 20),
            ("K", 1 << 10),
        ] {
            if self.0 >= mult {
                let v = self.0 as f64 / mult as f64;
                return if (v - v.round()).abs() < 1e-9 {
                    write!(f, "{}{unit}", v.round() as u64)
                } else {
                    write!(f, "{}{unit}", (v * 100.0).round() / 100.0)
                };
            }
        }
        write!(f, "{}B", self.0)
    }
}

/// Upload and download rates, `--bwlimit UP[:DOWN]` as rclone writes it: one rate limits
/// both directions, `off` neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub up: Rate,
    pub down: Rate,
}

impl Limits {
    pub fn parse(s: &str) -> Result<Limits, String> {
        let parsed = match s.split_once(':') {
            Some((up, down)) => Rate::parse(up).and_then(|up| {
                Ok(Limits {
                    up,
                    down: Rate::parse(down)?,
                })
            }),
            None => Rate::parse(s).map(|r| Limits { up: r, down: r }),
        };
        parsed.map_err(|_| {
            format!(
                "bad rate {s:?}: expected off, a rate such as 512K, 4M or 1G (binary units, \
                 bytes a second), or UPLOAD:DOWNLOAD such as 4M:20M"
            )
        })
    }
}

impl std::fmt::Display for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.up == self.down {
            write!(f, "{}", self.up)
        } else {
            write!(f, "{}:{}", self.up, self.down)
        }
    }
}

/// How far a bucket lets bytes run ahead of its rate: about one chunk of a transfer, so a
/// transfer starts at once and then settles to the rate.
const BURST: u64 = 256 * 1024;
/// Sleeps are cut into steps of at most this, so a limit lifted or changed on a live mount
/// reaches transfers already waiting.
const STEP: Duration = Duration::from_millis(100);

/// One direction's token bucket, kept as the time by which the bytes paid for so far may
/// have gone at the rate (GCRA): taking `n` bytes moves it on by `n / rate`, and the taker
/// waits until it is at most [`BURST`] bytes' worth ahead of now.
#[derive(Debug, Default)]
pub struct Bucket {
    rate: AtomicU64,
    due: Mutex<Option<Instant>>,
}

impl Bucket {
    pub fn rate(&self) -> Rate {
        Rate(self.rate.load(Relaxed))
    }

    pub fn set(&self, r: Rate) {
        self.rate.store(r.0, Relaxed);
        // A new rate starts from now: what was paid at the old one is settled.
        *self.due.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Waits until `n` more bytes may go at the rate; at once when there is no limit.
    pub async fn take(&self, n: u64) {
        let rate = self.rate.load(Relaxed);
        if rate == 0 || n == 0 {
            return;
        }
        let ready = {
            let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = due.filter(|d| *d > now).unwrap_or(now);
            let end = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *due = Some(end);
            end.checked_sub(Duration::from_secs_f64(BURST as f64 / rate as f64))
                .unwrap_or(now)
        };
        loop {
            let now = Instant::now();
            if now >= ready || self.rate.load(Relaxed) != rate {
                return;
            }
            tokio::time::sleep((ready - now).min(STEP)).await;
        }
    }
}

/// The two buckets of a `Remote`.
#[derive(Debug, Default)]
pub struct BwLimit {
    pub up: Bucket,
    pub down: Bucket,
}

impl BwLimit {
    pub fn limits(&self) -> Limits {
        Limits {
            up: self.up.rate(),
            down: self.down.rate(),
        }
    }

    pub fn set(&self, l: Limits) {
        self.up.set(l.up);
        self.down.set(l.down);
    }
}

/// What a paced request reaches: its `Remote`'s limit and health.
#[derive(Clone)]
pub(super) struct Pace {
    pub limit: Arc<BwLimit>,
    pub health: Arc<super::Health>,
}

tokio::task_local! {
    /// The limit of the `Remote` whose request runs in this task.
    pub(super) static PACE: Pace;
}

/// Waits until `n` bytes may be sent (a request body about to go out).
pub(crate) async fn pace_up(n: u64) {
    if let Ok(p) = PACE.try_with(Clone::clone) {
        p.limit.up.take(n).await;
    }
}

/// Waits until `n` bytes just received may be taken in. The bytes are an answer: while the
/// limit holds a long download back, the watch on silent servers must not take it for one.
pub(crate) async fn pace_down(n: u64) {
    if let Ok(p) = PACE.try_with(Clone::clone) {
        p.health.answered();
        p.limit.down.take(n).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_as_rclone_reads_them() {
        assert_eq!(Rate::parse("off"), Ok(Rate::OFF));
        assert_eq!(Rate::parse("4M"), Ok(Rate(4 << 20)));
        assert_eq!(Rate::parse("4m"), Ok(Rate(4 << 20)));
        assert_eq!(Rate::parse("512K"), Ok(Rate(512 << 10)));
        assert_eq!(
            Rate::parse("512"),
            Ok(Rate(512 << 10)),
            "a bare number is KiB/s"
        );
        assert_eq!(Rate::parse("1G"), Ok(Rate(1 << 30)));
        assert_eq!(Rate::parse("1.5M"), Ok(Rate(3 << 19)));
        assert_eq!(Rate::parse("100B"), Ok(Rate(100)));
        for bad in ["4X", "-1M", "M", "fast", "4MB"] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Limits::parse("4M:20M"),
            Ok(Limits {
                up: Rate(4 << 20),
                down: Rate(20 << 20)
            })
        );
        assert_eq!(
            Limits::parse("off:1M"),
            Ok(Limits {
                up: Rate::OFF,
                down: Rate(1 << 20)
            })
        );
        for s in ["4M", "4M:20M", "off", "off:1M", "1.5M", "512K"] {
            assert_eq!(Limits::parse(s).unwrap().to_string(), s);
        }
    }

    #[tokio::test]
    async fn a_bucket_holds_its_rate_after_one_burst_and_off_lets_go_at_once() {
        let b = Bucket::default();
        b.set(Rate(1 << 20));
        let t = Instant::now();
        for _ in 0..8 {
            b.take(64 << 10).await;
        }
        // 512 KiB at 1 MiB/s, less the burst that goes at once.
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(240), "{took:?}");
        // A waiter lets go when the limit is lifted.
        let waiting = async { b.take(100 << 20).await };
        let lift = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            b.set(Rate::OFF);
        };
        let t = Instant::now();
        tokio::join!(waiting, lift);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
}
