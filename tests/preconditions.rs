//! The server decides, not a comparison made a moment before: multipart completions,
//! server-side copies and deletes go out with the server's own precondition on S3, Azure and
//! GCS (by generation, against the in-repo GCS test server).
//!
//! Each remote-layer test opens a race window exactly where it matters: a proxy holds the
//! deciding request (the completion, the copy, the delete) while an independent client
//! (object_store itself, talking to the server directly) writes the key; then the request is
//! let go. A HEAD made before the window, which is what stratus did, cannot see that writer.
//! Every test also checks the header on the wire. moto 5.2.1 alone ignores `If-Match` on
//! CompleteMultipartUpload and every CopyObject condition; the launcher the tests start it
//! with (`scripts/moto_server.py`) enforces them as S3 documents, so the races run on S3 too
//! (docs/semantics.md).
//!
//! The end-to-end test writes one 24 MiB file from two mounts of one bucket at the same
//! moment, a few rounds, and checks that no version either writer was told is saved is gone.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::azurite::{ACCOUNT, KEY};
use common::fault_proxy::{behind_fault_proxy, Faults};
use common::gate_proxy::GateProxy;
use common::mount::{data, Backend, Env, Mount};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use stratus::remote::{hash_file, Cond, Meta, Remote, RemoteError, RemoteResult, RemoteUrl};

const BIG: usize = 24 * 1024 * 1024;
const HOLD_TIMEOUT: Duration = Duration::from_secs(120);

/// A stratus remote talking through a gate proxy, and a direct client for the other writer.
struct Race {
    env: Env,
    gate: GateProxy,
    remote: Arc<Remote>,
    direct: Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
}

impl Race {
    fn new(backend: Backend) -> Race {
        let env = Env::new(backend);
        let port = match backend {
            Backend::S3 => env.moto.as_ref().unwrap().port,
            Backend::Azure => env.azurite.as_ref().unwrap().port,
            Backend::Gcs => env.gcs.as_ref().unwrap().port,
            Backend::Local => unreachable!("the local folder has no server to decide"),
        };
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        let gate = GateProxy::start(server);
        let server_url = format!("http://127.0.0.1:{port}");
        let (options, direct): (Vec<(String, String)>, Arc<dyn ObjectStore>) = match backend {
            Backend::S3 => (
                vec![
                    ("endpoint".into(), gate.endpoint()),
                    ("access_key_id".into(), "test".into()),
                    ("secret_access_key".into(), "test".into()),
                    ("region".into(), "us-east-1".into()),
                    ("allow_http".into(), "true".into()),
                ],
                Arc::new(
                    AmazonS3Builder::new()
                        .with_bucket_name(&env.bucket)
                        .with_endpoint(&server_url)
                        .with_region("us-east-1")
                        .with_access_key_id("test")
                        .with_secret_access_key("test")
                        .with_allow_http(true)
                        .build()
                        .unwrap(),
                ),
            ),
            Backend::Gcs => (
                vec![(
                    "google_service_account_key".into(),
                    common::gcs::service_account_key(&gate.endpoint()),
                )],
                Arc::new(
                    GoogleCloudStorageBuilder::new()
                        .with_bucket_name(&env.bucket)
                        .with_service_account_key(common::gcs::service_account_key(&server_url))
                        .build()
                        .unwrap(),
                ),
            ),
            _ => (
                vec![
                    ("account_name".into(), ACCOUNT.into()),
                    ("access_key".into(), KEY.into()),
                    ("endpoint".into(), format!("{}/{ACCOUNT}", gate.endpoint())),
                    ("allow_http".into(), "true".into()),
                ],
                Arc::new(
                    MicrosoftAzureBuilder::new()
                        .with_account(ACCOUNT)
                        .with_access_key(KEY)
                        .with_container_name(&env.bucket)
                        .with_endpoint(format!("{server_url}/{ACCOUNT}"))
                        .with_allow_http(true)
                        .build()
                        .unwrap(),
                ),
            ),
        };
        let url = RemoteUrl::parse(&env.remote_url()).unwrap();
        let remote = Arc::new(Remote::open(&url, &options).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Race {
            env,
            gate,
            remote,
            direct,
            rt,
        }
    }

    fn full(key: &str) -> ObjPath {
        ObjPath::parse(format!("data/{key}")).unwrap()
    }

    /// The other writer: a plain PUT straight to the server. Returns its ETag.
    fn put_direct(&self, key: &str, body: &[u8]) -> String {
        let r = self
            .rt
            .block_on(
                self.direct
                    .put(&Race::full(key), PutPayload::from(body.to_vec())),
            )
            .unwrap();
        r.e_tag.expect("the server names the version it stored")
    }

    fn get_direct(&self, key: &str) -> Option<Vec<u8>> {
        self.rt.block_on(async {
            match self.direct.get(&Race::full(key)).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("reading {key} back: {e}"),
            }
        })
    }

