//! The `switchboard` command: the HTTP server, a CLI over the embedded
//! database, and the demo.

mod cli;

use clap::Parser;
use switchboard::telemetry::Telemetry;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// mimalloc's per-thread heaps: with glibc's malloc, allocation and free
/// were about a tenth of `serve`'s CPU at saturation, with arena-lock
/// wake-ups on top (docs/benchmarks.md, round three). Only this binary
/// uses it: a program that links the library keeps its own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Before any HTTP client is built (the CLI's, and the dispatcher's).
    switchboard::TlsTrust::install_crypto_provider();
    let args = cli::Cli::parse();
    // The demo narrates the failures it causes (a killed agent, a denial);
    // log lines between its steps would only interrupt it.
    let default_level = match args.command {
        cli::Command::Serve(_) => "info",
        cli::Command::Demo(_) => "error",
        _ => "warn",
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // Exports run on this runtime, so it starts inside it.
    let telemetry = cli::telemetry_config(&args.command).and_then(|config| match config {
        Some(config) => {
            let _inside = runtime.enter();
            Telemetry::start(&config)
        }
        None => Ok(None),
    });
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    // Spans are for the exporter, not the log.
    let spans_off = format!("{}=off", switchboard::telemetry::TARGET)
        .parse()
        .expect("a valid directive");
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
                .add_directive(spans_off),
        );
    tracing_subscriber::registry()
        .with(
            telemetry
                .as_ref()
                .map(|t| t.layer::<tracing_subscriber::Registry>()),
        )
        .with(log)
        .init();
    let result = runtime.block_on(cli::run(args));
    // While the runtime still runs the exports the flush waits for.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
