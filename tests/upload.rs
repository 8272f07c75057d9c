//! A big file's upload on real mounts keeps several parts in flight at once, so that it runs at
//! the server's pace rather than one round trip per part (issue 13), and still lands as the
//! file byte for byte. A gate proxy between the mount and the server holds every part request
//! at the door: how many it holds at once is how many the mount has in flight.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::gate_proxy::GateProxy;
use common::mount::{data, Backend, Env};
use sha2::{Digest, Sha256};

const MIB: usize = 1 << 20;
/// The parts a mount keeps in flight for one upload (`PARTS_IN_FLIGHT` in src/remote/bucket.rs).
const IN_FLIGHT: usize = 8;
/// Two parts (8 MiB each) more than that, so a window of `IN_FLIGHT` never covers the file.
const SIZE: usize = (IN_FLIGHT + 2) * 8 * MIB;

fn server_port(env: &Env, backend: Backend) -> u16 {
    match backend {
        Backend::S3 => env.moto.as_ref().unwrap().port,
        Backend::Azure => env.azurite.as_ref().unwrap().port,
        Backend::Gcs => env.gcs.as_ref().unwrap().port,
        Backend::Local => unreachable!("a local folder has no parts"),
    }
}

/// What the head of a part's request holds just before the part's id: S3 and the GCS XML API
/// send `UploadPart` (`?partNumber=N&uploadId=...`), Azure a Put Block
/// (`?comp=block&blockid=ID`). Lower case: the gate proxy keeps heads as sent, and matches
/// without case; the id is looked up in the head as sent.
fn part_request(backend: Backend) -> &'static str {
    match backend {
        Backend::Azure => "comp=block&blockid=",
        _ => "partNumber=",
    }
}

fn parts_in_flight(backend: Backend) {
    let env = Env::new(backend);
    let port = server_port(&env, backend);
    let gate = GateProxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
    env.set_endpoint(&gate.endpoint());
    let m = env
        .try_mount(
            &env.new_state_dir(),
            &["--write-back", "0.2", "--poll-interval", "0"],
        )
        .unwrap();
    let pattern = part_request(backend);
    gate.hold_every(&["PUT ", pattern]);
    let want = data(31, SIZE);
    std::fs::write(m.path("big.bin"), &want).unwrap();
    let _ = m.stratus(&["sync", m.dir.to_str().unwrap()]);
    // Distinct parts, not requests: a client that gives up on a held request and retries it
    // sends the same part again.
    let parts = |heads: &[String]| -> BTreeSet<String> {
        heads
            .iter()
            .filter_map(|h| {
                let q = &h[h.find(pattern)? + pattern.len()..];
                Some(q.split(['&', ' ']).next()?.to_string())
            })
            .collect()
    };
    let held = parts(&gate.wait_holding(Duration::from_secs(120), |h| parts(h).len() >= IN_FLIGHT));
    // Nothing is answered while they are held: no further part may start (each holds a part's
    // buffer in the daemon's memory).
    std::thread::sleep(Duration::from_millis(500));
    let held_later = parts(&gate.wait_holding(Duration::ZERO, |_| true));
    gate.release();
    assert!(
        held.len() >= IN_FLIGHT,
        "only {} parts were in flight at once ({held:?}), want {IN_FLIGHT}\n{}",
        held.len(),
        m.log_tail()
    );
    assert_eq!(
        held_later.len(),
        IN_FLIGHT,
        "not {IN_FLIGHT} parts in flight at once: {held_later:?}"
    );
    m.sync();
    let tree = env.remote_tree();
    let obj = tree.get("big.bin").expect("big.bin on the remote");
    assert!(
        obj.data == want,
        "the object is not the file ({} bytes, want {})",
        obj.data.len(),
        want.len()
    );
    assert_eq!(
        obj.meta.sha256.as_deref(),
        Some(hex::encode(Sha256::digest(&want)).as_str())
    );
}

#[test]
fn s3_a_big_upload_keeps_several_parts_in_flight() {
    parts_in_flight(Backend::S3);
}

#[test]
fn azure_a_big_upload_keeps_several_parts_in_flight() {
    parts_in_flight(Backend::Azure);
}

#[test]
fn gcs_a_big_upload_keeps_several_parts_in_flight() {
    parts_in_flight(Backend::Gcs);
}

/// One part the server is slow to take holds one slot, not the upload: the parts after it keep
/// going out. (Before issue 13 the parts were joined in order, so while part 1 hung, no part
/// after the fourth started.)
fn a_slow_part_holds_one_slot(backend: Backend) {
    let env = Env::new(backend);
    let port = server_port(&env, backend);
    let gate = GateProxy::start(SocketAddr::from(([127, 0, 0, 1], port)));
    env.set_endpoint(&gate.endpoint());
    let m = env
        .try_mount(
            &env.new_state_dir(),
            &["--write-back", "0.2", "--poll-interval", "0"],
        )
        .unwrap();
    gate.hold(&["PUT ", "partNumber=1&"]);
    let want = data(37, SIZE);
    std::fs::write(m.path("big.bin"), &want).unwrap();
    let _ = m.stratus(&["sync", m.dir.to_str().unwrap()]);
    gate.wait_held(Duration::from_secs(120));
    let parts = SIZE / (8 * MIB);
    let others = |heads: &[String]| -> BTreeSet<String> {
        heads
            .iter()
            .filter_map(|h| {
                let q = &h[h.find("partNumber=")? + "partNumber=".len()..];
                Some(q.split(['&', ' ']).next()?.to_string())
            })
            .filter(|n| n != "1")
            .collect()
    };
    let gone = common::mount::eventually(20, || others(&gate.heads()).len() == parts - 1);
    let seen = others(&gate.heads());
    gate.release();
    assert!(
        gone,
        "while part 1 was held, only parts {seen:?} of 2..={parts} went out\n{}",
        m.log_tail()
    );
    m.sync();
    assert!(
        env.remote_files().get("big.bin") == Some(&want),
        "the object is not the file"
    );
}

#[test]
fn s3_a_slow_part_holds_one_slot() {
    a_slow_part_holds_one_slot(Backend::S3);
}

#[test]
fn gcs_a_slow_part_holds_one_slot() {
    a_slow_part_holds_one_slot(Backend::Gcs);
}
