//! `cargo xtask chaos`: seeded fault injection against the real `netclaim run` (see
//! `netclaim_tests::chaos`). Prints every problem found, the fault mix, and ends with
//! `chaos: seed=S faults=N lost=L leaked=K mismatched=M`; exits 1 unless all three are 0.

use anyhow::Result;
use clap::Parser;
use netclaim_tests::chaos::{run, ChaosConfig, FaultMix};

#[derive(Parser)]
struct Args {
    /// Seed of the fault schedule (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Faults to inject.
    #[arg(long, default_value_t = 200)]
    faults: usize,
    /// Pods, each with a claim of two devices (1–3 of them take their steps at once).
    #[arg(long, default_value_t = 4)]
    pods: usize,
    /// Weights of the fault kinds, e.g. `kill=50,failpoint=30,full-disk=10,corrupt=10`;
    /// `corrupt-both=N` adds rounds that damage both copies of the checkpoint.
    #[arg(long, default_value = "")]
    mix: String,
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
    let mix = FaultMix::parse(&args.mix)?;
    println!(
        "[chaos] seed {seed}: {} faults, {} pods × 2 devices, mix {mix:?}",
        args.faults, args.pods
    );
    let started = std::time::Instant::now();
    let report = run(ChaosConfig {
        seed,
        faults: args.faults,
        pods: args.pods,
        mix,
    })?;
    for p in &report.problems {
        println!("  {p}");
    }
    println!("[chaos] fault mix:");
    for (what, n) in &report.mix {
        println!("[chaos]   {n:4}  {what}");
    }
    println!(
        "[chaos] {} faults in {:.0} s",
        report.faults,
        started.elapsed().as_secs_f64()
    );
    println!("{}", report.line());
    if report.lost + report.leaked + report.mismatched > 0 {
        std::process::exit(1);
    }
    Ok(())
}
