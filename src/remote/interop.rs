//! The metadata other tools keep on a shared bucket (rclone, s3fs, gcsfuse, gsutil): written
//! beside stratus's own keys so that they see the times and modes a mount shows, and read
//! where an object carries none of ours or another tool changed them after us.
//!
//! Each convention was checked against the tool's source; docs/semantics.md has the table
//! with the file each one comes from.

use chrono::{DateTime, SecondsFormat, Utc};

use super::Meta;

/// Which cloud the keys go to: rclone keeps `mtime` in a different format on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// rclone and s3fs: `mtime` as seconds since the epoch, with nine decimals when not whole.
    S3,
    /// rclone: `mtime` as RFC 3339 with nine decimals (its `timeFormatOut`).
    Azure,
    /// rclone: `mtime` as RFC 3339; gcsfuse: `gcsfuse_mtime`, RFC 3339; gsutil (read by rclone,
    /// gcsfuse and s3fs alike): `goog-reserved-file-mtime`, whole seconds.
    Gcs,
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// The other tools' keys for `meta`, an object that is a directory marker when `dir`.
///
/// `mode` is written in octal with a leading `0` and the file-type bits (`0100644`): s3fs
/// parses it with base 0, so the `0` makes it octal there, and rclone parses it as octal
/// either way. Without the `0` (rclone's own form, `100644`) s3fs would read it as decimal;
/// s3fs's own form (decimal, `33188`) rclone would read as octal and fail.
pub fn tool_pairs(meta: &Meta, flavor: Flavor, dir: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(ns) = meta.mtime_ns {
        match flavor {
            Flavor::S3 => out.push(("mtime".into(), seconds_text(ns))),
            Flavor::Azure => out.push(("mtime".into(), rfc3339(ns))),
            Flavor::Gcs => {
                out.push(("mtime".into(), rfc3339(ns)));
                out.push(("gcsfuse_mtime".into(), rfc3339(ns)));
                out.push((
                    "goog-reserved-file-mtime".into(),
                    ns.div_euclid(1_000_000_000).to_string(),
                ));
            }
        }
    }
    if let Some(mode) = meta.mode {
        let kind = if dir {
            S_IFDIR
        } else if meta.symlink.is_some() {
            S_IFLNK
        } else {
            match meta.special {
                Some(crate::types::Special::Fifo) => 0o010000,
                Some(crate::types::Special::Socket) => 0o140000,
                Some(crate::types::Special::CharDev(_)) => 0o020000,
                Some(crate::types::Special::BlockDev(_)) => 0o060000,
                None => S_IFREG,
            }
        };
        out.push(("mode".into(), format!("0{:o}", kind | (mode & 0o7777))));
    }
    if let Some(uid) = meta.uid {
        out.push(("uid".into(), uid.to_string()));
    }
    if let Some(gid) = meta.gid {
        out.push(("gid".into(), gid.to_string()));
    }
    out
}

