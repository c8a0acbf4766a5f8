//! The `rproxy` command: parse the command line, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for the process (inherited by a binary upgrade's new one).
/// A proxy's heap is sparse once idle or closed connections have freed their buffers: many
/// 2 MB regions keep a few live 4 KB pages, and the kernel's khugepaged, wherever it may (THP
/// `always`, or a region madvised, which mimalloc's `no_thp` feature stops: Cargo.toml), fills
/// each into a 2 MB page that stays resident. With 9,900 idle connections, rproxy grew by
/// 5 MB over the following seconds without running, and it held 14.3 MB at rest instead of 8.
/// Called first in `main`, so only what the runtime allocated before can be on huge pages.
fn without_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Nothing else depends on it: memory may then grow as described.
        eprintln!("rproxy: transparent huge pages left on: {e}");
    }
}

/// A reverse-proxy load balancer: the nginx upstream block, done better.
#[derive(Debug, Parser)]
#[command(name = "rproxy", version, about)]
struct Cli {
    /// Configuration file.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        default_value = "upstream.toml"
    )]
    config: PathBuf,

    /// Check the configuration and exit: prints `ok`, or every error found (exit 1).
    #[arg(short = 't', long = "test")]
    test: bool,

    /// Signal the running rproxy (found through the configuration's `pid_file`): `reload`
    /// (SIGHUP: re-read the configuration), `stop` (SIGTERM: drain and exit), `reopen`
    /// (SIGUSR1: reopen the access log file), `upgrade` (SIGUSR2: start the binary now at
    /// rproxy's path with every listening socket; the old process drains once the new one
    /// serves). The configuration is checked first.
    #[arg(short = 's', long = "signal", value_name = "COMMAND", value_parser = ["reload", "stop", "reopen", "upgrade"])]
    signal: Option<String>,

    /// Once every listener and the admin listener are bound, write their addresses to FILE as
    /// JSON: {"pid":..,"listeners":{"NAME":["ADDR",..]},"admin":"ADDR"|null}. Written
    /// atomically, rewritten when a reload changes the listeners, removed at shutdown.
    #[arg(long = "ready-file", value_name = "FILE")]
    ready_file: Option<PathBuf>,

    /// Reload the configuration whenever the file changes, as SIGHUP does (also when the file
    /// does not say `watch = true`). Follows symbolic links, so a Kubernetes ConfigMap update
    /// (a `..data` link swapped) is seen.
    #[arg(long = "watch")]
    watch: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Change a running rproxy through its admin API: drain, disable, enable or re-weight a
    /// server, drop its runtime changes, or show every server's state.
    Ctl(CtlArgs),
}

#[derive(Debug, clap::Args)]
struct CtlArgs {
    /// The configuration file whose `[admin]` listener and token to use.
    #[arg(
        short = 'c',
        long = "config",
        value_name = "FILE",
        default_value = "upstream.toml"
    )]
    config: PathBuf,

    /// The admin listener's URL (http://HOST:PORT), instead of the file's; the token then
    /// comes from RPROXY_ADMIN_TOKEN.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,

    #[command(subcommand)]
    action: CtlAction,
}

#[derive(Debug, clap::Subcommand)]
enum CtlAction {
    /// No new requests to the server, except those a sticky cookie pins to it; with --wait,
    /// return once its requests in flight are done (exit 1 if the wait runs out).
    Drain {
        upstream: String,
        addr: String,
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// No requests at all to the server (requests in flight finish).
    Disable { upstream: String, addr: String },
    /// Back to the file's state (slow start applies when configured).
    Enable { upstream: String, addr: String },
    /// Set the server's weight until reset.
    Weight {
        upstream: String,
        addr: String,
        weight: u32,
    },
    /// Drop every runtime change of the server.
    Reset { upstream: String, addr: String },
    /// Every upstream's servers: state, health, weight, requests in flight, runtime changes.
    Status,
}

fn main() -> ExitCode {
    without_huge_pages();
    let cli = Cli::parse();
    if let Some(Command::Ctl(args)) = cli.command {
        return ctl(args);
    }
    // Read before the load: a change made while rproxy starts is then seen by the file watch.
    let before_load = rproxy::server::fingerprint(&cli.config);
    let config = match rproxy::config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => return report(&cli, &errors),
    };
    if let Some(command) = &cli.signal {
        return send_signal(&cli, command, config.pid_file.as_deref());
    }
    // Sockets handed over by a binary upgrade or systemd: adopted before any thread starts,
    // as it takes their variables out of the environment.
    let inherited = if cli.test {
        rproxy::listener::Inherited::none()
    } else {
        match rproxy::listener::Inherited::from_env() {
            Ok(inherited) => inherited,
            Err(e) => {
                eprintln!("rproxy: inherited sockets: {e}");
                return ExitCode::FAILURE;
            }
        }
    };

