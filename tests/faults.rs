//! Faults between stratus and S3, injected by a proxy (tests/common/fault_proxy.rs): latency,
//! connections cut part way through an upload, refused connections, 500/503 answers, and
//! answers lost after the request took effect. Whatever happens on the wire, once the queue
//! drains the bucket holds exactly what was written, no half-written object ever shows up at a
//! key, and the final state is the one a run without faults reaches. The bucket is always read
//! straight from moto, never through the proxy.
//!
//! The first tests check the proxy itself against a recording server, without stratus.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::fault_proxy::{
    behind_fault_proxy, s3_behind_fault_proxy, ErrorKind, FaultProxy, Faults,
};
use common::mount::{data, eventually, Backend, Env, Mount, ObjKind};

const MIB: usize = 1024 * 1024;

// ---- the proxy on its own ----

/// A server that records everything each connection sends until the client's EOF, and
/// answers once with `reply`: at that EOF, or as soon as `answer_at` bytes have arrived.
struct Recorder {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    fn start(reply: &'static [u8]) -> Recorder {
        Recorder::answering_at(reply, None)
    }

    fn answering_at(reply: &'static [u8], answer_at: Option<usize>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let rec = Arc::clone(&received);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let rec = Arc::clone(&rec);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut answered = false;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if !answered && answer_at.is_some_and(|at| got.len() >= at) {
                            answered = true;
                            let _ = s.write_all(reply);
                        }
                    }
                    // Like a real server: no request, no answer.
                    if !answered && !got.is_empty() {
                        let _ = s.write_all(reply);
                    }
                    rec.lock().unwrap().push(got);
                });
            }
        });
        Recorder { addr, received }
    }

    /// Everything received so far, over all connections, in arrival order.
    fn all(&self) -> Vec<u8> {
        self.received.lock().unwrap().concat()
    }
}

/// Sends `bytes` on a new connection, closes the sending side, and returns all it got back
/// (a reset counts as the end).
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

