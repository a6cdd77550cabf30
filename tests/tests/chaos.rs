//! The short variant of `cargo xtask chaos`: `kill -9` of the real `netclaim run` at
//! random points of prepare, pod start, pod stop, unprepare and synchronize with up to
//! three pods stepping at once, failed Nth netlink requests and bpf operations, a full
//! disk and a damaged checkpoint, with two devices per pod, checked from the kernel
//! after every restart (see `netclaim_tests::chaos`). `NETCLAIM_CHAOS_FAULTS`,
//! `NETCLAIM_CHAOS_SEED` and `NETCLAIM_CHAOS_MIX` change the schedule; a failure prints
//! the seed so it can be replayed with `cargo xtask chaos --seed S`.

use netclaim_tests::{
    chaos::{run, ChaosConfig, FaultMix},
    netenv::require_root,
    tmpfs::SmallFs,
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
    let mix = FaultMix::parse(&std::env::var("NETCLAIM_CHAOS_MIX").unwrap_or_default())
        .expect("NETCLAIM_CHAOS_MIX");
    let report = run(ChaosConfig {
        seed,
        faults,
        pods: 3,
        mix,
    })
    .unwrap_or_else(|e| panic!("chaos run with seed {seed} could not run: {e:#}"));
    println!("{}\nfault mix: {:#?}", report.line(), report.mix);
    assert_eq!(report.faults, faults);
    assert!(
        report.lost + report.leaked + report.mismatched == 0,
        "{}\n{}",
        report.line(),
        report.problems.join("\n")
    );
}

/// A test topology whose state dir is an 8 MiB file system of its own (to be filled):
/// the topology, the state dir, and the mount (unmounted when dropped).
fn checkpoint_on_small_fs(
    prefix: &str,
) -> (
    std::sync::Arc<netclaim_tests::scenario::Topology>,
    std::path::PathBuf,
    SmallFs,
) {
    require_root();
    let topo = std::sync::Arc::new(netclaim_tests::scenario::Topology::new(prefix).unwrap());
    let state = topo.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let tmpfs = SmallFs::mount(&state, "8M").unwrap();
    (topo, state, tmpfs)
}

/// The checkpoint's file system is full. The journal's space is written ahead, so a pod
/// start's records still become durable there and the pod starts; the catch-up of the
/// redb file and mirror fails until there is room. The driver is then killed with the
/// disk still full: the restarted driver finds the device in its pod from the journal,
/// and the stop brings it home exactly as it was.
#[test]
fn a_full_disk_under_the_checkpoint_keeps_placements_in_the_journal() {
    use anyhow::Context;
    use netclaim_tests::scenario::{self, link_facts, run_in_netns, NIC};
    use std::time::Duration;
    let (topo, st, tmpfs) = checkpoint_on_small_fs("cfj");
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let mut c = scenario::bring_up_prepared(&topo).await?;
        let before = link_facts(&topo.node, NIC)?;

        let filler = SmallFs::fill(&st, "filler")?;
        let out = scenario::run_pod(&c, &topo, "pod-uid-web", "web-0").await;
        anyhow::ensure!(
            out.is_clean(),
            "start with a full disk: {:?}\n{}",
            out.status,
            c.driver.log_text()
        );
        topo.pod
            .ip(&["link", "show", "net1"])
            .context("net1 in the pod")?;
        // The catch-up (after 1 s of quiet) fails for want of room and says so.
        let t0 = std::time::Instant::now();
        while !c.driver.log_text().contains("checkpoint catch-up failed") {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(5),
                "no failed catch-up logged:\n{}",
                c.driver.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // Killed with the disk still full; the room comes back before the restart.
        let registered = c.runtime.wait_registered(Duration::from_secs(5)).await?;
        c.driver.kill9()?;
        std::fs::remove_file(&filler)?;
        c.driver = scenario::Driver::start(&topo, c.api.kubeconfig_path(), "1s")?;
        c.runtime
            .wait_registration_after(registered.generation, Duration::from_secs(20))
            .await
            .with_context(|| c.driver.log_text())?;
        anyhow::ensure!(
            c.driver.log_text().contains("checkpoint journal replayed"),
            "the restarted driver did not replay the journal:\n{}",
            c.driver.log_text()
        );
        let (stop, _) = scenario::stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        anyhow::ensure!(
            stop.is_clean(),
            "stop: {:?}\n{}",
            stop.status,
            c.driver.log_text()
        );
        anyhow::ensure!(
            link_facts(&topo.node, NIC)? == before,
            "not restored exactly"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    })
    .unwrap();
    drop(tmpfs);
}

