//! The reference codecs, as cargo features of this crate.

use meta_protocol::CodecRegistry;

/// A registry with the reference codecs this crate was built with: `dubbo` and
/// `thrift` (cargo features of the same names, both on by default). Embedding programs
/// add their own with [`CodecRegistry::register`]; with both features off it is empty.
pub fn default_registry() -> CodecRegistry {
    #[allow(unused_mut, reason = "empty when both reference codecs are disabled")]
    let mut registry = CodecRegistry::new();
    #[cfg(feature = "dubbo")]
    registry.register(std::sync::Arc::new(metaproxy_dubbo::DubboCodecFactory));
    #[cfg(feature = "thrift")]
    registry.register(std::sync::Arc::new(metaproxy_thrift::ThriftCodecFactory));
    registry
}
