//! The short variant of `cargo xtask chaos`: `kill -9` of the real `netclaim run` at
//! random points of prepare, pod start, pod stop, unprepare and synchronize, with two
//! devices per pod, checked from the kernel after every restart (see
//! `netclaim_tests::chaos`). `NETCLAIM_CHAOS_FAULTS` and `NETCLAIM_CHAOS_SEED` change
//! the schedule; a failure prints the seed so it can be replayed.

use netclaim_tests::{
    chaos::{run, ChaosConfig},
    netenv::require_root,
};

#[test]
fn kill_9_anywhere_loses_leaks_and_mismatches_nothing() {
    require_root();
    let faults = std::env::var("NETCLAIM_CHAOS_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed = std::env::var("NETCLAIM_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        });
    let report = run(ChaosConfig {
        seed,
        faults,
        pods: 2,
    })
    .unwrap_or_else(|e| panic!("chaos run with seed {seed} could not run: {e:#}"));
    println!("{}\nfault mix: {:?}", report.line(), report.mix);
    assert_eq!(report.faults, faults);
    assert!(
        report.lost + report.leaked + report.mismatched == 0,
        "{}\n{}",
        report.line(),
        report.problems.join("\n")
    );
}
