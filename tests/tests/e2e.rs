//! End to end, through both runtime generations: the real `netclaim` binary with the
//! fake API server, kubelet and NRI runtime, real namespaces, a veth NIC and real eBPF.
//! Published → allocated → prepared → pod started → interface configured in the pod →
//! allowed traffic passes, forbidden is dropped → status with conditions, networkData
//! and counters → pod stopped → device home, restored → unprepared → clean shutdown.

use std::{sync::Arc, time::Duration};

use anyhow::{ensure, Context, Result};
use netclaim_tests::runtime::{pod, FakeRuntime, Mode, RuntimeConfig};
use netclaim_tests::scenario::{
    self, bring_up, claim, condition, good_parameters, link_facts, prepare, prepare_web,
    run_in_netns, run_pod, status_entry, stop_pod, traffic, unprepare, wait_for, Quiet, Topology,
    NIC, POD_IF,
};
use serde_json::json;

const N: u32 = 30;

fn happy_path(mode: Mode, tag: &'static str) -> Result<()> {
    let topo = Arc::new(Topology::new(tag)?);
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let mut c = bring_up(&topo, mode, &Quiet).await?;
        c.api.put(claim(
            "web",
            "uid-web",
            &c.device,
            "web-0",
            "pod-uid-web",
            good_parameters(),
        ))?;
        ensure!(
            admin_up(topo.node.path(), NIC)?,
            "{NIC} not up before prepare"
        );
        let err = prepare(&c, "web", "uid-web").await?;
        ensure!(err.is_empty(), "prepare failed: {err}");
        // Parked: down at home until the pod starts (it has only an IPv4 address).
        ensure!(
            !admin_up(topo.node.path(), NIC)?,
            "{NIC} not parked at prepare\n{}",
            c.driver.log_text()
        );
        // Prepare staged the data path on the NIC at home: programs attached (XDP and
        // TCX; this bpftool lists only the XDP one), counting only, pinned.
        let staged = programs_on(topo.node.path(), NIC);
        ensure!(
            !staged.is_empty(),
            "no data path staged on {NIC} at prepare: {staged:?} {}\n{}",
            String::from_utf8_lossy(
                &std::process::Command::new("nsenter")
                    .arg(format!("--net={}", topo.node.path().display()))
                    .args(["bpftool", "-j", "net", "show", "dev", NIC])
                    .output()?
                    .stdout
            ),
            c.driver.log_text()
        );
        ensure!(
            !topo.bpf.leftovers().is_empty(),
            "staged data path not pinned"
        );

        let started = run_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(
            started.is_clean(),
            "RunPodSandbox failed: {:?}\n{}",
            started.status,
            c.driver.log_text()
        );
        println!(
            "RunPodSandbox via {:?} took {:?}",
            started.delivery, started.latency
        );

        // The interface is in the pod, configured; gone from the node.
        let (mtu, addrs) = link_facts(&topo.pod, POD_IF)?;
        ensure!(
            mtu == 1500 && addrs == vec!["192.0.2.10/24".to_string()],
            "pod link: mtu {mtu} {addrs:?}"
        );
        let routes = topo.pod.ip(&["-j", "route", "show", "198.51.100.0/24"])?;
        let routes: serde_json::Value = serde_json::from_slice(&routes.stdout)?;
        ensure!(
            routes[0]["gateway"] == "192.0.2.1" && routes[0]["dev"] == POD_IF,
            "routes {routes}"
        );
        ensure!(
            topo.node.ip(&["link", "show", NIC]).is_err(),
            "{NIC} still on the node"
        );
        // The staged programs came along with the device: the same program IDs, not
        // a fresh attach.
        let in_pod = programs_on(topo.pod.path(), POD_IF);
        ensure!(
            in_pod == staged,
            "programs in the pod {in_pod:?}, staged {staged:?}"
        );

        let (allowed, forbidden) = tokio::task::block_in_place(|| traffic(&topo, N))?;
        // The device is inside the pod, and still published.
        let published = c.api.list("ResourceSlice").iter().any(|s| {
            s["spec"]["devices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["name"] == c.device.as_str()))
        });
        ensure!(
            published,
            "{} vanished from the ResourceSlices while in use",
            c.device
        );
        ensure!(
            allowed == u64::from(N),
            "allowed traffic: {allowed}/{N} arrived"
        );
        ensure!(forbidden == 0, "forbidden traffic passed: {forbidden}");

        let entry = wait_for(
            &Quiet,
            "status with counters",
            Duration::from_secs(20),
            || {
                let e = status_entry(&c.api, "web")?;
                let counters = &e["data"]["counters"];
                let ready = ["Ready", "NetworkReady", "DataPathReady"]
                    .iter()
                    .all(|t| condition(&e, t).is_some_and(|c| c["status"] == "True"));
                (ready
                    && counters["routeHits"]["198.51.100.0/24"] == json!(N)
                    && counters["drops"]["no_route"] == json!(N))
                .then_some(e)
            },
        )
        .await
        .with_context(|| format!("claim: {:?}", c.api.get("ResourceClaim", "default", "web")))?;
        ensure!(
            condition(&entry, "Ready").is_some_and(|c| c["reason"] == "NetworkDeviceReady"),
            "{entry}"
        );
        ensure!(entry["networkData"]["interfaceName"] == POD_IF, "{entry}");
        ensure!(
            entry["networkData"]["ips"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("192.0.2.10/24"))),
            "{entry}"
        );
        ensure!(
            entry["networkData"]["hardwareAddress"]
                .as_str()
                .is_some_and(|m| m.len() == 17),
            "{entry}"
        );
        ensure!(
            entry["data"]["counters"]["txPackets"].as_u64().unwrap_or(0) >= u64::from(2 * N),
            "{entry}"
        );
        ensure!(entry["data"]["state"] == "Available", "{entry}");

        // Health and metrics reflect the real state.
        let (code, ready) = tokio::task::block_in_place(|| scenario::http_get("/readyz"))
            .with_context(|| c.driver.log_text())?;
        ensure!(
            code == 200 && !ready.contains("[-]"),
            "readyz {code}: {ready}"
        );
        let (code, metrics) = tokio::task::block_in_place(|| scenario::http_get("/metrics"))?;
        ensure!(code == 200, "metrics {code}");
        let drops = format!("netclaim_datapath_drops_total{{claim=\"default/web\",device=\"{}\",reason=\"no_route\"}} {N}", c.device);
        ensure!(metrics.contains(&drops), "missing {drops} in\n{metrics}");
        ensure!(
            metrics.contains(
                "netclaim_nri_requests_total{method=\"RunPodSandbox\",outcome=\"success\"} 1"
            ),
            "{metrics}"
        );
        ensure!(metrics.contains("netclaim_dra_requests_total{method=\"NodePrepareResources\",outcome=\"success\"} 1"), "{metrics}");

        let (stop, remove) = stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(
            stop.is_clean() && remove.is_clean(),
            "stop {:?} remove {:?}",
            stop.status,
            remove.status
        );
        let (mtu, addrs) = link_facts(&topo.node, NIC)?;
        ensure!(
            mtu == 1400 && addrs == vec!["192.0.2.50/24".to_string()],
            "restored: mtu {mtu} {addrs:?}"
        );
        ensure!(
            admin_up(topo.node.path(), NIC)?,
            "{NIC} restored down, though it was up before prepare parked it"
        );
        // Home again with the staged programs, counting only, until unprepare; the
        // pod's socket guard went with the pod.
        let home = programs_on(topo.node.path(), NIC);
        ensure!(
            home == staged,
            "programs at home {home:?}, staged {staged:?}"
        );
        ensure!(
            !topo
                .bpf
                .leftovers()
                .iter()
                .any(|p| p.to_string_lossy().contains("link_guard")),
            "socket guard left after the pod: {:?}",
            topo.bpf.leftovers()
        );

        let err = unprepare(&c, "web", "uid-web").await?;
        ensure!(err.is_empty(), "unprepare: {err}");
        ensure!(
            admin_up(topo.node.path(), NIC)?,
            "{NIC} down after unprepare"
        );
        ensure!(
            topo.bpf.leftovers().is_empty(),
            "pins left after unprepare: {:?}",
            topo.bpf.leftovers()
        );
        let left = programs_on(topo.node.path(), NIC);
        ensure!(left.is_empty(), "programs left on {NIC}: {left:?}");
        let code = c.driver.stop()?;
        ensure!(
            code == Some(0),
            "driver exit {code:?}\n{}",
            c.driver.log_text()
        );
        let sockets = netclaim_tests::netenv::files_below(&topo.kubelet_dir());
        ensure!(sockets.is_empty(), "sockets left: {sockets:?}");
        Ok(())
    })
}

