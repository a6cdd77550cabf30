//! DHCP for pod interfaces against a real server (Debian's dnsmasq in the wire
//! namespace): a lease within the deadline, its address and routes in the pod's
//! namespace, renewal seen in the server's lease file, release removing the lease
//! there and the address here, a silent network failing cleanly at the deadline, and
//! the data path letting exactly the DHCP exchange and the leased address through.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use netclaim::{
    datapath::{
        device::AttachOptions, AttachedDatapath, DatapathKey, DatapathPolicy, DataplaneKnobs,
        Enforcement, PinLayout,
    },
    dhcp::{policy_with_lease, DhcpError, LeaseKeeper},
    status::render,
};
use netclaim_tests::{
    dhcp_server::{DhcpServer, DhcpWire, POD_IF, SERVER, WIRE_IF},
    netenv::{TestBpfRoot, TestNetns},
    raw::{frame, RawSender},
    traffic::{udp_send, UdpSink},
    validation::resource_claim_status,
};
use serde_json::json;

/// The pod's IPv4 addresses on `dev` (`ip -4 -o addr`), as `a.b.c.d/len`.
fn addresses(ns: &TestNetns, dev: &str) -> Vec<String> {
    let out = ns.ip(&["-4", "-o", "addr", "show", "dev", dev]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")
                .and_then(|_| w.next())
                .map(str::to_string)
        })
        .collect()
}