/// The checkpoint's file system is full and the journal refuses its record (a fail
/// point): the write-ahead record of a pod start cannot be made, so the device must not
/// be touched. The hook fails naming the checkpoint, the NIC stays at home exactly as
/// it was, and once there is room the pod starts.
#[test]
fn a_full_disk_without_the_journal_fails_the_start_before_the_device_moves() {
    use netclaim_tests::{
        runtime::{Mode, RuntimeConfig},
        scenario::{self, link_facts, prepare, run_in_netns, NIC},
    };
    use std::time::Duration;
    let (topo, st, tmpfs) = checkpoint_on_small_fs("cfd");
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let env = [("FAILPOINTS", std::ffi::OsStr::new("journal-write=return"))];
        let c = scenario::bring_up_env(&topo, RuntimeConfig::new(Mode::Current), &scenario::Quiet, &env).await?;
        scenario::prepare_web(&c).await?;
        let before = link_facts(&topo.node, NIC)?;

        // Fill the file system to the last byte.
        let filler = SmallFs::fill(&st, "filler")?;

        let out = scenario::run_pod(&c, &topo, "pod-uid-web", "web-0").await;
        let refused = match &out.status {
            Err(status) => status.message.clone(),
            Ok(()) => anyhow::bail!(
                "the pod started with a full checkpoint file system and no journal (closed: {:?});\ndriver log:\n{}",
                out.closed,
                c.driver.log_text()
            ),
        };
        println!("[chaos] refused with a full disk: {refused}");
        anyhow::ensure!(refused.contains("checkpoint"), "the error does not name the checkpoint: {refused}");
        anyhow::ensure!(
            c.driver.log_text().contains("fail point fired"),
            "the journal fail point did not fire:\n{}",
            c.driver.log_text()
        );
        anyhow::ensure!(
            link_facts(&topo.node, NIC)? == before,
            "the NIC changed although its record could not be written"
        );
        anyhow::ensure!(topo.pod.ip(&["link", "show", "net1"]).is_err(), "the device reached the pod");

        // Room again: the store reopens itself, the failed start's record is cleared in
        // the background (so kubelet's unprepare is not refused for ever), and the pod
        // starts and stops normally.
        std::fs::remove_file(&filler)?;
        let t = std::time::Instant::now();
        loop {
            let err = scenario::unprepare(&c, "web", "uid-web").await?;
            if err.is_empty() {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(3), "unprepare still refused: {err}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(prepare(&c, "web", "uid-web").await?.is_empty());
        let out = scenario::run_pod(&c, &topo, "pod-uid-web", "web-0").await;
        anyhow::ensure!(out.is_clean(), "start after freeing space: {:?}", out.status);
        let (stop, _) = scenario::stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        anyhow::ensure!(stop.is_clean(), "stop: {:?}", stop.status);
        anyhow::ensure!(link_facts(&topo.node, NIC)? == before, "not restored exactly");
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    })
    .unwrap();
    drop(tmpfs);
}

#[test]
fn kill_9_under_real_containerd_loses_leaks_and_mismatches_nothing() {
    require_root();
    let Some(peers) = netclaim_tests::containerd::peers_or_skip(
        "kill_9_under_real_containerd_loses_leaks_and_mismatches_nothing",
    ) else {
        return;
    };
    let faults = std::env::var("NETCLAIM_CHAOS_REAL_FAULTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed = std::env::var("NETCLAIM_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        });
    let report = netclaim_tests::chaos::run_real(
        ChaosConfig {
            seed,
            faults,
            pods: 2,
            mix: FaultMix::default(),
        },
        peers,
    )
    .unwrap_or_else(|e| panic!("containerd chaos run with seed {seed} could not run: {e:#}"));
    println!("{}\nfault mix: {:#?}", report.line(), report.mix);
    assert_eq!(report.faults, faults);
    assert!(
        report.lost + report.leaked + report.mismatched == 0,
        "{}\n{}",
        report.line(),
        report.problems.join("\n")
    );
}

