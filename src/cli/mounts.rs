//! Finding the stratus mount a path is in, so that every command takes any path inside a
//! mount and refuses, writing nothing, a path outside every mount.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context};

use crate::control;

/// Whether a line of `/proc/self/mountinfo` with this type and source is a stratus mount:
/// through fusermount3 the type is `fuse.stratus`; mounted by root directly it is plain
/// `fuse`, and the source is the remote's URL (what `stratus mount` prints). Whether it is
/// a live stratus mount is then asked of the mount itself ([`target`]).
fn is_stratus(fstype: &str, source: &str) -> bool {
    fstype == "fuse.stratus"
        || (fstype == "fuse"
            && ["file://", "s3://", "az://", "gs://"]
                .iter()
                .any(|s| source.starts_with(s)))
}

/// A path inside a running stratus mount.
#[derive(Debug, Clone)]
pub struct Target {
    /// The mount's root.
    pub root: PathBuf,
    /// The path as the user gave it, made absolute.
    pub path: PathBuf,
}

/// `p` made absolute and free of `.`/`..`, without touching the filesystem (a dead mount
/// answers every `stat` with ENOTCONN).
pub fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .context("reading the current directory")?
            .join(p)
    };
    let mut out = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The mount points of every stratus mount this process can see.
pub fn stratus_mounts() -> anyhow::Result<Vec<PathBuf>> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut right = right.split(' ');
            let (fstype, source) = (right.next()?, right.next()?);
            let mp = left.split(' ').nth(4)?;
            is_stratus(fstype, source).then(|| unescape(mp))
        })
        .collect())
}

/// The stratus mount `path` is inside, without asking the mount anything.
pub fn mount_of(path: &Path) -> anyhow::Result<Target> {
    let abs = absolute(path)?;
    // Symlinks on the way to the mount (a home directory reached through one, say) are
    // resolved when the path exists; a path inside a dead mount keeps its spelling.
    let resolved = std::fs::canonicalize(&abs).unwrap_or_else(|_| abs.clone());
    let root = stratus_mounts()?
        .into_iter()
        .filter(|m| resolved.starts_with(m) || abs.starts_with(m))
        .max_by_key(|m| m.components().count());
    match root {
        Some(root) => Ok(Target { root, path: abs }),
        None => bail!("{} is not inside a stratus mount", path.display()),
    }
}

/// The running stratus mount `path` is inside: found, and answering.
pub fn target(path: &Path) -> anyhow::Result<Target> {
    let t = mount_of(path)?;
    if let Err(e) = control::get(&t.root, control::STATUS) {
        bail!(
            "the stratus mount {} does not answer ({e}); is its daemon still running? \
             (stratus unmount {} then mount it again)",
            t.root.display(),
            t.root.display()
        );
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), PathBuf::from("/mnt/a b"));
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
        assert_eq!(unescape("/x\\134y"), PathBuf::from("/x\\y"));
    }

    #[test]
    fn absolute_paths_are_normalised() {
        assert_eq!(
            absolute(Path::new("/a/./b/../c")).unwrap(),
            PathBuf::from("/a/c")
        );
    }

    #[test]
    fn a_path_outside_every_mount_is_refused() {
        let e = mount_of(Path::new("/proc")).unwrap_err().to_string();
        assert_eq!(e, "/proc is not inside a stratus mount");
    }
}