#[test]
fn proxy_forwards_requests_verbatim() {
    let up = Recorder::start(OK);
    let proxy = FaultProxy::start(up.addr);
    // Four requests on one keep-alive connection, sent at once: no body, a Content-Length
    // body, a chunked body with an extension and a trailer, and no body again.
    let mut stream = Vec::new();
    stream.extend_from_slice(b"GET /b/k?list-type=2 HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.extend_from_slice(b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n");
    stream.extend_from_slice(b"0123456789");
    stream.extend_from_slice(
        b"POST /b/k?uploads HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: v\r\n\r\n",
    );
    stream.extend_from_slice(b"DELETE /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    let reply = exchange(proxy.port, &stream);
    assert_eq!(reply, OK);
    assert!(
        up.all() == stream,
        "the server must get the very same bytes"
    );
    let st = proxy.stats();
    assert_eq!(
        (st.requests, st.forwarded, st.faults()),
        (4, 4, 0),
        "{st:?}"
    );

    // A stream that is not HTTP passes through untouched.
    let garbage = b"NOT AN HTTP REQUEST\r\n\r\n\x00\xff binary after it";
    exchange(proxy.port, garbage);
    assert!(up.all().ends_with(garbage));
    assert_eq!(proxy.stats().unparsed, 1);
}

#[test]
fn proxy_injects_each_fault() {
    let up = Recorder::start(OK);
    let proxy = FaultProxy::start(up.addr);
    let put = |body: usize| {
        let mut r =
            format!("PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: {body}\r\n\r\n").into_bytes();
        r.extend(data(9, body));
        r
    };

    // An error answer instead of the server's: the body is consumed, nothing reaches the
    // server, and the client gets an S3-style error that closes the connection.
    proxy.set(Faults::errors(1.0, ErrorKind::SlowDown, 1).with_budget(1));
    let reply = String::from_utf8(exchange(proxy.port, &put(100_000))).unwrap();
    assert!(reply.starts_with("HTTP/1.1 503 Slow Down\r\n"), "{reply}");
    assert!(reply.contains("Connection: close\r\n"), "{reply}");
    assert!(reply.contains("<Code>SlowDown</Code>"), "{reply}");
    assert!(
        up.all().is_empty(),
        "a refused request must not reach the server"
    );
    proxy.set(Faults::errors(1.0, ErrorKind::Internal, 1).with_budget(1));
    let reply = String::from_utf8(exchange(proxy.port, &put(10))).unwrap();
    assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
    assert!(reply.contains("<Code>InternalError</Code>"), "{reply}");
    // The budget is spent: the next one goes through whole.
    assert_eq!(exchange(proxy.port, &put(10)), OK);
    assert!(up.all() == put(10));

    // A cut: the head and exactly the first 1000 body bytes reach the server.
    let before = up.all().len();
    proxy.set(Faults::cut_after(1000));
    let reply = exchange(proxy.port, &put(50_000));
    assert!(reply.is_empty(), "a cut request gets no answer");
    let head_len = put(50_000).len() - 50_000;
    let ok = eventually(5, || up.all().len() == before + head_len + 1000);
    assert!(
        ok,
        "got {} bytes, want {}; {:?}",
        up.all().len() - before,
        head_len + 1000,
        proxy.events()
    );
    assert!(up.all()[before..] == put(50_000)[..head_len + 1000]);
    // Requests with short bodies are not eligible.
    assert_eq!(exchange(proxy.port, &put(999)), OK);

    // Refused connections: accepted and closed before anything is read.
    proxy.set(Faults::refuse().with_budget(2));
    assert!(exchange(proxy.port, &put(10)).is_empty());
    assert!(exchange(proxy.port, &put(10)).is_empty());
    assert_eq!(exchange(proxy.port, &put(10)), OK);

    // A lost response: the request reaches the server whole, the server answers, and the
    // answer does not come back.
    let req = put(20_000);
    let up2 = Recorder::answering_at(OK, Some(req.len()));
    let proxy2 = FaultProxy::start(up2.addr);
    proxy2.set(Faults::drop_responses(1.0, 1).with_budget(1));
    assert!(exchange(proxy2.port, &req).is_empty());
    assert!(eventually(5, || up2.all() == req));
    assert_eq!(exchange(proxy2.port, &req), OK, "the budget is spent");
    assert_eq!(proxy2.stats().dropped_responses, 1);
    assert_eq!(proxy2.events().len(), 1, "{:?}", proxy2.events());

    let st = proxy.stats();
    assert_eq!(
        (st.errors_503, st.errors_500, st.cuts, st.refused),
        (1, 1, 1, 2),
        "{st:?}"
    );
    assert_eq!(st.faults(), 5);
    assert_eq!(proxy.events().len(), 5, "{:?}", proxy.events());
}

#[test]
fn proxy_error_draws_reproduce_from_the_seed() {
    let up = Recorder::start(OK);
    let outcomes = |seed: u64| {
        let proxy = FaultProxy::start(up.addr);
        proxy.set(Faults::errors(0.3, ErrorKind::Mixed, seed));
        (0..60)
            .map(|i| {
                let req = format!("GET /b/k{} HTTP/1.1\r\nHost: x\r\n\r\n", i % 12);
                let reply = exchange(proxy.port, req.as_bytes());
                String::from_utf8_lossy(reply.get(..12).unwrap_or(&reply)).into_owned()
            })
            .collect::<Vec<_>>()
    };
    let a = outcomes(7);
    assert_eq!(a, outcomes(7), "same seed, same faults");
    assert_ne!(a, outcomes(8), "another seed, other faults");
    for status in ["HTTP/1.1 200", "HTTP/1.1 500", "HTTP/1.1 503"] {
        assert!(a.iter().any(|s| s == status), "{status} never drawn: {a:?}");
    }
}

// ---- stratus through the proxy ----

/// The remote's files must be exactly `want`: same keys, same bytes (read from moto directly).
fn assert_remote_files(env: &Env, want: &BTreeMap<String, Vec<u8>>, proxy: &FaultProxy) {
    let got = env.remote_files();
    let keys = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&got),
        keys(want),
        "remote keys differ; proxy: {:?}",
        proxy.stats()
    );
    for (k, v) in want {
        assert!(
            got[k] == *v,
            "{k}: remote holds {} bytes that differ from the {} written; proxy: {:?}",
            got[k].len(),
            v.len(),
            proxy.stats()
        );
    }
}

