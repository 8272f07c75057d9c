//! An in-memory backend with the server's semantics (an ETag per version, conditional writes
//! refused with `Conflict`, ranges, `dir/` markers, metadata), so the core can run in-process
//! against a remote that behaves like a real one, and a test can edit it as another client.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{
    Backend, ByteStream, Cond, Meta, ObjectInfo, Preconditions, RemoteError, RemoteResult, Written,
};

/// Bytes per chunk of a stream.
const STREAM_CHUNK: usize = 64 << 10;

/// One stored version.
#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    meta: Meta,
    etag: String,
    /// The version counter, as GCS's generation: a new one for every write.
    version: u64,
}

/// The store itself. Cheap to clone: clones share the objects, so a test keeps one to edit
/// the remote as another client while a `Remote` holds another.
#[derive(Clone, Default)]
pub struct Memory {
    /// Files and symlinks at their key, directory markers at `key/` (S3's convention).
    objects: Arc<Mutex<BTreeMap<String, Object>>>,
    versions: Arc<AtomicU64>,
}

impl Memory {
    pub fn new() -> Memory {
        Memory::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Object>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new version of `key`, unconditionally: what another client's plain PUT does.
    pub fn put(&self, key: &str, data: &[u8], meta: Meta) -> Written {
        let mut objects = self.lock();
        self.store(&mut objects, key, Bytes::copy_from_slice(data), meta)
    }

    /// A new version of `key` with `meta`, only if the key still holds the version with ETag
    /// `expect` (`None`: nothing may be there), decided under the store's lock as a server
    /// decides If-Match / If-None-Match: what another careful client's conditional PUT does.
    /// False when refused.
    pub fn put_if(&self, key: &str, data: &[u8], meta: Meta, expect: Option<&str>) -> bool {
        let mut objects = self.lock();
        if objects.get(key).map(|o| o.etag.as_str()) != expect {
            return false;
        }
        self.store(&mut objects, key, Bytes::copy_from_slice(data), meta);
        true
    }

    /// The ETag of the version at `key` now.
    pub fn etag(&self, key: &str) -> Option<String> {
        self.lock().get(key).map(|o| o.etag.clone())
    }

    /// The bytes at `key` now, as another client reads them.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().get(key).map(|o| o.data.to_vec())
    }

    /// Every stored key, markers with their trailing `/`.
    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Removes `key` (a marker with its `/`), as another client's DELETE.
    pub fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    fn store(
        &self,
        objects: &mut BTreeMap<String, Object>,
        key: &str,
        data: Bytes,
        meta: Meta,
    ) -> Written {
        let version = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let o = Object {
            data,
            meta,
            etag: format!("\"m{version}\""),
            version,
        };
        let written = Written {
            etag: Some(o.etag.clone()),
            version: Some(version.to_string()),
        };
        objects.insert(key.to_string(), o);
        written
    }

    /// What the server decides before a write: `cond` against the object at `key` now.
    fn admit(objects: &BTreeMap<String, Object>, key: &str, cond: &Cond) -> RemoteResult<()> {
        let now = objects.get(key);
        let ok = match cond {
            Cond::Overwrite => true,
            Cond::Create => now.is_none(),
            Cond::Match { etag: Some(e), .. } => now.is_some_and(|o| &o.etag == e),
            Cond::Match {
                etag: None,
                version: Some(v),
            } => now.is_some_and(|o| &o.version.to_string() == v),
            Cond::Match {
                etag: None,
                version: None,
            } => true,
        };
        if ok {
            Ok(())
        } else {
            Err(RemoteError::Conflict(key.to_string()))
        }
    }

    fn info(key: &str, o: &Object, dir: bool, with_meta: bool) -> ObjectInfo {
        let meta = if with_meta {
            o.meta.clone()
        } else {
            Meta::default()
        };
        ObjectInfo {
            key: key.to_string(),
            kind: meta.object_kind(dir),
            size: o.data.len() as u64,
            etag: Some(o.etag.clone()),
            version: Some(o.version.to_string()),
            last_modified_ns: None,
            meta,
        }
    }

    /// Every object, as a listing shows it (`with_meta`: as a scan, one HEAD each).
    fn rows(&self, with_meta: bool) -> Vec<ObjectInfo> {
        self.lock()
            .iter()
            .map(|(k, o)| match k.strip_suffix('/') {
                Some(d) => Memory::info(d, o, true, with_meta),
                None => Memory::info(k, o, false, with_meta),
            })
            .collect()
    }

    fn write(&self, key: &str, data: Bytes, meta: &Meta, cond: &Cond) -> RemoteResult<Written> {
        let mut objects = self.lock();
        Memory::admit(&objects, key, cond)?;
        Ok(self.store(&mut objects, key, data, meta.clone()))
    }

    fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> RemoteResult<Bytes> {
        let objects = self.lock();
        let o = objects
            .get(key)
            .ok_or_else(|| RemoteError::NotFound(key.to_string()))?;
        if if_match.is_some_and(|e| e != o.etag) {
            return Err(RemoteError::Conflict(key.to_string()));
        }
        let len = o.data.len() as u64;
        let (start, end) = (range.start.min(len), range.end.min(len));
        Ok(o.data.slice(start as usize..end as usize))
    }

