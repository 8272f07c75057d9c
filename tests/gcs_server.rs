//! Is the in-repo GCS test server (scripts/gcs_server.py) faithful? object_store's own
//! integration suite (the functions its GCS tests run against real GCS) runs against it, each
//! on a fresh bucket, through object_store's real GCS client. Results: docs/conformance.md.

mod common;

use std::sync::{Arc, OnceLock};

use common::gcs::GcsServer;
use object_store::gcp::{GoogleCloudStorage, GoogleCloudStorageBuilder};
use object_store::integration::*;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

/// One server per test binary, with Object Versioning on (so `get_opts` can read an older
/// generation back), started from a thread that lives as long as the process (see mount.rs).
fn server() -> Arc<GcsServer> {
    static SERVER: OnceLock<Arc<GcsServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(Arc::new(GcsServer::start(true)));
                loop {
                    std::thread::park();
                }
            });
            rx.recv().expect("starting the gcs server")
        })
        .clone()
}

/// A client of a fresh bucket named after the test; `create: false` leaves it missing.
fn store(name: &str, create: bool) -> GoogleCloudStorage {
    let s = server();
    let bucket = format!("b-{name}").replace('_', "-");
    if create {
        s.create_bucket(&bucket);
    }
    GoogleCloudStorageBuilder::new()
        .with_bucket_name(bucket)
        .with_service_account_key(s.service_account_key())
        .build()
        .expect("building the GCS client")
}

macro_rules! conformance {
    ($($name:ident => |$s:ident| $call:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let $s = store(stringify!($name), true);
                $call.await;
            }
        )*
    };
}

conformance! {
    put_get_delete_list_passes => |s| put_get_delete_list(&s);
    list_with_offset_exclusivity_passes => |s| list_with_offset_exclusivity(&s);
    list_uses_directories_correctly_passes => |s| list_uses_directories_correctly(&s);
    list_with_delimiter_passes => |s| list_with_delimiter(&s);
    list_paginated_passes => |s| list_paginated(&s, &s);
    rename_and_copy_passes => |s| rename_and_copy(&s);
    copy_if_not_exists_passes => |s| copy_if_not_exists(&s);
    copy_rename_nonexistent_object_passes => |s| copy_rename_nonexistent_object(&s);
    stream_get_passes => |s| stream_get(&s);
    multipart_passes => |s| multipart(&s, &s);
    multipart_with_opts_passes => |s| multipart_with_opts(&s, &s);
    multipart_put_part_out_of_order_passes => |s| multipart_put_part_out_of_order(&s, &s);
    multipart_race_condition_passes => |s| multipart_race_condition(&s, true);
    multipart_out_of_order_passes => |s| multipart_out_of_order(&s);
    get_opts_passes => |s| get_opts(&s);
    put_opts_passes => |s| put_opts(&s, true);
    put_get_attributes_passes => |s| put_get_attributes(&s);
}

/// object_store's `gcs_test_get_nonexistent_location` and `..._delete_nonexistent_location`:
/// GCS answers 404 to both (unlike S3's silent delete).
#[tokio::test]
async fn missing_objects_are_not_found() {
    let s = store("missing-objects", true);
    let p = Path::from("nonexistentname");
    let err = s.get(&p).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    let err = s.delete(&p).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
}