/// Writes each file in the mount and remembers what it should become on the remote.
fn write_all(m: &Mount, want: &mut BTreeMap<String, Vec<u8>>, files: &[(&str, Vec<u8>)]) {
    for (name, body) in files {
        if let Some(parent) = std::path::Path::new(name).parent() {
            fs::create_dir_all(m.path(parent.to_str().unwrap())).unwrap();
        }
        fs::write(m.path(name), body).unwrap();
        want.insert(name.to_string(), body.clone());
    }
}

#[test]
fn uploads_complete_through_latency() {
    let (env, proxy) = s3_behind_fault_proxy();
    let m = env.mount();
    proxy.set(Faults::latency(
        Duration::from_millis(200),
        Duration::from_millis(2),
    ));
    proxy.cut_all(); // new connections, so every one pays the connect latency
    let mut want = BTreeMap::new();
    write_all(
        &m,
        &mut want,
        &[
            ("small.txt", b"a few bytes".to_vec()),
            ("d/one.bin", data(1, 300_000)),
            ("d/e/two.bin", data(2, 3 * MIB)),
            // Over 16 MiB: a multipart upload, parts in flight over slow connections.
            ("big.bin", data(3, 17 * MIB + 123)),
        ],
    );
    m.sync();
    assert_remote_files(&env, &want, &proxy);
    let st = proxy.stats();
    assert!(
        st.delayed_connections > 0 && st.delayed_chunks > 1000,
        "{st:?}"
    );
    println!("proxy: {st:?}");
}

#[test]
fn uploads_complete_after_connections_cut_mid_transfer() {
    uploads_complete_after_connections_cut_mid_transfer_on(Backend::S3);
}

#[test]
fn azure_uploads_complete_after_connections_cut_mid_transfer() {
    uploads_complete_after_connections_cut_mid_transfer_on(Backend::Azure);
}

#[test]
fn gcs_uploads_complete_after_connections_cut_mid_transfer() {
    uploads_complete_after_connections_cut_mid_transfer_on(Backend::Gcs);
}

fn uploads_complete_after_connections_cut_mid_transfer_on(backend: Backend) {
    let (env, proxy) = behind_fault_proxy(backend);
    let m = env.mount();
    let mut want = BTreeMap::new();
    // A single PUT: the next two request bodies over 1 MiB die after 1 MiB.
    proxy.set(Faults::cut_after(MIB as u64).with_budget(2));
    write_all(
        &m,
        &mut want,
        &[
            ("small.txt", b"not cut: too short".to_vec()),
            ("one-put.bin", data(11, 5 * MIB)),
        ],
    );
    assert!(
        eventually(30, || m.state_of("one-put.bin") == "synced"),
        "{}",
        m.status()
    );
    assert_eq!(proxy.stats().cuts, 2);
    // Over 16 MiB, in 8 + 8 + 1 MiB pieces, all long enough: S3 part uploads
    // (`partNumber=`) or Azure Put Block requests (`comp=block`). Three of them die.
    proxy.set(Faults::cut_after(MIB as u64).with_budget(3));
    write_all(&m, &mut want, &[("multi/part.bin", data(12, 17 * MIB))]);
    m.sync();
    assert_remote_files(&env, &want, &proxy);
    let st = proxy.stats();
    assert_eq!(st.cuts, 5, "{st:?}");
    let piece = match backend {
        Backend::Azure => "comp=block",
        _ => "partNumber=",
    };
    let events = proxy.events();
    assert_eq!(
        events.iter().filter(|e| e.contains(piece)).count(),
        3,
        "{events:?}"
    );
    assert_eq!(m.health(), "online", "{}", m.status());
    println!("proxy: {st:?}\n{}", events.join("\n"));
}

