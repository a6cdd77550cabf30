//! The driver's CNI socket, spoken to the way `netclaim-cni` speaks, byte by byte from
//! here (nothing of netclaim's own wire code): the real `netclaim run`, the fake
//! runtime for NRI, the real kernel.
//!
//! What an attacker or a confused runtime would try: lines that are too long, not
//! UTF-8, not JSON, missing or misnamed fields, a client that sends nothing (it must
//! hold up no one); an ADD that names a namespace that is not the pod's (the device
//! must still end up in the namespace RunPodSandbox names); a DEL naming another
//! namespace (it must not take the device out of the running pod). Every refusal
//! names what was wrong, and nothing changes on the node.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use netclaim_tests::netenv::TestCgroup;
use netclaim_tests::scenario::{self, link_facts, run_in_netns, Quiet, Topology, NIC, POD_IF};
use serde_json::{json, Value};

/// One request line, its reply parsed.
fn ask(socket: &Path, line: &[u8]) -> Result<Value> {
    let mut s =
        UnixStream::connect(socket).with_context(|| format!("connecting {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(line)?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply)?;
    serde_json::from_str(&reply).with_context(|| format!("reply {reply:?}"))
}

fn request(command: &str, netns: &Path, uid: &str, cgroup: &str) -> Value {
    json!({"command": command, "sandbox": format!("sandbox-{uid}"), "netns": netns,
           "podUid": uid, "podName": "web-0", "podNamespace": "default", "cgroupPath": cgroup})
}

/// One well-formed request (`request`), its reply.
fn cni(socket: &Path, command: &str, netns: &Path, uid: &str, cgroup: &str) -> Result<Value> {
    ask(socket, &line(&request(command, netns, uid, cgroup)))
}

fn line(v: &Value) -> Vec<u8> {
    let mut l = serde_json::to_vec(v).expect("json");
    l.push(b'\n');
    l
}

fn on_node(topo: &Topology) -> bool {
    topo.node.ip(&["link", "show", NIC]).is_ok()
}

/// RunPodSandbox of `web-0` in the pod's namespace, its cgroup under `parent`; fails
/// unless the hook answered cleanly.
async fn run_web(c: &scenario::Cluster, topo: &Topology, parent: &str) -> Result<()> {
    let started =
        scenario::run_pod_in_cgroup(c, topo.pod.path(), Some(parent), "pod-uid-web", "web-0").await;
    ensure!(
        started.is_clean(),
        "RunPodSandbox: {:?}\n{}",
        started.status,
        c.driver.log_text()
    );
    Ok(())
}

/// Fails unless the pod's interface is configured as the claim says.
fn configured_in_pod(topo: &Topology) -> Result<()> {
    let (mtu, addrs) = link_facts(&topo.pod, POD_IF)?;
    ensure!(
        mtu == 1500 && addrs == ["192.0.2.10/24"],
        "pod link: mtu {mtu} {addrs:?}"
    );
    Ok(())
}

/// What a test gets on its prepared node: the driver with `web-0`'s claim prepared,
/// the node's topology, the runtime cgroup's name and the CNI socket's path.
struct Prepared {
    c: scenario::Cluster,
    topo: Arc<Topology>,
    parent: String,
    socket: PathBuf,
}

/// Runs `body` in the node namespace of a topology (`tag`) whose driver is up with
/// `web-0`'s claim prepared; fails the test on its error. Namespaces and the cgroup go
/// afterwards, failed or not.
fn on_prepared_node<F, Fut>(tag: &str, body: F)
where
    F: FnOnce(Prepared) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>>,
{
    let topo = Arc::new(Topology::new(tag).unwrap());
    let cgroup = TestCgroup::new(tag).unwrap();
    let parent = cgroup.runtime_name().unwrap();
    let t = topo.clone();
    run_in_netns(topo.node.path(), move || async move {
        let c = scenario::bring_up_prepared(&t).await?;
        let socket = t.state_dir().join("cni.sock");
        body(Prepared {
            c,
            topo: t,
            parent,
            socket,
        })
        .await
    })
    .unwrap();
    drop(cgroup);
}

#[test]
fn hostile_lines_get_errors_naming_what_is_wrong_and_change_nothing() {
    on_prepared_node(
        "cnh",
        |Prepared {
             c,
             topo,
             parent,
             socket,
         }| async move {
            let mode = std::fs::metadata(&socket)?.permissions().mode() & 0o777;
            ensure!(mode == 0o600, "the CNI socket has mode {mode:o}, not 600");

            let good = request("ADD", topo.pod.path(), "pod-uid-web", &parent);
            let with = |field: &str, value: Value| {
                let mut v = good.clone();
                v[field] = value;
                line(&v)
            };
            let mut long = vec![b'{'; 20_000];
            long.push(b'\n');
            let cases: Vec<(&str, Vec<u8>, &str)> = vec![
                ("a 20 kB line", long, "longer than"),
                (
                    "bytes that are not UTF-8",
                    b"\xff\xfe\xfd\n".to_vec(),
                    "utf-8",
                ),
                ("not JSON", b"ADD pod-uid-web\n".to_vec(), "CNI request"),
                ("an empty object", b"{}\n".to_vec(), "missing field"),
                (
                    "a relative netns",
                    with("netns", json!("run/netns/x")),
                    "netns",
                ),
                ("an empty pod UID", with("podUid", json!("")), "podUid"),
                (
                    "a control character",
                    with("podName", json!("web\u{7}")),
                    "podName",
                ),
                (
                    "an unknown command",
                    with("command", json!("CHECK")),
                    "unknown variant",
                ),
                (
                    "an unknown field",
                    with("evil", json!(true)),
                    "unknown field",
                ),
                (
                    "a number for the UID",
                    with("podUid", json!(7)),
                    "invalid type",
                ),
            ];
            for (what, bytes, names) in cases {
                let reply = ask(&socket, &bytes)?;
                ensure!(reply["outcome"] == "error", "{what}: {reply}");
                let message = reply["message"].as_str().unwrap_or_default();
                ensure!(
                    message.contains(names),
                    "{what}: the error does not say {names:?}: {message}"
                );
                ensure!(on_node(&topo), "{what} moved {NIC}");
            }

            // A client that sends nothing holds up no one, and is answered when its time is up.
            let t0 = Instant::now();
            let mut silent = UnixStream::connect(&socket)?;
            silent.set_read_timeout(Some(Duration::from_secs(10)))?;
            let other = cni(&socket, "ADD", topo.pod.path(), "pod-uid-nobody", &parent)?;
            ensure!(other["outcome"] == "nothing", "{other}");
            ensure!(
                t0.elapsed() < Duration::from_secs(1),
                "a silent client held up another for {:?}",
                t0.elapsed()
            );
            let mut reply = String::new();
            BufReader::new(&mut silent).read_line(&mut reply)?;
            ensure!(
                reply.contains("no request line"),
                "the silent client got {reply:?}"
            );
            ensure!(on_node(&topo), "{NIC} left the node");

            // The pod still starts normally.
            run_web(&c, &topo, &parent).await?;
            ensure!(
                link_facts(&topo.pod, POD_IF).is_ok(),
                "{POD_IF} not in the pod"
            );
            Ok(())
        },
    );
}

#[test]
fn an_add_or_del_naming_another_namespace_cannot_take_the_device() {
    on_prepared_node(
        "cnw",
        |Prepared {
             c,
             topo,
             parent,
             socket,
         }| async move {
            // A path that is no namespace: the ahead start fails and leaves the device home.
            let not_netns = topo.dir.path().join("not-a-netns");
            std::fs::write(&not_netns, b"")?;
            let reply = cni(&socket, "ADD", &not_netns, "pod-uid-web", &parent)?;
            ensure!(reply["outcome"] == "started", "{reply}");
            driver_logged(
                &c,
                "the failed ahead start",
                "hand-over started at the CNI ADD failed",
            )
            .await?;
            ensure!(
                on_node(&topo),
                "{NIC} left the node for a path that is no namespace"
            );

            // Another real namespace (the wire's): the device goes there first, but the
            // pod's RunPodSandbox names its own, and that is where the device ends up.
            let reply = cni(&socket, "ADD", topo.wire.path(), "pod-uid-web", &parent)?;
            ensure!(reply["outcome"] == "started", "{reply}");
            run_web(&c, &topo, &parent).await?;
            configured_in_pod(&topo)?;
            ensure!(
                topo.wire.ip(&["link", "show", POD_IF]).is_err(),
                "{POD_IF} stayed in the wrong namespace"
            );
            ensure!(
                c.driver
                    .log_text()
                    .contains("devices of this pod are in another network namespace"),
                "the hook did not say why it took the device back:\n{}",
                c.driver.log_text()
            );

            // A DEL for another namespace leaves the running pod's device where it is.
            let reply = cni(&socket, "DEL", topo.wire.path(), "pod-uid-web", &parent)?;
            ensure!(reply["outcome"] == "nothing", "{reply}");
            tokio::time::sleep(Duration::from_millis(200)).await;
            ensure!(
                link_facts(&topo.pod, POD_IF).is_ok(),
                "a DEL of another namespace took the device"
            );

            // The DEL of the pod's own namespace (the runtime gave the pod up): home.
            let reply = cni(&socket, "DEL", topo.pod.path(), "pod-uid-web", &parent)?;
            ensure!(reply["outcome"] == "givingBack", "{reply}");
            scenario::wait_for(&Quiet, "the device home", Duration::from_secs(5), || {
                on_node(&topo).then_some(())
            })
            .await?;
            let (mtu, addrs) = link_facts(&topo.node, NIC)?;
            ensure!(
                mtu == 1400 && addrs == ["192.0.2.50/24"],
                "{NIC} came home as mtu {mtu} {addrs:?}"
            );
            Ok(())
        },
    );
}

/// A runtime restarted while a pod is being created: the pod's CNI ADD came (its devices
/// are handed over), the plugin reconnects, and the runtime's Synchronize does not list
/// the pod, whose sandbox is not created yet; its RunPodSandbox comes after. The devices
/// must stay in the pod (containerd 2.3.4 did this in `real_runtime`'s restart test:
/// the driver gave the device back at the Synchronize, and the hook then reported the
/// stale hand-over as done, leaving the pod without it).
#[test]
fn a_synchronize_between_the_cni_add_and_run_pod_sandbox_leaves_the_devices() {
    on_prepared_node(
        "cns",
        |Prepared {
             c,
             topo,
             parent,
             socket,
         }| async move {
            let before = c.runtime.wait_registered(Duration::from_secs(5)).await?;

            let reply = cni(&socket, "ADD", topo.pod.path(), "pod-uid-web", &parent)?;
            ensure!(reply["outcome"] == "started", "{reply}");
            driver_logged(
                &c,
                "the ahead hand-over",
                "hand-over started at the CNI ADD is done",
            )
            .await?;
            ensure!(
                link_facts(&topo.pod, POD_IF).is_ok(),
                "not in the pod after the ADD"
            );

            // The runtime goes down and comes back; its Synchronize lists no pod.
            c.runtime.shutdown_plugin().await?;
            c.runtime
                .wait_registration_after(before.generation, Duration::from_secs(10))
                .await?;
            ensure!(
                link_facts(&topo.pod, POD_IF).is_ok(),
                "the Synchronize took the device of a pod being created:\n{}",
                c.driver.log_text()
            );

            run_web(&c, &topo, &parent).await?;
            configured_in_pod(&topo)?;
            ensure!(!on_node(&topo), "{NIC} is home while its pod runs");

            // Stopped as usual: home.
            let (stop, remove) =
                scenario::stop_pod_in(&c, topo.pod.path(), "pod-uid-web", "web-0").await;
            ensure!(
                stop.is_clean() && remove.is_clean(),
                "stop: {stop:?} {remove:?}"
            );
            scenario::wait_for(&Quiet, "the device home", Duration::from_secs(5), || {
                on_node(&topo).then_some(())
            })
            .await?;
            Ok(())
        },
    );
}

/// Waits (up to 5 s) until the driver's log contains `text`.
async fn driver_logged(c: &scenario::Cluster, what: &str, text: &str) -> Result<()> {
    scenario::wait_for(&Quiet, what, Duration::from_secs(5), || {
        c.driver.log_text().contains(text).then_some(())
    })
    .await
}

/// How many inventory rescans the driver logged after byte `from` of its log.
fn rescans(c: &scenario::Cluster, from: usize) -> usize {
    c.driver
        .log_text()
        .get(from..)
        .map_or(0, |t| t.matches("inventory changed").count())
}

/// Waits (up to 4 s) for a rescan logged after `from`.
async fn rescanned(c: &scenario::Cluster, from: usize, what: &str) -> Result<()> {
    scenario::wait_for(&Quiet, what, Duration::from_secs(4), || {
        (rescans(c, from) > 0).then_some(())
    })
    .await
}

/// An ADD for `uid`, a pod that claims nothing (nothing moves); then the veth pair `link`
/// appears on the node and no rescan follows for 400 ms. The log offset and when the link came.
async fn quiet_after_add(
    c: &scenario::Cluster,
    topo: &Topology,
    parent: &str,
    uid: &str,
    link: &str,
) -> Result<(usize, Instant)> {
    let socket = topo.state_dir().join("cni.sock");
    let reply = cni(&socket, "ADD", topo.pod.path(), uid, parent)?;
    ensure!(reply["outcome"] == "nothing", "{uid}: {reply}");
    let from = c.driver.log_text().len();
    topo.node.ip(&[
        "link",
        "add",
        link,
        "type",
        "veth",
        "peer",
        "name",
        &format!("{link}p"),
    ])?;
    let appeared = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    ensure!(
        rescans(c, from) == 0,
        "{uid}: the inventory rescanned while the runtime was starting the pod:\n{}",
        c.driver.log_text().get(from..).unwrap_or_default()
    );
    Ok((from, appeared))
}

/// Between a pod's CNI ADD and its RunPodSandbox the runtime is still starting the pod
/// (containerd sets up its network and starts its pause container, then calls the
/// hook): netclaim's background work waits for the hook, the CNI DEL, or at most its
/// bound when neither comes. Watched through the inventory's rescan of a link that
/// appears on the node meanwhile, which otherwise follows the link within 50 ms.
#[test]
fn background_work_waits_from_the_cni_add_until_the_pod_hook() {
    on_prepared_node(
        "cnq",
        |Prepared {
             c,
             topo,
             parent,
             socket,
         }| async move {
            c.runtime.wait_registered(Duration::from_secs(5)).await?;
            // A link seen at once, then no rescan for 500 ms: the driver's start-up work
            // (the claim's data path staged, its scans) is over and no scan is in flight.
            let from = c.driver.log_text().len();
            topo.node.ip(&[
                "link", "add", "ncq0", "type", "veth", "peer", "name", "ncq0p",
            ])?;
            rescanned(&c, from, "the first rescan").await?;
            let mut seen = (rescans(&c, from), Instant::now());
            scenario::wait_for(
                &Quiet,
                "the inventory at rest",
                Duration::from_secs(10),
                || {
                    let now = rescans(&c, from);
                    if now != seen.0 {
                        seen = (now, Instant::now());
                    }
                    (seen.1.elapsed() >= Duration::from_millis(500)).then_some(())
                },
            )
            .await?;

            // RunPodSandbox ends the window: the rescan follows the hook.
            let (from, _) = quiet_after_add(&c, &topo, &parent, "pod-uid-plain", "ncq1").await?;
            let started =
                scenario::run_pod_in(&c, topo.pod.path(), "pod-uid-plain", "plain-0").await;
            ensure!(started.is_clean(), "RunPodSandbox: {:?}", started.status);
            let hooked = Instant::now();
            rescanned(&c, from, "the rescan after RunPodSandbox").await?;
            ensure!(
                hooked.elapsed() < Duration::from_millis(900),
                "the rescan came {:?} after the hook",
                hooked.elapsed()
            );

            // The CNI DEL of a start the runtime gave up ends it too.
            let (from, _) = quiet_after_add(&c, &topo, &parent, "pod-uid-undone", "ncq2").await?;
            let reply = cni(&socket, "DEL", topo.pod.path(), "pod-uid-undone", &parent)?;
            ensure!(reply["outcome"] == "nothing", "DEL: {reply}");
            let deleted = Instant::now();
            rescanned(&c, from, "the rescan after the CNI DEL").await?;
            ensure!(
                deleted.elapsed() < Duration::from_millis(900),
                "the rescan came {:?} after the DEL",
                deleted.elapsed()
            );

            // Neither comes: the background work goes on by itself within its bound.
            let (from, appeared) =
                quiet_after_add(&c, &topo, &parent, "pod-uid-lost", "ncq3").await?;
            rescanned(&c, from, "the rescan with no hook").await?;
            ensure!(
                appeared.elapsed() < Duration::from_millis(2500),
                "the rescan waited {:?} for a hook that never came",
                appeared.elapsed()
            );
            Ok(())
        },
    );
}
