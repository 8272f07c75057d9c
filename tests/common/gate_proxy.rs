//! A TCP proxy that can hold one chosen request at the door: the request whose head matches a
//! pattern is not forwarded until the test says so. That opens a race window exactly where a
//! test wants it (between the parts of a multipart upload and its completion, say), so that
//! another writer can land in it every time, not by luck of timing. It also keeps every
//! request head it forwarded, so a test can see what went out on the wire.
//!
//! Clients do not pipeline, so holding a request holds nothing but that request; the body is
//! forwarded by its `Content-Length` (a chunked body is passed through unparsed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct GateProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Gate {
    /// Lower-case text the next request to hold contains (request line or a header).
    pattern: Option<String>,
    /// The head of the request being held.
    held: Option<String>,
    /// Hold every matching request, not only the first (`hold_every`).
    every: bool,
    /// The heads of the matching requests held right now.
    holding: Vec<String>,
    open: bool,
}

struct Shared {
    target: SocketAddr,
    gate: Mutex<Gate>,
    changed: Condvar,
    heads: Mutex<Vec<String>>,
}

impl GateProxy {
    pub fn start(target: SocketAddr) -> GateProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the gate proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target,
            gate: Mutex::new(Gate::default()),
            changed: Condvar::new(),
            heads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, s);
                });
            }
        });
        GateProxy { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Holds the next request whose head contains every one of `parts` (case-insensitive).
    pub fn hold(&self, parts: &[&str]) {
        let mut g = self.shared.gate.lock().unwrap();
        *g = Gate {
            pattern: Some(parts.join("\n").to_ascii_lowercase()),
            ..Gate::default()
        };
    }

    /// Holds every request whose head contains every one of `parts` (case-insensitive), until
    /// `release`: how many a client keeps waiting at once is how many it has in flight.
    pub fn hold_every(&self, parts: &[&str]) {
        let mut g = self.shared.gate.lock().unwrap();
        *g = Gate {
            pattern: Some(parts.join("\n").to_ascii_lowercase()),
            every: true,
            ..Gate::default()
        };
    }

    /// Waits until the heads of the requests held right now (`hold_every`) satisfy `enough`,
    /// or `timeout` passed; answers those heads.
    pub fn wait_holding(
        &self,
        timeout: Duration,
        enough: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.gate.lock().unwrap();
        while !enough(&g.holding) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            g = self.shared.changed.wait_timeout(g, left).unwrap().0;
        }
        g.holding.clone()
    }

    /// Waits until a request is held and returns its head.
    pub fn wait_held(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.gate.lock().unwrap();
        loop {
            if let Some(h) = &g.held {
                return h.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no request matching {:?} was held", g.pattern));
            g = self.shared.changed.wait_timeout(g, left).unwrap().0;
        }
    }

    /// Lets the held request (and every later one) through.
    pub fn release(&self) {
        let mut g = self.shared.gate.lock().unwrap();
        g.open = true;
        g.pattern = None;
        self.shared.changed.notify_all();
    }

    /// Every request head forwarded so far, in order.
    pub fn heads(&self) -> Vec<String> {
        self.shared.heads.lock().unwrap().clone()
    }
}

impl Drop for GateProxy {
    fn drop(&mut self) {
        // A test that failed while a request was held must not leave a thread parked.
        self.release();
    }
}

fn matches(pattern: &str, head: &str) -> bool {
    let head = head.to_ascii_lowercase();
    pattern.split('\n').all(|p| head.contains(p))
}

fn serve(client: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let server = TcpStream::connect_timeout(&shared.target, Duration::from_secs(5))?;
    let (mut back_from, mut back_to) = (server.try_clone()?, client.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_from, &mut back_to);
        let _ = back_to.shutdown(Shutdown::Write);
    });
    let mut from = BufReader::new(client);
    let mut to = server;
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if from.read_line(&mut line)? == 0 {
                let _ = to.shutdown(Shutdown::Write);
                return Ok(());
            }
            head.push_str(&line);
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        {
            let mut g = shared.gate.lock().unwrap();
            if g.pattern.as_deref().is_some_and(|p| matches(p, &head))
                && (g.every || g.held.is_none())
            {
                g.held = Some(head.clone());
                g.holding.push(head.clone());
                shared.changed.notify_all();
                while !g.open {
                    g = shared.changed.wait(g).unwrap();
                }
                if let Some(i) = g.holding.iter().position(|h| *h == head) {
                    g.holding.remove(i);
                }
            }
        }
        shared.heads.lock().unwrap().push(head.clone());
        to.write_all(head.as_bytes())?;
        let lower = head.to_ascii_lowercase();
        if lower.contains("transfer-encoding: chunked") {
            std::io::copy(&mut from, &mut to)?;
            return Ok(());
        }
        let len: u64 = lower
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        std::io::copy(&mut (&mut from).take(len), &mut to)?;
    }
}
