//! A TCP proxy that can be cut and restored, to simulate the network going away mid-test.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    /// Connections stay open but nothing passes, either way: a stopped server (SIGSTOP) or a
    /// network that drops packets silently.
    hung: AtomicBool,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Clones of both sockets of every live connection, so `cut` can close them from outside
    /// the threads that pump them.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            pumps: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        Proxy {
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

    /// Closes every open connection at once; new ones are accepted and dropped until `restore`.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
        self.shared.hung.store(false, Ordering::SeqCst);
    }

    /// Stops passing anything on, without closing a connection or refusing a new one: the
    /// server seems to have frozen. `restore` lets everything held through.
    pub fn hang(&self) {
        self.shared.hung.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // accept() has no timeout: a connection of our own wakes it up to see `stop`.
        let _ = TcpStream::connect(self.addr());
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let pumps = std::mem::take(&mut *lock(&self.shared.pumps));
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

impl Shared {
    fn close_all(&self) {
        for (_, (client, server)) in lock(&self.conns).drain() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
    }
}

/// A panicking pump thread must not take the whole proxy down with a poisoned lock.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        if shared.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let server = match TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) {
            Ok(server) => server,
            Err(_) => {
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let clones = (client.try_clone(), server.try_clone());
        let (Ok(client_w), Ok(server_w)) = clones else {
            continue;
        };
        let (Ok(client_c), Ok(server_c)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        {
            let mut conns = lock(&shared.conns);
            // `cut` may have run since the check above; it must not miss this connection.
            if shared.cut.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
                let _ = client.shutdown(Shutdown::Both);
                let _ = server.shutdown(Shutdown::Both);
                continue;
            }
            conns.insert(id, (client_c, server_c));
        }
        let done = Arc::new(AtomicU64::new(0));
        let mut pumps = lock(&shared.pumps);
        pumps.retain(|pump| !pump.is_finished());
        for (from, to) in [(client, server_w), (server, client_w)] {
            let shared = Arc::clone(&shared);
            let done = Arc::clone(&done);
            pumps.push(std::thread::spawn(move || {
                pump(from, to, &shared.hung, &shared.stop);
                // The second direction to finish forgets the connection.
                if done.fetch_add(1, Ordering::SeqCst) == 1 {
                    lock(&shared.conns).remove(&id);
                }
            }));
        }
    }
}

/// Copies one direction until EOF, then half-closes the other side so the peer sees the EOF
/// too; on an error both sockets are closed.
fn pump(mut from: TcpStream, mut to: TcpStream, hung: &AtomicBool, stop: &AtomicBool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                // Held while hung: the peer waits for bytes that do not come.
                while hung.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
