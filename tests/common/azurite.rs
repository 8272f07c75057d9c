//! A private Azurite (Azure Blob emulator) per test binary; every test gets its own container.
//!
//! object_store cannot create containers, so the helper does it with one SharedKey-signed
//! request of its own (account and key are Azurite's well-known development ones).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};

pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const API_VERSION: &str = "2021-08-06";
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 5;

pub struct Azurite {
    pub port: u16,
    /// What `AZURITE_BLOB_STORAGE_URL` must say for object_store's emulator mode.
    pub endpoint: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where scripts/setup.sh installs Azurite (npm, into the checkout), else the PATH.
fn program() -> PathBuf {
    let local =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".azurite/node_modules/.bin/azurite-blob");
    if local.is_file() {
        return local;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("azurite-blob"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("azurite-blob not found: run scripts/setup.sh"))
}

impl Azurite {
    pub fn start() -> Azurite {
        let program = program();
        let dir = tempfile::tempdir().expect("temp dir for the azurite log");
        let mut last_log = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let log = dir.path().join(format!("azurite-{attempt}.log"));
            let out = File::create(&log).expect("create azurite log");
            let err = out.try_clone().expect("clone azurite log handle");
            let mut cmd = Command::new(&program);
            cmd.args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args([
                    "--inMemoryPersistence",
                    "--disableTelemetry",
                    "--skipApiVersionCheck",
                ])
                // Whatever it writes besides the log stays in the temp dir.
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            // Dies with the thread that started it (see `shared` in mount.rs).
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = cmd.spawn().expect("spawning azurite-blob");
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Azurite {
                        port,
                        endpoint: format!("http://127.0.0.1:{port}"),
                        child,
                        log,
                        _dir: dir,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    // Most likely the port was taken between free_port() and the bind.
                    last_log = std::fs::read_to_string(&log).unwrap_or_default();
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "azurite not listening after {READY_TIMEOUT:?}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("azurite exited {START_ATTEMPTS} times before listening; last log:\n{last_log}");
    }

    /// Creates a container with a SharedKey-signed PUT.
    pub fn create_container(&self, name: &str) {
        self.signed_put(
            &format!("/{name}"),
            "?restype=container",
            "\nrestype:container",
            &[],
            b"",
        );
    }

    /// Writes a blob of any name, also ones object_store cannot express (`a//b`, `dir/`).
    pub fn put_blob(&self, container: &str, name: &str, body: &[u8]) {
        self.signed_put(
            &format!("/{container}/{name}"),
            "",
            "",
            &[("x-ms-blob-type", "BlockBlob")],
            body,
        );
    }

    /// One SharedKey-signed PUT of `resource` (`/container[/blob]`); `query` goes on the URL
    /// and `canon_query` (its canonical form) into the signature.
    fn signed_put(
        &self,
        resource: &str,
        query: &str,
        canon_query: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) {
        let date = httpdate();
        let mut ms: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ms.push(("x-ms-date".into(), date));
        ms.push(("x-ms-version".into(), API_VERSION.into()));
        ms.sort();
        let canon_headers: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        // Verb, then eleven standard headers (only Content-Length set), then ours, then the
        // resource.
        let to_sign = format!(
            "PUT\n\n\n{length}\n{}{canon_headers}/{ACCOUNT}/{ACCOUNT}{resource}{canon_query}",
            "\n".repeat(8)
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&b64.decode(KEY).unwrap())
            .expect("HMAC accepts keys of any length");
        mac.update(to_sign.as_bytes());
        let sig = b64.encode(mac.finalize().into_bytes());
        let extra: String = ms.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let mut req = format!(
            "PUT /{ACCOUNT}{resource}{query} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{extra}\
             Authorization: SharedKey {ACCOUNT}:{sig}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to azurite");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&req).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 201"),
            "PUT {resource}: {answer}\nlog:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("finding a free port")
        .port()
}

/// The current time as an HTTP date (RFC 7231), which SharedKey requests must carry.
fn httpdate() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}
