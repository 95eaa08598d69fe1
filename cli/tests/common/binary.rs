//! Driving the `metaproxy` binary and talking Dubbo to it over plain sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use metaproxy_dubbo::frames::{parse_response, RequestFrame};

/// The binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_metaproxy"))
}

/// A proxy process; killed on drop.
pub struct Proxy(pub Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` (a `metaproxy` command) with `RUST_LOG=info` and `env`, its stderr
/// lines sent to the returned receiver as they come.
#[allow(
    clippy::zombie_processes,
    reason = "callers wait on the child (or kill it through Proxy's drop)"
)]
pub fn spawn_logged(
    mut cmd: Command,
    env: &[(&str, &str)],
) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = cmd
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Starts `metaproxy run --config CONFIG`; returns the process, the first listener's
/// address and the stderr lines.
pub fn start_proxy(
    config: &std::path::Path,
) -> (Proxy, SocketAddr, std::sync::mpsc::Receiver<String>) {
    start_proxy_env(config, &[])
}

/// Like [`start_proxy`] with extra environment variables.
pub fn start_proxy_env(
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (Proxy, SocketAddr, std::sync::mpsc::Receiver<String>) {
    let mut cmd = bin();
    cmd.args(["run", "--config"]).arg(config);
    let (child, rx) = spawn_logged(cmd, env);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline - Instant::now())
            .expect("proxy did not log `listening`");
        if let Some(addr) = line.split("listening on ").nth(1) {
            let addr = addr.split_whitespace().next().unwrap().parse().unwrap();
            return (Proxy(child), addr, rx);
        }
    }
}

pub fn call(stream: &mut TcpStream, id: u64, interface: &str) -> (u8, Vec<(String, String)>) {
    let frame = RequestFrame {
        id,
        ..RequestFrame::new(id, interface, "sayHello")
    }
    .encode();
    stream.write_all(&frame).unwrap();
    let mut buf = BytesMut::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= 16 {
            let len = u32::from_be_bytes(buf[12..16].try_into().unwrap()) as usize;
            if buf.len() >= 16 + len {
                let frame: Bytes = buf.split_to(16 + len).freeze();
                let r = parse_response(&frame).unwrap();
                assert_eq!(r.header.id, id);
                return (r.header.status, r.attachments);
            }
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "proxy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub fn backend_name(attachments: &[(String, String)]) -> Option<&str> {
    attachments
        .iter()
        .find(|(k, _)| k == "backend")
        .map(|(_, v)| v.as_str())
}

impl Proxy {
    /// Sends `signal` (for example `-HUP`) to the proxy process.
    pub fn signal(&self, signal: &str) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Sends SIGHUP and returns the log line that reports the outcome of the reload.
    pub fn reload(&self, logs: &std::sync::mpsc::Receiver<String>) -> String {
        self.signal("-HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = logs
                .recv_timeout(deadline - Instant::now())
                .expect("no reload outcome logged");
            if line.contains("config reloaded") || line.contains("reload rejected") {
                return line;
            }
        }
    }
}