/// object_store's `gcs_test_{get,delete,put}_nonexistent_bucket`.
#[tokio::test]
async fn missing_buckets_are_not_found() {
    let s = store("nonexistentname", false);
    let p = Path::from("nonexistentname");
    let err = get_nonexistent_object(&s, Some(p.clone()))
        .await
        .unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    let err = s.delete(&p).await.unwrap_err();
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    let err = s
        .put(&p, PutPayload::from("arbitrary data"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Server returned non-2xx status code: 404 Not Found"),
        "{err}"
    );
}

/// The preconditions stratus sends itself because object_store's API cannot (see
/// src/remote/gcs/requests.rs): a copy pinned to its source's ETag and to the destination's
/// generation, a delete pinned to a generation, a multipart completion pinned to a generation,
/// and a metadata rewrite by a copy onto itself. Each refused case must leave the object as it
/// was.
#[test]
fn preconditions_object_store_cannot_send() {
    let s = server();
    s.create_bucket("b-raw");
    let put = |key: &str, body: &[u8], h: &[(&str, &str)]| {
        s.http("PUT", &format!("/b-raw/{key}"), h, body)
    };
    let get = |key: &str| s.http("GET", &format!("/b-raw/{key}"), &[], b"");
    let (st, _) = put("a", b"one", &[]);
    assert_eq!(st, 200);
    let etag_one = "\"f97c5d29941bfb1b2fdab0874906ab82\""; // MD5 of "one"
                                                           // Copy only while the source holds "one".
    let (st, _) = put(
        "b",
        b"",
        &[
            ("x-goog-copy-source", "b-raw/a"),
            ("x-goog-copy-source-if-match", "\"0000\""),
        ],
    );
    assert_eq!(st, 412);
    assert_eq!(get("b").0, 404);
    let (st, _) = put(
        "b",
        b"",
        &[
            ("x-goog-copy-source", "b-raw/a"),
            ("x-goog-copy-source-if-match", etag_one),
        ],
    );
    assert_eq!(st, 200);
    assert_eq!(get("b"), (200, "one".to_string()));
    // Copy only where nothing exists yet.
    let (st, _) = put("a", b"two", &[]);
    assert_eq!(st, 200);
    let (st, _) = put(
        "b",
        b"",
        &[
            ("x-goog-copy-source", "b-raw/a"),
            ("x-goog-if-generation-match", "0"),
        ],
    );
    assert_eq!(st, 412);
    assert_eq!(get("b"), (200, "one".to_string()));
    // Delete only a given generation.
    let (st, _) = s.http(
        "DELETE",
        "/b-raw/b",
        &[("x-goog-if-generation-match", "1")],
        b"",
    );
    assert_eq!(st, 412);
    assert_eq!(get("b"), (200, "one".to_string()));
    // Copying onto itself needs REPLACE, and replaces the metadata only.
    let (st, _) = put("a", b"", &[("x-goog-copy-source", "b-raw/a")]);
    assert_eq!(st, 400);
    let (st, _) = put(
        "a",
        b"",
        &[
            ("x-goog-copy-source", "b-raw/a"),
            ("x-goog-metadata-directive", "REPLACE"),
            ("x-goog-meta-k", "v"),
        ],
    );
    assert_eq!(st, 200);
    assert_eq!(get("a"), (200, "two".to_string()));
    // A multipart completion refused by its generation precondition leaves no object.
    let (st, body) = s.http("POST", "/b-raw/mp?uploads", &[], b"");
    assert_eq!(st, 200);
    let id = body
        .split("<UploadId>")
        .nth(1)
        .unwrap()
        .split('<')
        .next()
        .unwrap()
        .to_string();
    let (st, _) = s.http(
        "PUT",
        &format!("/b-raw/mp?partNumber=1&uploadId={id}"),
        &[],
        b"data",
    );
    assert_eq!(st, 200);
    let done = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"8d777f385d3dfec8815d20f7496026dc\"</ETag></Part></CompleteMultipartUpload>";
    let (st, _) = s.http(
        "POST",
        &format!("/b-raw/mp?uploadId={id}"),
        &[("x-goog-if-generation-match", "42")],
        done.as_bytes(),
    );
    assert_eq!(st, 412);
    assert_eq!(get("mp").0, 404);
    let (st, _) = s.http(
        "POST",
        &format!("/b-raw/mp?uploadId={id}"),
        &[("x-goog-if-generation-match", "0")],
        done.as_bytes(),
    );
    assert_eq!(st, 200);
    assert_eq!(get("mp"), (200, "data".to_string()));
}
