//! The command line: argument parsing and the `run` and `check` commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metaproxy::filter::FilterRegistry;
use metaproxy::meta_protocol::CodecRegistry;

/// An L7 proxy for RPC protocols (Dubbo, Thrift, and any codec you add).
#[derive(Parser, Debug)]
#[command(name = "metaproxy", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy.
    Run {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Take the listening sockets over from a running process (hot restart).
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config without binding anything.
    Check {
        /// The YAML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Self-contained demo: in-process backends, a proxy, traffic and a report.
    Demo(crate::demo::DemoArgs),
    /// Load generator for Dubbo and Thrift servers or proxies, and for any registered
    /// codec with `--protocol frame --codec NAME --request-file FILE`.
    Bench(Box<crate::loadgen::BenchArgs>),
}

/// The `metaproxy` command line over a codec registry: what a custom binary's `main`
/// returns. Built with [`Cli::new`] (and [`Cli::filters`] for your own filters), run
/// with [`Cli::main`].
pub struct Cli {
    codecs: CodecRegistry,
    filters: FilterRegistry,
}

impl Cli {
    /// A command line whose `run` and `check` know the codecs in `codecs` and the
    /// built-in filters.
    pub fn new(codecs: CodecRegistry) -> Self {
        Cli {
            codecs,
            filters: FilterRegistry::builtin(),
        }
    }

    /// Makes `run` and `check` know the filters in `filters` instead of the built-in
    /// ones only: start from [`FilterRegistry::builtin`] and register your own.
    pub fn filters(mut self, filters: FilterRegistry) -> Self {
        self.filters = filters;
        self
    }

    /// Parses the process arguments, runs the command and returns the exit code: 0 on
    /// success; 1 on a bad config, a failed command, or a `bench` run that saw a wrong
    /// reply or an error.
    pub fn main(self) -> ExitCode {
        self.main_from(std::env::args_os())
    }

    /// Like [`Cli::main`] with explicit arguments (the first is the program name).
    pub fn main_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = match Args::try_parse_from(args) {
            Ok(args) => args,
            Err(e) => {
                let _ = e.print();
                return if e.use_stderr() {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
        };
        let result = match args.command {
            Command::Check { config } => check(&config, self.codecs, self.filters),
            Command::Run { config, takeover } => {
                init_logging();
                run(&config, takeover, self.codecs, self.filters)
            }
            Command::Demo(args) => crate::demo::run(args)
                .map(|()| ExitCode::SUCCESS)
                .map_err(anyhow::Error::from),
            Command::Bench(mut args) => {
                args.codecs = Some(self.codecs);
                bench(*args)
            }
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {}", describe(&e));
                ExitCode::FAILURE
            }
        }
    }
}

/// Runs the `metaproxy` command line with `codecs` registered: the whole `main` of a
/// custom proxy binary. Same as `Cli::new(codecs).main()`.
pub fn main_with(codecs: CodecRegistry) -> ExitCode {
    Cli::new(codecs).main()
}

/// An error and its causes on one line, each cause once: many errors already name their
/// cause in their own message (`cannot bind 127.0.0.1:1: address in use`), so a cause
/// whose text is already there is not repeated.
fn describe(error: &anyhow::Error) -> String {
    let mut line = error.to_string();
    for cause in error.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn bench(args: crate::loadgen::BenchArgs) -> anyhow::Result<ExitCode> {
    let report = crate::loadgen::run(args)?;
    if report.errors > 0 {
        eprintln!(
            "error: {} of {} replies were wrong or failed",
            report.errors,
            report.errors + report.ok
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn check(path: &Path, codecs: CodecRegistry, filters: FilterRegistry) -> anyhow::Result<ExitCode> {
    let config = match metaproxy::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match metaproxy::validate_with_filters(&config, &codecs, &filters) {
        Err(problems) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            Ok(ExitCode::FAILURE)
        }
        Ok(validated) => {
            // Compile routes and balancers too, as `run` would.
            if let Err(e) = metaproxy::Server::with_filters(config.clone(), codecs, filters) {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
            print!("{}", summary(path, &config));
            for w in validated.warnings {
                println!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What `check` prints for a valid config: listeners, route configs and clusters.
fn summary(path: &Path, config: &metaproxy::config::Config) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}: ok", path.display());
    let _ = writeln!(s, "listeners: {}", config.listeners.len());
    for l in &config.listeners {
        let _ = writeln!(
            s,
            "  {} {} codec={} route_config={}",
            l.name, l.address, l.codec, l.route_config
        );
    }
    let routes: usize = config.route_configs.iter().map(|r| r.routes.len()).sum();
    let _ = writeln!(
        s,
        "route_configs: {} ({} routes)",
        config.route_configs.len(),
        routes
    );
    for r in &config.route_configs {
        let _ = writeln!(s, "  {} ({} routes)", r.name, r.routes.len());
    }
    let _ = writeln!(s, "clusters: {}", config.clusters.len());
    for c in &config.clusters {
        let _ = writeln!(
            s,
            "  {} ({} endpoints, {:?})",
            c.name,
            c.endpoints.len(),
            c.lb_policy
        );
    }
    s
}

/// Starts the xDS client when the config has an `xds:` section.
#[cfg(feature = "xds")]
fn start_xds(handle: &metaproxy::ServerHandle) -> Option<metaproxy_xds::XdsClient> {
    let client = metaproxy_xds::spawn_if_configured(handle);
    if let Some(xds) = &handle.config().xds {
        tracing::info!(address = %xds.address, node = %xds.node_id, "xds: control plane client started");
    }
    client
}

/// Without the `xds` feature an `xds:` section is reported and otherwise ignored.
#[cfg(not(feature = "xds"))]
fn start_xds(handle: &metaproxy::ServerHandle) -> Option<NoXds> {
    if handle.config().xds.is_some() {
        tracing::warn!(
            "xds: this binary was built without the xds feature; the section is ignored"
        );
    }
    None
}

/// Stands in for the xDS client in a binary built without it.
#[cfg(not(feature = "xds"))]
struct NoXds;

#[cfg(not(feature = "xds"))]
impl NoXds {
    async fn shutdown(self) {}
}

fn run(
    path: &Path,
    takeover: bool,
    codecs: CodecRegistry,
    filters: FilterRegistry,
) -> anyhow::Result<ExitCode> {
    let threading = metaproxy::runtime::Threading::from_env().map_err(anyhow::Error::msg)?;
    let server = metaproxy::Server::from_file_with_filters(path, codecs, filters)?;
    let rt = threading
        .build_runtime()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        // Install the signal handlers before binding: once `listening` is logged a
        // SIGHUP must reload, not hit the default action (terminate).
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        // The config is validated above (`from_file`): a bad one never reaches the
        // running process.
        let running = if takeover {
            server.take_over(threading).await?
        } else {
            server.bind_with(threading).await?
        };
        tracing::info!(?threading, "threading model");
        let reload_handle = running.handle();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                let _ = reload_handle.reload().await;
            }
        });
        let xds = start_xds(&running.handle());
        let drained = running
            .run_until(async {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: draining"),
                    _ = int.recv() => tracing::info!("SIGINT: draining"),
                }
            })
            .await;
        if let Some(client) = xds {
            client.shutdown().await;
        }
        tracing::info!(drained, "stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let bind = metaproxy::BindError {
            listener: "in".into(),
            address: "127.0.0.1:1".into(),
            source: std::io::Error::other("another metaproxy process is running"),
        };
        let line = describe(&anyhow::Error::from(bind));
        assert_eq!(
            line.matches("another metaproxy process is running").count(),
            1,
            "{line}"
        );
        assert!(
            line.starts_with("listener \"in\": cannot bind 127.0.0.1:1"),
            "{line}"
        );
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let e = anyhow::Error::from(std::io::Error::other("disk full")).context("cannot write");
        assert_eq!(describe(&e), "cannot write: disk full");
    }
}
