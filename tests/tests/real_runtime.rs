//! The real-runtime tier: containerd 2.3.4 (built from its upstream tag, NRI 0.12.0)
//! drives the real `netclaim run` through its NRI socket, and `crictl` plays kubelet's
//! CRI side. Nothing on the runtime side is netclaim's code, so a protocol bug present
//! in netclaim and its own stand-in cannot hide here.
//!
//! Each test has its own node/wire namespaces, containerd and driver (see
//! `netclaim_tests::containerd`). On a machine without containerd the tests say loudly
//! that they skipped; `.ci/run` sets `NETCLAIM_REQUIRE_REAL_RUNTIME=1`, which makes that
//! a failure.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use netclaim_tests::{
    containerd::{self, peers_or_skip, RealCluster},
    netenv::require_root,
    scenario::{
        self, claim, good_parameters, prepare_with, run_in_netns, status_entry, unprepare_with,
        Topology, NIC, POD_IF,
    },
};

const BUDGET: Duration = Duration::from_secs(2);

/// The node's NIC is home with its host configuration.
fn assert_home(topo: &Topology) -> Result<()> {
    let (mtu, addrs) = scenario::link_facts(&topo.node, NIC)?;
    if mtu != 1400 || addrs != ["192.0.2.50/24"] {
        bail!("{NIC} came home as mtu {mtu} addresses {addrs:?}, not 1400 [192.0.2.50/24]");
    }
    Ok(())
}

async fn put_claim(c: &RealCluster, name: &str, uid: &str, pod: &str, pod_uid: &str) -> Result<()> {
    c.side.api.put(claim(
        name,
        uid,
        &c.side.device,
        pod,
        pod_uid,
        good_parameters(),
    ))?;
    let err = prepare_with(&c.side.dra, name, uid).await?;
    if !err.is_empty() {
        bail!("prepare {name}: {err}");
    }
    Ok(())
}

#[test]
fn a_pod_on_real_containerd_gets_its_device_enforced_and_gives_it_back() {
    require_root();
    let Some(peers) =
        peers_or_skip("a_pod_on_real_containerd_gets_its_device_enforced_and_gives_it_back")
    else {
        return;
    };
    let topo = Topology::new("rrl").unwrap();
    let node = topo.node.path().to_path_buf();
    let topo = std::sync::Arc::new(topo);
    let t = topo.clone();
    run_in_netns(&node, move || async move {
        let topo = t;
        let c = containerd::bring_up(&topo, peers, "rrl", BUDGET).await?;
        put_claim(&c, "web", "claim-uid-rrl", "web-0", "pod-uid-rrl").await?;

        let (pod, took) = c.runtime.run_pod("web-0", "pod-uid-rrl")?;
        println!("[real] crictl runp with a claimed device: {took:?}");
        let netns = c.runtime.pod_netns(&pod)?;
        let (mtu, addrs) =
            netclaim_tests::scenario::link_facts_at(&netns, POD_IF)?.with_context(|| {
                format!(
                    "{POD_IF} is not in the pod; driver log:\n{}",
                    c.side.driver.log_text()
                )
            })?;
        assert_eq!((mtu, addrs), (1500, vec!["192.0.2.10/24".to_string()]));
        assert!(
            netclaim_tests::scenario::link_facts_at(topo.node.path(), NIC)?.is_none(),
            "{NIC} still on the node"
        );
        // netclaim-cni started the hand-over at the CNI ADD; the hook collected it.
        let log = c.side.driver.log_text();
        assert!(
            log.contains("hand-over started ahead of RunPodSandbox")
                && log.contains("hand-over started at the CNI ADD is done"),
            "the hand-over did not start at the CNI ADD:\n{log}"
        );

        // A container in the pod: the runtime's CreateContainer/StartContainer path.
        let ctr = c.runtime.run_container(&pod, "pod-uid-rrl", "app")?;
        assert_eq!(c.runtime.container_state(&ctr)?, "CONTAINER_RUNNING");

        let (allowed, forbidden) = netclaim_tests::containerd::pod_traffic(&topo, &netns, 200)?;
        assert_eq!(
            (allowed, forbidden),
            (200, 0),
            "the data path lets through exactly the allowed traffic"
        );

        // Status says the device is ready and enforcing.
        let entry = scenario::wait_for(
            &scenario::Quiet,
            "Ready status",
            Duration::from_secs(10),
            || {
                status_entry(&c.side.api, "web").filter(|e| {
                    scenario::condition(e, "Ready").is_some_and(|r| r["status"] == "True")
                })
            },
        )
        .await?;
        assert!(entry["networkData"]["interfaceName"] == POD_IF, "{entry}");

        // StopPodSandbox answers before the device goes home, and containerd removes
        // the pod's namespace right after (CNI DEL, unmount): the held namespace keeps
        // the veth alive until it is home and restored.
        let stop = c.runtime.stop_pod(&pod)?;
        println!("[real] crictl stopp: {stop:?}");
        let took = home_after_stop(&topo).await?;
        println!("[real] home {took:?} after crictl stopp returned");
        c.runtime.remove_pod(&pod)?;
        let err = unprepare_with(&c.side.dra, "web", "claim-uid-rrl").await?;
        assert_eq!(err, "", "unprepare after the pod stopped");
        Ok(())
    })
    .unwrap();
}