    fn update_meta(&self, key: &str, meta: &Meta, cond: &Cond) -> RemoteResult<Option<Written>> {
        if !matches!(cond, Cond::Match { etag: Some(_), .. }) {
            return Ok(None);
        }
        let mut objects = self.lock();
        Memory::admit(&objects, key, cond)?;
        let data = objects[key].data.clone();
        Ok(Some(self.store(&mut objects, key, data, meta.clone())))
    }

    fn copy(
        &self,
        from: &str,
        to: &str,
        source: Option<&str>,
        cond: &Cond,
    ) -> RemoteResult<Written> {
        let mut objects = self.lock();
        let src = objects
            .get(from)
            .ok_or_else(|| RemoteError::NotFound(from.to_string()))?
            .clone();
        if source.is_some_and(|e| e != src.etag) {
            return Err(RemoteError::Conflict(from.to_string()));
        }
        Memory::admit(&objects, to, cond)?;
        Ok(self.store(&mut objects, to, src.data, src.meta))
    }

    fn delete(&self, key: &str, dir: bool, expect: Option<&str>) -> RemoteResult<()> {
        let mut objects = self.lock();
        if dir {
            objects.remove(&format!("{key}/"));
            return Ok(());
        }
        match objects.get(key) {
            None => Ok(()),
            Some(o) if expect.is_some_and(|e| e != o.etag) => {
                Err(RemoteError::Conflict(key.to_string()))
            }
            Some(_) => {
                objects.remove(key);
                Ok(())
            }
        }
    }
}

impl Backend for Memory {
    fn max_key_len(&self) -> usize {
        1024
    }

    fn check_name(&self, _name: &str) -> Result<(), String> {
        Ok(())
    }

    fn check(&self) -> BoxFuture<'_, RemoteResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn probe_preconditions(&self) -> Option<BoxFuture<'_, RemoteResult<Preconditions>>> {
        Some(Box::pin(async { Ok(Preconditions::Enforced) }))
    }

    fn scan(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>> {
        Box::pin(async { Ok(self.rows(true)) })
    }

    fn list(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>> {
        Box::pin(async { Ok(self.rows(false)) })
    }

    fn head<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
    ) -> BoxFuture<'a, RemoteResult<Option<ObjectInfo>>> {
        Box::pin(async move {
            let stored = if dir {
                format!("{key}/")
            } else {
                key.to_string()
            };
            Ok(self
                .lock()
                .get(&stored)
                .map(|o| Memory::info(key, o, dir, true)))
        })
    }

    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        if_match: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<Bytes>> {
        Box::pin(async move { Memory::get_range(self, key, range, if_match) })
    }

