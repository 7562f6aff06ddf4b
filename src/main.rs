//! The `switchboard` command: the HTTP server, a CLI over the embedded
//! database, and the demo.

mod cli;

use clap::Parser;

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    if let Err(e) = runtime.block_on(cli::run(args)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