/// Seconds since the epoch with exactly nine decimals when not whole: rclone reads any number
/// of decimals, but s3fs reads the digits after the point as nanoseconds. Before 1970, a sign
/// and the magnitude, as rclone writes and reads them (s3fs ignores times before 1970).
fn seconds_text(ns: i64) -> String {
    if ns < 0 {
        return format!(
            "-{}",
            seconds_text(ns.unsigned_abs().min(i64::MAX as u64) as i64)
        );
    }
    let (s, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if frac == 0 {
        s.to_string()
    } else {
        format!("{s}.{frac:09}")
    }
}

fn rfc3339(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// `mtime` in any of the forms the tools write: seconds (with a fraction: rclone on S3, s3fs)
/// or RFC 3339 (rclone on Azure and GCS).
fn parse_time(v: &str) -> Option<i64> {
    let v = v.trim();
    if v.contains('T') {
        return DateTime::parse_from_rfc3339(v).ok()?.timestamp_nanos_opt();
    }
    let (neg, digits) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // As rclone reads it: the fraction is a decimal fraction, cut or padded to nine digits.
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let ns = whole
        .parse::<i64>()
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(frac.parse::<i64>().ok()?)?;
    Some(if neg { -ns } else { ns })
}

/// `mode` as rclone or s3fs wrote it (permission bits only, as stratus keeps them).
/// A leading `0` is octal for both tools. Otherwise s3fs writes the whole `st_mode` in
/// decimal and rclone `--metadata` in octal (`100644`): where the object also carries
/// rclone's RFC 3339 `atime`/`btime` it is rclone's; else a decimal value with a valid file
/// type is s3fs's, and anything else is read as octal.
fn parse_mode(v: &str, rclone: bool) -> Option<u32> {
    let v = v.trim();
    if let Some(rest) = v.strip_prefix('0') {
        return if rest.is_empty() {
            Some(0)
        } else {
            u32::from_str_radix(rest, 8).ok().map(|m| m & 0o7777)
        };
    }
    let dec = v.parse::<u32>().ok();
    let oct = u32::from_str_radix(v, 8).ok();
    let typed = |m: u32| {
        m <= 0o177777
            && matches!(
                m & S_IFMT,
                0o010000 | 0o020000 | S_IFDIR | 0o060000 | S_IFREG | S_IFLNK | 0o140000
            )
    };
    let mode = if rclone {
        oct.or(dec)
    } else {
        match (dec, oct) {
            (Some(d), _) if typed(d) => Some(d),
            (_, Some(o)) => Some(o),
            (d, None) => d,
        }
    };
    mode.map(|m| m & 0o7777)
}

/// The other tools' keys an object carries, gathered while `Meta::from_pairs` reads it
/// (names lower-cased, `-` read as `_`).
#[derive(Debug, Default)]
pub struct ToolKeys {
    mtime: Option<String>,
    gcsfuse_mtime: Option<String>,
    gsutil_mtime: Option<String>,
    mode: Option<String>,
    gsutil_mode: Option<String>,
    uid: Option<String>,
    gsutil_uid: Option<String>,
    gid: Option<String>,
    gsutil_gid: Option<String>,
    /// rclone `--metadata` writes `atime`/`btime` as RFC 3339, s3fs `atime` as seconds.
    rfc3339_times: bool,
}

impl ToolKeys {
    /// Takes `key` (normalized) if it is one of the tools' keys.
    pub fn note(&mut self, key: &str, v: &str) {
        let slot = match key {
            "mtime" => &mut self.mtime,
            "gcsfuse_mtime" => &mut self.gcsfuse_mtime,
            "goog_reserved_file_mtime" => &mut self.gsutil_mtime,
            "mode" => &mut self.mode,
            "goog_reserved_posix_mode" => &mut self.gsutil_mode,
            "uid" => &mut self.uid,
            "goog_reserved_posix_uid" => &mut self.gsutil_uid,
            "gid" => &mut self.gid,
            "goog_reserved_posix_gid" => &mut self.gsutil_gid,
            "atime" | "btime" => {
                self.rfc3339_times |= v.contains('T');
                return;
            }
            _ => return,
        };
        *slot = Some(v.to_string());
    }

    /// Fills in what `m` (stratus's own keys, already read) lacks, and takes the tools' value
    /// where it disagrees with ours: stratus writes both from one value, so a difference means
    /// another tool changed it after us, carrying our keys along untouched (s3fs keeps every
    /// `x-amz-meta-*` it found; rclone's touch copies the metadata it read). Such a tool may
    /// have rewritten the data too, so our SHA-256, writer and conflict mark no longer describe
    /// the object when the times disagree: they are dropped, and the object reads as another
    /// tool's (a check against a stale hash would refuse every read of it).
    pub fn apply(self, m: &mut Meta) {
        const SEC: i64 = 1_000_000_000;
        // rclone's (and s3fs's) first, then gcsfuse's, then gsutil's; each with the
        // precision it is written in.
        let times = [
            (self.mtime.as_deref().and_then(parse_time), 1),
            (self.gcsfuse_mtime.as_deref().and_then(parse_time), 1),
            (
                self.gsutil_mtime
                    .as_deref()
                    .and_then(|v| v.trim().parse::<i64>().ok())
                    .and_then(|s| s.checked_mul(SEC)),
                SEC,
            ),
        ];
        let times = times.iter().filter_map(|(t, p)| t.map(|t| (t, *p)));
        match m.mtime_ns {
            None => m.mtime_ns = times.map(|(t, _)| t).next(),
            Some(ours) => {
                if let Some((theirs, _)) = times
                    .into_iter()
                    .find(|(t, p)| t.div_euclid(*p) != ours.div_euclid(*p))
                {
                    m.mtime_ns = Some(theirs);
                    m.sha256 = None;
                    m.writer = None;
                    m.conflict = None;
                    m.link = None;
                }
            }
        }
        let rclone = self.rfc3339_times;
        let modes = [
            self.mode.as_deref().and_then(|v| parse_mode(v, rclone)),
            self.gsutil_mode
                .as_deref()
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                .map(|m| m & 0o7777),
        ];
        take(&mut m.mode, modes);
        let id = |v: Option<String>| v.and_then(|v| v.trim().parse::<u32>().ok());
        take(&mut m.uid, [id(self.uid), id(self.gsutil_uid)]);
        take(&mut m.gid, [id(self.gid), id(self.gsutil_gid)]);
    }
}

/// Ours unless a tool's value (the first it has) differs; the tool's where we have none.
fn take<const N: usize>(ours: &mut Option<u32>, theirs: [Option<u32>; N]) {
    let mut theirs = theirs.into_iter().flatten();
    match *ours {
        None => *ours = theirs.next(),
        Some(o) => {
            if let Some(t) = theirs.find(|t| *t != o) {
                *ours = Some(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Meta {
        Meta::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn times_in_every_tools_form() {
        // 2001-02-03T04:05:06.5Z
        let t = 981_173_106_500_000_000;
        assert_eq!(parse_time("981173106.5"), Some(t));
        assert_eq!(parse_time("981173106.500000000"), Some(t));
        assert_eq!(parse_time("2001-02-03T04:05:06.5Z"), Some(t));
        assert_eq!(parse_time("2001-02-03T05:05:06.500000000+01:00"), Some(t));
        assert_eq!(parse_time("981173106"), Some(t - 500_000_000));
        assert_eq!(parse_time("-1.5"), Some(-1_500_000_000));
        assert_eq!(parse_time("12x"), None);
        assert_eq!(seconds_text(t), "981173106.500000000");
        assert_eq!(seconds_text(t - 500_000_000), "981173106");
        // Before 1970: rclone's sign and magnitude.
        assert_eq!(seconds_text(-1), "-0.000000001");
        assert_eq!(parse_time(&seconds_text(-1)), Some(-1));
        assert_eq!(
            parse_time(&seconds_text(-1_500_000_000)),
            Some(-1_500_000_000)
        );
        assert_eq!(rfc3339(t), "2001-02-03T04:05:06.500000000Z");
    }

    #[test]
    fn modes_of_rclone_and_s3fs() {
        assert_eq!(parse_mode("0100644", false), Some(0o644));
        assert_eq!(parse_mode("33188", false), Some(0o644)); // s3fs: 0o100644 in decimal
        assert_eq!(parse_mode("16877", false), Some(0o755)); // s3fs: a directory
        assert_eq!(parse_mode("100644", false), Some(0o644)); // rclone
        assert_eq!(parse_mode("40755", false), Some(0o755)); // rclone: a directory
        assert_eq!(parse_mode("42775", true), Some(0o2775)); // rclone, told by its atime
        assert_eq!(parse_mode("644", false), Some(0o644));
        assert_eq!(parse_mode("x", false), None);
    }

    #[test]
    fn what_stratus_writes_each_tool_reads_back() {
        let m = Meta {
            mtime_ns: Some(981_158_400_000_000_123),
            mode: Some(0o640),
            uid: Some(1000),
            gid: Some(100),
            ..Default::default()
        };
        for flavor in [Flavor::S3, Flavor::Azure, Flavor::Gcs] {
            let pairs = tool_pairs(&m, flavor, false);
            let back = read(
                &pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            );
            assert_eq!(back, m, "{flavor:?}: {pairs:?}");
        }
        let dir = tool_pairs(&m, Flavor::S3, true);
        assert!(dir.contains(&("mode".into(), "040640".into())), "{dir:?}");
        let gcs = tool_pairs(&m, Flavor::Gcs, false);
        assert!(gcs.contains(&("goog-reserved-file-mtime".into(), "981158400".into())));
        // A fifo's mode carries its type, as s3fs reads it.
        let fifo = Meta {
            special: Some(crate::types::Special::Fifo),
            ..m.clone()
        };
        let pairs = tool_pairs(&fifo, Flavor::S3, false);
        assert!(
            pairs.contains(&("mode".into(), "010640".into())),
            "{pairs:?}"
        );
    }

    #[test]
    fn ours_win_until_a_tool_changed_the_value() {
        let sha = "ab".repeat(32);
        let ours = [
            ("stratus_mtime", "981158400000000123"),
            ("stratus_mode", "640"),
            ("stratus_sha256", sha.as_str()),
            ("stratus_writer", "h:/m"),
        ];
        // As written: the tools' keys agree (gsutil's to the second), ours keep nanoseconds.
        let mut same = ours.to_vec();
        same.extend([
            ("mtime", "981158400.000000123"),
            ("goog-reserved-file-mtime", "981158400"),
            ("mode", "0100640"),
        ]);
        let m = read(&same);
        assert_eq!(m.mtime_ns, Some(981_158_400_000_000_123));
        assert_eq!(m.sha256.as_deref(), Some(sha.as_str()));
        // s3fs wrote the file since (new mtime, our keys carried along): its values, no hash.
        let mut edited = ours.to_vec();
        edited.extend([("mtime", "1700000000"), ("mode", "33261")]);
        let m = read(&edited);
        assert_eq!(m.mtime_ns, Some(1_700_000_000_000_000_000));
        assert_eq!(m.mode, Some(0o755));
        assert_eq!((m.sha256, m.writer), (None, None));
        // s3fs chmod: the mode changes, the data does not.
        let mut chmod = ours.to_vec();
        chmod.extend([("mtime", "981158400.000000123"), ("mode", "33261")]);
        let m = read(&chmod);
        assert_eq!(m.mode, Some(0o755));
        assert_eq!(m.sha256.as_deref(), Some(sha.as_str()));
    }
}