/// The IDs of the eBPF programs attached to `dev` in namespace `ns` (XDP, tc, TCX),
/// as `bpftool net show` reports them.
fn programs_on(ns: &std::path::Path, dev: &str) -> Vec<u64> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["bpftool", "-j", "net", "show", "dev", dev])
        .output();
    let Ok(out) = out else { return Vec::new() };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut ids: Vec<u64> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| ["xdp", "tc", "tcx"].map(|k| e[k].clone()))
        .filter_map(|a| a.as_array().cloned())
        .flatten()
        .filter_map(|p| p["id"].as_u64().or_else(|| p["prog_id"].as_u64()))
        .collect();
    ids.sort_unstable();
    ids
}

/// Whether `dev` in namespace `ns` is administratively up.
fn admin_up(ns: &std::path::Path, dev: &str) -> Result<bool> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(["ip", "-j", "link", "show", "dev", dev])
        .output()?;
    ensure!(
        out.status.success(),
        "ip link show {dev}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "UP")))
}

/// A claim prepared and unprepared without a pod: the device waits down (parked) and
/// comes back up as it was, also when the driver was killed while it waited. A device
/// with an IPv6 address would lose it by going down: it is not parked.
#[test]
fn a_parked_device_comes_back_up_at_unprepare_even_after_a_kill() {
    let topo = Arc::new(Topology::new("e2p").unwrap());
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let mut c = bring_up(&topo, Mode::Current, &Quiet).await?;
        let before = link_facts(&topo.node, NIC)?;
        prepare_web(&c).await?;
        ensure!(!admin_up(topo.node.path(), NIC)?, "{NIC} not parked");

        // Killed while the device waits down: the checkpoint's mark is all the new
        // driver has to know it was up.
        c.kill_and_restart(&topo, &[]).await?;
        ensure!(
            !admin_up(topo.node.path(), NIC)?,
            "a restart alone brought {NIC} up"
        );
        let err = unprepare(&c, "web", "uid-web").await?;
        ensure!(err.is_empty(), "unprepare: {err}\n{}", c.driver.log_text());
        ensure!(
            admin_up(topo.node.path(), NIC)?,
            "{NIC} still down after unprepare\n{}",
            c.driver.log_text()
        );
        ensure!(
            link_facts(&topo.node, NIC)? == before,
            "{NIC} not as before prepare"
        );

        // With an IPv6 address the device is left up (and keeps the address).
        topo.node
            .ip(&["addr", "add", "2001:db8::50/64", "dev", NIC, "nodad"])?;
        let with_v6 = link_facts(&topo.node, NIC)?;
        let err = prepare(&c, "web", "uid-web").await?;
        ensure!(err.is_empty(), "prepare again: {err}");
        ensure!(
            admin_up(topo.node.path(), NIC)?,
            "{NIC} parked though going down drops its IPv6 address"
        );
        ensure!(
            link_facts(&topo.node, NIC)? == with_v6,
            "{NIC} changed at prepare"
        );
        let err = unprepare(&c, "web", "uid-web").await?;
        ensure!(err.is_empty(), "unprepare again: {err}");
        ensure!(
            c.driver.stop()? == Some(0),
            "driver exit\n{}",
            c.driver.log_text()
        );
        Ok(())
    })
    .unwrap();
}

