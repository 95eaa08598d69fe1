//! A tiny blocking Dubbo backend for trying clients against: answers every call with
//! its first argument ([`metaproxy_dubbo::frames::echo_response`]), answers
//! heartbeats, and treats a few method names specially:
//!
//! - `error<N>` (for example `error60`): an error response with status N;
//! - `whoami`: the string given as the second command-line argument (default `echo`);
//! - `attachments`: a JSON-ish string of the request's string attachments.
//!
//! Usage: `cargo run -p metaproxy-dubbo --example echo_backend -- 127.0.0.1:20881 [NAME]`.
//! Prints `listening ADDR` once bound. One thread per connection; stops when killed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use bytes::BytesMut;
use meta_protocol::{Codec, MessageKind, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::frames::{echo_response, parse_request, ResponseFrame};
use metaproxy_dubbo::DubboCodec;

fn serve(mut stream: TcpStream, name: String) -> std::io::Result<()> {
    let mut codec = DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE);
    let mut buf = BytesMut::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let msg = match codec.decode(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("echo_backend: closing a connection: {e}");
                    return Ok(());
                }
            };
            let method = msg.metadata().get("method").unwrap_or("").to_owned();
            let reply = match msg.kind() {
                MessageKind::Request if method.starts_with("error") => {
                    let status = method[5..].parse().unwrap_or(70);
                    Some(
                        ResponseFrame::error(
                            msg.request_id(),
                            status,
                            &format!("echo_backend: {method}"),
                        )
                        .encode(),
                    )
                }
                MessageKind::Request if method == "whoami" => {
                    Some(ResponseFrame::string(msg.request_id(), &name).encode())
                }
                MessageKind::Request if method == "attachments" => {
                    let atts = parse_request(msg.frame())
                        .map(|p| p.attachments)
                        .unwrap_or_default();
                    let text = atts
                        .iter()
                        .map(|(k, v)| format!("{k:?}: {v:?}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    Some(ResponseFrame::string(msg.request_id(), &format!("{{{text}}}")).encode())
                }
                _ => echo_response(&msg),
            };
            if let Some(r) = reply {
                stream.write_all(&r)?;
            }
        }
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:20881".into());
    let name = std::env::args().nth(2).unwrap_or_else(|| "echo".into());
    let listener = TcpListener::bind(&addr)?;
    println!("listening {}", listener.local_addr()?);
    for stream in listener.incoming() {
        let stream = stream?;
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, name);
        });
    }
    Ok(())
}