#[test]
fn uploads_complete_when_responses_are_lost() {
    uploads_complete_when_responses_are_lost_on(Backend::S3);
}

#[test]
fn gcs_uploads_complete_when_responses_are_lost() {
    uploads_complete_when_responses_are_lost_on(Backend::Gcs);
}

fn uploads_complete_when_responses_are_lost_on(backend: Backend) {
    let (env, proxy) = behind_fault_proxy(backend);
    let m = env.mount();
    fs::write(m.path("old.txt"), b"renamed under faults").unwrap();
    fs::write(m.path("doomed.txt"), b"deleted under faults").unwrap();
    m.sync();
    // A third of the requests reach the server and take effect, but their answers are lost:
    // every operation must be safe to repeat.
    proxy.set(Faults::drop_responses(0.35, 9));
    let mut want = BTreeMap::new();
    write_all(
        &m,
        &mut want,
        &[
            ("d/a.txt", b"a".to_vec()),
            ("d/b.bin", data(61, 200_000)),
            ("big.bin", data(62, 17 * MIB)),
        ],
    );
    fs::rename(m.path("old.txt"), m.path("d/new.txt")).unwrap();
    want.insert("d/new.txt".into(), b"renamed under faults".to_vec());
    fs::remove_file(m.path("doomed.txt")).unwrap();
    m.sync();
    assert_remote_files(&env, &want, &proxy);
    let st = proxy.stats();
    assert!(st.dropped_responses >= 3, "{st:?}");
    println!("proxy: {st:?}\n{}", proxy.events().join("\n"));
}

#[test]
fn lost_answer_to_a_completed_multipart_upload() {
    lost_answer_to_a_completed_multipart_upload_on(Backend::S3);
}

#[test]
fn gcs_lost_answer_to_a_completed_multipart_upload() {
    lost_answer_to_a_completed_multipart_upload_on(Backend::Gcs);
}

fn lost_answer_to_a_completed_multipart_upload_on(backend: Backend) {
    let (env, proxy) = behind_fault_proxy(backend);
    let m = env.mount();
    // CompleteMultipartUpload (`POST key?uploadId=`) takes effect on the server, but its
    // answer is lost, once: the client cannot tell it from a failure and tries again.
    proxy.set(
        Faults::drop_responses(1.0, 0)
            .only("?uploadId=")
            .with_budget(1),
    );
    let body = data(71, 17 * MIB);
    fs::write(m.path("big.bin"), &body).unwrap();
    m.sync();
    let want = BTreeMap::from([("big.bin".to_string(), body)]);
    assert_remote_files(&env, &want, &proxy);
    assert_eq!(proxy.stats().dropped_responses, 1, "{:?}", proxy.events());
    println!("proxy: {:?}\n{}", proxy.stats(), proxy.events().join("\n"));
}

/// Found by this suite (regression): the remote ended up right (the object at its new key),
/// but stratus never learned it. The second run of the job copied from the old key again, got
/// 404, and parked the entry for good; every later `sync --wait` failed, and opening the file
/// failed with EIO because its data was fetched from the old key. The job now first checks
/// whether the new key already holds the file (same SHA-256 or ETag).
#[test]
fn lost_answers_to_the_delete_of_a_rename() {
    lost_answers_to_the_delete_of_a_rename_on(Backend::S3);
}

#[test]
fn gcs_lost_answers_to_the_delete_of_a_rename() {
    lost_answers_to_the_delete_of_a_rename_on(Backend::Gcs);
}

