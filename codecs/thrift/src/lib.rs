//! Apache Thrift codec (framed, unframed, header; binary, compact) for metaproxy.
