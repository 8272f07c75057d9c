//! A private moto S3 server per test, so tests never share buckets or state.
//!
//! Self-contained (std and tempfile only), so any test binary can start one.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Finding a free port and binding it are two steps; another process may take the port in
/// between, so a bind failure is retried on a fresh port.
const START_ATTEMPTS: usize = 5;

pub struct Moto {
    pub port: u16,
    pub endpoint: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_with_env(&[])
    }

    /// With extra environment for scripts/moto_server.py (`MOTO_IGNORE_PRECONDITIONS=1`, ...).
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        if !on_path("moto_server") {
            panic!("moto_server not found: run scripts/setup.sh");
        }
        let dir = tempfile::tempdir().expect("temp dir for the moto log");
        let mut last_log = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let log = dir.path().join(format!("moto-{attempt}.log"));
            let out = File::create(&log).expect("create moto log");
            let err = out.try_clone().expect("clone moto log handle");
            // moto's server through our launcher, which keeps headers with '_' in their
            // names (see scripts/moto_server.py).
            let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto_server.py");
            let mut cmd = Command::new("python3");
            cmd.args([launcher, "-H", "127.0.0.1", "-p", &port.to_string()])
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            // Regression: a server kept in a static is never dropped, so it outlived the test
            // process; hundreds piled up as orphans spinning on the CPU. The kernel now kills
            // it when the thread that started it exits (see `shared` in mount.rs, which starts
            // it from a thread that lives as long as the process).
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let spawned = cmd.spawn();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    panic!("moto_server not found: run scripts/setup.sh")
                }
                Err(e) => panic!("spawning moto_server: {e}"),
            };
            match wait_ready(&mut child, port) {
                Ok(()) => {
                    return Moto {
                        port,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        child,
                        log,
                        _dir: dir,
                    }
                }
                // Most likely the port was taken between free_port() and the bind.
                Err(Exit::Exited) => {
                    let _ = child.wait();
                    last_log = log_tail(&log);
                }
                Err(Exit::TimedOut) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "moto_server not ready after {READY_TIMEOUT:?}; log tail:\n{}",
                        log_tail(&log)
                    );
                }
            }
        }
        panic!(
            "moto_server exited {START_ATTEMPTS} times before becoming ready; last log tail:\n{last_log}"
        );
    }

    /// Creates a bucket with an unsigned PUT: moto accepts it, and it keeps the helper free of
    /// the code under test.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.http("PUT", &format!("/{name}"));
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// Forgets every bucket and object, for tests that want a clean server without a restart.
    pub fn reset(&self) {
        let (status, body) = self.http("POST", "/moto-api/reset");
        assert_eq!(status, 200, "resetting moto: {body}");
    }

    /// A minimal HTTP/1.1 exchange with an empty request body; returns (status, body).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        http(self.port, method, path).unwrap_or_else(|e| {
            panic!(
                "{method} {path} to moto: {e}\nlog tail:\n{}",
                self.log_tail()
            )
        })
    }

    /// The server's whole log: one line per request it answered.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_ready(child: &mut Child, port: u16) -> Result<(), Exit> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok((200, _)) = http(port, "GET", "/moto-api/") {
            return Ok(());
        }
        if let Ok(Some(_)) = child.try_wait() {
            return Err(Exit::Exited);
        }
        if Instant::now() >= deadline {
            return Err(Exit::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

enum Exit {
    Exited,
    TimedOut,
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no HTTP status in {response:?}"),
            )
        })?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
