//! A TCP proxy between stratus and the S3 server that injects faults under test control:
//! latency, connections cut part way through a request body, refused connections,
//! `500`/`503 Slow Down` answers for a share of requests, and lost answers (the request takes
//! effect, the connection dies before the response gets back). Every setting can change at
//! runtime ([`FaultProxy::set`]); [`Stats`] and [`FaultProxy::events`] say what was done.
//!
//! It reads the HTTP/1.1 request heads on the client→server stream (request line, headers,
//! `Content-Length` or chunked framing) so that it can decide per request, also on keep-alive
//! connections that carry several. Whatever it forwards, it forwards verbatim: the head's own
//! bytes, the body as it came; a stream it cannot parse is passed through untouched. Responses
//! are not parsed: clients do not pipeline, so when a request arrives, every earlier response
//! on that connection has been read whole.
//!
//! Decisions are deterministic: a request's fate is a hash of the seed, its method and path
//! (without the bucket, plus `partNumber`), and how many times that same request was seen
//! since the last `set`, so a retry gets a fresh draw and the outcome does not depend on how
//! concurrent requests interleave. Refusals draw on the count of new connections.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CHUNK: usize = 16 * 1024;
/// A request head longer than this is not parsed; the connection is passed through as is.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line we parse in a chunked body.
const MAX_LINE: usize = 4096;
/// How long a refused request waits for the server to finish the connection's earlier
/// response before the proxy answers in its place.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the server gets to close after the client did.
const EOF_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request whose response is to be dropped waits for the server to answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_EVENTS: usize = 10_000;
/// The key new connections are counted under for refusal draws (no request has a space first).
const CONNECT_KEY: &str = " connect";

/// Which error a refused request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `500 Internal Server Error`, S3 code `InternalError`.
    Internal,
    /// `503 Slow Down`, S3 code `SlowDown`.
    SlowDown,
    /// Either, half and half (drawn from the seed like everything else).
    Mixed,
    /// `412 Precondition Failed`, S3 code `PreconditionFailed`: a server that refuses a
    /// conditional write whose condition holds (a distributed store catching up).
    PreconditionFailed,
}

/// What the proxy does to the traffic; replace it at any time with [`FaultProxy::set`].
#[derive(Debug, Clone)]
pub struct Faults {
    /// Delay before a new connection is connected through to the server.
    pub connect_latency: Duration,
    /// Delay before each chunk (up to 16 KiB) is forwarded, in both directions.
    pub chunk_latency: Duration,
    /// Share of new connections accepted and dropped at once (1.0: all of them).
    pub refuse_share: f64,
    /// A request whose body is longer than this is forwarded up to here, then both sockets
    /// are closed.
    pub cut_body_after: Option<u64>,
    /// Share of the requests eligible for `cut_body_after` that are really cut.
    pub cut_share: f64,
    /// Share of requests answered with an error instead of being forwarded.
    pub error_share: f64,
    /// Share of requests forwarded whole whose response is then withheld: the connection is
    /// closed as soon as the server starts answering, so the request took effect but the
    /// client cannot know. (Not applied to `Expect: 100-continue` requests.)
    pub drop_response_share: f64,
    pub error_kind: ErrorKind,
    /// Request faults (errors, cuts, dropped responses) only for requests whose
    /// `METHOD target` contains this.
    pub only: Option<String>,
    pub seed: u64,
    /// At most this many faults (refused connections, cuts, errors, dropped responses) until
    /// the next `set`.
    pub budget: Option<u64>,
}

impl Default for Faults {
    fn default() -> Faults {
        Faults {
            connect_latency: Duration::ZERO,
            chunk_latency: Duration::ZERO,
            refuse_share: 0.0,
            cut_body_after: None,
            cut_share: 1.0,
            error_share: 0.0,
            drop_response_share: 0.0,
            error_kind: ErrorKind::Mixed,
            only: None,
            seed: 0,
            budget: None,
        }
    }
}

impl Faults {
    /// Forward everything untouched.
    pub fn none() -> Faults {
        Faults::default()
    }

