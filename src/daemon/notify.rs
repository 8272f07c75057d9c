//! systemd's readiness protocol (sd_notify(3)): one datagram to `$NOTIFY_SOCKET` per state,
//! so a `Type=notify` unit is started once the mount answers and shows when it is stopping.

use std::os::unix::net::UnixDatagram;

/// Where to send the states, taken from the environment once (and removed from it, so that
/// no child process sends in our name).
#[derive(Clone)]
pub struct Notifier {
    socket: Option<std::ffi::OsString>,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        std::env::remove_var("NOTIFY_SOCKET");
        Notifier { socket }
    }

    /// Sends `state` (`READY=1`, `STOPPING=1`, ...); without a socket it does nothing, and a
    /// failure is only logged: a mount must not fail because its supervisor went away.
    pub fn send(&self, state: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        if let Err(e) = send_to(path, state) {
            tracing::warn!(error = %e, state, "could not notify the service manager");
        } else {
            tracing::debug!(state, "notified the service manager");
        }
    }
}

fn send_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    // `@name` is an abstract socket (what systemd itself uses).
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name)?,
        None => std::os::unix::net::SocketAddr::from_pathname(std::path::Path::new(path))?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let by_path = UnixDatagram::bind(&path).unwrap();
        let name = format!("stratus-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_ = UnixDatagram::bind_addr(&addr).unwrap();
        for (socket, sock) in [
            (path.into_os_string(), &by_path),
            (format!("@{name}").into(), &abstract_),
        ] {
            Notifier {
                socket: Some(socket),
            }
            .send("READY=1");
            let mut buf = [0u8; 64];
            let n = sock.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"READY=1");
        }
        // No socket: nothing to do, and no failure.
        Notifier { socket: None }.send("READY=1");
    }
}
