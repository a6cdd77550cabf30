//! `cargo xtask chaos`: seeded fault injection against the real `netclaim run` (see
//! `netclaim_tests::chaos`). Prints every problem found and ends with
//! `chaos: seed=S faults=N lost=L leaked=K mismatched=M`; exits 1 unless all three are 0.

use anyhow::Result;
use clap::Parser;
use netclaim_tests::chaos::{run, ChaosConfig};

#[derive(Parser)]
struct Args {
    /// Seed of the fault schedule (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Faults to inject.
    #[arg(long, default_value_t = 200)]
    faults: usize,
    /// Pods, each with a claim of two devices.
    #[arg(long, default_value_t = 3)]
    pods: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    netclaim_tests::netenv::require_root();
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    println!(
        "[chaos] seed {seed}: {} faults, {} pods × 2 devices",
        args.faults, args.pods
    );
    let started = std::time::Instant::now();
    let report = run(ChaosConfig {
        seed,
        faults: args.faults,
        pods: args.pods,
    })?;
    for p in &report.problems {
        println!("  {p}");
    }
    println!(
        "[chaos] fault mix: {:?}; {:.0} s",
        report.mix,
        started.elapsed().as_secs_f64()
    );
    println!("{}", report.line());
    if report.lost + report.leaked + report.mismatched > 0 {
        std::process::exit(1);
    }
    Ok(())
}
