//! The `metaproxy` binary: the reference codecs behind the command line of
//! [`metaproxy_cli`].

fn main() -> std::process::ExitCode {
    metaproxy_cli::main_with(metaproxy::default_registry())
}