    /// Runs `op` through stratus while the request matching `hold` is held; `meanwhile` runs
    /// once it is; then the request goes on. Returns the head that was held and the result.
    fn race<T: Send + 'static>(
        &self,
        hold: &[&str],
        op: impl std::future::Future<Output = RemoteResult<T>> + Send + 'static,
        meanwhile: impl FnOnce(),
    ) -> (String, RemoteResult<T>) {
        self.gate.hold(hold);
        let task = self.rt.spawn(op);
        let head = self.gate.wait_held(HOLD_TIMEOUT);
        meanwhile();
        self.gate.release();
        (head, self.rt.block_on(task).unwrap())
    }

    /// A 24 MiB file (a multipart upload) and our metadata for it.
    fn big_file(&self, seed: u64) -> (std::path::PathBuf, u64, Meta) {
        let p = self.env.tmp.path().join(format!("src-{seed}"));
        std::fs::write(&p, data(seed, BIG)).unwrap();
        let meta = Meta {
            sha256: Some(hash_file(&p).unwrap()),
            mode: Some(0o644),
            ..Meta::default()
        };
        (p, BIG as u64, meta)
    }

    /// The request that completes a multipart upload.
    fn completion(&self) -> &'static [&'static str] {
        match self.env.backend {
            Backend::S3 | Backend::Gcs => &["POST ", "uploadId="],
            _ => &["PUT ", "comp=blocklist"],
        }
    }

    fn copy_request(&self) -> &'static [&'static str] {
        match self.env.backend {
            Backend::S3 => &["PUT ", "x-amz-copy-source:"],
            Backend::Gcs => &["PUT ", "x-goog-copy-source:"],
            _ => &["PUT ", "x-ms-copy-source:"],
        }
    }

    /// The generation GCS holds at `key` now, read directly (GCS conditions writes on it).
    fn generation(&self, key: &str) -> String {
        self.rt
            .block_on(self.direct.head(&Race::full(key)))
            .unwrap()
            .version
            .expect("GCS names a generation")
    }
}

/// Whether a request head carries `name: value` (names are case-insensitive on the wire).
fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(n, v)| n.trim().eq_ignore_ascii_case(name) && v.trim() == value.trim())
    })
}

fn assert_conflict<T: std::fmt::Debug>(r: &RemoteResult<T>, what: &str) {
    assert!(
        matches!(r, Err(RemoteError::Conflict(_))),
        "{what}: expected the server to refuse (Conflict), got {r:?}"
    );
}