#[test]
fn current_runtime_full_lifecycle() {
    happy_path(Mode::Current, "e2c").unwrap();
}

#[test]
fn legacy_runtime_full_lifecycle() {
    happy_path(Mode::Legacy, "e2l").unwrap();
}

#[test]
fn configure_failure_sends_device_home_and_reports_false() {
    let topo = Arc::new(Topology::new("e2f").unwrap());
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let c = bring_up(&topo, Mode::Current, &Quiet).await?;
        let mut params = good_parameters();
        params["ethtool"] = json!({"features": {"no-such-feature": true}});
        c.api.put(claim(
            "bad",
            "uid-bad",
            &c.device,
            "bad-0",
            "pod-uid-bad",
            params,
        ))?;
        let err = prepare(&c, "bad", "uid-bad").await?;
        ensure!(
            err.is_empty(),
            "prepare must accept (the feature is checked on the device): {err}"
        );
        let started = run_pod(&c, &topo, "pod-uid-bad", "bad-0").await;
        let status = format!("{:?}", started.status);
        ensure!(started.status.is_err(), "RunPodSandbox must fail");
        ensure!(
            status.contains("no-such-feature"),
            "error names the field: {status}"
        );
        let (mtu, addrs) = link_facts(&topo.node, NIC)?;
        ensure!(
            mtu == 1400 && addrs == vec!["192.0.2.50/24".to_string()],
            "home as it was: {mtu} {addrs:?}"
        );
        let entry = wait_for(&Quiet, "False conditions", Duration::from_secs(20), || {
            let e = status_entry(&c.api, "bad")?;
            condition(&e, "Ready")
                .is_some_and(|c| c["status"] == "False")
                .then_some(e)
        })
        .await?;
        let ready = condition(&entry, "Ready").context("Ready")?;
        ensure!(
            ready["message"]
                .as_str()
                .is_some_and(|m| m.contains("no-such-feature")),
            "{entry}"
        );
        ensure!(entry["data"]["state"] == "Error", "{entry}");
        // Only the data path staged at prepare is left, counting only on the NIC at
        // home, until the claim is unprepared.
        ensure!(
            !topo
                .bpf
                .leftovers()
                .iter()
                .any(|p| p.to_string_lossy().contains("link_guard")),
            "socket guard left: {:?}",
            topo.bpf.leftovers()
        );
        let err = unprepare(&c, "bad", "uid-bad").await?;
        ensure!(err.is_empty(), "unprepare: {err}");
        ensure!(
            topo.bpf.leftovers().is_empty(),
            "pins left after unprepare: {:?}",
            topo.bpf.leftovers()
        );
        ensure!(programs_on(topo.node.path(), NIC).is_empty());
        Ok(())
    })
    .unwrap();
}

