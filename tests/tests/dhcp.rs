//! DHCP for pod interfaces against a real server (Debian's dnsmasq in the wire
//! namespace): a lease within the deadline, its address and routes in the pod's
//! namespace, renewal seen in the server's lease file, release removing the lease
//! there and the address here, a silent network failing cleanly at the deadline, and
//! the data path letting exactly the DHCP exchange and the leased address through.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use netclaim::dhcp::{DhcpError, LeaseKeeper};
use netclaim_tests::{
    dhcp_server::{DhcpServer, DhcpWire, POD_IF, SERVER},
    netenv::TestNetns,
};

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
    let _ = Ipv4Addr::UNSPECIFIED;
}