/// Creating a big file while another writer creates the same name: the other writer's
/// PUT lands after our upload began (after the HEAD stratus used to make) and before its
/// completion. The completion must be refused and the other version stay.
fn multipart_create_loses_to_the_first_writer(backend: Backend) {
    let r = Race::new(backend);
    let (src, size, meta) = r.big_file(1);
    let remote = r.remote.clone();
    let (head, got) = r.race(
        r.completion(),
        async move {
            remote
                .upload_file("race.bin", &src, size, &meta, &Cond::Create)
                .await
        },
        || {
            r.put_direct("race.bin", b"the other writer's version");
        },
    );
    assert_conflict(&got, "multipart create over a key written meanwhile");
    assert_eq!(
        r.get_direct("race.bin").as_deref(),
        Some(&b"the other writer's version"[..]),
        "the other writer's version must still be in the bucket"
    );
    match backend {
        Backend::Gcs => assert!(
            has_header(&head, "x-goog-if-generation-match", "0"),
            "{head}"
        ),
        _ => assert!(has_header(&head, "if-none-match", "*"), "{head}"),
    }
}

#[test]
fn s3_multipart_create_loses_to_the_first_writer() {
    multipart_create_loses_to_the_first_writer(Backend::S3);
}

#[test]
fn azure_multipart_create_loses_to_the_first_writer() {
    multipart_create_loses_to_the_first_writer(Backend::Azure);
}

#[test]
fn gcs_multipart_create_loses_to_the_first_writer() {
    multipart_create_loses_to_the_first_writer(Backend::Gcs);
}

/// Replacing a big file (version V) while another writer replaces it too. Azure refuses the
/// completion, and so does S3 (`If-Match`).
fn multipart_update_loses_to_a_newer_version(backend: Backend) {
    let r = Race::new(backend);
    let v = r.put_direct("race.bin", b"version V");
    let generation = (backend == Backend::Gcs).then(|| r.generation("race.bin"));
    let (src, size, meta) = r.big_file(2);
    let remote = r.remote.clone();
    let cond = Cond::Match {
        etag: Some(v.clone()),
        version: None,
    };
    let (head, got) = r.race(
        r.completion(),
        async move {
            remote
                .upload_file("race.bin", &src, size, &meta, &cond)
                .await
        },
        || {
            r.put_direct("race.bin", b"the other writer's version");
        },
    );
    assert_conflict(&got, "multipart update over a key replaced meanwhile");
    assert_eq!(
        r.get_direct("race.bin").as_deref(),
        Some(&b"the other writer's version"[..])
    );
    match &generation {
        // Known by its ETag alone (as after a listing), the base is pinned by the generation
        // that held that ETag.
        Some(g) => assert!(has_header(&head, "x-goog-if-generation-match", g), "{head}"),
        None => assert!(has_header(&head, "if-match", &v), "{head}"),
    }
}

#[test]
fn s3_multipart_update_loses_to_a_newer_version() {
    multipart_update_loses_to_a_newer_version(Backend::S3);
}

#[test]
fn azure_multipart_update_loses_to_a_newer_version() {
    multipart_update_loses_to_a_newer_version(Backend::Azure);
}

#[test]
fn gcs_multipart_update_loses_to_a_newer_version() {
    multipart_update_loses_to_a_newer_version(Backend::Gcs);
}

/// A rename onto a new name while another writer creates that name: the copy must not
/// overwrite it.
fn copy_does_not_overwrite_a_new_destination(backend: Backend) {
    let r = Race::new(backend);
    let v = r.put_direct("a.txt", b"ours, being renamed");
    let remote = r.remote.clone();
    let source = v.clone();
    let (head, got) = r.race(
        r.copy_request(),
        async move {
            remote
                .copy("a.txt", "b.txt", Some(&source), &Cond::Create)
                .await
        },
        || {
            r.put_direct("b.txt", b"the other writer's version");
        },
    );
    assert_conflict(&got, "copy onto a name created meanwhile");
    assert_eq!(
        r.get_direct("b.txt").as_deref(),
        Some(&b"the other writer's version"[..])
    );
    match backend {
        Backend::Gcs => assert!(
            has_header(&head, "x-goog-if-generation-match", "0"),
            "{head}"
        ),
        _ => assert!(has_header(&head, "if-none-match", "*"), "{head}"),
    }
}