    let workers = config
        .workers
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    // Thread per core (`rproxy::workers`): this thread is worker 0, each other worker a thread
    // with a runtime of its own. RPROXY_RUNTIME=work_stealing runs tokio's multi-threaded
    // runtime with `workers` threads instead, the arrangement before; kept so that the two can
    // be measured against each other (benches/compare/run.sh does).
    let work_stealing = std::env::var("RPROXY_RUNTIME").as_deref() == Ok("work_stealing");
    let runtime = if work_stealing && !cli.test {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rproxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    if cli.test {
        // Name resolution is part of the check, as with `nginx -t`; nothing is bound. A
        // `resolve = true` name that does not resolve now is a warning: rproxy would start.
        let resolved = runtime.block_on(async {
            let config = std::sync::Arc::new(config);
            let (_, answers) = rproxy::dns::prepare(&config, None, None).await?;
            for warning in rproxy::dns::unresolved_warnings(&config, &answers) {
                eprintln!("warning: {warning}");
            }
            rproxy::state::build_snapshot(config, None, std::sync::Arc::new(answers)).await
        });
        return match resolved {
            Ok(_) => {
                println!("ok: {} is valid", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(errors) => report(&cli, &errors),
        };
    }

    init_logging(config.log_level.as_deref());
    let other_workers = if work_stealing {
        None
    } else {
        match rproxy::workers::Workers::start(workers) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("rproxy: cannot start the worker threads: {e}");
                return ExitCode::FAILURE;
            }
        }
    };
    let handles = other_workers.as_ref().map_or(&[][..], |w| w.handles());
    let code = runtime.block_on(async {
        let signals = match rproxy::Signals::install() {
            Ok(signals) => signals,
            Err(e) => {
                tracing::error!("cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = rproxy::access_log::init(&config.log) {
            tracing::error!("cannot open the access log: {e}");
            return ExitCode::FAILURE;
        }
        // Before anything records: handles made earlier would record nowhere. Without an
        // admin listener nothing could read the metrics (and `[admin]` is read at start
        // only), so none are recorded: each request then costs a little less.
        let metrics = match config.admin.is_some().then(rproxy::metrics::install) {
            Some(Ok(handle)) => Some(handle),
            Some(Err(e)) => {
                tracing::error!("cannot install the metrics recorder: {e}; /metrics is disabled");
                None
            }
            None => None,
        };
        let mut server = match rproxy::Server::bind_on_workers(config, inherited, handles).await {
            Ok(server) => server,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        if let Some(handle) = metrics {
            server = server.with_metrics(handle);
        }
        server = server.with_watch(cli.watch, before_load);
        if let Some(path) = &cli.ready_file {
            server = match server.with_ready_file(path) {
                Ok(server) => server,
                Err(e) => {
                    tracing::error!("{e}");
                    return ExitCode::FAILURE;
                }
            };
        }
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %cli.config.display(),
            workers,
            "rproxy started"
        );
        server.run(signals).await;
        rproxy::access_log::flush();
        ExitCode::SUCCESS
    });
    // The server has drained every worker's connections (or given up at the drain timeout).
    if let Some(w) = other_workers {
        w.stop();
    }
    // Anything still running (a stuck name lookup) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// `rproxy -s COMMAND`: signals the process named in the pid file.
fn send_signal(cli: &Cli, command: &str, pid_file: Option<&std::path::Path>) -> ExitCode {
    let Some(pid_file) = pid_file else {
        eprintln!(
            "rproxy: {} has no `pid_file`, so the running process cannot be found; add pid_file = \"rproxy.pid\" (and restart), or send the signal with kill",
            cli.config.display()
        );
        return ExitCode::FAILURE;
    };
    let Some(sig) = rproxy::signal_for(command) else {
        eprintln!("rproxy: unknown signal command `{command}`");
        return ExitCode::FAILURE;
    };
    match rproxy::send_to_pid_file(pid_file, sig) {
        Ok(pid) => {
            println!("rproxy: sent {command} to process {pid}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(cli: &Cli, errors: &rproxy::config::ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    let n = errors.len();
    eprintln!(
        "rproxy: {} has {n} error{}",
        cli.config.display(),
        if n == 1 { "" } else { "s" }
    );
    ExitCode::FAILURE
}

fn init_logging(level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `rproxy ctl`: one request to the admin API, one line (or table) out, and its exit code.
fn ctl(args: CtlArgs) -> ExitCode {
    use rproxy::ctl::Action;
    let action = match args.action {
        CtlAction::Drain {
            upstream,
            addr,
            wait,
        } => Action::Drain {
            upstream,
            addr,
            wait,
        },
        CtlAction::Disable { upstream, addr } => Action::Disable { upstream, addr },
        CtlAction::Enable { upstream, addr } => Action::Enable { upstream, addr },
        CtlAction::Weight {
            upstream,
            addr,
            weight,
        } => Action::Weight {
            upstream,
            addr,
            weight,
        },
        CtlAction::Reset { upstream, addr } => Action::Reset { upstream, addr },
        CtlAction::Status => Action::Status,
    };
    let options = rproxy::ctl::Options {
        config: args.config,
        admin: args.admin,
        token: std::env::var("RPROXY_ADMIN_TOKEN").ok(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rproxy ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(rproxy::ctl::run(&options, &action));
    if outcome.code == 0 {
        println!("{}", outcome.message);
    } else {
        eprintln!("{}", outcome.message);
    }
    ExitCode::from(outcome.code)
}