#[test]
fn corrupt_checkpoint_is_rebuilt_from_the_api_server() {
    let topo = Arc::new(Topology::new("e2k").unwrap());
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let mut c = bring_up(&topo, Mode::Current, &Quiet).await?;
        prepare_web(&c).await?;
        // Prepare staged the data path on the NIC at home: programs attached (XDP and
        // TCX; this bpftool lists only the XDP one), counting only, pinned.
        let staged = programs_on(topo.node.path(), NIC);
        ensure!(
            !staged.is_empty(),
            "no data path staged on {NIC} at prepare: {staged:?} {}\n{}",
            String::from_utf8_lossy(
                &std::process::Command::new("nsenter")
                    .arg(format!("--net={}", topo.node.path().display()))
                    .args(["bpftool", "-j", "net", "show", "dev", NIC])
                    .output()?
                    .stdout
            ),
            c.driver.log_text()
        );
        ensure!(
            !topo.bpf.leftovers().is_empty(),
            "staged data path not pinned"
        );
        let before = c.runtime.wait_registered(Duration::from_secs(5)).await?;

        // The driver stops; its checkpoint is damaged while it is down.
        ensure!(c.driver.stop()? == Some(0));
        let checkpoint = topo.dir.path().join("state/checkpoint.redb");
        ensure!(
            checkpoint.exists(),
            "no checkpoint at {}",
            checkpoint.display()
        );
        std::fs::write(&checkpoint, b"this is not a redb file")?;

        c.driver = scenario::Driver::start(&topo, c.api.kubeconfig_path(), "1s")?;
        c.runtime
            .wait_registration_after(before.generation, Duration::from_secs(20))
            .await
            .with_context(|| c.driver.log_text())?;
        // No new prepare: the plan must come back from the API server.
        let started = run_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(
            started.is_clean(),
            "RunPodSandbox after rebuild: {:?}\n{}",
            started.status,
            c.driver.log_text()
        );
        let (_, addrs) = link_facts(&topo.pod, POD_IF)?;
        ensure!(addrs == vec!["192.0.2.10/24".to_string()], "{addrs:?}");
        let log = c.driver.log_text();
        ensure!(
            log.contains("checkpoint is corrupt"),
            "corruption not reported:\n{log}"
        );
        ensure!(
            log.contains("checkpoint rebuilt from the API server"),
            "{log}"
        );
        ensure!(
            std::fs::read_dir(topo.state_dir())?
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains(".corrupt-")),
            "the corrupt file was not kept aside"
        );
        let (stop, _) = stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(stop.is_clean(), "{:?}", stop.status);
        let (mtu, addrs) = link_facts(&topo.node, NIC)?;
        ensure!(
            mtu == 1400 && addrs == vec!["192.0.2.50/24".to_string()],
            "restored: {mtu} {addrs:?}"
        );
        Ok(())
    })
    .unwrap();
}

