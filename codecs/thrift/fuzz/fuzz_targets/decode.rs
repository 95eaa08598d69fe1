//! Fuzzes every transport × protocol decode path of the thrift codec (the first byte
//! picks the configuration) and checks the encode/decode invariants on every message.
//! Run: `cd codecs/thrift/fuzz && cargo +nightly fuzz run decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/fuzz_check.rs"]
mod fuzz_check;

fuzz_target!(|data: &[u8]| {
    fuzz_check::check(data);
});
