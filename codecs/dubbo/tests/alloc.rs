//! Decoding the metadata of an ASCII request allocates nothing (a counting global
//! allocator proves it), once the connection's read buffer is shared; nor does
//! decoding head first and reading the rest on demand.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use common::{codec, typical_request};
use meta_protocol::{Codec, Side, DEFAULT_MAX_FRAME_SIZE};
use metaproxy_dubbo::frames::ResponseFrame;
use metaproxy_dubbo::DubboCodec;

struct Counting;

thread_local! {
    /// Allocations made by this thread. Counted per thread, so that the test harness's
    /// own thread, which allocates now and then while a test runs, is not counted.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count_one() {
    // Not counted once the thread's locals are gone, as it exits.
    let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
}

/// Allocations this thread has made so far.
fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

// SAFETY: forwards to the system allocator unchanged, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn the_counter_counts_this_threads_allocations() {
    let before = allocs();
    let v: Vec<u8> = Vec::with_capacity(std::hint::black_box(100));
    drop(std::hint::black_box(v));
    assert_eq!(allocs() - before, 1);
}

#[test]
fn typical_request_metadata_decodes_without_allocating() {
    let frame = typical_request(1);
    let n = 64;
    let mut buf = BytesMut::with_capacity(frame.len() * (n + 1));
    for _ in 0..=n {
        buf.extend_from_slice(&frame);
    }
    let mut c = codec();
    // The first split makes the read buffer shared (one allocation per buffer, as on
    // any connection); decoding after that must not allocate.
    let first = c.decode(&mut buf).unwrap().unwrap();
    drop(first);
    let mut seen = 0;
    let before = allocs();
    for _ in 0..n {
        let msg = c.decode(&mut buf).unwrap().unwrap();
        seen += msg.metadata().len();
        assert_eq!(msg.metadata().get("user"), Some("alice"));
        drop(msg);
    }
    let after = allocs();
    assert_eq!(
        seen,
        n * 7,
        "interface, method, version, path, group, timeout, user"
    );
    assert_eq!(after - before, 0, "allocations while decoding {n} requests");

    // Head first, as the proxy decodes, then the rest on demand: nothing either.
    let response = ResponseFrame::string(2, "ok")
        .with_attachments(&[("backend", "v1"), ("zone", "a")])
        .encode();
    let mut requests = BytesMut::with_capacity(frame.len() * (n + 1));
    let mut responses = BytesMut::with_capacity(response.len() * (n + 1));
    for _ in 0..=n {
        requests.extend_from_slice(&frame);
        responses.extend_from_slice(&response);
    }
    let mut down =
        DubboCodec::new(Side::Downstream, DEFAULT_MAX_FRAME_SIZE).with_lazy_metadata(true);
    let mut up = DubboCodec::new(Side::Upstream, DEFAULT_MAX_FRAME_SIZE).with_lazy_metadata(true);
    drop(down.decode(&mut requests).unwrap().unwrap());
    drop(up.decode(&mut responses).unwrap().unwrap());
    let before = allocs();
    for _ in 0..n {
        let mut req = down.decode(&mut requests).unwrap().unwrap();
        let mut resp = up.decode(&mut responses).unwrap().unwrap();
        assert!(req.metadata_deferred() && resp.metadata_deferred());
        down.decode_metadata(&mut req).unwrap();
        down.decode_metadata(&mut resp).unwrap();
        assert_eq!(req.metadata().len(), 7);
        assert_eq!(resp.metadata().get("backend"), Some("v1"));
    }
    let after = allocs();
    assert_eq!(
        after - before,
        0,
        "allocations while decoding {n} requests and responses head first, then in full"
    );
}
