//! Embedding metaproxy in your own binary with your own codec.
//!
//! Registers the `kv` example codec next to the built-in ones, starts the proxy from a
//! config, and runs until Ctrl-C:
//!
//! ```sh
//! cargo run --example embed_kv -- examples/kvproto/kv.yaml
//! ```

use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/kvproto/kv.yaml".into());
    let mut codecs = metaproxy::default_registry();
    codecs.register(Arc::new(metaproxy_example_kv::KvCodecFactory));
    let running = metaproxy::Server::from_file(path.as_ref(), codecs)?
        .bind()
        .await?;
    let handle = running.handle();
    tokio::spawn(async move {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        while hup.recv().await.is_some() {
            let _ = handle.reload().await;
        }
        std::io::Result::Ok(())
    });
    running
        .run_until(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
