//! Decodes arbitrary bytes as a stream of Dubbo frames on both sides; whatever decodes
//! must encode back to the bytes it came from, and a mutated encode must decode.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use meta_protocol::{Codec, MessageKind, Side};
use metaproxy_dubbo::hessian2::Reader;
use metaproxy_dubbo::DubboCodec;

fuzz_target!(|data: &[u8]| {
    for side in [Side::Downstream, Side::Upstream] {
        let mut codec = DubboCodec::new(side, 1 << 20);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(mut msg)) = codec.decode(&mut buf) {
            let mut out = BytesMut::new();
            codec.encode(&msg, &mut out).expect("encode");
            assert_eq!(&out[..], &msg.frame()[..], "re-encode differs");
            if matches!(msg.kind(), MessageKind::Request | MessageKind::OneWay) {
                msg.push_mutation("x-fuzz".into(), "v".into());
                out.clear();
                codec.encode(&msg, &mut out).expect("encode mutated");
                let back = codec
                    .decode(&mut out)
                    .expect("mutated decodes")
                    .expect("whole");
                assert_eq!(back.metadata().get("x-fuzz"), Some("v"));
            }
        }
    }
    let bytes = bytes::Bytes::copy_from_slice(data);
    let _ = Reader::new(&bytes).read_value();
});