/// The runtime gives a pod start up after its CNI ADD started the hand-over: containerd
/// cannot build the pause container (a seccomp profile that does not exist), tears the
/// pod's network down (CNI DEL) and removes its namespace; RunPodSandbox never comes.
/// netclaim-cni's DEL must bring the device home with its host settings, and the same
/// claim must then start a pod normally. Then the opposite order: a bad claim config
/// fails the ahead start, and RunPodSandbox reports that failure, naming the field.
#[test]
fn a_pod_start_given_up_after_the_cni_add_brings_the_device_home() {
    require_root();
    let Some(peers) =
        peers_or_skip("a_pod_start_given_up_after_the_cni_add_brings_the_device_home")
    else {
        return;
    };
    let topo = Topology::new("rra").unwrap();
    let node = topo.node.path().to_path_buf();
    let topo = std::sync::Arc::new(topo);
    let t = topo.clone();
    run_in_netns(&node, move || async move {
        let topo = t;
        let c = containerd::bring_up(&topo, peers, "rra", BUDGET).await?;
        put_claim(&c, "web", "claim-uid-rra", "web-0", "pod-uid-rra").await?;

        let mut cfg = c.runtime.pod_config("web-0", "pod-uid-rra");
        cfg["linux"]["security_context"] =
            serde_json::json!({"seccomp": {"profile_type": 2, "localhost_ref": "/nonexistent/netclaim-test-profile.json"}});
        let err = c.runtime.runp_refused(&cfg)?;
        println!("[real] runp refused: {err}");
        assert!(err.contains("seccomp"), "refused for another reason: {err}");
        let log = c.side.driver.log_text();
        assert!(log.contains("hand-over started ahead of RunPodSandbox"), "no ahead start:\n{log}");
        let took = until("eth1 home after the CNI DEL", Duration::from_secs(5), || assert_home(&topo).is_ok())
            .await
            .with_context(|| c.side.driver.log_text())?;
        println!("[real] device home {took:?} after the runtime gave the pod up");
        let log = c.side.driver.log_text();
        assert!(
            log.contains("CNI DEL of a namespace that holds the pod's devices"),
            "the device came home some other way:\n{log}"
        );
        assert!(!log.contains("RunPodSandbox: pod"), "a hook ran for the refused pod:\n{log}");

        // The claim is free for the pod's next sandbox.
        let (pod, _) = c.runtime.run_pod("web-0", "pod-uid-rra")?;
        let netns = c.runtime.pod_netns(&pod)?;
        ensure_in_pod(&c, &netns)?;
        c.runtime.stop_pod(&pod)?;
        c.runtime.remove_pod(&pod)?;
        home_after_stop(&topo).await?;
        assert_eq!(unprepare_with(&c.side.dra, "web", "claim-uid-rra").await?, "");

        // A config that fails the hand-over where only the pod shows it: the pod-side
        // name `eth0`, which the pod's CNI network already took. The ahead start fails
        // and undoes itself; RunPodSandbox says why, containerd refuses the pod, and
        // the device is home.
        let mut bad = good_parameters();
        bad["interface"]["name"] = serde_json::json!("eth0");
        c.side.api.put(claim("bad", "claim-uid-bad", &c.side.device, "bad-0", "pod-uid-bad", bad))?;
        let prepared = prepare_with(&c.side.dra, "bad", "claim-uid-bad").await?;
        if prepared.is_empty() {
            let cfg = c.runtime.pod_config("bad-0", "pod-uid-bad");
            let err = c.runtime.runp_refused(&cfg)?;
            println!("[real] runp with a failing hand-over refused: {err}");
            assert!(err.contains("NRI RunPodSandbox failed") && err.contains("claim default/bad"), "{err}");
            assert_home(&topo)?;
            assert_eq!(unprepare_with(&c.side.dra, "bad", "claim-uid-bad").await?, "");
        } else {
            bail!("prepare refused the name, so the hand-over failure path was not reached: {prepared}");
        }
        Ok(())
    })
    .unwrap();
}

