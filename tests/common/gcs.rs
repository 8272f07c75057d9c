//! A private GCS test server (scripts/gcs_server.py, the XML API as object_store's GCS client
//! speaks it) per test binary; every test gets its own bucket on it.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Response headers, names in lower case.
pub type Headers = Vec<(String, String)>;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Finding a free port and binding it are two steps; another process may take the port in
/// between, so a bind failure is retried on a fresh port.
const START_ATTEMPTS: usize = 5;

pub struct GcsServer {
    pub port: u16,
    /// The base URL object_store's `gcs_base_url` (and `GOOGLE_BASE_URL`) must name.
    pub endpoint: String,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl GcsServer {
    /// `versioning`: replaced generations stay readable (`?generation=`), as in a bucket with
    /// Object Versioning on.
    pub fn start(versioning: bool) -> GcsServer {
        GcsServer::start_with(if versioning { &["--versioning"] } else { &[] })
    }

    /// With extra flags of scripts/gcs_server.py (`--versioning`, `--ignore-preconditions`).
    pub fn start_with(flags: &[&str]) -> GcsServer {
        let dir = tempfile::tempdir().expect("temp dir for the gcs server log");
        let mut last_log = String::new();
        for attempt in 0..START_ATTEMPTS {
            let port = free_port();
            let log = dir.path().join(format!("gcs-{attempt}.log"));
            let out = File::create(&log).expect("create gcs server log");
            let err = out.try_clone().expect("clone gcs server log handle");
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gcs_server.py");
            let mut cmd = Command::new("python3");
            cmd.args([script, "-H", "127.0.0.1", "-p", &port.to_string()]);
            cmd.args(flags);
            cmd.stdin(Stdio::null())
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
            let mut child = cmd.spawn().expect("spawning python3 scripts/gcs_server.py");
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return GcsServer {
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
                        "gcs server not listening after {READY_TIMEOUT:?}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("gcs server exited {START_ATTEMPTS} times before listening; last log:\n{last_log}");
    }

    /// Creates a bucket with a plain PUT (object_store cannot create buckets).
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self.http("PUT", &format!("/{name}"), &[], b"");
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// The service-account key that makes object_store skip OAuth and talk to this server
    /// (its `disable_oauth` and `gcs_base_url` fields, meant for emulators).
    pub fn service_account_key(&self) -> String {
        service_account_key(&self.endpoint)
    }

    /// One HTTP/1.1 exchange; returns (status, body). For writes object_store cannot express
    /// (keys ending in `/`, `a//b`): `path` must already be percent-encoded (see `object_path`).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String) {
        let (status, _, body) = self.request(method, path, headers, body);
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// One HTTP/1.1 exchange; returns (status, headers with lowercase names, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Headers, Vec<u8>) {
        http(self.port, method, path, headers, body).unwrap_or_else(|e| {
            panic!(
                "{method} {path} to the gcs server: {e}\nlog:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )
        })
    }

    /// Every key under `prefix`, read with the server's own listing (not stratus's code).
    pub fn list_keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = String::new();
        loop {
            let mut path = format!("/{bucket}?list-type=2&prefix={}", encode(prefix));
            if !token.is_empty() {
                path.push_str(&format!("&continuation-token={}", encode(&token)));
            }
            let (status, body) = self.http("GET", &path, &[], b"");
            assert_eq!(status, 200, "listing {bucket}: {body}");
            for part in body.split("<Key>").skip(1) {
                keys.push(unescape(part.split("</Key>").next().unwrap()));
            }
            match body.split("<NextContinuationToken>").nth(1) {
                Some(rest) => token = unescape(rest.split('<').next().unwrap()),
                None => return keys,
            }
        }
    }

    /// An object's bytes and headers, `None` when absent.
    pub fn get_object(&self, bucket: &str, key: &str) -> Option<(Vec<u8>, Headers)> {
        let (status, headers, body) = self.request("GET", &object_path(bucket, key), &[], b"");
        match status {
            200 => Some((body, headers)),
            404 => None,
            s => panic!("GET {key}: {s}: {}", String::from_utf8_lossy(&body)),
        }
    }
}

/// `/bucket/key` with every byte of the key but unreserved ones percent-encoded (`/` too), as
/// object_store encodes it.
pub fn object_path(bucket: &str, key: &str) -> String {
    format!("/{bucket}/{}", encode(key))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// A service-account key pointing object_store at `endpoint` (this server, or a proxy in front
/// of it) without OAuth.
pub fn service_account_key(endpoint: &str) -> String {
    format!(
        r#"{{"private_key":"unused","private_key_id":"unused","client_email":"test@example.com","disable_oauth":true,"gcs_base_url":"{endpoint}"}}"#
    )
}

impl Drop for GcsServer {
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

fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Headers, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    stream.write_all(&req)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "no end of the HTTP head")
        })?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let body = response[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no HTTP status in {head:?}"),
            )
        })?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body))
}