    pub fn latency(connect: Duration, chunk: Duration) -> Faults {
        Faults {
            connect_latency: connect,
            chunk_latency: chunk,
            ..Faults::default()
        }
    }

    pub fn refuse() -> Faults {
        Faults {
            refuse_share: 1.0,
            ..Faults::default()
        }
    }

    pub fn cut_after(body_bytes: u64) -> Faults {
        Faults {
            cut_body_after: Some(body_bytes),
            ..Faults::default()
        }
    }

    pub fn errors(share: f64, kind: ErrorKind, seed: u64) -> Faults {
        Faults {
            error_share: share,
            error_kind: kind,
            seed,
            ..Faults::default()
        }
    }

    pub fn drop_responses(share: f64, seed: u64) -> Faults {
        Faults {
            drop_response_share: share,
            seed,
            ..Faults::default()
        }
    }

    pub fn with_budget(self, budget: u64) -> Faults {
        Faults {
            budget: Some(budget),
            ..self
        }
    }

    pub fn with_seed(self, seed: u64) -> Faults {
        Faults { seed, ..self }
    }

    pub fn only(self, pattern: &str) -> Faults {
        Faults {
            only: Some(pattern.to_string()),
            ..self
        }
    }
}

/// What the proxy saw and did since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub refused: u64,
    /// Connections and chunks held back by the latency settings.
    pub delayed_connections: u64,
    pub delayed_chunks: u64,
    /// Request heads parsed.
    pub requests: u64,
    /// Requests forwarded whole (head and body) to the server.
    pub forwarded: u64,
    pub errors_500: u64,
    pub errors_503: u64,
    pub cuts: u64,
    pub dropped_responses: u64,
    /// Connections whose client stream could not be parsed and was passed through.
    pub unparsed: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl Stats {
    /// Faults injected: refused connections, cut requests, error answers, dropped responses.
    pub fn faults(&self) -> u64 {
        self.refused + self.cuts + self.errors_500 + self.errors_503 + self.dropped_responses
    }
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused: AtomicU64,
    delayed_connections: AtomicU64,
    delayed_chunks: AtomicU64,
    requests: AtomicU64,
    forwarded: AtomicU64,
    errors_500: AtomicU64,
    errors_503: AtomicU64,
    cuts: AtomicU64,
    dropped_responses: AtomicU64,
    unparsed: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    budget_left: Mutex<Option<u64>>,
    /// How often each request (method, path, part) was seen since the last `set`; new
    /// connections count under their own key.
    seen: Mutex<HashMap<String, u64>>,
    counters: Counters,
    events: Mutex<Vec<String>>,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Clones of the sockets of every live connection, so they can be closed from outside the
    /// threads that serve them.
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl FaultProxy {
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy");
        let port = listener.local_addr().expect("fault proxy address").port();
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(Faults::none()),
            budget_left: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            events: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            workers: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        FaultProxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the faults; the budget and the per-request draw counts start afresh. Requests
    /// already being forwarded keep the decision they got.
    pub fn set(&self, faults: Faults) {
        *lock(&self.shared.budget_left) = faults.budget;
        lock(&self.shared.seen).clear();
        *lock(&self.shared.faults) = faults;
    }

    /// Forward everything untouched from now on.
    pub fn clear(&self) {
        self.set(Faults::none());
    }

    pub fn faults(&self) -> Faults {
        lock(&self.shared.faults).clone()
    }

    /// Closes every open connection now (clients must reconnect, which `refuse` may refuse).
    pub fn cut_all(&self) {
        self.shared.close_all();
    }

    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Stats {
            connections: get(&c.connections),
            refused: get(&c.refused),
            delayed_connections: get(&c.delayed_connections),
            delayed_chunks: get(&c.delayed_chunks),
            requests: get(&c.requests),
            forwarded: get(&c.forwarded),
            errors_500: get(&c.errors_500),
            errors_503: get(&c.errors_503),
            cuts: get(&c.cuts),
            dropped_responses: get(&c.dropped_responses),
            unparsed: get(&c.unparsed),
            bytes_up: get(&c.bytes_up),
            bytes_down: get(&c.bytes_down),
        }
    }

    /// One line per injected fault, oldest first (capped), for failure messages.
    pub fn events(&self) -> Vec<String> {
        lock(&self.shared.events).clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // accept() has no timeout: a connection of our own wakes it up to see `stop`.
        let _ = TcpStream::connect(self.addr());
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        self.shared.close_all();
        let workers = std::mem::take(&mut *lock(&self.shared.workers));
        for w in workers {
            let _ = w.join();
        }
    }
}

