//! Writes a seed corpus of valid Dubbo frames (requests with objects, chunked strings,
//! one-way calls, responses of every type, heartbeats, go-away) into a directory, for
//! the cargo-fuzz target in `fuzz/`:
//! `cargo run -p metaproxy-dubbo --example fuzz_seeds -- codecs/dubbo/fuzz/corpus/decode`.

use metaproxy_dubbo::frames::{Args, RequestFrame, ResponseFrame};

#[path = "../tests/common/seed_args.rs"]
mod seed_args;
use seed_args::seed_args;

fn main() -> std::io::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "corpus".into());
    std::fs::create_dir_all(&dir)?;
    let args = seed_args();
    let frames = [
        RequestFrame {
            version: "1.0.0",
            group: Some("g"),
            attachments: &[("timeout", "3000"), ("user", "alice")],
            args: Args::Encoded {
                types: "Ljava/util/List;Ljava/util/Map;Ljava/lang/String;",
                values: &args,
            },
            ..RequestFrame::new(1, "com.example.Demo", "call")
        }
        .encode(),
        RequestFrame {
            args: Args::Binary(300),
            ..RequestFrame::new(2, "svc", "m")
        }
        .encode(),
        RequestFrame {
            one_way: true,
            args: Args::String("x"),
            ..RequestFrame::new(3, "svc", "m")
        }
        .encode(),
        ResponseFrame::string(4, "ok").encode(),
        ResponseFrame::string(5, "ok")
            .with_attachments(&[("a", "b")])
            .encode(),
        ResponseFrame::null(6).with_attachments(&[]).encode(),
        ResponseFrame::exception(7, b"N").encode(),
        ResponseFrame::error(8, 60, "no route").encode(),
        bytes::Bytes::from_static(b"\xda\xbb\xe2\x00\0\0\0\0\0\0\0\x09\0\0\0\x01N"),
        bytes::Bytes::from_static(b"\xda\xbb\xa2\x00\0\0\0\0\0\0\0\x0a\0\0\0\x02\x01R"),
    ];
    for (i, f) in frames.iter().enumerate() {
        std::fs::write(format!("{dir}/seed-{i:02}"), f)?;
    }
    println!("{} seeds in {dir}", frames.len());
    Ok(())
}
