//! A differential upload's plan: which byte ranges of the file changed since the version the
//! remote holds at the same key, so that a backend sends those and has the server copy the
//! rest from that version.

use std::ops::Range;

/// The version a differential upload builds on, and what changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The ETag of the version at the key the upload replaces: every server-side copy of an
    /// unchanged range is pinned to it, and so is the completion (through the upload's
    /// `Cond::Match`), so the object is never a mix of two versions.
    pub base_etag: String,
    /// The size of that version.
    pub base_len: u64,
    /// Changed byte ranges, sorted and disjoint.
    pub changed: Vec<Range<u64>>,
}

impl Delta {
    /// The base ETag a differential upload of `size` bytes under `cond` would pin its copies
    /// to, with parts of `part` bytes: `None` (send the whole file) when the upload is not
    /// conditioned on the very base this delta was recorded against, the file is too small for
    /// a multipart upload, or no part is left unchanged.
    pub fn base_for<'c>(&self, cond: &'c super::Cond, size: u64, part: u64) -> Option<&'c str> {
        let super::Cond::Match {
            etag: Some(base), ..
        } = cond
        else {
            return None;
        };
        (*base == self.base_etag
            && size > super::bucket::MULTIPART_THRESHOLD
            && self.reusable_parts(size, part) > 0)
            .then_some(base.as_str())
    }

    /// Whether bytes `range` of the new file are the base's bytes at the same offsets.
    pub fn unchanged(&self, range: &Range<u64>) -> bool {
        range.end <= self.base_len
            && !self
                .changed
                .iter()
                .any(|c| c.start < range.end && range.start < c.end)
    }

    /// The ranges of `size` bytes cut at `part` that [`Delta::unchanged`] holds for.
    pub fn reusable_parts(&self, size: u64, part: u64) -> usize {
        parts(size, part).filter(|r| self.unchanged(r)).count()
    }
}

/// `0..size` cut into ranges of `part` bytes (the last one shorter); one empty range for an
/// empty file.
pub fn parts(size: u64, part: u64) -> impl Iterator<Item = Range<u64>> {
    let n = size.div_ceil(part).max(1);
    (0..n).map(move |i| i * part..((i + 1) * part).min(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_reused_only_inside_the_base_and_away_from_changes() {
        const P: u64 = 8;
        let d = Delta {
            base_etag: "\"e\"".into(),
            base_len: 30,
            changed: vec![9..10, 30..31],
        };
        let reused: Vec<Range<u64>> = parts(31, P).filter(|r| d.unchanged(r)).collect();
        // 8..16 holds a change, 24..31 runs past the base's end.
        assert_eq!(reused, vec![0..8, 16..24]);
        assert_eq!(d.reusable_parts(31, P), 2);
        assert_eq!(parts(0, P).collect::<Vec<_>>(), vec![0..0]);
        assert_eq!(parts(16, P).collect::<Vec<_>>(), vec![0..8, 8..16]);
    }
}