/// Reads the health stream until `device` reports `want`.
async fn until_health(
    health: &mut netclaim_tests::kubelet::HealthWatch,
    device: &str,
    want: netclaim::kubelet::proto::health_v1alpha1::HealthStatus,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        ensure!(
            std::time::Instant::now() < deadline,
            "{device} never became {want:?}"
        );
        match health.next(Duration::from_secs(10)).await? {
            Some(list) if list.iter().any(|h| h.device == device && h.status == want) => {
                return Ok(())
            }
            Some(_) => {}
            None => anyhow::bail!("the health stream ended"),
        }
    }
}

#[test]
fn health_stream_follows_the_nic_carrier() {
    use netclaim::kubelet::proto::health_v1alpha1::HealthStatus;
    let topo = Arc::new(Topology::new("e2h").unwrap());
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let c = bring_up(&topo, Mode::Current, &Quiet).await?;
        let mut health = c.registered.health().await?;
        until_health(&mut health, &c.device, HealthStatus::Healthy).await?;
        // The far end goes down: eth1 stays administratively up but loses its carrier.
        topo.wire.ip(&["link", "set", "peer1", "down"])?;
        until_health(&mut health, &c.device, HealthStatus::Unhealthy)
            .await
            .with_context(|| c.driver.log_text())?;
        topo.wire.ip(&["link", "set", "peer1", "up"])?;
        until_health(&mut health, &c.device, HealthStatus::Healthy).await?;
        Ok(())
    })
    .unwrap();
}

