//! Differential uploads on real mounts: a small change to a big file sends only the parts
//! that hold it (the rest is copied on the server from the version the remote holds), counted
//! on the wire by a proxy between the mount and the server, and the object stays the file
//! byte for byte, or a conflict copy when the remote changed meanwhile.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;

use common::fault_proxy::{behind_fault_proxy, FaultProxy};
use common::mount::{data, Backend, Env, Mount};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
/// Big enough for a multipart upload of six parts (8 MiB each), small enough for CI.
const SIZE: usize = 48 * MIB;
/// Two parts' worth: what a change inside one part may cost at most (the part it falls in
/// and a neighbour, for a change across a part boundary).
const TWO_PARTS: u64 = 2 * 8 * MIB as u64;

fn mount(env: &Env) -> Mount {
    env.try_mount(
        &env.new_state_dir(),
        // No polling: the test decides when the remote changes.
        &["--write-back", "0.2", "--poll-interval", "0"],
    )
    .unwrap()
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// The object at `key` as the server holds it (read directly, not through the proxy): its
/// bytes must be the file's, and its SHA-256 metadata the whole file's hash.
fn assert_remote_is(env: &Env, key: &str, want: &[u8]) {
    let tree = env.remote_tree();
    let obj = tree.get(key).unwrap_or_else(|| panic!("{key} missing"));
    assert!(
        obj.data.len() == want.len() && obj.data == want,
        "{key}: the object is not the file ({} bytes, want {})",
        obj.data.len(),
        want.len()
    );
    assert_eq!(obj.meta.sha256.as_deref(), Some(sha256(want).as_str()));
}

/// Runs `change`, waits for the upload, and answers the request bytes that went to the server.
fn sent_by(m: &Mount, proxy: &FaultProxy, change: impl FnOnce()) -> u64 {
    let before = proxy.stats().bytes_up;
    change();
    m.sync();
    proxy.stats().bytes_up - before
}

fn small_changes_send_only_their_parts(backend: Backend) {
    let (env, proxy) = behind_fault_proxy(backend);
    let m = mount(&env);
    let mut want = data(13, SIZE);
    let first = sent_by(&m, &proxy, || fs::write(m.path("big.bin"), &want).unwrap());
    assert!(
        first >= SIZE as u64,
        "the first upload sent only {first} bytes"
    );
    assert_remote_is(&env, "big.bin", &want);

    // One byte appended: the last part changes, the rest is copied on the server.
    let sent = sent_by(&m, &proxy, || {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.path("big.bin"))
            .unwrap();
        f.write_all(b"!").unwrap();
    });
    want.push(b'!');
    assert!(
        sent < TWO_PARTS,
        "a 1-byte append sent {sent} bytes (the file is {SIZE})"
    );
    assert_remote_is(&env, "big.bin", &want);

    // 4 KiB patched in the middle, across nothing but one part.
    let at = 20 * MIB + 4321;
    let patch = data(14, 4096);
    let sent = sent_by(&m, &proxy, || {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.path("big.bin"))
            .unwrap();
        f.write_all_at(&patch, at as u64).unwrap();
    });
    want[at..at + 4096].copy_from_slice(&patch);
    assert!(sent < TWO_PARTS, "a 4 KiB patch sent {sent} bytes");
    assert_remote_is(&env, "big.bin", &want);

    // Cut inside the fourth part: the parts before the cut stay, and the fourth ends early
    // (on Azure its base block is longer, so it is sent, not reused).
    // On a block boundary, so that no changed block overlaps the shortened part.
    let cut = 30 * MIB;
    let sent = sent_by(&m, &proxy, || {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.path("big.bin"))
            .unwrap();
        f.set_len(cut as u64).unwrap();
    });
    want.truncate(cut);
    assert!(sent < TWO_PARTS, "a cut sent {sent} bytes");
    assert_remote_is(&env, "big.bin", &want);

    // Written past the end: the hole before it is new too (zeros, not the old bytes).
    let sent = sent_by(&m, &proxy, || {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.path("big.bin"))
            .unwrap();
        f.write_all_at(b"tail", 40 * MIB as u64).unwrap();
    });
    want.resize(40 * MIB, 0);
    want.extend_from_slice(b"tail");
    assert!(
        sent < 3 * 8 * MIB as u64,
        "a write past the end sent {sent} bytes"
    );
    assert_remote_is(&env, "big.bin", &want);
    assert_eq!(fs::read(m.path("big.bin")).unwrap(), want);

    // Changed while offline, and the daemon stopped before the upload: the next run does not
    // know which ranges changed (nothing of it is kept), so the upload is whole, never built
    // on a guess.
    let o = m.stratus(&["offline", m.dir.to_str().unwrap(), "on"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let patch = data(15, 100);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("big.bin"))
        .unwrap();
    f.write_all_at(&patch, 5).unwrap();
    drop(f);
    want[5..105].copy_from_slice(&patch);
    let state = m.state.clone();
    drop(m);
    let before = proxy.stats().bytes_up;
    let m = env
        .try_mount(&state, &["--write-back", "0.2", "--poll-interval", "0"])
        .unwrap();
    let o = m.stratus(&["offline", m.dir.to_str().unwrap(), "off"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    m.sync();
    let sent = proxy.stats().bytes_up - before;
    assert!(
        sent >= want.len() as u64,
        "a change from before the restart went up as {sent} bytes, not whole"
    );
    assert_remote_is(&env, "big.bin", &want);

    // Clean at the restart, the file is the remote's version: a change builds on it again.
    let patch = data(16, 100);
    let sent = sent_by(&m, &proxy, || {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.path("big.bin"))
            .unwrap();
        f.write_all_at(&patch, 7).unwrap();
    });
    want[7..107].copy_from_slice(&patch);
    assert!(
        sent < TWO_PARTS,
        "a patch after the restart sent {sent} bytes"
    );
    assert_remote_is(&env, "big.bin", &want);
}

#[test]
fn s3_small_changes_send_only_their_parts() {
    small_changes_send_only_their_parts(Backend::S3);
}

/// The remote object changed between the version the change builds on and the upload: the
/// server refuses the copies of unchanged parts and the completion, so the path keeps the
/// other writer's version whole, and ours goes up whole as a conflict copy. Never a mix.
fn a_remote_change_meanwhile_ends_in_a_conflict_copy(backend: Backend) {
    let (env, _proxy) = behind_fault_proxy(backend);
    let m = mount(&env);
    let mut ours = data(21, SIZE);
    fs::write(m.path("big.bin"), &ours).unwrap();
    m.sync();
    // Another writer replaces the object; with polling off, this mount does not know.
    let theirs = data(22, SIZE);
    env.put_remote("big.bin", &theirs);
    let patch = data(23, 4096);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("big.bin"))
        .unwrap_or_else(|e| panic!("{e}\n{}", m.log_tail()));
    f.write_all_at(&patch, 10 * MIB as u64).unwrap();
    drop(f);
    ours[10 * MIB..10 * MIB + 4096].copy_from_slice(&patch);
    theirs_at_the_path_ours_in_a_copy(&env, &m, "big", &theirs, &ours);
}