fn lost_answers_to_the_delete_of_a_rename_on(backend: Backend) {
    let (env, proxy) = behind_fault_proxy(backend);
    // A file this mount has never opened: its rename can only be a server-side copy.
    env.put_remote("remote.txt", b"only on the remote");
    let m = env.mount();
    // The copy lands, the delete of the old key (a conditional `DELETE` of the key) takes
    // effect, but its answer is lost three times over: the job fails as transient and runs
    // again, and must find the move already done.
    proxy.set(
        Faults::drop_responses(1.0, 0)
            .only("DELETE ")
            .with_budget(3),
    );
    fs::rename(m.path("remote.txt"), m.path("moved.txt")).unwrap();
    m.sync();
    let want = BTreeMap::from([("moved.txt".to_string(), b"only on the remote".to_vec())]);
    assert_remote_files(&env, &want, &proxy);
    // On GCS a conditional delete first looks up the generation holding our ETag: the retry
    // finds the key gone there and sends no second DELETE.
    let dropped = if backend == Backend::Gcs { 1 } else { 3 };
    assert_eq!(
        proxy.stats().dropped_responses,
        dropped,
        "{:?}",
        proxy.events()
    );
    assert_eq!(
        fs::read(m.path("moved.txt")).unwrap(),
        b"only on the remote"
    );
}

#[test]
fn uploads_complete_after_refused_connections() {
    uploads_complete_after_refused_connections_on(Backend::S3);
}

#[test]
fn azure_uploads_complete_after_refused_connections() {
    uploads_complete_after_refused_connections_on(Backend::Azure);
}

#[test]
fn gcs_uploads_complete_after_refused_connections() {
    uploads_complete_after_refused_connections_on(Backend::Gcs);
}

fn uploads_complete_after_refused_connections_on(backend: Backend) {
    let (env, proxy) = behind_fault_proxy(backend);
    let m = env.mount();
    fs::write(m.path("before.txt"), b"before").unwrap();
    m.sync();

    // Every new connection is refused, and the open ones are closed: nothing gets through.
    proxy.set(Faults::refuse());
    proxy.cut_all();
    let mut want = BTreeMap::from([("before.txt".to_string(), b"before".to_vec())]);
    write_all(
        &m,
        &mut want,
        &[
            ("during/a.txt", b"written while refused".to_vec()),
            ("during/b.bin", data(21, 2 * MIB)),
            ("before.txt", b"changed while refused".to_vec()),
        ],
    );
    // The queue keeps trying (and being refused) with backoff, and says so in the status.
    assert!(
        eventually(30, || proxy.stats().refused >= 3
            && m.health() == "unreachable"),
        "status: {}\nproxy: {:?}",
        m.status(),
        proxy.stats()
    );
    assert_ne!(m.state_of("during/a.txt"), "synced");
    assert!(!env.remote_files().contains_key("during/a.txt"));

    proxy.clear();
    m.sync();
    assert_remote_files(&env, &want, &proxy);
    assert_eq!(m.health(), "online", "{}", m.status());
    println!("proxy: {:?}", proxy.stats());
}

#[test]
fn uploads_complete_through_500_and_503_answers() {
    uploads_complete_through_500_and_503_answers_on(Backend::S3);
}

#[test]
fn azure_uploads_complete_through_500_and_503_answers() {
    uploads_complete_through_500_and_503_answers_on(Backend::Azure);
}

#[test]
fn gcs_uploads_complete_through_500_and_503_answers() {
    uploads_complete_through_500_and_503_answers_on(Backend::Gcs);
}

fn uploads_complete_through_500_and_503_answers_on(backend: Backend) {
    let (env, proxy) = behind_fault_proxy(backend);
    let m = env.mount();
    // A quarter of all requests (object_store's and our raw ones: S3 directory markers, Azure
    // listings and conditional deletes) get a 500 or a 503, drawn from the seed. Files over
    // 16 MiB go up in parts (S3) or blocks (Azure).
    proxy.set(Faults::errors(0.25, ErrorKind::Mixed, 5));
    let mut want = BTreeMap::new();
    let mut files: Vec<(String, Vec<u8>)> = (0..24)
        .map(|i| {
            (
                format!("dir{}/f{i}.txt", i % 4),
                data(100 + i, 1000 + i as usize * 97),
            )
        })
        .collect();
    files.push(("big.bin".into(), data(31, 17 * MIB)));
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    write_all(&m, &mut want, &files);
    m.sync();
    assert_remote_files(&env, &want, &proxy);
    let st = proxy.stats();
    assert!(st.errors_500 > 0 && st.errors_503 > 0, "{st:?}");
    // Directory markers too.
    let tree = env.remote_tree();
    for d in ["dir0", "dir1", "dir2", "dir3"] {
        assert_eq!(tree.get(d).map(|o| &o.kind), Some(&ObjKind::Dir), "{d}");
    }
    println!("proxy: {st:?}");
}

