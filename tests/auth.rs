//! Credentials the server refuses: the mount exits non-zero with the server's reason. A test
//! binary of its own, because switching on moto's signature checks is server-wide.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use std::fs;

use common::mount::{eventually, Backend, Env};

/// Turns on moto's authentication: from now on unknown access keys get 403.
fn enable_auth(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = "0";
    write!(
        s,
        "POST /moto-api/reset-auth HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
        "{resp}"
    );
}

#[test]
fn refused_credentials_park_uploads_and_fail_new_mounts() {
    let env = Env::new(Backend::S3);
    let m = env.mount();
    fs::write(m.path("before.txt"), b"accepted").unwrap();
    m.sync();

    // The server starts refusing our key: an upload is parked with the server's message
    // (a permanent failure), not retried for ever, and what was written stays readable.
    enable_auth(env.moto.as_ref().unwrap().port);
    fs::write(m.path("after.txt"), b"refused").unwrap();
    assert!(
        eventually(30, || m.state_of("after.txt") == "error"),
        "state: {}\n{}",
        m.state_of("after.txt"),
        m.log_tail()
    );
    let s = m.status();
    assert!(s.contains("errors:      1"), "{s}");
    assert!(s.contains("denied") || s.contains("403"), "{s}");
    assert_eq!(fs::read(m.path("after.txt")).unwrap(), b"refused");

    // A new mount with the refused key fails at once, with the reason on one line.
    let err = env
        .try_mount(&env.new_state_dir(), &[])
        .err()
        .expect("a mount with refused credentials must fail");
    assert!(err.contains("refused"), "{err}");
    assert!(
        err.contains("403") || err.to_lowercase().contains("denied"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}
