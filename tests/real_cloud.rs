//! A smoke test against your own cloud account: for each of S3, Azure Blob and GCS whose
//! credentials and test bucket are in the environment, two mounts of a fresh prefix make round
//! trips (a multipart-sized file included) and a conflict, the mount's precondition check must
//! find the service enforcing conditional writes, and the bucket is read back with object_store's
//! own client before everything under the prefix is removed. A cloud without its variables is
//! skipped, saying which variables to set:
//!
//! - S3: `STRATUS_TEST_S3_BUCKET` and `AWS_ACCESS_KEY_ID` (with `AWS_SECRET_ACCESS_KEY`,
//!   `AWS_REGION`; `AWS_ENDPOINT_URL` for another S3-compatible service);
//! - Azure: `STRATUS_TEST_AZURE_CONTAINER` and `AZURE_STORAGE_ACCOUNT_NAME` (with
//!   `AZURE_STORAGE_ACCOUNT_KEY`, or any other `AZURE_STORAGE_*` credential object_store reads);
//! - GCS: `STRATUS_TEST_GCS_BUCKET` and `GOOGLE_APPLICATION_CREDENTIALS` (or
//!   `GOOGLE_SERVICE_ACCOUNT_KEY`).
//!
//! `cargo test --test real_cloud -- --nocapture` shows what ran. Nothing here runs in CI, which
//! has no cloud credentials; the same body runs against the local test servers when their
//! variables point there (see README).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use common::direct::{dirs, files};
use common::mount::{data, Mount, BIN};

/// Over stratus's 16 MiB multipart threshold.
const BIG: usize = 17 * 1024 * 1024 + 1;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The first of `names` that is set.
fn any_var(names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| var(n))
}

struct Cloud {
    name: &'static str,
    /// `s3://bucket`, `az://container` or `gs://bucket`; the test adds its own prefix.
    url: String,
    client: Box<dyn ObjectStore>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh prefix per run, so runs never meet and a failed run's leftovers are easy to find.
fn fresh_prefix() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!("stratus-smoke-{}-{t}", std::process::id())
}

fn mount(tmp: &tempfile::TempDir, url: &str, n: usize) -> Mount {
    let mp = tmp.path().join(format!("mnt-{n}"));
    let state = tmp.path().join(format!("state-{n}"));
    fs::create_dir_all(&mp).unwrap();
    fs::create_dir_all(&state).unwrap();
    // The daemon gets this process's environment, credentials included.
    let out = Command::new(BIN)
        .args(["mount", url])
        .arg(&mp)
        .arg("--state-dir")
        .arg(&state)
        .args(["--write-back", "0.2", "--poll-interval", "0"])
        .env("STRATUS_LOG", "stratus=debug,info")
        .output()
        .expect("run stratus mount");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "mount {url} failed: {stderr}");
    let envs = vec![("STRATUS_LOG".to_string(), "stratus=debug,info".to_string())];
    Mount::mounted(mp, state, envs, stderr)
}

