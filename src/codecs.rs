//! The codecs the `metaproxy` binary knows.

use meta_protocol::CodecRegistry;

/// A registry with the reference codecs, `dubbo` and `thrift`. Embedding programs add
/// their own with [`CodecRegistry::register`].
pub fn default_registry() -> CodecRegistry {
    let mut registry = CodecRegistry::new();
    registry.register(std::sync::Arc::new(metaproxy_dubbo::DubboCodecFactory));
    registry.register(std::sync::Arc::new(metaproxy_thrift::ThriftCodecFactory));
    registry
}