/// The pod's IPv4 routes through `dev` (`ip -4 route show dev`), one line each.
fn routes(ns: &TestNetns, dev: &str) -> Vec<String> {
    let out = ns.ip(&["-4", "route", "show", "dev", dev]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn lease_acquired_installed_renewed_and_released() {
    let net = DhcpWire::new("dh").unwrap();
    let server = DhcpServer::start(&net.wire, 120, &[]).unwrap();
    let mac = net.pod_mac_bytes().unwrap();
    let pod = net.pod.open();
    let started = Instant::now();
    let (keeper, lease) =
        LeaseKeeper::start(&pod, POD_IF, mac, started + Duration::from_secs(5), |_| {}).unwrap();
    let took = started.elapsed();
    println!(
        "dhcp: lease {} from {} in {took:?}",
        lease.address, lease.server
    );
    assert!(took < Duration::from_secs(5));
    assert_eq!(lease.server, SERVER);
    assert_eq!(lease.address.prefix_len(), 24);
    let leased = lease.address.addr();
    assert!((100..=150).contains(&leased.octets()[3]), "{leased}");
    assert_eq!(lease.routers, vec![SERVER]);
    assert_eq!(lease.lease_secs, 120);

    // The kernel holds the address and the default route via the router.
    assert_eq!(addresses(&net.pod, POD_IF), vec![lease.address.to_string()]);
    let r = routes(&net.pod, POD_IF);
    assert!(
        r.iter()
            .any(|l| l.starts_with("default via 192.0.2.1") && l.contains("proto dhcp")),
        "{r:?}"
    );
    // The server booked it for this MAC.
    let booked = server
        .wait_for(Duration::from_secs(2), "the lease", |l| {
            l.iter()
                .any(|x| x.address == leased && x.mac == net.pod_mac)
        })
        .unwrap();
    let first_expiry = booked[0].expires;

    // Renewal: unicast to the server from the leased address; the server moves the
    // expiry on (its clock has one-second resolution).
    std::thread::sleep(Duration::from_millis(1100));
    let renewed = keeper.renew_now().unwrap();
    assert_eq!(renewed.address, lease.address);
    assert!(renewed.granted_at >= lease.granted_at);
    server
        .wait_for(Duration::from_secs(2), "a later expiry", |l| {
            l.iter()
                .any(|x| x.address == leased && x.expires > first_expiry)
        })
        .unwrap();
    assert_eq!(keeper.lease().map(|l| l.address), Some(lease.address));

    // Release: the server forgets the lease, the pod loses address and routes.
    keeper.stop().unwrap();
    server
        .wait_for(Duration::from_secs(2), "no lease", |l| l.is_empty())
        .unwrap();
    assert!(addresses(&net.pod, POD_IF).is_empty());
    assert!(
        !routes(&net.pod, POD_IF)
            .iter()
            .any(|l| l.contains("proto dhcp")),
        "{:?}",
        routes(&net.pod, POD_IF)
    );
}

#[test]
fn no_server_fails_at_the_deadline_and_leaves_nothing() {
    let net = DhcpWire::new("dn").unwrap();
    let mac = net.pod_mac_bytes().unwrap();
    let pod = net.pod.open();
    let started = Instant::now();
    let err = LeaseKeeper::start(
        &pod,
        POD_IF,
        mac,
        started + Duration::from_millis(1500),
        |_| {},
    )
    .unwrap_err();
    let took = started.elapsed();
    println!("dhcp: no server: {err} after {took:?}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert!(
        matches!(err, DhcpError::Exchange { ref device, .. } if device == POD_IF),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("a0") && text.contains("OFFER"), "{text}");
    assert!(addresses(&net.pod, POD_IF).is_empty());
    assert!(routes(&net.pod, POD_IF).is_empty());
}

/// Ethernet + IPv4 (valid header checksum) + UDP `ports` + a BOOTREQUEST (DISCOVER)
/// with `chaddr`, `ciaddr` = `src`, the BROADCAST flag and the magic cookie.
fn dhcp_frame(
    eth_src: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    chaddr: [u8; 6],
) -> Vec<u8> {
    let mut bootp = vec![0u8; 236];
    bootp[0..3].copy_from_slice(&[1, 1, 6]);
    bootp[4..8].copy_from_slice(&[0x0d, 0x0c, 0x0b, 0x0a]);
    bootp[10] = 0x80;
    bootp[12..16].copy_from_slice(&src);
    bootp[28..34].copy_from_slice(&chaddr);
    bootp.extend([99, 130, 83, 99, 53, 1, 1, 255]);
    let mut f = frame::eth([0xff; 6], eth_src, &[], 0x0800);
    let udp_len = 8 + bootp.len();
    let mut ip = vec![0x45, 0];
    ip.extend(((20 + udp_len) as u16).to_be_bytes());
    ip.extend([0, 1, 0, 0, 64, 17, 0, 0]);
    ip.extend(src);
    ip.extend(dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend(ip);
    f.extend(ports.0.to_be_bytes());
    f.extend(ports.1.to_be_bytes());
    f.extend((udp_len as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(bootp);
    f
}

fn drops(dp: &AttachedDatapath, reason: &str) -> u64 {
    dp.counters()
        .unwrap()
        .drops
        .get(reason)
        .copied()
        .unwrap_or(0)
}

/// The data path of a DHCP claim: before the lease only the client's own exchange
/// leaves; the lease's address becomes the anti-spoofing set and its option-121
/// routes the allowed destinations; renewal (unicast) and rebinding (broadcast from
/// the leased address) pass; DHCP look-alikes sent from a raw socket in the pod
/// (another client's chaddr, a foreign source, a relay's giaddr) never reach the
/// server and are counted by reason.
#[test]
fn the_data_path_lets_exactly_the_dhcp_exchange_and_the_lease_through() {
    let net = DhcpWire::new("dd").unwrap();
    let server = DhcpServer::start(
        &net.wire,
        120,
        &["--dhcp-option=121,198.51.100.0/24,192.0.2.1"],
    )
    .unwrap();
    let bpf = TestBpfRoot::new("dd").unwrap();
    let layout = PinLayout::new(bpf.path());
    let mac = net.pod_mac_bytes().unwrap();
    let pod = net.pod.open();
    let before = DatapathPolicy {
        knobs: DataplaneKnobs::default(),
        mac: Some(mac),
        dhcp_client: true,
        ..Default::default()
    };
    let key = DatapathKey::new("default", "dhcp-claim", "a0").unwrap();
    let mut dp = AttachedDatapath::attach(
        &layout,
        key,
        &pod,
        POD_IF,
        &before,
        AttachOptions::default(),
    )
    .unwrap();
    assert_eq!(dp.policy().enforcement, Enforcement::Enforcing);

    // The lease comes through the programs (DISCOVER and REQUEST from 0.0.0.0).
    let started = Instant::now();
    let (keeper, lease) =
        LeaseKeeper::start(&pod, POD_IF, mac, started + Duration::from_secs(5), |_| {}).unwrap();
    println!(
        "dhcp: lease {} through the data path in {:?}",
        lease.address,
        started.elapsed()
    );
    assert_eq!(
        lease.classless_routes,
        vec![("198.51.100.0/24".parse().unwrap(), SERVER)]
    );
    let r = routes(&net.pod, POD_IF);
    assert!(
        r.iter()
            .any(|l| l.starts_with("198.51.100.0/24 via 192.0.2.1") && l.contains("proto dhcp")),
        "{r:?}"
    );
    assert!(
        !r.iter().any(|l| l.starts_with("default")),
        "option 121 replaces option 3: {r:?}"
    );
    // The lease in the claim status passes kube-apiserver's validation.
    let (nd, _) = render::network_data(POD_IF, Some(&net.pod_mac), &[IpNet::V4(lease.address)]);
    let mut data = serde_json::Map::new();
    data.insert("state".into(), json!("Available"));
    data.insert("dhcp".into(), render::dhcp_lease(Some(&lease)));
    let entry = render::entry("netclaim.dev", "node-1", "a0", &[], data, Some(nd));
    let claim = json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "dhcp-claim", "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "nic", "exactly": {"deviceClassName": "netclaim"}}]}},
        "status": {
            "allocation": {"devices": {"results": [
                {"request": "nic", "driver": "netclaim.dev", "pool": "node-1", "device": "a0"}
            ]}},
            "devices": [serde_json::to_value(&entry).unwrap()]
        }
    });
    let refused = resource_claim_status(&claim).unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(
        claim["status"]["devices"][0]["data"]["dhcp"]["server"],
        "192.0.2.1"
    );
    let spoofed_before = drops(&dp, "spoofed_source");
    assert_eq!(drops(&dp, "spoofed_mac"), 0);

    // The lease becomes the policy.
    let after = policy_with_lease(&before, Some(&lease));
    dp.update_policy(&after).unwrap();
    let leased = lease.address.addr();

    let sink = UdpSink::start(&net.wire.open(), "198.51.100.1:9000".parse().unwrap()).unwrap();
    let sent = udp_send(
        &pod,
        SocketAddr::new(IpAddr::V4(leased), 0),
        "198.51.100.1:9000".parse().unwrap(),
        5,
        32,
    )
    .unwrap();
    assert_eq!(sink.wait_for(u64::from(sent), Duration::from_secs(3)), 5);

    // Hand-made frames from the pod: the leased source passes, another one does not,
    // nor a destination outside the lease's routes.
    let raw = RawSender::open(&pod, POD_IF).unwrap();
    let wire_mac = {
        let s = net.wire.mac(WIRE_IF).unwrap();
        let mut m = [0u8; 6];
        for (o, p) in m.iter_mut().zip(s.split(':')) {
            *o = u8::from_str_radix(p, 16).unwrap();
        }
        m
    };
    let to = |src: [u8; 4], dst: [u8; 4]| {
        let mut f = frame::eth(wire_mac, mac, &[], 0x0800);
        f.extend(frame::ipv4_udp(src, dst, &[], 0, &[0x42; 16], None));
        f
    };
    raw.send(&to(leased.octets(), [198, 51, 100, 1])).unwrap();
    assert_eq!(sink.wait_for(6, Duration::from_secs(3)), 6);
    let _ = raw.send(&to([192, 0, 2, 77], [198, 51, 100, 1]));
    let no_route_before = drops(&dp, "no_route");
    let _ = raw.send(&to(leased.octets(), [203, 0, 113, 1]));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(sink.count(), 6, "the spoofed datagram must not arrive");
    assert_eq!(drops(&dp, "spoofed_source"), spoofed_before + 1);
    assert_eq!(drops(&dp, "no_route"), no_route_before + 1);

    // Renewal (unicast to the server) and rebinding (broadcast from the leased
    // address, through the exception) both reach the server.
    let first_expiry = server.leases().unwrap()[0].expires;
    std::thread::sleep(Duration::from_millis(1100));
    keeper.renew_now().unwrap();
    server
        .wait_for(Duration::from_secs(2), "a renewed expiry", |l| {
            l.iter()
                .any(|x| x.address == leased && x.expires > first_expiry)
        })
        .unwrap();
    let renewed_expiry = server.leases().unwrap()[0].expires;
    std::thread::sleep(Duration::from_millis(1100));
    keeper.rebind_now().unwrap();
    server
        .wait_for(Duration::from_secs(2), "a rebound expiry", |l| {
            l.iter()
                .any(|x| x.address == leased && x.expires > renewed_expiry)
        })
        .unwrap();

    // Look-alikes from the pod: another client's chaddr, a foreign source, a relay.
    let other = [2, 0, 0, 0, 0, 0x66];
    let spoofed_mac_before = drops(&dp, "spoofed_mac");
    let spoofed_src_before = drops(&dp, "spoofed_source");
    let _ = raw.send(&dhcp_frame(mac, [0; 4], [255; 4], (68, 67), other));
    let _ = raw.send(&dhcp_frame(mac, [192, 0, 2, 77], [255; 4], (68, 67), mac));
    let mut relay = dhcp_frame(mac, [0; 4], [255; 4], (68, 67), mac);
    let giaddr = 14 + 20 + 8 + 24;
    relay[giaddr..giaddr + 4].copy_from_slice(&[192, 0, 2, 10]);
    let _ = raw.send(&relay);
    // The control: the same DISCOVER with the device's own chaddr reaches the server.
    let discovers = |log: &str| {
        log.lines()
            .filter(|l| l.contains("DHCPDISCOVER") && l.contains(&net.pod_mac))
            .count()
    };
    let seen = discovers(&server.log());
    raw.send(&dhcp_frame(mac, [0; 4], [255; 4], (68, 67), mac))
        .unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while discovers(&server.log()) == seen && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(discovers(&server.log()), seen + 1, "{}", server.log());
    assert!(
        !server.log().contains("02:00:00:00:00:66"),
        "another client's DISCOVER reached the server: {}",
        server.log()
    );
    assert_eq!(drops(&dp, "spoofed_mac"), spoofed_mac_before + 1);
    assert_eq!(drops(&dp, "spoofed_source"), spoofed_src_before + 2);

    // Stop: release, the server forgets, the data path goes.
    keeper.stop().unwrap();
    server
        .wait_for(Duration::from_secs(2), "no lease", |l| l.is_empty())
        .unwrap();
    assert!(addresses(&net.pod, POD_IF).is_empty());
    dp.detach(&layout, Some(&pod)).unwrap();
    assert!(bpf.leftovers().is_empty(), "{:?}", bpf.leftovers());
}