#[test]
fn no_partial_object_is_ever_visible() {
    let (env, proxy) = s3_behind_fault_proxy();
    let m = env.mount();
    let v1 = BTreeMap::from([
        ("big.bin".to_string(), data(41, 17 * MIB)),
        ("mid.bin".to_string(), data(42, 6 * MIB)),
    ]);
    let v2 = BTreeMap::from([
        ("big.bin".to_string(), data(43, 17 * MIB)),
        ("mid.bin".to_string(), data(44, 6 * MIB)),
        ("fresh.bin".to_string(), data(45, 10 * MIB)),
    ]);
    for (k, v) in &v1 {
        fs::write(m.path(k), v).unwrap();
    }
    m.sync();

    // Half of the long request bodies die after 512 KiB, up to 8 times.
    proxy.set(
        Faults {
            cut_share: 0.5,
            ..Faults::cut_after(512 * 1024)
        }
        .with_seed(3)
        .with_budget(8),
    );
    let stop = AtomicBool::new(false);
    let polls = AtomicUsize::new(0);
    let bad: Mutex<Vec<String>> = Mutex::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            // Every object present at a key is one complete version of it.
            while !stop.load(Ordering::SeqCst) {
                for (k, got) in env.remote_files() {
                    let ok = v1.get(&k) == Some(&got) || v2.get(&k) == Some(&got);
                    if !ok {
                        bad.lock()
                            .unwrap()
                            .push(format!("{k}: {} bytes, not a written version", got.len()));
                    }
                }
                polls.fetch_add(1, Ordering::SeqCst);
            }
        });
        for (k, v) in &v2 {
            fs::write(m.path(k), v).unwrap();
        }
        m.sync();
        stop.store(true, Ordering::SeqCst);
    });
    let bad = bad.into_inner().unwrap();
    assert!(bad.is_empty(), "partial objects seen: {bad:?}");
    assert!(polls.load(Ordering::SeqCst) >= 2, "the poller hardly ran");
    let st = proxy.stats();
    assert!(st.cuts >= 3, "too few cuts to mean anything: {st:?}");
    assert_remote_files(&env, &v2, &proxy);
    println!("{} polls; proxy: {st:?}", polls.load(Ordering::SeqCst));
}

