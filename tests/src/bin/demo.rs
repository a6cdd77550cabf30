//! `cargo xtask demo`: the life of a claimed interface, narrated step by step, with
//! the real `netclaim` binary and the stand-ins. Everything happens in namespaces this
//! program creates; it exits 0 and leaves nothing behind, or says what failed.

use std::{
    io::Write,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use netclaim_tests::{
    runtime::Mode,
    scenario::{
        bring_up, claim, condition, good_parameters, link_facts, netclaim_binary, prepare,
        run_in_netns, run_pod, status_entry, stop_pod, traffic, unprepare, wait_for, Narrator,
        Topology, NIC, POD_IF,
    },
};
use serde_json::json;

struct Loud;

impl Narrator for Loud {
    fn step(&self, n: u32, title: &str) {
        println!("\n\x1b[1m==> {n}. {title}\x1b[0m");
    }
    fn show(&self, label: &str, body: &str) {
        println!("--- {label}");
        for line in body.lines() {
            println!("    {line}");
        }
    }
    fn progress(&self, what: &str, elapsed: Duration) {
        print!(
            "\r    … waiting for {what} ({:.1} s)",
            elapsed.as_secs_f64()
        );
        let _ = std::io::stdout().flush();
    }
}

fn sh(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => format!(
            "$ {program} {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("$ {program}: {e}"),
    }
}

const N: u32 = 20;

fn main() -> Result<()> {
    let started = Instant::now();
    println!(
        "netclaim demo: fake API server, kubelet and NRI runtime; real namespaces, veth and eBPF"
    );
    let topo = Arc::new(Topology::new("demo")?);
    let names = [
        topo.node.name().to_string(),
        topo.pod.name().to_string(),
        topo.wire.name().to_string(),
    ];
    let bpf_root = topo.bpf.path().to_path_buf();
    let t = topo.clone();
    let result = run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let n = &Loud;
        let mut c = bring_up(&topo, Mode::Current, n).await?;

        n.step(3, "a claim with a static address, a route and enforcement, allocated to eth1 and prepared");
        let claim_obj = claim(
            "web",
            "uid-web",
            &c.device,
            "web-0",
            "pod-uid-web",
            good_parameters(),
        );
        n.show(
            "ResourceClaim (as the scheduler allocated it)",
            &serde_yaml::to_string(&claim_obj)?,
        );
        c.api.put(claim_obj)?;
        let err = prepare(&c, "web", "uid-web").await?;
        ensure!(err.is_empty(), "prepare failed: {err}");
        println!("    NodePrepareResources: ok");

        n.step(
            4,
            "the pod starts (RunPodSandbox): eth1 moves in as net1, configured, data path attached",
        );
        let before = link_facts(&topo.node, NIC)?;
        n.show(
            "eth1 on the node before",
            &format!("mtu {} addresses {:?}", before.0, before.1),
        );
        let out = run_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(out.is_clean(), "RunPodSandbox failed: {:?}", out.status);
        println!(
            "    RunPodSandbox: ok in {:.1} ms (measured by the runtime)",
            out.latency.as_secs_f64() * 1e3
        );
        n.show(
            "inside the pod",
            &format!(
                "{}{}",
                String::from_utf8_lossy(&topo.pod.ip(&["addr", "show", POD_IF])?.stdout),
                String::from_utf8_lossy(&topo.pod.ip(&["route"])?.stdout)
            ),
        );

        n.step(
            5,
            "traffic: an allowed destination passes, a forbidden one is dropped",
        );
        let (allowed, forbidden) = tokio::task::block_in_place(|| traffic(&topo, N))?;
        println!("    to 198.51.100.1 (route in the claim):      {allowed}/{N} arrived");
        println!("    to 203.0.113.1 (route added inside the pod, not in the claim): {forbidden}/{N} arrived");
        ensure!(
            allowed == u64::from(N) && forbidden == 0,
            "enforcement did not behave"
        );

        n.step(
            6,
            "the claim's status: conditions, networkData and live counters",
        );
        let entry = wait_for(
            n,
            "the status refresh with counters",
            Duration::from_secs(20),
            || {
                let e = status_entry(&c.api, "web")?;
                (e["data"]["counters"]["drops"]["no_route"] == json!(N)).then_some(e)
            },
        )
        .await?;
        println!();
        let claim_now = c
            .api
            .get("ResourceClaim", "default", "web")
            .context("claim")?;
        n.show(
            "kubectl get resourceclaim web -o yaml (status)",
            &serde_yaml::to_string(&claim_now["status"])?,
        );
        ensure!(condition(&entry, "Ready").is_some_and(|c| c["status"] == "True"));

        n.step(
            7,
            "what is attached, as bpftool and netclaim inspect see it",
        );
        let dp = &entry["data"]["datapath"];
        let prog = dp["egressProgramId"].as_u64().unwrap_or(0).to_string();
        let prog_in = dp["ingressProgramId"].as_u64().unwrap_or(0).to_string();
        let pin_dir = topo.bpf.path().join("default/web").join(&c.device);
        let link_pin = pin_dir.join("link_egress").display().to_string();
        let rt_pin = pin_dir.join("NC_RT4_A").display().to_string();
        let bpf_root = topo.bpf.path().display().to_string();
        n.show(
            "bpftool",
            &[
                sh("bpftool", &["prog", "show", "id", &prog]),
                sh("bpftool", &["prog", "show", "id", &prog_in]),
                sh("bpftool", &["link", "show", "pinned", &link_pin]),
                sh("bpftool", &["map", "dump", "pinned", &rt_pin]),
            ]
            .join(""),
        );
        let bin = netclaim_binary()?.display().to_string();
        n.show(
            "netclaim inspect",
            &sh(&bin, &["inspect", "--bpf-root", &bpf_root]),
        );

        n.step(
            8,
            "the pod stops: data path detached, eth1 home and restored, claim unprepared",
        );
        let (stop, remove) = stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(
            stop.is_clean() && remove.is_clean(),
            "stop {:?} / remove {:?}",
            stop.status,
            remove.status
        );
        let after = link_facts(&topo.node, NIC)?;
        n.show(
            "eth1 on the node after",
            &format!("mtu {} addresses {:?}", after.0, after.1),
        );
        ensure!(
            after == before,
            "eth1 not restored: before {before:?}, after {after:?}"
        );
        let err = unprepare(&c, "web", "uid-web").await?;
        ensure!(err.is_empty(), "unprepare: {err}");
        println!("    NodeUnprepareResources: ok");

        n.step(9, "netclaim shuts down (SIGTERM)");
        let code = c.driver.stop()?;
        ensure!(code == Some(0), "netclaim exited with {code:?}");
        println!("    netclaim exited with status 0");
        Ok(())
    });
    if let Err(e) = &result {
        eprintln!("\ndemo failed: {e:#}");
        let log = topo.dir.path().join("netclaim.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            eprintln!("--- last lines of the driver log");
            for line in text
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                eprintln!("    {line}");
            }
        }
    }
    drop(topo);

    Loud.step(10, "nothing left behind");
    let netns =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout)
            .into_owned();
    let leftover_ns: Vec<&String> = names
        .iter()
        .filter(|n| netns.contains(n.as_str()))
        .collect();
    println!("    network namespaces left: {leftover_ns:?}");
    println!("    bpffs directory left: {}", bpf_root.exists());
    ensure!(
        leftover_ns.is_empty() && !bpf_root.exists(),
        "cleanup incomplete"
    );
    result?;
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