fn offline(m: &Mount, on: bool) {
    let o = m.stratus(&[
        "offline",
        m.dir.to_str().unwrap(),
        if on { "on" } else { "off" },
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Every object under `prefix/`, read with the cloud's own client (a `dir/` marker is listed
/// without its slash and cannot be read: it is left out).
fn objects(cloud: &Cloud, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    rt().block_on(async {
        let p = ObjPath::parse(prefix).unwrap();
        let listed: Vec<_> = cloud.client.list(Some(&p)).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for o in listed {
            if let Ok(got) = cloud.client.get(&o.location).await {
                let rel = o.location.as_ref()[prefix.len() + 1..].to_string();
                out.insert(rel, got.bytes().await.unwrap().to_vec());
            }
        }
        out
    })
}

fn remove_prefix(cloud: &Cloud, prefix: &str) {
    rt().block_on(async {
        let p = ObjPath::parse(prefix).unwrap();
        let listed: Vec<_> = cloud.client.list(Some(&p)).try_collect().await.unwrap();
        for o in listed {
            let _ = cloud.client.delete(&o.location).await;
        }
    })
}

fn smoke(cloud: Cloud) {
    let prefix = fresh_prefix();
    let url = format!("{}/{prefix}", cloud.url);
    eprintln!("{}: smoke test on {url}", cloud.name);
    let tmp = tempfile::tempdir().unwrap();
    let a = mount(&tmp, &url, 0);
    let b = mount(&tmp, &url, 1);
    let status = a.status();
    assert!(
        status.contains("preconditions: enforced by the server"),
        "{}: the precondition check did not pass:\n{status}",
        cloud.name
    );

    // Round trips: A to B, then B to A.
    let big = data(7, BIG);
    fs::create_dir(a.path("d")).unwrap();
    fs::write(a.path("d/small.txt"), b"small").unwrap();
    fs::write(a.path("big.bin"), &big).unwrap();
    a.sync();
    b.sync();
    assert_eq!(fs::read(b.path("d/small.txt")).unwrap(), b"small");
    assert!(fs::read(b.path("big.bin")).unwrap() == big, "B's big.bin");
    fs::rename(b.path("d/small.txt"), b.path("d/moved.txt")).unwrap();
    fs::remove_file(b.path("big.bin")).unwrap();
    b.sync();
    a.sync();
    assert!(!a.path("big.bin").exists() && !a.path("d/small.txt").exists());
    assert_eq!(fs::read(a.path("d/moved.txt")).unwrap(), b"small");

    // A conflict: B offline while both edit f.txt; both versions stay.
    fs::write(a.path("f.txt"), b"base").unwrap();
    a.sync();
    b.sync();
    offline(&b, true);
    fs::write(a.path("f.txt"), b"from A").unwrap();
    a.sync();
    fs::write(b.path("f.txt"), b"from B").unwrap();
    offline(&b, false);
    b.sync();
    a.sync();
    let want_a = files(&a.dir);
    assert_eq!(want_a, files(&b.dir), "the mounts differ");
    let copies: Vec<&String> = want_a.keys().filter(|k| k.contains(".conflict-")).collect();
    assert_eq!(copies.len(), 1, "{:?}", want_a.keys());
    assert_eq!(want_a["f.txt"], b"from A");
    assert_eq!(want_a[copies[0]], b"from B");
    // Azure's directory markers are readable blobs: not files.
    let dirs = dirs(&a.dir);
    let mut in_bucket = objects(&cloud, &prefix);
    in_bucket.retain(|k, _| !dirs.contains(k));
    assert_eq!(
        in_bucket, want_a,
        "{}: the bucket differs from the mounts",
        cloud.name
    );

    // Clean up through the mount, then whatever is left directly.
    for k in want_a.keys() {
        fs::remove_file(a.path(k)).unwrap();
    }
    fs::remove_dir(a.path("d")).unwrap();
    a.sync();
    a.unmount();
    b.unmount();
    remove_prefix(&cloud, &prefix);
    eprintln!("{}: passed", cloud.name);
}

#[test]
fn s3() {
    let (Some(bucket), Some(_)) = (var("STRATUS_TEST_S3_BUCKET"), var("AWS_ACCESS_KEY_ID")) else {
        eprintln!("skipped S3: set STRATUS_TEST_S3_BUCKET and AWS_ACCESS_KEY_ID (with AWS_SECRET_ACCESS_KEY, AWS_REGION) to run it");
        return;
    };
    let client = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .build()
        .expect("S3 client from the environment");
    smoke(Cloud {
        name: "S3",
        url: format!("s3://{bucket}"),
        client: Box::new(client),
    });
}

#[test]
fn azure() {
    let (Some(container), Some(_)) = (
        var("STRATUS_TEST_AZURE_CONTAINER"),
        any_var(&[
            "AZURE_STORAGE_ACCOUNT_NAME",
            "AZURE_STORAGE_ACCOUNT",
            "AZURE_STORAGE_USE_EMULATOR",
        ]),
    ) else {
        eprintln!("skipped Azure: set STRATUS_TEST_AZURE_CONTAINER and AZURE_STORAGE_ACCOUNT_NAME (with AZURE_STORAGE_ACCOUNT_KEY) to run it");
        return;
    };
    let client = MicrosoftAzureBuilder::from_env()
        .with_container_name(&container)
        .build()
        .expect("Azure client from the environment");
    smoke(Cloud {
        name: "Azure",
        url: format!("az://{container}"),
        client: Box::new(client),
    });
}

#[test]
fn gcs() {
    let (Some(bucket), Some(_)) = (
        var("STRATUS_TEST_GCS_BUCKET"),
        any_var(&[
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
            "GOOGLE_SERVICE_ACCOUNT",
        ]),
    ) else {
        eprintln!(
            "skipped GCS: set STRATUS_TEST_GCS_BUCKET and GOOGLE_APPLICATION_CREDENTIALS to run it"
        );
        return;
    };
    let client = GoogleCloudStorageBuilder::from_env()
        .with_bucket_name(&bucket)
        .build()
        .expect("GCS client from the environment");
    smoke(Cloud {
        name: "GCS",
        url: format!("gs://{bucket}"),
        client: Box::new(client),
    });
}