#[test]
fn s3_copy_does_not_overwrite_a_new_destination() {
    copy_does_not_overwrite_a_new_destination(Backend::S3);
}

#[test]
fn azure_copy_does_not_overwrite_a_new_destination() {
    copy_does_not_overwrite_a_new_destination(Backend::Azure);
}

#[test]
fn gcs_copy_does_not_overwrite_a_new_destination() {
    copy_does_not_overwrite_a_new_destination(Backend::Gcs);
}

/// A rename whose source is edited elsewhere while the copy is on its way: the copy moves
/// only the version we meant to move.
fn copy_moves_only_the_version_meant(backend: Backend) {
    let r = Race::new(backend);
    let v = r.put_direct("a.txt", b"ours, being renamed");
    let remote = r.remote.clone();
    let source = v.clone();
    let (head, got) = r.race(
        r.copy_request(),
        async move {
            remote
                .copy("a.txt", "b.txt", Some(&source), &Cond::Create)
                .await
        },
        || {
            r.put_direct("a.txt", b"an edit made elsewhere");
        },
    );
    let name = match backend {
        Backend::S3 => "x-amz-copy-source-if-match",
        Backend::Gcs => "x-goog-copy-source-if-match",
        _ => "x-ms-source-if-match",
    };
    assert_conflict(&got, "copy of a source edited meanwhile");
    assert_eq!(
        r.get_direct("b.txt"),
        None,
        "nothing may land at the new name"
    );
    assert_eq!(
        r.get_direct("a.txt").as_deref(),
        Some(&b"an edit made elsewhere"[..])
    );
    assert!(has_header(&head, name, &v), "{head}");
}

#[test]
fn s3_copy_moves_only_the_version_meant() {
    copy_moves_only_the_version_meant(Backend::S3);
}

#[test]
fn azure_copy_moves_only_the_version_meant() {
    copy_moves_only_the_version_meant(Backend::Azure);
}

#[test]
fn gcs_copy_moves_only_the_version_meant() {
    copy_moves_only_the_version_meant(Backend::Gcs);
}

/// A delete of version V while another writer replaces it: the new version stays.
fn delete_spares_a_newer_version(backend: Backend) {
    let r = Race::new(backend);
    let v = r.put_direct("gone.txt", b"version V");
    let generation = (backend == Backend::Gcs).then(|| r.generation("gone.txt"));
    let remote = r.remote.clone();
    let want = v.clone();
    let (head, got) = r.race(
        // Not "gone.txt": GCS clients send the key with every non-alphanumeric byte encoded.
        &["DELETE ", "gone"],
        async move { remote.delete("gone.txt", false, Some(&want)).await },
        || {
            r.put_direct("gone.txt", b"the other writer's version");
        },
    );
    assert_conflict(&got, "delete of a key replaced meanwhile");
    assert_eq!(
        r.get_direct("gone.txt").as_deref(),
        Some(&b"the other writer's version"[..])
    );
    match &generation {
        Some(g) => assert!(has_header(&head, "x-goog-if-generation-match", g), "{head}"),
        None => assert!(has_header(&head, "if-match", &v), "{head}"),
    }
}

#[test]
fn s3_delete_spares_a_newer_version() {
    delete_spares_a_newer_version(Backend::S3);
}

#[test]
fn azure_delete_spares_a_newer_version() {
    delete_spares_a_newer_version(Backend::Azure);
}

