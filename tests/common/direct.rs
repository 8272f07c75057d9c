//! A direct client of the remote, as another careful tool would be: it reads what the
//! remote holds and writes conditionally (the cloud's own API through object_store; on a
//! local folder, a program that honours `.stratus-lock`). Never stratus's own request code.

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use object_store::path::Path as ObjPath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::{Digest, Sha256};

use super::mount::Env;

pub fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What the direct client knows of a key's version: the ETag and version on a cloud, the
/// content hash on a local folder.
pub type Version = (Option<String>, Option<String>);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The versions of `keys` that exist now.
pub fn versions(env: &Env, keys: &[&str]) -> BTreeMap<String, Version> {
    match env.direct_client() {
        None => env
            .remote_files()
            .into_iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| (k, (Some(sha(&v)), None)))
            .collect(),
        Some(store) => {
            let rt = rt();
            let mut out = BTreeMap::new();
            for p in keys {
                let key = ObjPath::parse(env.full_key(p)).unwrap();
                if let Ok(h) = rt.block_on(store.head(&key)) {
                    out.insert(p.to_string(), (h.e_tag, h.version));
                }
            }
            out
        }
    }
}

/// A conditional write: the key must still hold `expect` (or nothing). `Ok(false)` when the
/// remote refused it because someone else wrote meanwhile.
pub fn put_if(env: &Env, key: &str, data: &[u8], expect: Option<&Version>) -> Result<bool, String> {
    match env.direct_client() {
        None => {
            // The folder's lock, as stratus mounts take it: compare, then rename into place.
            let lock = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(env.root.join(".stratus-lock"))
                .unwrap();
            // SAFETY: flock on a descriptor we own; released when `lock` closes.
            assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
            let dest = env.root.join(key);
            let cur = fs::read(&dest).ok().map(|d| sha(&d));
            if cur.as_ref() != expect.and_then(|e| e.0.as_ref()) || dest.is_dir() {
                return Ok(false);
            }
            fs::create_dir_all(dest.parent().unwrap()).unwrap();
            let tmp = dest.with_file_name(format!(".stratus-tmp-direct-{}", std::process::id()));
            fs::write(&tmp, data).unwrap();
            fs::File::open(&tmp).unwrap().sync_all().unwrap();
            fs::rename(&tmp, &dest).unwrap();
            drop(lock);
            Ok(true)
        }
        Some(store) => {
            let mode = match expect {
                None => PutMode::Create,
                Some((e_tag, version)) => PutMode::Update(UpdateVersion {
                    e_tag: e_tag.clone(),
                    version: version.clone(),
                }),
            };
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            let key = ObjPath::parse(env.full_key(key)).unwrap();
            match rt().block_on(store.put_opts(&key, PutPayload::from(data.to_vec()), opts)) {
                Ok(_) => Ok(true),
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Every regular file below `root` (a mount), by path.
pub fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    try_files(root).unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
}

/// Every regular file below `root`, or the first error met on the way (a test that must show
/// the daemon's log when a read fails).
pub fn try_files(root: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    let at = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    while let Some((dir, prefix)) = stack.pop() {
        for e in fs::read_dir(&dir).map_err(|e| at(&dir, e))? {
            let e = e.map_err(|e| at(&dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = e.file_type().map_err(|x| at(&e.path(), x))?;
            if ft.is_dir() {
                stack.push((e.path(), rel));
            } else if ft.is_file() {
                out.insert(rel, fs::read(e.path()).map_err(|x| at(&e.path(), x))?);
            }
        }
    }
    Ok(out)
}

/// Every directory below `root` (a mount), by path.
pub fn dirs(root: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                let name = e.file_name().to_string_lossy().into_owned();
                let rel = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                out.insert(rel.clone());
                stack.push((e.path(), rel));
            }
        }
    }
    out
}

/// Path -> SHA-256 of each file.
pub fn digest(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    files.iter().map(|(k, v)| (k.clone(), sha(v))).collect()
}
