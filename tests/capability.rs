//! The mount-time check of conditional writes: a mount finds out once per state dir whether
//! the server refuses a second create-only write and a write against a replaced version.
//! moto (through scripts/moto_server.py), Azurite and scripts/gcs_server.py enforce both and
//! must pass quietly. scripts/gcs_server.py with `--ignore-preconditions`, and moto with
//! `MOTO_IGNORE_PRECONDITIONS=1`, play a server that ignores them (as Garage and s3s-fs do),
//! which must be named in the mount's output, the log and `stratus status`; and the fallback
//! (a HEAD before each conditional write) must still keep a version written elsewhere that
//! the server would have let us overwrite.

mod common;

use std::sync::Arc;

use common::fault_proxy::{behind_fault_proxy, ErrorKind, Faults};
use common::gcs::GcsServer;
use common::moto::Moto;
use common::mount::{Backend, Env, Mount};
use futures::TryStreamExt;

const CHECKED: &str = "checked the server's preconditions";
const WARNING: &str = "preconditions: ignored by this server";

/// Every key in the test's bucket, read with object_store itself.
fn bucket_keys(env: &Env) -> Vec<String> {
    let client = env.direct_client().expect("a cloud backend");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(client.list(None).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|o| o.location.to_string())
        .collect()
}

fn mount_at(env: &Env, state: &std::path::Path, extra: &[&str]) -> Mount {
    let mut args = vec!["--write-back", "0.2", "--poll-interval", "0"];
    args.extend_from_slice(extra);
    env.try_mount(state, &args)
        .unwrap_or_else(|e| panic!("mount failed: {e}"))
}

/// A server that enforces preconditions: no warning anywhere, the scratch object is gone,
/// and a remount of the same state dir does not check again.
fn passes_quietly(backend: Backend) {
    let env = Env::new(backend);
    let state = env.new_state_dir();
    let m = mount_at(&env, &state, &[]);
    assert!(
        !m.mount_stderr.contains("warning"),
        "mount warned: {}",
        m.mount_stderr
    );
    let status = m.status();
    assert!(
        status.contains("preconditions: enforced by the server"),
        "{status}"
    );
    assert_eq!(m.log_lines_with(CHECKED).lines().count(), 1);
    assert!(m.log_lines_with(WARNING).is_empty(), "{}", m.log_tail());
    let leftovers: Vec<String> = bucket_keys(&env)
        .into_iter()
        .filter(|k| k.contains(".stratus-probe"))
        .collect();
    assert!(leftovers.is_empty(), "probe objects left: {leftovers:?}");
    assert_eq!(std::fs::read_dir(&m.dir).unwrap().count(), 0);
    m.unmount();

    let again = mount_at(&env, &state, &[]);
    assert!(!again.mount_stderr.contains("warning"));
    assert_eq!(
        again.log_lines_with(CHECKED).lines().count(),
        1,
        "a remount checked again:\n{}",
        again.log_tail()
    );
    assert!(again
        .status()
        .contains("preconditions: enforced by the server"));
}

#[test]
fn s3_passes_quietly() {
    passes_quietly(Backend::S3);
}

#[test]
fn azure_passes_quietly() {
    passes_quietly(Backend::Azure);
}

#[test]
fn gcs_passes_quietly() {
    passes_quietly(Backend::Gcs);
}

#[test]
fn ignoring_gcs_server_is_named_and_edits_elsewhere_survive() {
    let server = Arc::new(GcsServer::start_with(&["--ignore-preconditions"]));
    ignoring_server_is_named_and_edits_elsewhere_survive(&Env::on_gcs_server(server));
}

#[test]
fn ignoring_s3_server_is_named_and_edits_elsewhere_survive() {
    let server = Arc::new(Moto::start_with_env(&[("MOTO_IGNORE_PRECONDITIONS", "1")]));
    ignoring_server_is_named_and_edits_elsewhere_survive(&Env::on_moto(server));
}

