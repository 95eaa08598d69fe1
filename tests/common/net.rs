//! Plain TCP peers for failure cases, shared by the runtime's and the binary's tests.
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;

/// A TCP server that accepts and reads but never answers (for timeouts).
pub fn silent_backend() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// An address nothing listens on (for dead endpoints).
pub fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