/// After a sync: the remote holds `theirs` whole at `NAME.bin` and `ours` in a
/// `NAME.conflict-*` copy, never a mix of the two.
fn theirs_at_the_path_ours_in_a_copy(env: &Env, m: &Mount, name: &str, theirs: &[u8], ours: &[u8]) {
    let _ = m.stratus(&[
        "sync",
        m.dir.to_str().unwrap(),
        "--wait",
        "--timeout",
        "120",
    ]);
    let prefix = format!("{name}.conflict-");
    assert!(
        common::mount::eventually(60, || env
            .remote_files()
            .keys()
            .any(|k| k.starts_with(&prefix))),
        "no conflict copy on the remote: {:?}\n{}",
        env.remote_files().keys().collect::<Vec<_>>(),
        m.log_tail()
    );
    let files = env.remote_files();
    assert!(
        files[&format!("{name}.bin")] == theirs,
        "the path holds a mixed object"
    );
    let copy = files.iter().find(|(k, _)| k.starts_with(&prefix)).unwrap();
    assert!(*copy.1 == ours, "the conflict copy is not our file");
}

#[test]
fn s3_a_remote_change_meanwhile_ends_in_a_conflict_copy() {
    a_remote_change_meanwhile_ends_in_a_conflict_copy(Backend::S3);
}