#[test]
fn gcs_delete_spares_a_newer_version() {
    delete_spares_a_newer_version(Backend::Gcs);
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Every file in the bucket whose name starts with `stem`, read with object_store directly:
/// path -> SHA-256.
fn bucket_hashes(env: &Env, stem: &str) -> BTreeMap<String, String> {
    let store: Arc<dyn ObjectStore> = Arc::from(env.direct_client().expect("a cloud backend"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let prefix = ObjPath::parse("data").unwrap();
        let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for o in objects
            .into_iter()
            .filter(|o| o.location.as_ref().starts_with(&format!("data/{stem}")))
        {
            let bytes = store.get(&o.location).await.unwrap().bytes().await.unwrap();
            let rel = o.location.as_ref()["data/".len()..].to_string();
            out.insert(rel, sha(&bytes));
        }
        out
    })
}

/// Every file on a mount whose name starts with `stem` and marks it as a conflict copy:
/// name -> SHA-256.
fn conflict_copies(m: &Mount, stem: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&m.dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(stem) && name.contains(".conflict-") {
            out.insert(name, sha(&std::fs::read(e.path()).unwrap()));
        }
    }
    out
}

fn write_and_fsync(path: &Path, body: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(body).unwrap();
    f.sync_all().unwrap();
}

/// Issue 8, measured on main: two mounts of one bucket writing a 24 MiB file at the same
/// moment; both multipart uploads passed their HEAD check, the later one overwrote the
/// earlier, and the earlier writer's version was gone from the bucket and from both mounts
/// while both said `synced`. Now the later completion is refused by the server, and the
/// loser's side keeps both versions (the conflict machinery takes over).
fn two_mounts_writing_one_big_file_lose_nothing(backend: Backend) {
    // A little latency on every chunk (as any real network has) makes both uploads take long
    // enough to overlap, so that each round really is a race between two completions.
    let (env, proxy) = behind_fault_proxy(backend);
    proxy.set(Faults::latency(Duration::ZERO, Duration::from_millis(1)));
    let mounts = [env.mount(), env.mount()];
    for round in 0..3u64 {
        let name = format!("big-{round}.bin");
        let bodies = [data(100 + round, BIG), data(200 + round, BIG)];
        // Both writers close their file at the same moment, then ask for the upload.
        let results: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = mounts
                .iter()
                .zip(&bodies)
                .map(|(m, body)| {
                    let name = name.clone();
                    s.spawn(move || {
                        write_and_fsync(&m.path(&name), body);
                        let out = m.stratus(&[
                            "sync",
                            m.dir.to_str().unwrap(),
                            "--wait",
                            "--timeout",
                            "180",
                        ]);
                        out.status.success()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // Let both sides see what the other did, then settle.
        for m in &mounts {
            let _ = m.stratus(&[
                "sync",
                m.dir.to_str().unwrap(),
                "--wait",
                "--timeout",
                "180",
            ]);
        }
        let stem = format!("big-{round}");
        let bucket = bucket_hashes(&env, &stem);
        let in_bucket: Vec<&String> = bucket.values().collect();
        let copies: Vec<String> = mounts
            .iter()
            .flat_map(|m| conflict_copies(m, &stem).into_values())
            .collect();
        for (i, body) in bodies.iter().enumerate() {
            let h = sha(body);
            let acknowledged = results[i];
            let kept = in_bucket.contains(&&h) || copies.contains(&h);
            // Held by a conflict (sync --wait exit 1), the writer's version stays at its path
            // on its own mount until someone settles it.
            let at_home = std::fs::read(mounts[i].path(&name))
                .map(|b| sha(&b) == h)
                .unwrap_or(false);
            assert!(
                kept || (!acknowledged && at_home),
                "round {round}: writer {i}'s version (acknowledged: {acknowledged}) is gone: \
                 bucket {bucket:?}, conflict copies {copies:?}\nlog 0:\n{}\nlog 1:\n{}",
                mounts[0].log_tail(),
                mounts[1].log_tail()
            );
            if acknowledged {
                assert!(
                    kept,
                    "round {round}: writer {i} was told its version is uploaded, yet the \
                     bucket and the conflict copies lack it"
                );
            }
        }
        for (i, m) in mounts.iter().enumerate() {
            if m.state_of(&name) == "synced" {
                let shown = sha(&std::fs::read(m.path(&name)).unwrap());
                assert_eq!(
                    bucket.get(&name),
                    Some(&shown),
                    "round {round}: mount {i} says synced for a version the bucket lacks"
                );
            }
        }
    }
}

#[test]
fn s3_two_mounts_writing_one_big_file_lose_nothing() {
    two_mounts_writing_one_big_file_lose_nothing(Backend::S3);
}

#[test]
fn azure_two_mounts_writing_one_big_file_lose_nothing() {
    two_mounts_writing_one_big_file_lose_nothing(Backend::Azure);
}

#[test]
fn gcs_two_mounts_writing_one_big_file_lose_nothing() {
    two_mounts_writing_one_big_file_lose_nothing(Backend::Gcs);
}

/// A rename through a real mount onto a name another writer creates while the move's copy is
/// on its way. Before the copy carried the target's condition, the move HEADed the new name first, found it free, copied over the other
/// writer's version and then deleted the old key: "theirs" was gone. Now the copy is refused,
/// the move becomes a conflict, and both versions are kept.
fn rename_onto_a_name_created_elsewhere_keeps_both(backend: Backend) {
    let env = Env::new(backend);
    let (port, copy_header) = match backend {
        Backend::Gcs => (env.gcs.as_ref().unwrap().port, "x-goog-copy-source:"),
        Backend::S3 => (env.moto.as_ref().unwrap().port, "x-amz-copy-source:"),
        _ => (env.azurite.as_ref().unwrap().port, "x-ms-copy-source:"),
    };
    let gate = GateProxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
    env.set_endpoint(&gate.endpoint());
    let m = env.mount();
    std::fs::write(m.path("a.txt"), b"ours, being renamed").unwrap();
    m.sync();
    gate.hold(&["PUT ", copy_header]);
    std::fs::rename(m.path("a.txt"), m.path("b.txt")).unwrap();
    let _ = m.stratus(&["sync", m.dir.to_str().unwrap()]);
    gate.wait_held(HOLD_TIMEOUT);
    // Straight to the server, not through the gate.
    let direct = env.direct_client().expect("a cloud backend");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(direct.put(
        &ObjPath::parse("data/b.txt").unwrap(),
        PutPayload::from_static(b"the other writer's version"),
    ))
    .unwrap();
    gate.release();
    let _ = m.stratus(&[
        "sync",
        m.dir.to_str().unwrap(),
        "--wait",
        "--timeout",
        "120",
    ]);
    let bucket = bucket_hashes(&env, "");
    assert_eq!(
        bucket.get("b.txt"),
        Some(&sha(b"the other writer's version")),
        "the other writer's version must still be at the new name: {bucket:?}\n{}",
        m.log_tail()
    );
    let ours = sha(b"ours, being renamed");
    let on_mount: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| sha(&std::fs::read(e.unwrap().path()).unwrap()))
        .collect();
    assert!(
        bucket.values().any(|h| *h == ours) || on_mount.contains(&ours),
        "our version must be kept: bucket {bucket:?}\n{}",
        m.log_tail()
    );
    assert!(
        on_mount.contains(&sha(b"the other writer's version")),
        "the mount must show the other version too (at the name or as a conflict copy)\n{}",
        m.log_tail()
    );
    // The version that reached the server first keeps the name; ours is the copy beside it.
    assert_eq!(
        sha(&std::fs::read(m.path("b.txt")).unwrap()),
        sha(b"the other writer's version"),
        "{}",
        m.log_tail()
    );
}

#[test]
fn s3_rename_onto_a_name_created_elsewhere_keeps_both() {
    rename_onto_a_name_created_elsewhere_keeps_both(Backend::S3);
}

#[test]
fn azure_rename_onto_a_name_created_elsewhere_keeps_both() {
    rename_onto_a_name_created_elsewhere_keeps_both(Backend::Azure);
}

#[test]
fn gcs_rename_onto_a_name_created_elsewhere_keeps_both() {
    rename_onto_a_name_created_elsewhere_keeps_both(Backend::Gcs);
}
