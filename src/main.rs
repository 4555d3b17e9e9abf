//! memring binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

#[cfg(feature = "alloc-stats")]
#[global_allocator]
static ALLOC: memring::stats::CountingAlloc = memring::stats::CountingAlloc;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cfg = match memring::config::parse_args(args) {
        Ok(cfg) => cfg,
        Err(e) => {
            if e.code == 0 {
                println!("{e}");
            } else {
                eprintln!("memring: {e}");
            }
            return ExitCode::from(e.code.clamp(0, 255) as u8);
        }
    };
    if let Some(key) = &cfg.route {
        return match memring::server::route(&cfg, key) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("memring: {e}");
                ExitCode::from(1)
            }
        };
    }
    if cfg.check {
        for n in &cfg.notes {
            eprintln!("memring: {n}");
        }
        return match memring::server::check(&cfg) {
            Ok(()) => {
                println!("configuration ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("memring: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(path) = &cfg.log_file {
        if let Err(e) = memring::server::logfile::open(path) {
            eprintln!("memring: cannot open log file {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    init_logging(cfg.verbose, cfg.log_level.as_deref());
    for n in &cfg.notes {
        tracing::warn!("config file: {n}");
    }
    match memring::server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: on stderr, and in the log file when logs go there.
            if memring::server::logfile::active() {
                tracing::error!("{e}");
            }
            eprintln!("memring: {e}");
            ExitCode::from(1)
        }
    }
}

/// Structured lines on stderr, or appended to `--log-file`: `--log-level`,
/// or by `-v` info, `-vv` debug, `-vvv` trace, warn without either; the
/// lifecycle lines (started, reloaded, stopping) are shown from info at
/// every level but error. `RUST_LOG` overrides all of it.
fn init_logging(verbose: u8, log_level: Option<&str>) {
    let level = log_level.unwrap_or(match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    });
    let directives = if level == "error" {
        level.to_string()
    } else {
        format!("{level},{}=info", memring::server::LIFECYCLE)
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(directives));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| memring::server::logfile::Writer)
        .with_ansi(false)
        .init();
}