/// The driver with the `checkpoint-settle` fail point armed (the flusher never writes
/// the records settled placements owe; the 1 s catch-up still does), a prepared claim
/// for the NIC and its pod started; returns the NIC's facts at home from before the
/// start. `listed`: the runtime lists the pod in every Synchronize (it runs).
async fn settle_held(
    topo: &netclaim_tests::scenario::Topology,
    listed: bool,
) -> anyhow::Result<(netclaim_tests::scenario::Cluster, (u64, Vec<String>))> {
    use netclaim_tests::{
        runtime::{pod, Mode, RuntimeConfig},
        scenario::{self, link_facts, NIC},
    };
    let mut config = RuntimeConfig::new(Mode::Current);
    if listed {
        let netns = topo.pod.path().to_string_lossy().to_string();
        config.pods = vec![pod(
            "sandbox-web",
            "default",
            "web-0",
            "pod-uid-web",
            &netns,
        )];
    }
    let c = scenario::bring_up_env(topo, config, &scenario::Quiet, &settle_held_env()).await?;
    scenario::prepare_web(&c).await?;
    let home = link_facts(&topo.node, NIC)?;
    let out = scenario::run_pod(&c, topo, "pod-uid-web", "web-0").await;
    anyhow::ensure!(
        out.is_clean(),
        "start: {:?}\n{}",
        out.status,
        c.driver.log_text()
    );
    Ok((c, home))
}

/// The environment that arms the `checkpoint-settle` fail point.
fn settle_held_env() -> [(&'static str, &'static std::ffi::OsStr); 1] {
    [(
        "FAILPOINTS",
        std::ffi::OsStr::new("checkpoint-settle=return"),
    )]
}

/// Kills the driver and starts it again with [`settle_held_env`]; waits until it is
/// registered with the runtime again.
async fn kill_and_restart(
    c: &mut netclaim_tests::scenario::Cluster,
    topo: &netclaim_tests::scenario::Topology,
) -> anyhow::Result<()> {
    c.kill_and_restart(topo, &settle_held_env()).await
}

/// A pod start answers before the journal record of its `InPod` placement is written
/// (the flusher writes it right after). Killed in that window (a fail point holds the
/// flusher), the restarted driver finds only the durable `Entering` record: it takes
/// the device back, and synchronize, which lists the running pod, hands it over again
/// configured exactly as before. Then the pod stops and the NIC is home as it was.
#[test]
fn a_kill_before_the_start_settles_hands_the_device_over_again() {
    use netclaim_tests::scenario::{self, link_facts, run_in_netns, NIC, POD_IF};
    use std::time::Duration;
    require_root();
    let topo = std::sync::Arc::new(scenario::Topology::new("css").unwrap());
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let (mut c, home) = settle_held(&topo, true).await?;
        let in_pod = link_facts(&topo.pod, POD_IF)?;
        kill_and_restart(&mut c, &topo).await?;
        let log = c.driver.log_text();
        anyhow::ensure!(
            log.contains("fail point fired") && log.contains("was cut off; returning its devices"),
            "the restarted driver did not find the cut-off start:\n{log}"
        );
        // The log goes on across restarts: the second hand-over is synchronize's.
        let t0 = std::time::Instant::now();
        while c
            .driver
            .log_text()
            .matches("device handed to the pod")
            .count()
            < 2
        {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "synchronize did not hand the device over again:\n{}",
                c.driver.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::ensure!(
            link_facts(&topo.pod, POD_IF)? == in_pod,
            "the device is not configured in the pod as before the kill"
        );
        let (stop, _) = scenario::stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        anyhow::ensure!(
            stop.is_clean(),
            "stop: {:?}\n{}",
            stop.status,
            c.driver.log_text()
        );
        anyhow::ensure!(link_facts(&topo.node, NIC)? == home, "not restored exactly");
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    })
    .unwrap();
}