    /// Streams as the clouds do, in chunks, so the stream path of the block cache runs
    /// in-process too.
    fn get_stream<'a>(
        &'a self,
        key: &'a str,
        if_match: Option<&'a str>,
    ) -> Option<BoxFuture<'a, RemoteResult<ByteStream>>> {
        Some(Box::pin(async move {
            let data = Memory::get_range(self, key, 0..u64::MAX, if_match)?;
            let chunks: Vec<RemoteResult<Bytes>> = (0..data.len())
                .step_by(STREAM_CHUNK)
                .map(|at| Ok(data.slice(at..(at + STREAM_CHUNK).min(data.len()))))
                .collect();
            let body: ByteStream = Box::pin(futures::stream::iter(chunks));
            Ok(body)
        }))
    }

    fn download<'a>(&'a self, key: &'a str, dest: &'a Path) -> BoxFuture<'a, RemoteResult<u64>> {
        Box::pin(async move {
            let data = Memory::get_range(self, key, 0..u64::MAX, None)?;
            tokio::fs::write(dest, &data).await?;
            Ok(data.len() as u64)
        })
    }

    fn upload_file<'a>(
        &'a self,
        key: &'a str,
        src: &'a Path,
        _size: u64,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            let data = Bytes::from(tokio::fs::read(src).await?);
            self.write(key, data, meta, cond)
        })
    }

    fn put_symlink<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move {
            let target = Bytes::from(meta.symlink.clone().unwrap_or_default());
            self.write(key, target, meta, cond)
        })
    }

    fn put_dir<'a>(&'a self, key: &'a str, meta: &'a Meta) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(
            async move { self.write(&format!("{key}/"), Bytes::new(), meta, &Cond::Overwrite) },
        )
    }

    fn update_meta<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
        _size: u64,
    ) -> BoxFuture<'a, RemoteResult<Option<Written>>> {
        Box::pin(async move { Memory::update_meta(self, key, meta, cond) })
    }

    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        source: Option<&'a str>,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>> {
        Box::pin(async move { Memory::copy(self, from, to, source, cond) })
    }

    fn delete<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
        expect: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<()>> {
        Box::pin(async move { Memory::delete(self, key, dir, expect) })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ObjectKind, Remote};
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn file(dir: &tempfile::TempDir, data: &[u8]) -> std::path::PathBuf {
        let p = dir.path().join(format!("src-{}", data.len()));
        std::fs::write(&p, data).unwrap();
        p
    }

    fn conflict<T: std::fmt::Debug>(r: RemoteResult<T>) -> bool {
        matches!(r, Err(RemoteError::Conflict(_)))
    }

    #[test]
    fn writes_are_decided_by_the_version_they_expect() {
        let (mem, tmp) = (Memory::new(), tempfile::tempdir().unwrap());
        let remote = Remote::new(Box::new(mem.clone()));
        let src = file(&tmp, b"mine");
        rt().block_on(async {
            let meta = Meta::default();
            let first = remote
                .upload_file("a", &src, 4, &meta, &Cond::Create)
                .await
                .unwrap();
            // A second create-only write loses to the first.
            assert!(conflict(
                remote.upload_file("a", &src, 4, &meta, &Cond::Create).await
            ));
            // Another client writes: our base is now stale.
            let theirs = mem.put("a", b"theirs", Meta::default());
            assert_ne!(theirs.etag, first.etag);
            let stale = Cond::Match {
                etag: first.etag.clone(),
                version: None,
            };
            assert!(conflict(
                remote.upload_file("a", &src, 4, &meta, &stale).await
            ));
            assert!(conflict(
                remote.delete("a", false, first.etag.as_deref()).await
            ));
            assert!(conflict(remote.update_meta("a", &meta, &stale, 6).await));
            assert_eq!(mem.get("a").unwrap(), b"theirs");
            // Against the version that is there, each goes through, by ETag or by version.
            let now = Cond::Match {
                etag: None,
                version: theirs.version.clone(),
            };
            let ours = remote.upload_file("a", &src, 4, &meta, &now).await.unwrap();
            assert_eq!(mem.get("a").unwrap(), b"mine");
            remote
                .delete("a", false, ours.etag.as_deref())
                .await
                .unwrap();
            assert!(mem.get("a").is_none());
            // A missing key is deleted already.
            remote
                .delete("a", false, ours.etag.as_deref())
                .await
                .unwrap();
        });
    }

    #[test]
    fn reads_are_ranges_pinned_to_a_version() {
        let mem = Memory::new();
        let remote = Remote::new(Box::new(mem.clone()));
        let v1 = mem.put("f", b"0123456789", Meta::default());
        rt().block_on(async {
            let got = remote
                .get_range("f", 2..5, v1.etag.as_deref())
                .await
                .unwrap();
            assert_eq!(&got[..], b"234");
            // A range past the end ends at the end, as a server answers it.
            let got = remote.get_range("f", 8..20, None).await.unwrap();
            assert_eq!(&got[..], b"89");
            mem.put("f", b"abcdefghij", Meta::default());
            assert!(conflict(
                remote.get_range("f", 2..5, v1.etag.as_deref()).await
            ));
            assert!(matches!(
                remote.get_range("nothing", 0..1, None).await,
                Err(RemoteError::NotFound(_))
            ));
        });
    }

    #[test]
    fn markers_metadata_and_copies_behave_as_on_s3() {
        let mem = Memory::new();
        let remote = Remote::new(Box::new(mem.clone()));
        let meta = Meta {
            mode: Some(0o640),
            symlink: Some("../t".into()),
            ..Meta::default()
        };
        rt().block_on(async {
            remote.put_dir("d", &Meta::default()).await.unwrap();
            let link = remote
                .put_symlink("d/l", &meta, &Cond::Create)
                .await
                .unwrap();
            // `d` the marker and `d` a file are different keys.
            assert!(remote.head("d", false).await.unwrap().is_none());
            let h = remote.head("d/l", false).await.unwrap().unwrap();
            assert_eq!((h.kind, h.meta.mode), (ObjectKind::Symlink, Some(0o640)));
            assert_eq!(mem.get("d/l").unwrap(), b"../t");
            // A copy carries data and metadata, only from the version meant, only onto what
            // the condition allows.
            assert!(conflict(
                remote
                    .copy("d/l", "e", Some("\"other\""), &Cond::Create)
                    .await
            ));
            remote
                .copy("d/l", "e", link.etag.as_deref(), &Cond::Create)
                .await
                .unwrap();
            assert!(conflict(
                remote
                    .copy("d/l", "e", link.etag.as_deref(), &Cond::Create)
                    .await
            ));
            assert!(matches!(
                remote.copy("gone", "x", None, &Cond::Overwrite).await,
                Err(RemoteError::NotFound(_))
            ));
            let listed: Vec<(String, ObjectKind)> = remote
                .scan()
                .await
                .unwrap()
                .into_iter()
                .map(|o| (o.key, o.kind))
                .collect();
            assert_eq!(
                listed,
                [
                    ("d".to_string(), ObjectKind::Dir),
                    ("d/l".to_string(), ObjectKind::Symlink),
                    ("e".to_string(), ObjectKind::Symlink),
                ]
            );
            remote.delete("d", true, None).await.unwrap();
            assert_eq!(mem.keys(), ["d/l", "e"]);
        });
    }
}
