//! `disableEbpfPrograms`: programs someone else attached to a device (TCX link, XDP
//! link, clsact cls_bpf filter) are all removed and reported by name, and the device
//! carries no program afterwards — checked with bpftool, not with our own code.

use aya::programs::{tc, SchedClassifier, TcAttachType, Xdp, XdpMode};
use netclaim::datapath::{device::load_unattached, object::MapSizes, DatapathPolicy};
use netclaim::netns::remove_foreign_programs;
use netclaim_tests::netenv::{veth, TestNetns};

#[test]
fn removes_tcx_xdp_and_tc_programs_and_names_them() {
    let a = TestNetns::new("fpa").unwrap();
    let b = TestNetns::new("fpb").unwrap();
    veth(&a, "dev0", &b, "peer0").unwrap();
    let ns = a.open();

    // A "foreign" loader attaches three programs the way other tools do.
    let ebpf = load_unattached(MapSizes::default(), &DatapathPolicy::default()).unwrap();
    let ebpf = ns
        .run(move || {
            let mut ebpf = ebpf;
            let bare: &mut SchedClassifier =
                ebpf.program_mut("nc_bare").unwrap().try_into().unwrap();
            bare.attach("dev0", TcAttachType::Egress).unwrap(); // TCX link
            let _ = tc::qdisc_add_clsact("dev0");
            let ing: &mut SchedClassifier = ebpf
                .program_mut("nc_ingress_tc")
                .unwrap()
                .try_into()
                .unwrap();
            ing.attach_with_options(
                "dev0",
                TcAttachType::Ingress,
                tc::TcAttachOptions::Netlink(tc::NlOptions::default()),
            )
            .unwrap(); // clsact + cls_bpf
            let xdp: &mut Xdp = ebpf.program_mut("nc_ingress").unwrap().try_into().unwrap();
            xdp.attach("dev0", XdpMode::Skb).unwrap(); // XDP link
            ebpf
        })
        .unwrap();
    let before = String::from_utf8(
        a.exec("bpftool", &["net", "show", "dev", "dev0"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        before.contains("nc_ingress") && before.contains("nc_ingress_tc"),
        "{before}"
    );

    let removed = ns
        .run_async(|| async { remove_foreign_programs("dev0").await })
        .unwrap()
        .unwrap();
    let mut seen: Vec<(String, String)> = removed
        .iter()
        .map(|r| (r.attach.to_string(), r.name.clone()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("tc".to_string(), "nc_ingress_tc".to_string()),
            ("tcx-egress".to_string(), "nc_bare".to_string()),
            ("xdp".to_string(), "nc_ingress".to_string()),
        ]
    );

    let after = String::from_utf8(
        a.exec("bpftool", &["net", "show", "dev", "dev0"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(!after.contains("nc_"), "programs still attached: {after}");
    let links = String::from_utf8(
        std::process::Command::new("bpftool")
            .args(["-j", "link", "show"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let links: serde_json::Value = serde_json::from_str(&links).unwrap();
    let ifindex = a.ifindex("dev0").unwrap();
    let ours: Vec<u32> = ebpf
        .programs()
        .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
        .collect();
    for l in links.as_array().unwrap() {
        let prog = l["prog_id"].as_u64().unwrap_or(0) as u32;
        assert!(
            !(ours.contains(&prog) && l["ifindex"].as_u64() == Some(u64::from(ifindex))),
            "link still attached: {l}"
        );
    }
    // Nothing else to remove the second time.
    let again = ns
        .run_async(|| async { remove_foreign_programs("dev0").await })
        .unwrap()
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    drop(ebpf);
}