#[test]
fn azure_small_changes_send_only_their_parts() {
    small_changes_send_only_their_parts(Backend::Azure);
}

#[test]
fn azure_a_remote_change_meanwhile_ends_in_a_conflict_copy() {
    a_remote_change_meanwhile_ends_in_a_conflict_copy(Backend::Azure);
}

/// GCS composes whole objects only: an append goes up as the appended bytes alone, and the
/// server composes the new version from the base's generation and them; a patch inside the
/// file has no server-side form there and goes whole. The object is always the file, and no
/// scratch object stays behind.
#[test]
fn gcs_an_append_sends_only_the_appended_bytes_and_a_patch_the_whole_file() {
    let (env, proxy) = behind_fault_proxy(Backend::Gcs);
    let m = mount(&env);
    let size = 24 * MIB;
    let mut want = data(31, size);
    let first = sent_by(&m, &proxy, || fs::write(m.path("log.bin"), &want).unwrap());
    assert!(
        first >= size as u64,
        "the first upload sent only {first} bytes"
    );
    assert_remote_is(&env, "log.bin", &want);

    for (i, len) in [1usize, 100 * 1024].into_iter().enumerate() {
        let more = data(32 + i as u64, len);
        let sent = sent_by(&m, &proxy, || {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(m.path("log.bin"))
                .unwrap();
            f.write_all(&more).unwrap();
        });
        want.extend_from_slice(&more);
        assert!(
            sent < (len + MIB) as u64,
            "an append of {len} bytes sent {sent} bytes (the file is {} bytes)\n{}",
            want.len(),
            m.log_lines_with("log.bin")
        );
        assert_remote_is(&env, "log.bin", &want);
    }
    let keys: Vec<String> = env.remote_tree().into_keys().collect();
    assert_eq!(keys, vec!["log.bin".to_string()], "a scratch object stayed");

    let patch = data(35, 4096);
    let sent = sent_by(&m, &proxy, || {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(m.path("log.bin"))
            .unwrap();
        f.write_all_at(&patch, 10 * MIB as u64).unwrap();
    });
    want[10 * MIB..10 * MIB + 4096].copy_from_slice(&patch);
    assert!(
        sent >= want.len() as u64,
        "a patch inside the file sent {sent} bytes, not the whole file"
    );
    assert_remote_is(&env, "log.bin", &want);
    assert_eq!(fs::read(m.path("log.bin")).unwrap(), want);
}

/// Another writer replaced the object before our append went up: the compose is refused by
/// generation, the path keeps their version whole, and ours goes up as a conflict copy.
#[test]
fn gcs_an_append_over_a_remote_change_ends_in_a_conflict_copy() {
    let (env, _proxy) = behind_fault_proxy(Backend::Gcs);
    let m = mount(&env);
    let mut ours = data(41, 8 * MIB);
    fs::write(m.path("log.bin"), &ours).unwrap();
    m.sync();
    let theirs = data(42, 8 * MIB);
    env.put_remote("log.bin", &theirs);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.path("log.bin"))
        .unwrap();
    f.write_all(b"appended here").unwrap();
    drop(f);
    ours.extend_from_slice(b"appended here");
    theirs_at_the_path_ours_in_a_copy(&env, &m, "log", &theirs, &ours);
}