/// A panicking connection thread must not take the whole proxy down with a poisoned lock.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::SeqCst);
}

impl Shared {
    fn close_all(&self) {
        for (_, socks) in lock(&self.conns).drain() {
            for s in socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    /// Registers a socket of connection `id`; false if the proxy is stopping.
    fn track(&self, id: u64, s: &TcpStream) -> bool {
        let Ok(clone) = s.try_clone() else {
            return false;
        };
        let mut conns = lock(&self.conns);
        if self.stop.load(Ordering::SeqCst) {
            return false;
        }
        conns.entry(id).or_default().push(clone);
        true
    }

    fn forget(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }

    fn take_budget(&self) -> bool {
        match &mut *lock(&self.budget_left) {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }

    fn event(&self, what: String) {
        let mut ev = lock(&self.events);
        if ev.len() < MAX_EVENTS {
            ev.push(what);
        }
    }

    /// Counts one more sighting of `key` since the last `set`; returns the count.
    fn nth(&self, key: &str) -> u64 {
        let mut seen = lock(&self.seen);
        let n = seen.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    fn refuse_connection(&self) -> bool {
        let f = self.faults();
        if f.refuse_share <= 0.0 {
            return false;
        }
        let nth = self.nth(CONNECT_KEY);
        draw(f.seed, 4, CONNECT_KEY, nth) < f.refuse_share && self.take_budget()
    }

    fn decide(&self, head: &Head) -> Decision {
        let f = self.faults();
        let key = head.key();
        let nth = self.nth(&key);
        if f.only
            .as_ref()
            .is_some_and(|p| !head.what().contains(p.as_str()))
        {
            return Decision::Forward {
                cut_at: None,
                drop_response: false,
            };
        }
        if f.error_share > 0.0 && draw(f.seed, 1, &key, nth) < f.error_share && self.take_budget() {
            let status = match f.error_kind {
                ErrorKind::Internal => 500,
                ErrorKind::SlowDown => 503,
                ErrorKind::Mixed if draw(f.seed, 2, &key, nth) < 0.5 => 500,
                ErrorKind::Mixed => 503,
                ErrorKind::PreconditionFailed => 412,
            };
            return Decision::Answer { status };
        }
        if let Some(limit) = f.cut_body_after {
            let longer = match head.body {
                Body::Empty => false,
                Body::Length(n) => n > limit,
                Body::Chunked => true,
            };
            if longer && draw(f.seed, 3, &key, nth) < f.cut_share && self.take_budget() {
                return Decision::Forward {
                    cut_at: Some(limit),
                    drop_response: false,
                };
            }
        }
        let drop_response = f.drop_response_share > 0.0
            && !head.expect_continue
            && draw(f.seed, 5, &key, nth) < f.drop_response_share
            && self.take_budget();
        Decision::Forward {
            cut_at: None,
            drop_response,
        }
    }
}

/// A uniform draw in [0, 1) from the seed, a salt per kind of decision, the request and how
/// many times it was seen.
fn draw(seed: u64, salt: u64, key: &str, nth: u64) -> f64 {
    // FNV-1a of the key, then splitmix64 over everything.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut x = seed
        ^ h.rotate_left(17)
        ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ nth.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

enum Decision {
    Forward {
        cut_at: Option<u64>,
        drop_response: bool,
    },
    Answer {
        status: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Empty,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone)]
struct Head {
    method: String,
    target: String,
    body: Body,
    expect_continue: bool,
}

impl Head {
    /// What identifies "the same request" across retries: method, path, and the part number
    /// of a multipart upload (the upload id changes from one attempt of the file to the next).
    /// The path's first segment (the bucket, path-style) is left out, so that runs against
    /// differently named buckets draw alike.
    fn key(&self) -> String {
        let (path, query) = self.target.split_once('?').unwrap_or((&self.target, ""));
        let path = path
            .strip_prefix('/')
            .and_then(|p| p.find('/').map(|i| &p[i..]))
            .unwrap_or(path);
        let part = query
            .split('&')
            .find(|kv| kv.starts_with("partNumber="))
            .unwrap_or("");
        format!("{} {path} {part}", self.method)
    }

    fn what(&self) -> String {
        format!("{} {}", self.method, self.target)
    }
}

/// Parses a request head (everything up to and including the blank line); `None` if it is not
/// one we understand, in which case the connection is passed through untouched.
fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    // RFC 9112 lets a server ignore empty lines before the request line.
    let text = text.trim_start_matches("\r\n");
    let mut lines = text.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let method = request.next()?.to_string();
    let target = request.next()?.to_string();
    let version = request.next()?;
    if method.is_empty() || !version.starts_with("HTTP/1.") || request.next().is_some() {
        return None;
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: u64 = value.parse().ok()?;
                // Two different lengths: a request no server should accept; do not guess.
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                let last = value.rsplit(',').next().unwrap_or("").trim();
                if !last.eq_ignore_ascii_case("chunked") {
                    return None;
                }
                chunked = true;
            }
            "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    let body = if chunked {
        Body::Chunked
    } else {
        match length {
            None | Some(0) => Body::Empty,
            Some(n) => Body::Length(n),
        }
    };
    Some(Head {
        method,
        target,
        body,
        expect_continue,
    })
}

fn error_response(status: u16, head_only: bool, id: u64) -> Vec<u8> {
    let (status, code, message) = match status {
        500 => (
            "500 Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        412 => (
            "412 Precondition Failed",
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        ),
        _ => (
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
        ),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>fault-{id}</RequestId></Error>"
    );
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         x-amz-request-id: fault-{id}\r\nConnection: close\r\n\r\n",
        if head_only { 0 } else { body.len() }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match client {
            Ok(client) => client,
            Err(_) => {
                // Typically out of file descriptors; back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        bump(&shared.counters.connections, 1);
        if shared.refuse_connection() {
            bump(&shared.counters.refused, 1);
            shared.event("refused a connection".into());
            drop(client);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let worker = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || serve(client, id, shared))
        };
        let mut workers = lock(&shared.workers);
        workers.retain(|w| !w.is_finished());
        workers.push(worker);
    }
}

/// How the client→server side of a connection ended.
enum End {
    /// The client closed its side between requests.
    ClientEof,
    /// The proxy answers the current request itself, then closes.
    Answer(Vec<u8>),
    /// Faulted or broken: close both sockets now.
    Close,
}

fn serve(client: TcpStream, id: u64, shared: Arc<Shared>) {
    if !shared.track(id, &client) {
        return;
    }
    let latency = shared.faults().connect_latency;
    if !latency.is_zero() {
        bump(&shared.counters.delayed_connections, 1);
        std::thread::sleep(latency);
    }
    let server = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(_) => {
            let _ = client.shutdown(Shutdown::Both);
            shared.forget(id);
            return;
        }
    };
    if !shared.track(id, &server) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(server_r), Ok(client_w)) = (server.try_clone(), client.try_clone()) else {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        shared.forget(id);
        return;
    };
    let flags = Arc::new(PumpFlags::default());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let (withheld_tx, withheld_rx) = mpsc::channel::<()>();
    let pump = {
        let (shared, flags) = (Arc::clone(&shared), Arc::clone(&flags));
        std::thread::spawn(move || {
            pump_responses(server_r, client_w, &shared, &flags, withheld_tx);
            let _ = done_tx.send(());
        })
    };
    let mut conn = Conn {
        client,
        server,
        buf: Vec::new(),
        shared: Arc::clone(&shared),
        forwarding: true,
        cut: None,
        flags: Arc::clone(&flags),
        withheld: withheld_rx,
    };
    // Waits for the response pump to finish on its own, else ends it.
    let pump_done = |server: &TcpStream, timeout: Duration| {
        if done_rx.recv_timeout(timeout).is_err() {
            let _ = server.shutdown(Shutdown::Both);
            let _ = done_rx.recv();
        }
    };
    match conn.requests() {
        End::ClientEof => {
            // The pump passes the server's own EOF on to the client.
            let _ = conn.server.shutdown(Shutdown::Write);
            pump_done(&conn.server, EOF_TIMEOUT);
        }
        End::Answer(response) => {
            flags.answering.store(true, Ordering::SeqCst);
            // Clients do not pipeline, so the earlier response is complete; still, let the
            // server finish whatever it was sending before our answer goes out.
            let _ = conn.server.shutdown(Shutdown::Write);
            pump_done(&conn.server, DRAIN_TIMEOUT);
            if conn.client.write_all(&response).is_ok() {
                let _ = conn.client.shutdown(Shutdown::Write);
                // Wait for the client to close after reading the answer: closing a socket with
                // unread input sends a reset, which could destroy the answer in flight.
                let _ = conn.client.set_read_timeout(Some(Duration::from_secs(2)));
                let mut sink = [0u8; 4096];
                while matches!(conn.client.read(&mut sink), Ok(n) if n > 0) {}
            }
            let _ = conn.client.shutdown(Shutdown::Both);
        }
        End::Close => {
            let _ = conn.client.shutdown(Shutdown::Both);
            let _ = conn.server.shutdown(Shutdown::Both);
        }
    }
    let _ = pump.join();
    shared.forget(id);
}

/// What the request side tells the response pump of one connection.
#[derive(Default)]
struct PumpFlags {
    /// The proxy will answer in the server's place: leave the client socket open for that.
    answering: AtomicBool,
    /// Swallow what the server sends (and report that it started answering).
    withhold: AtomicBool,
}

/// Copies server→client until EOF; then half-closes the client so it sees the EOF too, unless
/// the proxy is about to answer on that socket itself.
fn pump_responses(
    mut from: TcpStream,
    mut to: TcpStream,
    shared: &Shared,
    flags: &PumpFlags,
    withheld: mpsc::Sender<()>,
) {
    let answering = &flags.answering;
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                if !answering.load(Ordering::SeqCst) {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(_) if flags.withhold.load(Ordering::SeqCst) => {
                let _ = withheld.send(());
            }
            Ok(n) => {
                let latency = shared.faults().chunk_latency;
                if !latency.is_zero() {
                    bump(&shared.counters.delayed_chunks, 1);
                    std::thread::sleep(latency);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                bump(&shared.counters.bytes_down, n as u64);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    if !answering.load(Ordering::SeqCst) {
        let _ = to.shutdown(Shutdown::Both);
    }
    let _ = from.shutdown(Shutdown::Both);
}

/// Why moving request bytes stopped early.
enum Stop {
    /// The client closed (or broke) its side mid-request.
    ClientGone,
    /// Writing to the server failed.
    ServerGone,
    /// The cut point was reached.
    Cut,
    /// The request framing is not what we understand (a bad chunk line).
    Unparsable,
}

/// The client→server side of one connection.
struct Conn {
    client: TcpStream,
    server: TcpStream,
    /// Bytes read from the client and not yet forwarded or discarded, in order.
    buf: Vec<u8>,
    shared: Arc<Shared>,
    /// Whether the current request's bytes go to the server (else they are discarded).
    forwarding: bool,
    /// (limit, body bytes forwarded so far) for a request that is to be cut.
    cut: Option<(u64, u64)>,
    flags: Arc<PumpFlags>,
    /// Signals from the response pump that it swallowed response bytes.
    withheld: mpsc::Receiver<()>,
}

impl Conn {
    fn requests(&mut self) -> End {
        loop {
            let head_len = match self.read_head() {
                Ok(Some(n)) => n,
                Ok(None) => return End::ClientEof,
                Err(Stop::Unparsable) => return self.pass_through(),
                Err(Stop::ClientGone) => {
                    // Closed mid-head: pass on what it sent, verbatim, and its EOF.
                    let _ = self.write_server(&self.buf.clone());
                    return End::ClientEof;
                }
                Err(_) => return End::Close,
            };
            let Some(head) = parse_head(&self.buf[..head_len]) else {
                return self.pass_through();
            };
            bump(&self.shared.counters.requests, 1);
            match self.shared.decide(&head) {
                Decision::Answer { status } => {
                    let counter = if status == 500 {
                        &self.shared.counters.errors_500
                    } else {
                        &self.shared.counters.errors_503
                    };
                    bump(counter, 1);
                    let n = counter.load(Ordering::SeqCst);
                    self.shared.event(format!("{} {}", status, head.what()));
                    self.buf.drain(..head_len);
                    self.forwarding = false;
                    self.cut = None;
                    // A client that waits for `100 Continue` sends no body before our answer.
                    if !head.expect_continue && self.move_body(head.body).is_err() {
                        return End::Close;
                    }
                    return End::Answer(error_response(status, head.method == "HEAD", n));
                }
                Decision::Forward {
                    cut_at,
                    drop_response,
                } => {
                    self.forwarding = true;
                    self.cut = None;
                    // The client sends a request only after it read the previous response
                    // whole, so from here on every response byte belongs to this request.
                    if drop_response {
                        self.flags.withhold.store(true, Ordering::SeqCst);
                    }
                    if let Err(Stop::ServerGone) = self.emit(head_len) {
                        return End::Close;
                    }
                    self.cut = cut_at.map(|limit| (limit, 0));
                    match self.move_body(head.body) {
                        Ok(()) => bump(&self.shared.counters.forwarded, 1),
                        Err(Stop::Cut) => {
                            bump(&self.shared.counters.cuts, 1);
                            self.shared.event(format!(
                                "cut {} after {} body bytes",
                                head.what(),
                                cut_at.unwrap_or(0)
                            ));
                            return End::Close;
                        }
                        Err(Stop::Unparsable) => return self.pass_through(),
                        Err(_) => return End::Close,
                    }
                    self.cut = None;
                    if drop_response {
                        // Once the server answers, the request has taken effect: close
                        // before any of the answer reaches the client.
                        let answered = self.withheld.recv_timeout(RESPONSE_TIMEOUT).is_ok();
                        bump(&self.shared.counters.dropped_responses, 1);
                        self.shared.event(format!(
                            "dropped the response to {}{}",
                            head.what(),
                            if answered { "" } else { " (no answer came)" }
                        ));
                        return End::Close;
                    }
                }
            }
        }
    }

    /// Reads until the buffer holds a whole request head; its length, or `None` on a clean
    /// EOF between requests.
    fn read_head(&mut self) -> Result<Option<usize>, Stop> {
        let mut searched: usize = 0;
        loop {
            if let Some(i) = find(&self.buf[searched.saturating_sub(3)..], b"\r\n\r\n") {
                return Ok(Some(searched.saturating_sub(3) + i + 4));
            }
            searched = self.buf.len();
            if self.buf.len() > MAX_HEAD {
                return Err(Stop::Unparsable);
            }
            match self.fill()? {
                0 if self.buf.is_empty() => return Ok(None),
                0 => return Err(Stop::ClientGone),
                _ => {}
            }
        }
    }

    /// Reads more from the client into the buffer; 0 at EOF.
    fn fill(&mut self) -> Result<usize, Stop> {
        let mut tmp = [0u8; CHUNK];
        loop {
            match self.client.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Err(Stop::ClientGone),
            }
        }
    }

    fn write_server(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        if bytes.is_empty() {
            return Ok(());
        }
        let latency = self.shared.faults().chunk_latency;
        if !latency.is_zero() {
            bump(&self.shared.counters.delayed_chunks, 1);
            std::thread::sleep(latency);
        }
        self.server.write_all(bytes).map_err(|_| Stop::ServerGone)?;
        bump(&self.shared.counters.bytes_up, bytes.len() as u64);
        Ok(())
    }

    /// Takes `n` buffered bytes off the front and forwards or discards them, stopping at the
    /// cut point if there is one.
    fn emit(&mut self, n: usize) -> Result<(), Stop> {
        let mut n = n;
        let mut cut = false;
        if let Some((limit, sent)) = &mut self.cut {
            let room = (*limit - *sent) as usize;
            if n > room {
                n = room;
                cut = true;
            }
            *sent += n as u64;
        }
        let chunk: Vec<u8> = self.buf.drain(..n).collect();
        if self.forwarding {
            for piece in chunk.chunks(CHUNK) {
                self.write_server(piece)?;
            }
        }
        if cut {
            return Err(Stop::Cut);
        }
        Ok(())
    }

    /// Moves the next `n` bytes of the client stream, reading as needed.
    fn move_bytes(&mut self, mut n: u64) -> Result<(), Stop> {
        while n > 0 {
            if self.buf.is_empty() && self.fill()? == 0 {
                return Err(Stop::ClientGone);
            }
            let k = (self.buf.len() as u64).min(n) as usize;
            self.emit(k)?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Moves one CRLF-terminated line (of a chunked body) and returns it.
    fn move_line(&mut self) -> Result<Vec<u8>, Stop> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.emit(i + 2)?;
                return Ok(line);
            }
            if self.buf.len() > MAX_LINE {
                return Err(Stop::Unparsable);
            }
            if self.fill()? == 0 {
                return Err(Stop::ClientGone);
            }
        }
    }

    fn move_body(&mut self, body: Body) -> Result<(), Stop> {
        match body {
            Body::Empty => Ok(()),
            Body::Length(n) => self.move_bytes(n),
            Body::Chunked => loop {
                let line = self.move_line()?;
                let size = std::str::from_utf8(&line)
                    .ok()
                    .map(|l| l.split(';').next().unwrap_or("").trim())
                    .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                    .ok_or(Stop::Unparsable)?;
                if size == 0 {
                    // Trailer fields, then the blank line that ends the body.
                    while !self.move_line()?.is_empty() {}
                    return Ok(());
                }
                self.move_bytes(size)?;
                if !self.move_line()?.is_empty() {
                    return Err(Stop::Unparsable);
                }
            },
        }
    }

    /// Something we do not understand: forward the rest of the client stream as it comes.
    /// Anything of the current request already discarded or cut makes that impossible.
    fn pass_through(&mut self) -> End {
        if !self.forwarding || self.cut.is_some() {
            return End::Close;
        }
        bump(&self.shared.counters.unparsed, 1);
        self.shared
            .event("unparsable request stream; passing it through".into());
        loop {
            let pending = std::mem::take(&mut self.buf);
            if self.write_server(&pending).is_err() {
                return End::Close;
            }
            match self.fill() {
                Ok(0) => return End::ClientEof,
                Ok(_) => {}
                Err(_) => return End::Close,
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An S3 environment whose mounts reach moto through a fault proxy.
pub fn s3_behind_fault_proxy() -> (crate::common::mount::Env, FaultProxy) {
    behind_fault_proxy(crate::common::mount::Backend::S3)
}

/// A fresh S3 (moto) or Azure (Azurite) remote that stratus reaches only through the proxy;
/// the test's own view of the remote (`Env::remote_tree`) goes to the server directly.
pub fn behind_fault_proxy(
    backend: crate::common::mount::Backend,
) -> (crate::common::mount::Env, FaultProxy) {
    let env = crate::common::mount::Env::new(backend);
    let port = match (&env.moto, &env.azurite, &env.gcs) {
        (Some(m), _, _) => m.port,
        (_, Some(a), _) => a.port,
        (_, _, Some(g)) => g.port,
        _ => panic!("a fault proxy needs a server backend"),
    };
    let target = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = FaultProxy::start(target);
    env.set_endpoint(&proxy.endpoint());
    (env, proxy)
}