fn ignoring_server_is_named_and_edits_elsewhere_survive(env: &Env) {
    let state = env.new_state_dir();
    let m = mount_at(env, &state, &[]);

    // Named in all three places a user looks.
    assert!(
        m.mount_stderr.contains(WARNING),
        "no warning from mount: {:?}",
        m.mount_stderr
    );
    assert_eq!(m.mount_stderr.lines().count(), 1, "{}", m.mount_stderr);
    assert!(m.status().contains(WARNING), "{}", m.status());
    let warned = m.log_lines_with(WARNING);
    assert!(warned.contains("WARN"), "log: {}", m.log_tail());
    assert!(bucket_keys(env)
        .iter()
        .all(|k| !k.contains(".stratus-probe")));

    // The fallback: our upload against the version we synced compares with a HEAD first, so
    // an edit made elsewhere in between is kept (a conflict), not silently overwritten.
    std::fs::write(m.path("f.txt"), b"ours, first").unwrap();
    m.sync();
    env.put_remote("f.txt", b"theirs, written elsewhere");
    std::fs::write(m.path("f.txt"), b"ours, second").unwrap();
    m.sync();
    let files = env.remote_files();
    let contents: Vec<&[u8]> = files.values().map(|v| v.as_slice()).collect();
    assert!(
        contents.contains(&&b"theirs, written elsewhere"[..]),
        "the edit made elsewhere was overwritten: {files:?}"
    );
    assert!(contents.contains(&&b"ours, second"[..]), "{files:?}");
    m.unmount();

    // Remembered: the remount warns again without checking again; asked to, it checks.
    let again = mount_at(env, &state, &[]);
    assert!(again.mount_stderr.contains(WARNING));
    assert_eq!(again.log_lines_with(CHECKED).lines().count(), 1);
    again.unmount();
    let rechecked = mount_at(env, &state, &["--recheck-preconditions"]);
    assert!(rechecked.mount_stderr.contains(WARNING));
    assert_eq!(rechecked.log_lines_with(CHECKED).lines().count(), 2);
}

/// Another mount's scratch object, caught mid-check by a listing, is no file; and a file
/// whose name the check reserves cannot be created (the listing hides such names, so every
/// other mount would take it for deleted).
#[test]
fn probe_names_are_hidden_and_reserved() {
    let env = Env::new(Backend::S3);
    env.put_remote(".stratus-probe-1f-2e", b"1");
    env.put_remote("sub/.stratus-probe-x", b"a user's file, below the root");
    let m = env.mount();
    let names: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["sub".to_string()]);
    assert!(m.path("sub/.stratus-probe-x").exists());
    let err = std::fs::write(m.path(".stratus-probe-mine"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    std::fs::write(m.path(".stratus-probe"), b"x").unwrap();
    let err = std::fs::rename(m.path(".stratus-probe"), m.path(".stratus-probe-2")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
}

/// A check that cannot finish (here every request for the scratch object answers 500) never
/// keeps the folder from mounting: the mount serves, the status says the check is still to
/// come, and the next mount makes it.
#[test]
fn a_check_that_cannot_finish_is_made_at_the_next_mount() {
    let (env, proxy) = behind_fault_proxy(Backend::S3);
    proxy.set(Faults {
        error_share: 1.0,
        error_kind: ErrorKind::Internal,
        only: Some(".stratus-probe-".into()),
        ..Faults::default()
    });
    let state = env.new_state_dir();
    let m = mount_at(&env, &state, &[]);
    assert!(!m.mount_stderr.contains("warning"), "{}", m.mount_stderr);
    let status = m.status();
    assert!(
        status.contains("preconditions: not checked yet"),
        "{status}"
    );
    assert!(!m.log_lines_with("could not check").is_empty());
    std::fs::write(m.path("a.txt"), b"served all the same").unwrap();
    m.sync();
    m.unmount();
    assert_eq!(env.remote_files()["a.txt"], b"served all the same");

    proxy.set(Faults::none());
    let again = mount_at(&env, &state, &[]);
    let status = again.status();
    assert!(
        status.contains("preconditions: enforced by the server"),
        "{status}"
    );
}
