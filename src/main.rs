//! The `metaproxy` binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// An L7 proxy for RPC protocols (Dubbo, Thrift, and any codec you add).
#[derive(Parser, Debug)]
#[command(name = "metaproxy", version, about)]
struct Cli {
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
    Demo(metaproxy::demo::DemoArgs),
    /// Load generator for Dubbo and Thrift servers or proxies.
    Bench(metaproxy::loadgen::BenchArgs),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config, takeover } => {
            init_logging();
            run(&config, takeover)
        }
        Command::Demo(args) => metaproxy::demo::run(args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
        Command::Bench(args) => metaproxy::loadgen::run(args)
            .map(|()| ExitCode::SUCCESS)
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let codecs = metaproxy::default_registry();
    let config = match metaproxy::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match metaproxy::config::validate(&config, &codecs) {
        Err(problems) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            Ok(ExitCode::FAILURE)
        }
        Ok(validated) => {
            // Compile routes and balancers too, as `run` would.
            if let Err(e) = metaproxy::Server::new(config.clone(), codecs) {
                eprintln!("{e}");
                return Ok(ExitCode::FAILURE);
            }
            println!("{}: ok", path.display());
            println!("listeners: {}", config.listeners.len());
            for l in &config.listeners {
                println!(
                    "  {} {} codec={} route_config={}",
                    l.name, l.address, l.codec, l.route_config
                );
            }
            let routes: usize = config.route_configs.iter().map(|r| r.routes.len()).sum();
            println!(
                "route_configs: {} ({} routes)",
                config.route_configs.len(),
                routes
            );
            for r in &config.route_configs {
                println!("  {} ({} routes)", r.name, r.routes.len());
            }
            println!("clusters: {}", config.clusters.len());
            for c in &config.clusters {
                println!(
                    "  {} ({} endpoints, {:?})",
                    c.name,
                    c.endpoints.len(),
                    c.lb_policy
                );
            }
            for w in validated.warnings {
                println!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(path: &Path, takeover: bool) -> anyhow::Result<ExitCode> {
    let threading = metaproxy::runtime::Threading::from_env().map_err(anyhow::Error::msg)?;
    let server = metaproxy::Server::from_file(path, metaproxy::default_registry())?;
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
        let drained = running
            .run_until(async {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: draining"),
                    _ = int.recv() => tracing::info!("SIGINT: draining"),
                }
            })
            .await;
        tracing::info!(drained, "stopped");
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