/// Waits until `check` holds, polling every 20 ms; fails after `timeout` with `what`.
/// Waits until the device is home as it was after `crictl stopp` returned
/// (StopPodSandbox answers before the give-back; containerd has removed the pod's
/// namespace by then); how long that took.
async fn home_after_stop(topo: &Topology) -> Result<Duration> {
    until(
        "eth1 home after crictl stopp",
        Duration::from_secs(5),
        || assert_home(topo).is_ok(),
    )
    .await
}

async fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<Duration> {
    let t = Instant::now();
    while !check() {
        if t.elapsed() > timeout {
            bail!("timed out after {timeout:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t.elapsed())
}

/// containerd restarts while a pod runs; afterwards it sends the plugin no
/// StopPodSandbox or RemovePodSandbox for that pod (containerd issue 8426). netclaim
/// notices that the runtime removed the pod's namespace, gives the device back from the
/// namespace it held open, and unprepare succeeds. A pod started while containerd comes
/// back gets its device as soon as netclaim reconnects: that delay is the reconnect
/// window.
#[test]
fn after_a_containerd_restart_the_forgotten_stop_still_brings_the_device_home() {
    require_root();
    let Some(peers) =
        peers_or_skip("after_a_containerd_restart_the_forgotten_stop_still_brings_the_device_home")
    else {
        return;
    };
    let topo = Topology::with_nics("rrr", 2).unwrap();
    let node = topo.node.path().to_path_buf();
    let topo = std::sync::Arc::new(topo);
    let t = topo.clone();
    run_in_netns(&node, move || async move {
        let topo = t;
        let mut c = containerd::bring_up(&topo, peers, "rrr", BUDGET).await?;
        put_claim(&c, "web", "claim-uid-rrr", "web-0", "pod-uid-rrr").await?;
        let (pod, _) = c.runtime.run_pod("web-0", "pod-uid-rrr")?;
        let netns = c.runtime.pod_netns(&pod)?;
        ensure_in_pod(&c, &netns)?;

        // A second claim, on eth2, for a pod that starts during the restart.
        let devices = scenario::wait_devices_of(&c.side.api, &[scenario::nic_name(2)], Duration::from_secs(20)).await?;
        let eth2 = devices.get("eth2").context("eth2 published")?.clone();
        let mut late = good_parameters();
        late["interface"]["addresses"] = serde_json::json!(["192.0.2.20/24"]);
        c.side.api.put(claim("late", "claim-uid-late", &eth2, "late-0", "pod-uid-late", late))?;
        let err = prepare_with(&c.side.dra, "late", "claim-uid-late").await?;
        assert_eq!(err, "");

        let from = c.runtime.log_len();
        c.runtime.restart()?;
        let (late_pod, _) = c.runtime.run_pod("late-0", "pod-uid-late")?;
        let late_started = Instant::now();
        let late_netns = c.runtime.pod_netns(&late_pod)?;
        c.runtime.wait_plugin("netclaim", from).await?;
        until("the late pod's device", Duration::from_secs(15), || {
            netclaim_tests::scenario::link_facts_at(&late_netns, POD_IF).ok().flatten().is_some()
        })
        .await
        .with_context(|| c.side.driver.log_text())?;
        let window = late_started.elapsed();
        println!("[real] reconnect window: a pod started during a containerd restart ran {window:?} without its device");

        // The runtime no longer tells the plugin about the first pod's end. Its CNI DEL
        // would (netclaim-cni gives the devices of the namespace back); a node without
        // the plugin has only the keeper, which is what this checks.
        c.runtime.set_cni_chain(false)?;
        c.runtime.stop_pod(&pod)?;
        c.runtime.remove_pod(&pod)?;
        let took = until("eth1 back home", Duration::from_secs(10), || assert_home(&topo).is_ok())
            .await
            .with_context(|| c.side.driver.log_text())?;
        println!("[real] device home {took:?} after the runtime removed the pod without telling the plugin");
        let log = c.side.driver.log_text();
        assert!(
            log.contains("without stopping the pod through NRI"),
            "netclaim did not say why the device came home:\n{log}"
        );
        // The checkpoint is cleared just after the device is home; kubelet retries an
        // unprepare that is refused meanwhile, and so does this.
        let t = Instant::now();
        loop {
            let err = unprepare_with(&c.side.dra, "web", "claim-uid-rrr").await?;
            if err.is_empty() {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(5), "unprepare after the forgotten stop: {err}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The late pod is stopped normally (the runtime knows it since its restart).
        c.runtime.stop_pod(&late_pod)?;
        c.runtime.remove_pod(&late_pod)?;
        assert_eq!(scenario::link_facts(&topo.node, "eth2")?.1, Vec::<String>::new());
        let _ = c.stop_driver();
        Ok(())
    })
    .unwrap();
}

/// netclaim is down while the runtime stops and removes a pod: the namespace dies with
/// the veth in it. The restarted driver finds the pod gone, reports the device lost in
/// the claim's status, removes its pins, and unprepare succeeds.
#[test]
fn a_pod_removed_while_netclaim_is_down_is_reported_and_released() {
    require_root();
    let Some(peers) =
        peers_or_skip("a_pod_removed_while_netclaim_is_down_is_reported_and_released")
    else {
        return;
    };
    let topo = Topology::new("rrd").unwrap();
    let node = topo.node.path().to_path_buf();
    let topo = std::sync::Arc::new(topo);
    let t = topo.clone();
    run_in_netns(&node, move || async move {
        let topo = t;
        let mut c = containerd::bring_up(&topo, peers, "rrd", BUDGET).await?;
        put_claim(&c, "web", "claim-uid-rrd", "web-0", "pod-uid-rrd").await?;
        let (pod, _) = c.runtime.run_pod("web-0", "pod-uid-rrd")?;
        let netns = c.runtime.pod_netns(&pod)?;
        ensure_in_pod(&c, &netns)?;
        assert!(!netclaim_tests::netenv::files_below(topo.bpf.path()).is_empty());

        c.stop_driver()?;
        c.runtime.stop_pod(&pod)?;
        c.runtime.remove_pod(&pod)?;
        c.start_driver(&topo).await?;

        let entry = scenario::wait_for(
            &scenario::Quiet,
            "DeviceLost in the status",
            Duration::from_secs(10),
            || {
                status_entry(&c.side.api, "web").filter(|e| {
                    e["conditions"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "DeviceLost"))
                })
            },
        )
        .await
        .with_context(|| c.side.driver.log_text())?;
        println!("[real] status of the lost device: {entry}");
        let err = unprepare_with(&c.side.dra, "web", "claim-uid-rrd").await?;
        assert_eq!(err, "", "unprepare of a claim whose device was lost");
        let left = topo.bpf.leftovers();
        assert!(left.is_empty(), "pins left behind: {left:?}");
        Ok(())
    })
    .unwrap();
}

/// The claim's interface is in the pod with its configured address.
fn ensure_in_pod(c: &RealCluster, netns: &Path) -> Result<()> {
    match netclaim_tests::scenario::link_facts_at(netns, POD_IF)? {
        Some((1500, addrs)) if !addrs.is_empty() => Ok(()),
        other => bail!(
            "{POD_IF} in the pod: {other:?}\ndriver log:\n{}",
            c.side.driver.log_text()
        ),
    }
}

/// A pod whose devices do not fit in the runtime's hook budget: netclaim stops before
/// the budget runs out, undoes what it did and fails the hook, so containerd fails the
/// pod start with netclaim's reason instead of closing the plugin and starting the pod
/// without its devices. The plugin stays connected: a one-device pod then starts.
#[test]
fn a_hook_that_would_exceed_the_runtime_budget_fails_cleanly_in_time() {
    require_root();
    let Some(peers) =
        peers_or_skip("a_hook_that_would_exceed_the_runtime_budget_fails_cleanly_in_time")
    else {
        return;
    };
    const NICS: usize = 8;
    // Eight devices take about 8 × 50 ms here; the budget allows a few.
    let budget = Duration::from_millis(250);
    let topo = Topology::with_nics("rrb", NICS + 1).unwrap();
    let node = topo.node.path().to_path_buf();
    let topo = std::sync::Arc::new(topo);
    let t = topo.clone();
    run_in_netns(&node, move || async move {
        let topo = t;
        let c = containerd::bring_up(&topo, peers, "rrb", budget).await?;
        let names: Vec<String> = (1..=NICS + 1).map(scenario::nic_name).collect();
        let devices = scenario::wait_devices_of(&c.side.api, &names, Duration::from_secs(20)).await?;
        let claimed: Vec<scenario::ClaimDevice> = (1..=NICS)
            .map(|j| scenario::ClaimDevice {
                request: format!("nic{j}"),
                device: devices[&scenario::nic_name(j)].clone(),
                parameters: scenario::indexed_parameters(j),
            })
            .collect();
        c.side.api.put(scenario::claim_with_devices("many", "claim-uid-many", &claimed, "many-0", "pod-uid-many"))?;
        assert_eq!(prepare_with(&c.side.dra, "many", "claim-uid-many").await?, "");

        let from = c.runtime.log_len();
        let t0 = Instant::now();
        let refused = c.runtime.runp("many-0", "pod-uid-many")?;
        let took = t0.elapsed();
        let err = match refused {
            Ok((id, _)) => bail!(
                "the pod started although its devices cannot fit the budget (pod {id});\ndriver log:\n{}",
                c.side.driver.log_text()
            ),
            Err(e) => e,
        };
        println!("[real] runp refused after {took:?}: {err}");
        assert!(err.contains("hook budget"), "containerd did not pass netclaim's reason: {err}");
        let log = c.runtime.log_text();
        let log = log.get(from..).unwrap_or("");
        assert!(
            !log.contains("connection to plugin") && !log.contains("deadline exceeded"),
            "containerd timed the hook out or closed the plugin:\n{log}"
        );
        // Every device is home with the node's settings (eth1 had an address; the others none).
        assert_home(&topo)?;
        for j in 2..=NICS {
            let (_, addrs) = scenario::link_facts(&topo.node, &scenario::nic_name(j))?;
            assert!(addrs.is_empty(), "{} kept {addrs:?}", scenario::nic_name(j));
        }
        // The claim's status says why.
        let entry = scenario::wait_for(&scenario::Quiet, "HookBudget in the status", Duration::from_secs(10), || {
            c.side.api.get("ResourceClaim", "default", "many").filter(|claim| {
                claim["status"]["devices"].as_array().is_some_and(|ds| {
                    ds.iter().any(|d| d["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["reason"] == "HookBudget")))
                })
            })
        })
        .await;
        assert!(entry.is_ok(), "no HookBudget condition");

        // The plugin is still connected: a pod with one device starts within the budget.
        let last = scenario::nic_name(NICS + 1);
        let mut one = scenario::indexed_parameters(1);
        one["interface"]["name"] = serde_json::json!(POD_IF);
        c.side.api.put(claim("one", "claim-uid-one", &devices[&last], "one-0", "pod-uid-one", one))?;
        assert_eq!(prepare_with(&c.side.dra, "one", "claim-uid-one").await?, "");
        let (pod, took) = c.runtime.run_pod("one-0", "pod-uid-one")?;
        println!("[real] one-device pod started in {took:?} with a {budget:?} budget");
        let netns = c.runtime.pod_netns(&pod)?;
        assert!(netclaim_tests::scenario::link_facts_at(&netns, POD_IF)?.is_some(), "the one-device pod has no device");
        c.runtime.stop_pod(&pod)?;
        c.runtime.remove_pod(&pod)?;
        Ok(())
    })
    .unwrap();
}

/// Many pods at once, as a node that schedules a burst sees them: 32 pods with one
/// claimed device each, started together through the real containerd with its default
/// 2 s hook budget. Every pod must start with its device (a hook that ran out of budget
/// would leave a pod without it, or refused). The slowest hook and the headroom are
/// printed; the target (half the budget) lives in `cargo xtask bench pod-start`.
#[test]
fn thirty_two_pods_at_once_all_start_with_their_devices() {
    require_root();
    let Some(peers) = peers_or_skip("thirty_two_pods_at_once_all_start_with_their_devices") else {
        return;
    };
    const PODS: usize = 32;
    let topo = Topology::with_nics("rr32", PODS).unwrap();
    let node = topo.node.path().to_path_buf();
    let topo = std::sync::Arc::new(topo);
    let t = topo.clone();
    run_in_netns(&node, move || async move {
        let topo = t;
        let c = containerd::bring_up(&topo, peers, "rr32", BUDGET).await?;
        let names: Vec<String> = (1..=PODS).map(scenario::nic_name).collect();
        let devices = scenario::wait_devices_of(&c.side.api, &names, Duration::from_secs(30)).await?;
        for j in 1..=PODS {
            let mut p = scenario::indexed_parameters(j);
            p["interface"]["name"] = serde_json::json!(POD_IF);
            c.side.api.put(claim(
                &format!("c{j}"),
                &format!("claim-uid-c{j}"),
                &devices[&scenario::nic_name(j)],
                &format!("c{j}-pod"),
                &format!("pod-uid-c{j}"),
                p,
            ))?;
            assert_eq!(prepare_with(&c.side.dra, &format!("c{j}"), &format!("claim-uid-c{j}")).await?, "");
        }
        let from = std::fs::metadata(&c.side.driver.log).map(|m| m.len() as usize).unwrap_or(0);
        let shared = std::sync::Arc::new(c);
        let t0 = Instant::now();
        let handles: Vec<_> = (1..=PODS)
            .map(|j| {
                let c = shared.clone();
                std::thread::spawn(move || c.runtime.runp(&format!("c{j}-pod"), &format!("pod-uid-c{j}")))
            })
            .collect();
        let mut ids = Vec::new();
        let mut refused = Vec::new();
        for h in handles {
            match h.join().map_err(|_| anyhow::anyhow!("runp thread panicked"))?? {
                Ok((id, _)) => ids.push(id),
                Err(e) => refused.push(e),
            }
        }
        let wall = t0.elapsed();
        let c = std::sync::Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("cluster still shared"))?;
        let hooks = netclaim_tests::runp::hook_times(&c.side.driver.log_text(), "RunPodSandbox", from);
        let max = hooks.iter().cloned().fold(0.0, f64::max);
        println!(
            "[real] {PODS} pods at once: {} started, {} refused, wall {wall:?}, slowest hook {max:.1} ms of a {BUDGET:?} budget (headroom {:.0} ms)",
            ids.len(),
            refused.len(),
            BUDGET.as_secs_f64() * 1000.0 - max
        );
        assert!(refused.is_empty(), "pods refused: {refused:?}");
        assert_eq!(hooks.len(), PODS, "hooks logged");
        for id in &ids {
            let netns = c.runtime.pod_netns(id)?;
            assert!(netclaim_tests::scenario::link_facts_at(&netns, POD_IF)?.is_some(), "pod {id} has no device");
        }
        for id in ids {
            c.runtime.stop_pod(&id)?;
            c.runtime.remove_pod(&id)?;
        }
        Ok(())
    })
    .unwrap();
}

/// A hook answer longer than containerd's 4096-byte mux read buffer: a host-network pod
/// (no network namespace) with a claimed device is refused, and the refusal names the
/// pod, whose name and namespace here are thousands of characters long. netclaim must
/// split the answer into frames the runtime reads; otherwise containerd drops the
/// plugin (`ttrpc: closed`) instead of passing the reason on.
#[test]
fn a_hook_answer_longer_than_the_runtime_read_buffer_arrives_whole() {
    require_root();
    let Some(peers) =
        peers_or_skip("a_hook_answer_longer_than_the_runtime_read_buffer_arrives_whole")
    else {
        return;
    };
    let topo = Topology::new("rrm").unwrap();
    let node = topo.node.path().to_path_buf();
    let topo = std::sync::Arc::new(topo);
    let t = topo.clone();
    run_in_netns(&node, move || async move {
        let topo = t;
        let c = containerd::bring_up(&topo, peers, "rrm", BUDGET).await?;
        put_claim(&c, "web", "claim-uid-rrm", "web-0", "pod-uid-rrm").await?;
        let name = format!("{}-name-end", "n".repeat(2800));
        let namespace = format!("{}-ns-end", "s".repeat(2000));
        let from = c.runtime.log_len();
        let refused = c.runtime.run_pod_config(&serde_json::json!({
            "metadata": {"name": name, "namespace": namespace, "uid": "pod-uid-rrm", "attempt": 0},
            "log_directory": c.runtime.dir().join("logs/long"),
            "linux": {
                "cgroup_parent": c.runtime.cgroup_parent,
                "security_context": {"namespace_options": {"network": 2}}
            }
        }));
        let err = match refused {
            Ok(id) => bail!("the host-network pod with a claimed device started ({id})"),
            Err(e) => format!("{e:#}"),
        };
        let reason = "has claimed network devices but no network namespace";
        assert!(
            err.contains(reason),
            "containerd did not pass netclaim's answer on: {}",
            &err[..err.len().min(2000)]
        );
        assert!(
            err.contains("-ns-end/") && err.contains("-name-end"),
            "the answer was cut short"
        );
        let log = c.runtime.log_text();
        let log = log.get(from..).unwrap_or("");
        let dropped: Vec<&str> = log
            .lines()
            // The NRI plugin's connection only: a failed sandbox's shim connection also
            // ends in "ttrpc: closed" while containerd tears the pod down.
            .filter(|l| {
                l.contains("connection to plugin")
                    || (l.contains("plugin") && l.contains("ttrpc: closed"))
            })
            .collect();
        assert!(
            dropped.is_empty(),
            "containerd dropped the plugin over the long answer: {dropped:#?}"
        );
        println!(
            "[real] a {}-byte pod identity went through the hook answer whole",
            name.len() + namespace.len()
        );
        // The plugin is still there: the same pod, now with its own namespace, starts
        // with its device.
        let (pod, _) = c.runtime.run_pod("web-0", "pod-uid-rrm")?;
        ensure_in_pod(&c, &c.runtime.pod_netns(&pod)?)?;
        c.runtime.stop_pod(&pod)?;
        home_after_stop(&topo).await?;
        c.runtime.remove_pod(&pod)?;
        Ok(())
    })
    .unwrap();
}
