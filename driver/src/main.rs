//! `netclaim`: parses the command line, sets up logging, dispatches to `cli`.

use clap::Parser;
use netclaim::cli::{self, Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn init_logging(cli: &Cli) {
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!(
            "netclaim: invalid --log/RUST_LOG filter {:?}: {e}; using \"info\"",
            cli.log
        );
        EnvFilter::new("info")
    });
    // netlink-proto logs every message it cannot decode, with the whole packet, at
    // error level: a link whose name is not UTF-8 would repeat that on every scan. The
    // inventory reports such links itself, once each (inventory::names); an explicit
    // `netlink_proto=...` directive in --log still wins.
    let filter = if cli.log.contains("netlink_proto") {
        filter
    } else {
        match "netlink_proto::codecs=off".parse() {
            Ok(quiet) => filter.add_directive(quiet),
            Err(_) => filter,
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() {
    let cli = Cli::parse();
    init_logging(&cli);
    netclaim::failpoints::setup();
    let result = match cli.command {
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            // Blocking threads (and those a hook's `block_in_place` hands a worker's
            // place to) are kept instead of ending after 10 s idle: a thread that ends
            // makes a namespace move starting soon after wait for its RCU grace period
            // (see `netns::thread`'s workers).
            .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(cli::daemon::run(args))),
        Command::Inventory(args) => cli::inventory::run(args),
        Command::Inspect(args) => cli::inspect::run(args),
        Command::Validate(args) => cli::validate::run(args),
        Command::InstallCni(args) => cli::install_cni::run(args),
        Command::Version => {
            println!(
                "netclaim {} (eBPF object {} bytes)",
                env!("CARGO_PKG_VERSION"),
                netclaim::datapath::object::OBJECT.len()
            );
            Ok(0)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("netclaim: {e:#}");
            std::process::exit(1);
        }
    }
}
