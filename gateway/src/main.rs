//! `lb-gateway`: the L7 gateway binary. Parses arguments and wires the library together.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use lb_gateway::accesslog::AccessLog;
use lb_gateway::server::{self, Gateway, StartError};
use tokio::signal::unix::{SignalKind, signal};

// A request allocates and frees many small objects across tasks; mimalloc's per-thread free
// lists cost a fraction of glibc malloc's (measured with `cargo xtask bench l7`); see
// `allocator` for why it is not `mimalloc::MiMalloc` itself.
#[global_allocator]
static ALLOCATOR: lb_gateway::allocator::Allocator = lb_gateway::allocator::Allocator;

/// Exit code for every configuration error (sysexits EX_USAGE), as the house rules say.
const EXIT_CONFIG: u8 = 64;

/// The L7 API gateway of the load-balancer appliance.
#[derive(Debug, Parser)]
#[command(
    name = "lb-gateway",
    version,
    about,
    after_help = "Config reference: gateway/CONFIG.md. Config errors exit with code 64."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a config file (certificates included) without starting; exits 64 when invalid,
    /// listing every error with its key path. The names of `discover` members are resolved
    /// and each answer reported (a name that does not resolve is a warning).
    CheckConfig {
        /// Path to the TOML config file.
        file: PathBuf,
    },
    /// Run the gateway. SIGHUP reloads the config file; SIGTERM or SIGINT drains and exits.
    Run {
        /// Path to the TOML config file.
        #[arg(long, short = 'c', env = "LB_GATEWAY_CONFIG")]
        config: PathBuf,
        /// Log format of stdout for events; access-log lines are JSON objects in both
        /// formats.
        #[arg(long, value_enum, default_value_t = LogFormat::Json)]
        log_format: LogFormat,
        /// Worker threads serving connections (default: one per CPU).
        #[arg(long, env = "LB_GATEWAY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_threads: Option<u16>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .init();
            check_config(&file)
        }
        Command::Run {
            config,
            log_format,
            worker_threads,
        } => {
            init_logging(log_format);
            // One worker: a current-thread runtime (the main thread serves everything), which
            // skips the work-stealing scheduler's cross-thread bookkeeping.
            let mut builder = match worker_threads {
                Some(1) => tokio::runtime::Builder::new_current_thread(),
                Some(n) => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(usize::from(n));
                    b
                }
                None => tokio::runtime::Builder::new_multi_thread(),
            };
            // Blocking threads serve rare work (reloads, `discover` name lookups): let them
            // go after a second idle rather than tokio's ten, so that a single-threaded
            // gateway is single-threaded again between those.
            let runtime = match builder
                .enable_all()
                .thread_keep_alive(std::time::Duration::from_secs(1))
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    report(&e);
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(run(config));
            // Tasks still running (connections the drain gave up on) are dropped with the
            // runtime and log their requests then; the access log is written out after.
            drop(runtime);
            let access_log = match result {
                Ok(access_log) => access_log,
                Err(e) => {
                    report(&*e);
                    return if e
                        .downcast_ref::<StartError>()
                        .is_some_and(|s| matches!(s, StartError::Config(_)))
                    {
                        ExitCode::from(EXIT_CONFIG)
                    } else {
                        ExitCode::FAILURE
                    };
                }
            };
            access_log.flush();
            ExitCode::SUCCESS
        }
    }
}

/// `check-config FILE`: validates the file (resolving `discover` names, logged to stderr).
fn check_config(file: &std::path::Path) -> ExitCode {
    match server::check_config(file) {
        Ok(config) => {
            tracing::info!(
                file = %file.display(),
                listeners = config.listeners.len(),
                upstreams = config.upstreams.len(),
                routes = config.routes.len(),
                "config is valid"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(&e);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

#[allow(clippy::print_stderr)] // the binary's one place that talks to the operator directly
fn report(e: &dyn std::fmt::Display) {
    eprintln!("lb-gateway: {e}");
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Serves until SIGTERM or SIGINT, then drains; returns the access log to flush last.
async fn run(config: PathBuf) -> anyhow::Result<AccessLog> {
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let gateway = Gateway::start(&config).await?;
    tracing::info!(?gateway, "lb-gateway started");
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let shared = std::sync::Arc::clone(gateway.shared());
                // Errors are logged and counted by reload itself; the old config keeps serving.
                if let Ok(Err(_refused)) = tokio::task::spawn_blocking(move || shared.reload()).await {
                    tracing::warn!("SIGHUP reload refused");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("draining");
    let access_log = gateway.access_log().clone();
    let report = gateway.shutdown().await;
    tracing::info!(
        remaining_connections = report.remaining_connections,
        "stopped"
    );
    Ok(access_log)
}
