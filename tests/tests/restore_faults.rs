//! Restore under injected netlink failures (`driver/src/failpoints.rs`, compiled into
//! the library the tests crate links): a failure while looking for the device must
//! fail the restore, never declare a device that is still in its pod gone. Found by
//! `cargo xtask chaos` (seed 2026 on a loaded machine): a failed link dump in the pod
//! during a stop made the stop answer success and clear the record while the device
//! stayed in the pod. Its own test binary: fail points are per process.

use anyhow::Result;
use netclaim::netns::{move_and_configure, restore, InterfaceSettings, RestoreOutcome};
use netclaim_tests::netenv::{require_root, unique, veth, TestNetns};

#[test]
fn a_failed_lookup_in_the_pod_fails_the_restore_instead_of_declaring_the_device_gone() -> Result<()>
{
    require_root();
    let node = TestNetns::new("rfn")?;
    let pod = TestNetns::new("rfp")?;
    let wire = TestNetns::new("rfw")?;
    let dev = unique("rf");
    veth(&node, &dev, &wire, "peer0")?;
    node.ip(&["addr", "add", "192.0.2.1/24", "dev", &dev])?;
    let settings = InterfaceSettings {
        name: Some("net1".into()),
        ..Default::default()
    };
    let done = move_and_configure(&node.open(), &pod.open(), &dev, &settings)?;
    assert!(pod.ip(&["link", "show", "net1"]).is_ok(), "not in the pod");

    // The first netlink request of a restore is the link dump in the pod.
    netclaim::failpoints::configure("netlink-request=1*return->off").map_err(anyhow::Error::msg)?;
    let failed = restore(&node.open(), Some(&pod.open()), "net1", &done.originals);
    netclaim::failpoints::configure("").map_err(anyhow::Error::msg)?;
    let err = match failed {
        Err(e) => e.to_string(),
        Ok(outcome) => panic!("the restore answered {outcome:?} with the pod unreadable"),
    };
    assert!(err.contains("injected by fail point"), "{err}");
    assert!(
        pod.ip(&["link", "show", "net1"]).is_ok(),
        "the device must still be in the pod"
    );

    // Without the fault it comes home.
    let outcome = restore(&node.open(), Some(&pod.open()), "net1", &done.originals)?;
    assert!(
        matches!(outcome, RestoreOutcome::Restored { .. }),
        "{outcome:?}"
    );
    assert!(node.ip(&["link", "show", &dev]).is_ok(), "not home");
    Ok(())
}
