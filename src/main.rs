//! The `porthole` command: argument parsing only; the commands live in `cli`, the work in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // An empty `$PORTHOLE_CONFIG` or `$PORTHOLE_CONTROL` means unset, as in a shell's
    // `PORTHOLE_CONFIG= porthole …`; clap would take it for an empty value.
    for name in [porthole::config::CONFIG_ENV, porthole::control::CONTROL_ENV] {
        if std::env::var_os(name).is_some_and(|v| v.is_empty()) {
            // SAFETY: the first thing the program does, before any thread exists.
            unsafe { std::env::remove_var(name) };
        }
    }
    let args = cli::Args::parse();
    cli::init_logging(&args);
    porthole::relay::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("porthole: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("porthole: {e:#}");
            ExitCode::FAILURE
        }
    }
}
