//! The interface every backend implements; `Remote` owns one and adds what is the same for
//! all of them (name checks, listing normalization).

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::{Cond, Delta, Meta, ObjectInfo, Preconditions, RemoteResult, Written};

/// A stream of an object's bytes, as `get_stream` hands it out.
pub type ByteStream = BoxStream<'static, RemoteResult<Bytes>>;

/// One kind of remote: a local folder or one cloud. Keys are relative to the mount's root; a
/// backend adds its own prefix. Methods return boxed futures so that `Remote` can hold any
/// backend behind one pointer (`Box<dyn Backend>`); the cost is one allocation per request,
/// nothing next to a network round trip.
pub trait Backend: Send + Sync {
    /// Longest key (relative path) the backend accepts.
    fn max_key_len(&self) -> usize;

    /// Whether the backend can store a file of this (already POSIX-valid, UTF-8) name.
    fn check_name(&self, name: &str) -> Result<(), String>;

    /// Whether an empty directory can be stored (every backend can today).
    fn has_dir_markers(&self) -> bool {
        true
    }

    /// Cheap request that proves the remote answers and accepts our credentials.
    fn check(&self) -> BoxFuture<'_, RemoteResult<()>>;

    /// The mount-time check whether the server refuses what it must refuse; `None` where
    /// there is no server to ask (a local folder serializes writers with a lock instead).
    fn probe_preconditions(&self) -> Option<BoxFuture<'_, RemoteResult<Preconditions>>> {
        None
    }

    /// The server ignores preconditions: compare with a HEAD before each conditional write.
    fn set_preconditions_ignored(&self, _ignored: bool) {}

    /// Every object with its metadata (not normalized).
    fn scan(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>>;

    /// Every object without per-object metadata where that saves requests (not normalized).
    fn list(&self) -> BoxFuture<'_, RemoteResult<Vec<ObjectInfo>>> {
        self.scan()
    }

    /// Whether `list` carries each object's metadata as `scan` does (a local folder reads
    /// its files' attributes while it walks them); where it does not, a first mount fills
    /// its state dir from the listing and reads the metadata later, by HEADs.
    fn listing_has_meta(&self) -> bool {
        false
    }

    /// One object, or directory marker with `dir`, with its metadata; `None` when absent.
    fn head<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
    ) -> BoxFuture<'a, RemoteResult<Option<ObjectInfo>>>;

    /// Bytes `range` of the object, only while it has ETag `if_match`.
    fn get_range<'a>(
        &'a self,
        key: &'a str,
        range: Range<u64>,
        if_match: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<Bytes>>;

    /// The whole object as one stream, pinned to `if_match`; `None` where ranges are as cheap.
    fn get_stream<'a>(
        &'a self,
        _key: &'a str,
        _if_match: Option<&'a str>,
    ) -> Option<BoxFuture<'a, RemoteResult<ByteStream>>> {
        None
    }

    /// The whole object into the file `dest`; its size.
    fn download<'a>(&'a self, key: &'a str, dest: &'a Path) -> BoxFuture<'a, RemoteResult<u64>>;

    fn upload_file<'a>(
        &'a self,
        key: &'a str,
        src: &'a Path,
        size: u64,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>>;

    /// A differential upload: the ranges `delta` lists as changed are sent, the rest is
    /// copied on the server from the version `delta` builds on, only while the key still
    /// holds it. `None` where the backend cannot (or it would save nothing): the caller sends
    /// the whole file.
    #[allow(clippy::too_many_arguments)]
    fn upload_delta<'a>(
        &'a self,
        _key: &'a str,
        _src: &'a Path,
        _size: u64,
        _meta: &'a Meta,
        _cond: &'a Cond,
        _delta: &'a Delta,
    ) -> Option<BoxFuture<'a, RemoteResult<Written>>> {
        None
    }

    fn put_symlink<'a>(
        &'a self,
        key: &'a str,
        meta: &'a Meta,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>>;

    fn put_dir<'a>(&'a self, key: &'a str, meta: &'a Meta) -> BoxFuture<'a, RemoteResult<Written>>;

    /// New metadata without moving the data; `Ok(None)` where the backend cannot, and the
    /// caller writes the whole object again.
    fn update_meta<'a>(
        &'a self,
        _key: &'a str,
        _meta: &'a Meta,
        _cond: &'a Cond,
        _size: u64,
    ) -> BoxFuture<'a, RemoteResult<Option<Written>>> {
        Box::pin(async { Ok(None) })
    }

    /// Server-side copy, only while `from` holds `source` and `to` satisfies `cond`.
    fn copy<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        source: Option<&'a str>,
        cond: &'a Cond,
    ) -> BoxFuture<'a, RemoteResult<Written>>;

    /// Deletes an object or marker; a missing key is success; with `expect`, only that version.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        dir: bool,
        expect: Option<&'a str>,
    ) -> BoxFuture<'a, RemoteResult<()>>;
}