/// The same changes in the same order, with two drains on the way: creates, overwrites,
/// appends, renames across directories, deletes, chmod, a symlink, and a directory rename.
fn tree_workload(m: &Mount) {
    let p = |r: &str| m.path(r);
    fs::create_dir_all(p("a/b")).unwrap();
    fs::create_dir(p("c")).unwrap();
    fs::write(p("a/one.txt"), data(51, 3000)).unwrap();
    fs::write(p("a/b/two.bin"), data(52, 300_000)).unwrap();
    fs::write(p("c/three"), b"three").unwrap();
    fs::write(p("top.txt"), b"top\n").unwrap();
    fs::write(p("large.bin"), data(53, 3 * MIB)).unwrap();
    fs::write(p("gone-soon"), b"created and deleted before any upload").unwrap();
    fs::remove_file(p("gone-soon")).unwrap();
    m.sync();

    fs::write(p("a/one.txt"), data(54, 5000)).unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(p("top.txt"))
        .unwrap();
    f.write_all(b"appended\n").unwrap();
    drop(f);
    fs::rename(p("a/b/two.bin"), p("c/two.bin")).unwrap();
    fs::remove_file(p("c/three")).unwrap();
    fs::set_permissions(p("a/one.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("z/one.txt", p("link")).unwrap();
    fs::rename(p("a"), p("z")).unwrap();
    fs::create_dir(p("z/new")).unwrap();
    fs::write(p("z/new/n.txt"), b"new in a renamed dir").unwrap();
    fs::write(p("large.bin"), data(55, 2 * MIB + 7)).unwrap();
    fs::rename(p("top.txt"), p("z/top.txt")).unwrap();
    fs::set_permissions(p("c"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(p("c/four"), data(56, 70_000)).unwrap();
    fs::rename(p("c/four"), p("c/five")).unwrap();
    m.sync();

    fs::remove_file(p("c/two.bin")).unwrap();
    fs::write(p("c/two.bin"), b"recreated at a deleted key").unwrap();
    fs::rename(p("z/b"), p("c/b")).unwrap();
}

/// What must match between two runs: kind, bytes, mode and symlink target of every key
/// (mtimes differ: the runs happen at different times).
type Shape = BTreeMap<String, (String, Vec<u8>, Option<u32>, Option<String>)>;

fn shape(env: &Env) -> Shape {
    env.remote_tree()
        .into_iter()
        .map(|(k, o)| {
            (
                k,
                (format!("{:?}", o.kind), o.data, o.meta.mode, o.meta.symlink),
            )
        })
        .collect()
}

#[test]
fn queue_drains_to_the_same_state_as_without_faults() {
    let clean = Env::new(Backend::S3);
    let m = clean.mount();
    tree_workload(&m);
    m.sync();
    let want = shape(&clean);
    drop(m);

    let (env, proxy) = s3_behind_fault_proxy();
    let m = env.mount();
    proxy.set(Faults {
        connect_latency: Duration::from_millis(30),
        chunk_latency: Duration::from_micros(200),
        refuse_share: 0.2,
        cut_body_after: Some(256 * 1024),
        cut_share: 0.5,
        error_share: 0.15,
        drop_response_share: 0.1,
        error_kind: ErrorKind::Mixed,
        only: None,
        seed: 11,
        budget: None,
    });
    tree_workload(&m);
    m.sync();
    let got = shape(&env);
    let st = proxy.stats();
    let keys = |s: &Shape| s.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        keys(&got),
        keys(&want),
        "keys differ; proxy: {st:?}\nthe log of the paths that differ:\n{}",
        keys(&got)
            .symmetric_difference(&keys(&want))
            .map(|k| m.log_lines_with(k.rsplit('/').next().unwrap_or(k)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (k, w) in &want {
        let g = &got[k];
        assert!(
            g == w,
            "{k}: {} {} bytes mode {:?} link {:?} with faults, {} {} bytes mode {:?} link {:?} \
             without; proxy: {st:?}",
            g.0,
            g.1.len(),
            g.2,
            g.3,
            w.0,
            w.1.len(),
            w.2,
            w.3
        );
    }
    assert!(
        st.errors_500 + st.errors_503 > 0
            && st.cuts > 0
            && st.refused > 0
            && st.dropped_responses > 0,
        "every kind of fault must have happened: {st:?}"
    );
    println!("faults injected: {st:?}");
}

// Regression (seen on the SeaweedFS cluster suite, tests/cluster.rs): a distributed store
// catching up after an outage answered 412 to an If-Match on the very version it held. The
// uploader took that for another writer and made the mount's own newer version a
// `.conflict` copy of its older one. The key still holds our base, so the refusal is the
// server's: the write is retried, and no conflict appears.
#[test]
fn a_refused_write_whose_condition_holds_is_retried_not_a_conflict() {
    let (env, proxy) = s3_behind_fault_proxy();
    let m = env.mount();
    fs::write(m.path("f.txt"), b"first").unwrap();
    m.sync();
    proxy.set(
        Faults::errors(1.0, ErrorKind::PreconditionFailed, 1)
            .with_budget(1)
            .only("PUT "),
    );
    fs::write(m.path("f.txt"), b"second version").unwrap();
    m.sync();
    assert_eq!(proxy.stats().errors_503, 1, "the proxy refused no write");
    let o = m.stratus(&["conflicts", m.dir.to_str().unwrap(), "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        list.as_array().unwrap().is_empty(),
        "a conflict of the mount with itself: {list}"
    );
    let remote = env.remote_files();
    assert_eq!(remote.keys().collect::<Vec<_>>(), vec!["f.txt"]);
    assert_eq!(remote["f.txt"], b"second version");
}