/// A pod stop answers before the journal record of its `Home` placement is written.
/// Killed in that window, the restarted driver finds the durable `Leaving` record,
/// finds the device home and records it home without changing it; unprepare is not
/// refused and the NIC is exactly as the host had it.
#[test]
fn a_kill_before_the_stop_settles_leaves_the_device_home() {
    use netclaim_tests::scenario::{
        self, link_facts, link_facts_at, run_in_netns, unprepare, NIC, POD_IF,
    };
    use std::time::Duration;
    require_root();
    let topo = std::sync::Arc::new(scenario::Topology::new("csh").unwrap());
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let (mut c, home) = settle_held(&topo, false).await?;
        // The start's own `InPod` record is made durable by the catch-up (1 s quiet).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (stop, _) = scenario::stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        anyhow::ensure!(
            stop.is_clean(),
            "stop: {:?}\n{}",
            stop.status,
            c.driver.log_text()
        );
        anyhow::ensure!(
            link_facts(&topo.node, NIC)? == home,
            "not restored exactly by the stop"
        );
        // The flusher tries the stop's settled record right after the give-back, and
        // the fail point holds it; with both cores busy that try can come later than
        // the device is home. The kill belongs after it.
        let t0 = std::time::Instant::now();
        while c.driver.log_text().matches("fail point fired").count() < 2 {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "the flusher never tried the stop's record:\n{}",
                c.driver.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        kill_and_restart(&mut c, &topo).await?;
        let log = c.driver.log_text();
        anyhow::ensure!(
            log.matches("fail point fired").count() >= 2
                && log.contains("was cut off; returning its devices"),
            "the restarted driver did not find the unsettled stop:\n{log}"
        );
        let err = unprepare(&c, "web", "uid-web").await?;
        anyhow::ensure!(
            err.is_empty(),
            "unprepare after the restart: {err}\n{}",
            c.driver.log_text()
        );
        anyhow::ensure!(
            link_facts(&topo.node, NIC)? == home,
            "the NIC changed after the restart"
        );
        anyhow::ensure!(
            link_facts_at(topo.pod.path(), POD_IF)?.is_none(),
            "the device is back in the pod"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    })
    .unwrap();
}

/// Killed while unprepare unpinned the claim's staged data path (the real-containerd
/// campaign, seed 1796177661, left four maps with the marker among them), the
/// restarted driver's unprepare removes the rest instead of failing to open it for
/// good; the NIC is home without programs, and the claim prepares and its pod starts
/// with a data path again.
#[test]
fn a_kill_during_unprepare_leaves_a_removal_the_next_unprepare_finishes() {
    use netclaim_tests::{
        netenv::files_below,
        runtime::{Mode, RuntimeConfig},
        scenario::{self, run_in_netns, unprepare, Quiet},
    };
    require_root();
    let topo = std::sync::Arc::new(scenario::Topology::new("cun").unwrap());
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let mut c =
            scenario::bring_up_env(&topo, RuntimeConfig::new(Mode::Current), &Quiet, &[]).await?;
        scenario::prepare_web(&c).await?;
        let pins = files_below(topo.bpf.path());
        let dir = pins
            .iter()
            .find(|p| p.ends_with("NC_COUNTERS"))
            .and_then(|p| p.parent())
            .map(std::path::Path::to_path_buf)
            .ok_or_else(|| anyhow::anyhow!("prepare staged no data path: {pins:?}"))?;
        let kept = ["NC_RT6_A", "NC_COUNTERS", "NC_LOC6_B", "NC_SLOTS"];
        c.kill_then_restart(&topo, &[], || {
            for f in std::fs::read_dir(&dir)? {
                let f = f?.path();
                if !kept.iter().any(|k| f.ends_with(k)) {
                    std::fs::remove_file(&f)?;
                }
            }
            Ok(())
        })
        .await?;
        let err = unprepare(&c, "web", "uid-web").await?;
        anyhow::ensure!(
            err.is_empty(),
            "unprepare after the kill: {err}\n{}",
            c.driver.log_text()
        );
        anyhow::ensure!(
            files_below(topo.bpf.path()).is_empty(),
            "pins left: {:?}",
            files_below(topo.bpf.path())
        );
        let shown = topo
            .node
            .ip(&["-d", "link", "show", "dev", scenario::NIC])?;
        anyhow::ensure!(
            !String::from_utf8_lossy(&shown.stdout).contains("prog/xdp"),
            "XDP left on the NIC"
        );
        let err = scenario::prepare(&c, "web", "uid-web").await?;
        anyhow::ensure!(err.is_empty(), "prepare again: {err}");
        let out = scenario::run_pod(&c, &topo, "pod-uid-web", "web-0").await;
        anyhow::ensure!(
            out.is_clean(),
            "start after it: {:?}\n{}",
            out.status,
            c.driver.log_text()
        );
        let (stop, _) = scenario::stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        anyhow::ensure!(stop.is_clean(), "stop: {:?}", stop.status);
        Ok(())
    })
    .unwrap();
}
