//! The `metaproxy` binary: the reference codecs behind the command line of
//! [`metaproxy_cli`].

/// jemalloc, with background purging (see `.cargo/config.toml`): memory freed after a
/// burst goes back to the system instead of staying in the process.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    metaproxy_cli::main_with(metaproxy::default_registry())
}
