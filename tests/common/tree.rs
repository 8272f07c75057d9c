//! The tree a writer expects, shared by the model tests (`tests/sync_model.rs` on real
//! mounts, `tests/core_model.rs` in-process): files with their content, and directories.

use std::collections::{BTreeMap, BTreeSet};

use super::direct::sha;
use super::mount::{Env, ObjKind};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeSet<String>,
}

impl Tree {
    /// Directories that hold files exist, whether or not the remote has a marker for them.
    pub fn normalized(files: BTreeMap<String, Vec<u8>>, mut dirs: BTreeSet<String>) -> Tree {
        for k in files.keys() {
            let mut p = k.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                dirs.insert(parent.to_string());
                p = parent;
            }
        }
        Tree { files, dirs }
    }

    /// What the remote holds, read back by the test's own client.
    pub fn of_remote(env: &Env) -> Tree {
        let mut files = BTreeMap::new();
        let mut dirs = BTreeSet::new();
        for (k, o) in env.remote_tree() {
            match o.kind {
                ObjKind::Dir => {
                    dirs.insert(k);
                }
                _ => {
                    files.insert(k, o.data);
                }
            }
        }
        Tree::normalized(files, dirs)
    }

    pub fn is_dir(&self, p: &str) -> bool {
        self.dirs.contains(p)
    }

    pub fn has_children(&self, d: &str) -> bool {
        let prefix = format!("{d}/");
        self.files
            .keys()
            .chain(self.dirs.iter())
            .any(|k| k.starts_with(&prefix))
    }

    /// Files by content hash, and the directories: what failure messages print.
    pub fn digest(&self) -> (BTreeMap<String, String>, &BTreeSet<String>) {
        (
            self.files
                .iter()
                .map(|(k, v)| (k.clone(), sha(v)))
                .collect(),
            &self.dirs,
        )
    }
}

/// Content of `len` bytes (at least the tag and a newline) that names the write making it.
pub fn content(tag: &str, len: usize) -> Vec<u8> {
    let mut v = format!("{tag}\n").into_bytes();
    let mut x = sha(tag.as_bytes()).into_bytes();
    while v.len() < len {
        v.append(&mut x.clone());
        x = sha(&x).into_bytes();
    }
    v.truncate(len.max(tag.len() + 1));
    v
}
