//! Shared helpers for the binary's integration tests.
#![allow(dead_code)]

pub mod binary;
#[path = "../../../tests/common/net.rs"]
pub mod net;
#[path = "../../../tests/common/peers.rs"]
pub mod peers;
