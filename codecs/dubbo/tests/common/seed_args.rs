//! The hessian2 arguments of the fuzz seeds, shared by `tests/fuzzish.rs` and
//! `examples/fuzz_seeds.rs` (included by each with `#[path]`, so both start from the
//! same bytes).

use bytes::{Bytes, BytesMut};
use metaproxy_dubbo::hessian2::{Value, Writer};

/// A typed list of objects with a back reference, a typed map of a long, a double, a date
/// and a binary, and a chunked string.
pub fn seed_args() -> Bytes {
    let mut args = BytesMut::new();
    let mut w = Writer::new(&mut args);
    let p = Value::Object {
        class: "com.a.P".into(),
        fields: vec![
            ("x".into(), Value::Int(1)),
            ("s".into(), Value::str("\u{1F600}")),
        ],
    };
    w.write_value(&Value::List {
        ty: Some("[x".into()),
        items: vec![p.clone(), p, Value::Ref(1)],
    });
    w.write_value(&Value::Map {
        ty: Some("java.util.HashMap".into()),
        entries: vec![
            (Value::Long(1 << 40), Value::Double(12.25)),
            (Value::Date(60_000), Value::Binary(vec![1; 40])),
        ],
    });
    // A chunked string with small chunks and a surrogate pair split across them.
    w.write_raw(b"R\x00\x03ab\xed\xa0\xbdR\x00\x01\xed\xb8\x80S\x00\x02\xe4\xb8\xadz");
    args.freeze()
}
