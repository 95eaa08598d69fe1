//! The independent Python peers of the interop tests (installed into `.interop/` by
//! `scripts/interop/*.sh`): their interpreters, scripts and JSON-lines output. Shared by
//! the runtime's, the binary's and the thrift codec's tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The workspace root (the folder holding `scripts/test.sh`), from whichever crate's
/// tests include this file.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|p| p.join("scripts/test.sh").exists())
        .expect("the workspace root holds scripts/test.sh")
        .to_path_buf()
}

/// The Python of the Dubbo peers (dubbo-ssl-python).
pub fn dubbo_python() -> PathBuf {
    let py = workspace_root().join(".interop/dubbo/venv/bin/python");
    assert!(
        py.exists(),
        "the Python Dubbo client is missing: run scripts/interop/dubbo.sh (scripts/test.sh does)"
    );
    py
}

/// The Python of the Apache Thrift peers, with the generated `interop` module.
pub fn thrift_python() -> PathBuf {
    let root = workspace_root();
    let py = root.join(".interop/thrift/venv/bin/python");
    assert!(
        py.exists() && root.join(".interop/thrift/gen-py/interop").exists(),
        "Apache Thrift Python peers are missing: run scripts/interop/thrift.sh (scripts/test.sh does)"
    );
    py
}

/// Runs a peer that prints one JSON object per line, and parses them.
pub fn json_lines(mut cmd: Command) -> Vec<Value> {
    let out = cmd.output().expect("run the peer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.trim().is_empty(),
        "the peer printed nothing; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("peer said {l:?}: {e}")))
        .collect()
}

/// The Apache Thrift Python server (`codecs/thrift/interop/server.py`); killed on drop.
pub struct ThriftServer {
    child: Child,
    /// Where it listens (`host:port`).
    pub addr: String,
}

impl ThriftServer {
    /// Starts it on an ephemeral port with `transport` and `protocol`.
    pub fn start(transport: &str, protocol: &str) -> ThriftServer {
        let mut child = Command::new(thrift_python())
            .arg(workspace_root().join("codecs/thrift/interop/server.py"))
            .args([
                "--transport",
                transport,
                "--protocol",
                protocol,
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Python thrift server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the server's first line");
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("server said {line:?}: {e}"));
        let addr = v["listening"]
            .as_str()
            .expect("listening address")
            .to_owned();
        ThriftServer { child, addr }
    }
}

impl Drop for ThriftServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
