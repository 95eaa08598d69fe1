//! Arbitrary bytes as one client session through a running proxy (Dubbo, Thrift and kv
//! listeners in front of echo backends): no panic anywhere, the session ends, and
//! whatever the proxy answers decodes. The harness is shared with the stable run in
//! tests/fuzz_session.rs.
#![no_main]

#[path = "../../tests/common/session_fuzz.rs"]
mod session_fuzz;

use libfuzzer_sys::fuzz_target;

thread_local! {
    static HARNESS: session_fuzz::SessionFuzz = session_fuzz::SessionFuzz::new();
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| h.session(data));
});
