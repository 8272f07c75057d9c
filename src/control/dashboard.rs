//! What the web dashboard asks of a mount beyond the attributes: an entry by path, a
//! directory's entries with their attribute values, and attribute writes by path, so the page
//! changes state only through [`Control::setxattr`], as the CLI does.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use super::{Control, CACHE, PIN, STATE};
use crate::types::{EntryId, Kind};
use crate::vfs::{VfsError, VfsResult};

/// One entry of a directory as the dashboard's file browser shows it: the values the
/// `user.stratus.state`, `user.stratus.cache` and `user.stratus.pin` attributes give.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeEntry {
    pub name: String,
    /// From the mount's root, without a leading `/`.
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    pub size: u64,
    pub state: String,
    pub cache: String,
    pub pinned: bool,
}

/// The largest file the conflicts view shows as text (a diff beyond that is for a tool).
pub const TEXT_LIMIT: u64 = 256 * 1024;

/// Why a change asked by path was refused: the errno the attribute write would give and the
/// reason `user.stratus.refusal` would carry.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub errno: i32,
    pub message: String,
}

fn why(e: &VfsError) -> String {
    match e {
        VfsError::Invalid(m) => m.clone(),
        other => other.to_string(),
    }
}

impl From<VfsError> for Refusal {
    fn from(e: VfsError) -> Refusal {
        Refusal {
            errno: e.errno(),
            message: why(&e),
        }
    }
}

impl Control {
    /// Makes `user.stratus.dashboard` answer `url` (once: a mount serves one dashboard).
    pub fn set_dashboard_url(&self, url: String) {
        let _ = self.dashboard_url.set(url);
    }

    /// The entry at `path` (relative to the mount's root; `""` or `/` is the root).
    pub fn entry_at(&self, path: &str) -> VfsResult<EntryId> {
        let mut id = EntryId::ROOT;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err(VfsError::Invalid("paths with .. are refused".into()));
            }
            id = EntryId(self.vfs.lookup(id, OsStr::from_bytes(part.as_bytes()))?.ino);
        }
        Ok(id)
    }

    /// The entries of the directory at `path`, by name.
    pub fn tree(&self, path: &str) -> VfsResult<Vec<TreeEntry>> {
        let dir = self.entry_at(path)?;
        let fh = self.vfs.opendir(dir)?;
        let listing = self.vfs.readdir(fh, dir, 0);
        let _ = self.vfs.releasedir(fh);
        let prefix = path.trim_matches('/');
        let mut out = Vec::new();
        for d in listing?.iter() {
            if d.name == b"." || d.name == b".." {
                continue;
            }
            let id = EntryId(d.ino);
            let text = |name: &str| {
                self.getxattr(id, name.as_bytes())
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_else(|_| "-".into())
            };
            let name = String::from_utf8_lossy(&d.name).into_owned();
            out.push(TreeEntry {
                path: if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                },
                name,
                kind: match d.kind {
                    Kind::File => "file",
                    Kind::Dir => "dir",
                    Kind::Symlink => "symlink",
                    Kind::Special(s) => s.name(),
                }
                .into(),
                size: self.vfs.getattr(id).map(|a| a.size).unwrap_or(0),
                state: text(STATE),
                cache: text(CACHE),
                pinned: text(PIN) == "1",
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The content of the file at `path` as text, for the conflicts view's line diff: `Err`
    /// says why there is none to show (larger than [`TEXT_LIMIT`], not UTF-8, not a file).
    /// Reads through the same open and read as any program (fetching what is not cached).
    pub fn text_at(&self, path: &str) -> Result<Result<String, String>, Refusal> {
        let id = self.entry_at(path)?;
        let attr = self.vfs.getattr(id)?;
        if attr.kind != Kind::File {
            return Ok(Err("not a file".into()));
        }
        if attr.size > TEXT_LIMIT {
            return Ok(Err(format!("larger than {} KiB", TEXT_LIMIT / 1024)));
        }
        let (fh, _) = self.vfs.open(id, false, false)?;
        let mut data = Vec::new();
        let read = loop {
            match self.vfs.read(fh, data.len() as u64, 64 * 1024) {
                Ok(chunk) if chunk.is_empty() => break Ok(()),
                Ok(chunk) if data.len() + chunk.len() > TEXT_LIMIT as usize => {
                    break Err(None);
                }
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(e) => break Err(Some(e)),
            }
        };
        let _ = self.vfs.release(fh);
        match read {
            Ok(()) => {}
            Err(None) => return Ok(Err(format!("larger than {} KiB", TEXT_LIMIT / 1024))),
            Err(Some(e)) => return Err(e.into()),
        }
        if data.contains(&0) {
            return Ok(Err("binary".into()));
        }
        Ok(String::from_utf8(data).map_err(|_| "not UTF-8 text".to_string()))
    }

    /// Reads attribute `name` of the entry at `path`.
    pub fn get_at(&self, path: &str, name: &str) -> Result<Vec<u8>, Refusal> {
        let id = self.entry_at(path)?;
        Ok(self.getxattr(id, name.as_bytes())?)
    }

    /// Sets attribute `name` of the entry at `path` to `value`: the same operation as
    /// `setfattr` or the CLI on that path.
    pub fn set_at(&self, path: &str, name: &str, value: &str) -> Result<(), Refusal> {
        let id = self.entry_at(path)?;
        Ok(self.setxattr(id, name.as_bytes(), value.as_bytes())?)
    }
}
