//! A small length-prefixed key/value RPC protocol: the example of adding a protocol to metaproxy without touching its core.