#[test]
fn restarted_driver_keeps_devices_in_pods_published() {
    let topo = Arc::new(Topology::new("e2r").unwrap());
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let mut c = scenario::bring_up_prepared(&topo).await?;
        let before = c.runtime.wait_registered(Duration::from_secs(5)).await?;
        let started = run_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(started.is_clean(), "{:?}", started.status);

        // Restart while the device is inside the pod; the runtime's Synchronize lists
        // the pod as running, as a real runtime does.
        ensure!(c.driver.stop()? == Some(0));
        let _ = before;
        let mut config = RuntimeConfig::new(Mode::Current);
        config.pods = vec![pod(
            "sandbox-pod-uid-web",
            "default",
            "web-0",
            "pod-uid-web",
            &topo.pod.path().display().to_string(),
        )];
        let old = std::mem::replace(
            &mut c.runtime,
            FakeRuntime::start(topo.dir.path().join("nri2.sock"), config).await?,
        );
        old.stop().await;
        std::fs::rename(topo.dir.path().join("nri2.sock"), topo.nri_socket())?;
        c.driver = scenario::Driver::start(&topo, c.api.kubeconfig_path(), "1s")?;
        c.runtime
            .wait_registered(Duration::from_secs(20))
            .await
            .with_context(|| c.driver.log_text())?;
        // Give the new driver time to scan and publish; the device must stay listed.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let published = c.api.list("ResourceSlice").iter().any(|s| {
            s["spec"]["devices"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["name"] == c.device.as_str()))
        });
        ensure!(
            published,
            "{} vanished from the slices after a restart\n{}",
            c.device,
            c.driver.log_text()
        );
        ensure!(
            topo.node.ip(&["link", "show", NIC]).is_err(),
            "the device left the pod on restart"
        );

        let (stop, _) = stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(stop.is_clean(), "{:?}", stop.status);
        let (mtu, addrs) = link_facts(&topo.node, NIC)?;
        ensure!(
            mtu == 1400 && addrs == vec!["192.0.2.50/24".to_string()],
            "restored: {mtu} {addrs:?}"
        );
        Ok(())
    })
    .unwrap();
}

/// The socket guard end to end: the runtime names the pod's cgroup in RunPodSandbox,
/// the real `netclaim run` attaches the guard there, a process in that cgroup cannot
/// ask for `PACKET_QDISC_BYPASS` or register an `AF_XDP` UMEM, the status says so, and
/// stopping the pod removes the guard.
#[test]
fn the_socket_guard_follows_the_pod_cgroup_named_by_the_runtime() {
    let topo = Arc::new(Topology::new("e2g").unwrap());
    let cgroup = netclaim_tests::netenv::TestCgroup::new("e2g").unwrap();
    let t = topo.clone();
    let cg = cgroup.path().to_path_buf();
    let parent = cgroup.runtime_name().unwrap();
    run_in_netns(topo.node.path(), move || async move {
        let topo = t;
        let mut c = scenario::bring_up_prepared(&topo).await?;
        let started =
            scenario::run_pod_in_cgroup(&c, topo.pod.path(), Some(&parent), "pod-uid-web", "web-0")
                .await;
        ensure!(
            started.is_clean(),
            "RunPodSandbox failed: {:?}\n{}",
            started.status,
            c.driver.log_text()
        );
        let attacker = |cgroup: &std::path::Path, ifname: &str| -> Result<serde_json::Value> {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_raw-sender"))
                .arg(cgroup)
                .arg(topo.pod.path())
                .arg(ifname)
                .output()?;
            ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(serde_json::from_slice(&out.stdout)?)
        };
        let report = tokio::task::block_in_place(|| attacker(&cg, POD_IF))?;
        let eperm = format!("errno {}", libc::EPERM);
        ensure!(
            report["qdisc_bypass"] == eperm.as_str() && report["af_xdp"] == eperm.as_str(),
            "the guard did not refuse: {report}"
        );
        let entry = wait_for(
            &Quiet,
            "status with the guard",
            Duration::from_secs(20),
            || {
                let e = status_entry(&c.api, "web")?;
                (e["data"]["datapath"]["socketGuard"] == json!(true)).then_some(e)
            },
        )
        .await
        .with_context(|| format!("claim: {:?}", c.api.get("ResourceClaim", "default", "web")))?;
        ensure!(entry["data"]["state"] == "Available", "{entry}");

        let (stop, remove) = stop_pod(&c, &topo, "pod-uid-web", "web-0").await;
        ensure!(stop.is_clean() && remove.is_clean(), "stop/remove");
        // The device went home; the pod's loopback still takes a packet socket.
        let report = tokio::task::block_in_place(|| attacker(&cg, "lo"))?;
        ensure!(
            report["qdisc_bypass"] == "ok",
            "guard left behind: {report}"
        );
        ensure!(
            unprepare(&c, "web", "uid-web").await?.is_empty(),
            "unprepare"
        );
        ensure!(c.driver.stop()? == Some(0), "driver exit");
        Ok(())
    })
    .unwrap();
    drop(cgroup);
}
