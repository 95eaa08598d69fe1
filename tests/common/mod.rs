//! Shared helpers for the integration tests: kv backends and clients on loopback (in
//! `kv.rs`), proxies with the kv codecs, and helpers over replies.
#![allow(dead_code)]

pub mod hostile;
pub mod kv;
pub mod net;
pub mod peers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meta_protocol::{CodecRegistry, Message};
use metaproxy::{RunningServer, Server};
use metaproxy_example_kv::KvCodecFactory;

#[allow(unused_imports, reason = "not every test binary uses every helper")]
pub use kv::{backend, Backend, Client, Seen};

/// A registry with the kv example codecs (`kv` and the line-delimited `kvline`).
pub fn registry() -> CodecRegistry {
    let mut r = metaproxy::default_registry();
    r.register(Arc::new(KvCodecFactory));
    r.register(Arc::new(metaproxy_example_kv::line::LineCodecFactory));
    r
}

/// Starts a proxy from YAML text in which `{name}` placeholders are replaced by
/// `addrs` (for example `{v1}` -> a backend address).
pub async fn proxy(yaml: &str, addrs: &[(&str, SocketAddr)]) -> RunningServer {
    proxy_with(
        yaml,
        addrs,
        metaproxy::runtime::Threading::WorkStealing { workers: 0 },
    )
    .await
}

/// Like [`proxy`] with an explicit threading model.
pub async fn proxy_with(
    yaml: &str,
    addrs: &[(&str, SocketAddr)],
    threading: metaproxy::runtime::Threading,
) -> RunningServer {
    let server = Server::new(config(yaml, addrs), registry()).unwrap();
    server.bind_with(threading).await.unwrap()
}

/// Parses YAML text in which `{name}` placeholders are replaced by `addrs`, as
/// [`proxy`] does.
pub fn config(yaml: &str, addrs: &[(&str, SocketAddr)]) -> metaproxy::config::Config {
    let mut text = yaml.to_owned();
    for (name, addr) in addrs {
        text = text.replace(&format!("{{{name}}}"), &addr.to_string());
    }
    metaproxy::config::parse(&text, "test.yaml".as_ref()).unwrap()
}

/// Starts a proxy from `config` with the kv codecs, the built-in filters and `filter`.
pub async fn proxy_with_filter(
    config: metaproxy::config::Config,
    filter: Arc<dyn metaproxy::filter::FilterFactory>,
) -> RunningServer {
    let mut filters = metaproxy::filter::FilterRegistry::builtin();
    filters.register(filter);
    Server::with_filters(config, registry(), filters)
        .unwrap()
        .bind()
        .await
        .unwrap()
}

/// Header value of a kv response.
pub fn header(m: &Message, key: &str) -> Option<String> {
    m.metadata().get(key).map(str::to_owned)
}

/// Counts of `backend` header values over replies.
pub fn tally(replies: &[Message]) -> HashMap<String, usize> {
    let mut t = HashMap::new();
    for r in replies {
        *t.entry(header(r, "backend").unwrap_or_default())
            .or_insert(0) += 1;
    }
    t
}
