//! Embedding metaproxy in your own binary with your own codec and your own filter.
//!
//! Registers the `kv` example codec next to the built-in ones and a `require_key` filter
//! next to the built-in filters, starts the proxy from a config, and runs until Ctrl-C:
//!
//! ```sh
//! cargo run --example embed_kv -- examples/kvproto/kv-filters.yaml
//! ```

use std::sync::Arc;

use metaproxy::filter::{
    parse_config, Filter, FilterConfigError, FilterContext, FilterFactory, FilterRegistry,
    FilterRequest, FilterResponse, Verdict,
};
use metaproxy::meta_protocol::{LocalReplyKind, MetaStr};

/// Refuses requests without metadata `key` (a local reply `forbidden`), tells the
/// backend which listener forwarded the call, and tells the client how long the backend
/// took.
struct RequireKey {
    key: String,
    refusal: Arc<str>,
    listener: MetaStr,
}

impl Filter for RequireKey {
    fn on_request(&self, request: &mut FilterRequest<'_>) -> Verdict {
        if !request.metadata().contains(&self.key) {
            // A shared text: refusing allocates nothing.
            return Verdict::Reply(LocalReplyKind::Forbidden, self.refusal.clone());
        }
        request.push_mutation(MetaStr::from_static("x-via"), self.listener.clone());
        Verdict::Continue
    }

    fn on_response(&self, response: &mut FilterResponse<'_>) {
        let micros = response.elapsed().as_micros().to_string();
        response.push_mutation(MetaStr::from_static("x-upstream-us"), micros.into());
    }
}

/// `config: {key: NAME}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequireKeyConfig {
    key: String,
}

struct RequireKeyFactory;

impl FilterFactory for RequireKeyFactory {
    fn name(&self) -> &str {
        "require_key"
    }

    fn build(
        &self,
        config: &serde_json::Value,
        ctx: &FilterContext<'_>,
    ) -> Result<Arc<dyn Filter>, Vec<FilterConfigError>> {
        let c: RequireKeyConfig = parse_config(config)?;
        if c.key.is_empty() {
            return Err(vec![FilterConfigError::new("key", "must not be empty")]);
        }
        Ok(Arc::new(RequireKey {
            refusal: format!("metaproxy: forbidden: no {} given", c.key).into(),
            key: c.key,
            listener: MetaStr::from(ctx.listener.to_owned()),
        }))
    }
}

/// The kv codec next to the built-in ones, `require_key` next to the built-in filters.
fn registries() -> (metaproxy::meta_protocol::CodecRegistry, FilterRegistry) {
    let mut codecs = metaproxy::default_registry();
    codecs.register(Arc::new(metaproxy_example_kv::KvCodecFactory));
    let mut filters = FilterRegistry::builtin();
    filters.register(Arc::new(RequireKeyFactory));
    (codecs, filters)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/kvproto/kv-filters.yaml".into());
    let (codecs, filters) = registries();
    let running = metaproxy::Server::from_file_with_filters(path.as_ref(), codecs, filters)?
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

#[cfg(test)]
mod tests {
    use super::*;
    use metaproxy::config;

    #[test]
    fn the_example_config_is_valid_with_this_binarys_filters() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/kvproto/kv-filters.yaml"
        );
        let config = config::load(path.as_ref()).unwrap();
        let (codecs, filters) = registries();
        metaproxy::validate_with_filters(&config, &codecs, &filters).unwrap();
        // The stock registry does not know `require_key`.
        let e = metaproxy::validate(&config, &codecs).unwrap_err();
        assert_eq!(e[0].field, "listeners[0].filters[0].name");
        // A bad `key` is reported with its field path.
        let mut bad = config.clone();
        bad.listeners[0].filters[0].config = serde_json::json!({"key": ""});
        let e = metaproxy::validate_with_filters(&bad, &codecs, &filters).unwrap_err();
        assert_eq!(
            e[0].to_string(),
            "listeners[0].filters[0].config.key: must not be empty"
        );
    }

    #[test]
    fn require_key_refuses_calls_without_the_key_and_tags_the_others() {
        use metaproxy::meta_protocol::{Message, MessageKind};
        use metaproxy::router::{RouteConfigSpec, RouteTable};
        let ctx = FilterContext {
            listener: "kv-in",
            label: "require_key",
        };
        let filter = RequireKeyFactory
            .build(&serde_json::json!({"key": "user"}), &ctx)
            .unwrap();
        let table = RouteTable::compile(&RouteConfigSpec {
            name: "r".into(),
            routes: vec![],
        })
        .unwrap();
        let mut msg = Message::new(MessageKind::Request, 1, bytes::Bytes::new());
        let verdict = filter.on_request(&mut FilterRequest::new("kv-in", &mut msg, &table));
        assert!(matches!(
            verdict,
            Verdict::Reply(LocalReplyKind::Forbidden, _)
        ));
        msg.metadata_mut().set("user".into(), "alice".into());
        let verdict = filter.on_request(&mut FilterRequest::new("kv-in", &mut msg, &table));
        assert!(matches!(verdict, Verdict::Continue));
        assert_eq!(msg.mutations()[0].1.as_ref() as &str, "kv-in");
    }
}
