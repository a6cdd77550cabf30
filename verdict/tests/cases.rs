//! The verdict's rules, one hand-built frame each: the cases the kernel tests cannot
//! produce (a VLAN tag held in skb metadata) and the narrow edges of every exception.

use netclaim_common::flags::{
    ALLOW_MULTICAST, ANTI_SPOOFING, DHCP_CLIENT, ENFORCE_ROUTES, INGRESS_FILTER,
};
use netclaim_verdict::{egress, ingress, DropReason, Exception, Frame, Pass, Policy, Verdict};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const OWN4: [u8; 4] = [192, 0, 2, 10];
const OWN6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const LL6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 0, 0, 1];
const SNM: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 1];

struct P(u32);

impl Policy for P {
    fn flags(&self) -> u32 {
        self.0
    }
    fn mac(&self) -> [u8; 6] {
        MAC
    }
    fn own_v4(&self, a: &[u8; 4]) -> bool {
        *a == OWN4
    }
    fn own_v6(&self, a: &[u8; 16]) -> bool {
        *a == OWN6 || *a == LL6
    }
    fn route_v4(&self, a: &[u8; 4]) -> Option<u32> {
        (a[..3] == [192, 0, 2]).then_some(0)
    }
    fn route_v6(&self, a: &[u8; 16]) -> Option<u32> {
        (a[..8] == OWN6[..8]).then_some(1)
    }
}

const ALL: P = P(ENFORCE_ROUTES | ANTI_SPOOFING | INGRESS_FILTER);

/// A frame whose first VLAN tag the kernel holds in skb metadata.
struct Offloaded<'a>(&'a [u8]);

impl Frame for Offloaded<'_> {
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.0.load(off)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn offloaded_tags(&self) -> u32 {
        1
    }
}

fn eth(dst: [u8; 6], tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend(MAC);
    for t in tags {
        f.extend(t.to_be_bytes());
        f.extend([0, 7]);
    }
    f.extend(ethertype.to_be_bytes());
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], options: &[u8]) -> Vec<u8> {
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + 8) as u16;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend(total.to_be_bytes());
    h.extend([0, 0, 0, 0, 64, 17, 0, 0]);
    h.extend(src);
    h.extend(dst);
    h.extend(options);
    h.extend([0, 1, 0, 2, 0, 8, 0, 0]);
    h
}

fn ipv6(src: [u8; 16], dst: [u8; 16], hop_limit: u8, icmp: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend((icmp.len() as u16).to_be_bytes());
    h.extend([58, hop_limit]);
    h.extend(src);
    h.extend(dst);
    h.extend(icmp);
    h
}

fn arp(op: u16, spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend(op.to_be_bytes());
    a.extend(MAC);
    a.extend(spa);
    a.extend([0; 6]);
    a.extend(tpa);
    a
}

fn ns(target: [u8; 16], slla: bool) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend(target);
    if slla {
        m.extend([1, 1]);
        m.extend(MAC);
    }
    m
}

fn cat(a: Vec<u8>, b: Vec<u8>) -> Vec<u8> {
    a.into_iter().chain(b).collect()
}

fn drop(r: DropReason) -> Verdict {
    Verdict::Drop(r)
}

#[test]
fn a_tag_in_metadata_counts_toward_the_stack() {
    let one_inline = cat(
        eth([0xff; 6], &[0x8100], 0x0800),
        ipv4(OWN4, [192, 0, 2, 1], &[]),
    );
    assert_eq!(
        egress(&Offloaded(&one_inline), &ALL),
        drop(DropReason::VlanStack)
    );
    let untagged = cat(eth([0xff; 6], &[], 0x0800), ipv4(OWN4, [192, 0, 2, 1], &[]));
    assert_eq!(
        egress(&Offloaded(&untagged), &ALL),
        Verdict::Pass(Pass::Route(0))
    );
    assert_eq!(
        egress(untagged.as_slice(), &ALL),
        Verdict::Pass(Pass::Route(0))
    );
}

#[test]
fn arp_probes_only_ask() {
    let probe = cat(eth([0xff; 6], &[], 0x0806), arp(1, [0; 4], OWN4));
    assert_eq!(
        egress(probe.as_slice(), &ALL),
        Verdict::Pass(Pass::Exception(Exception::Arp))
    );
    let reply_from_nowhere = cat(eth([0xff; 6], &[], 0x0806), arp(2, [0; 4], [192, 0, 2, 1]));
    assert_eq!(
        egress(reply_from_nowhere.as_slice(), &ALL),
        drop(DropReason::ArpSpoof)
    );
    let outside = cat(eth([0xff; 6], &[], 0x0806), arp(1, OWN4, [203, 0, 113, 1]));
    assert_eq!(egress(outside.as_slice(), &ALL), drop(DropReason::NoRoute));
}

#[test]
fn duplicate_address_detection_is_narrow() {
    let snm_mac = [0x33, 0x33, 0xff, 0, 0, 1];
    let dad = cat(
        eth(snm_mac, &[], 0x86dd),
        ipv6([0; 16], SNM, 255, &ns(OWN6, false)),
    );
    assert_eq!(
        egress(dad.as_slice(), &ALL),
        Verdict::Pass(Pass::Exception(Exception::NeighbourDiscovery))
    );
    // A DAD probe may not carry a link-layer address, nor go anywhere but its group.
    let with_slla = cat(
        eth(snm_mac, &[], 0x86dd),
        ipv6([0; 16], SNM, 255, &ns(OWN6, true)),
    );
    assert_eq!(
        egress(with_slla.as_slice(), &ALL),
        drop(DropReason::NdSpoof)
    );
    let all_nodes = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let elsewhere = cat(
        eth(snm_mac, &[], 0x86dd),
        ipv6([0; 16], all_nodes, 255, &ns(OWN6, false)),
    );
    assert_eq!(
        egress(elsewhere.as_slice(), &ALL),
        drop(DropReason::NdSpoof)
    );
}

#[test]
fn mld_needs_hop_limit_one_and_a_link_local_group() {
    let report = vec![143, 0, 0, 0, 0, 0, 0, 0];
    let mld_group = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let ok = cat(
        eth([0x33, 0x33, 0, 0, 0, 0x16], &[], 0x86dd),
        ipv6(LL6, mld_group, 1, &report),
    );
    assert_eq!(
        egress(ok.as_slice(), &ALL),
        Verdict::Pass(Pass::Exception(Exception::Mld))
    );
    let hops = cat(
        eth([0x33, 0x33, 0, 0, 0, 0x16], &[], 0x86dd),
        ipv6(LL6, mld_group, 64, &report),
    );
    assert_eq!(egress(hops.as_slice(), &ALL), drop(DropReason::NdForbidden));
    let query = vec![130, 0, 0, 0, 0, 0, 0, 0];
    let q = cat(
        eth([0x33, 0x33, 0, 0, 0, 1], &[], 0x86dd),
        ipv6(LL6, mld_group, 1, &query),
    );
    assert_eq!(egress(q.as_slice(), &ALL), drop(DropReason::NdForbidden));
}

#[test]
fn multicast_needs_the_knob_or_a_route_and_an_own_source() {
    let group = [224, 0, 0, 251];
    let router_alert = [0x94, 4, 0, 0];
    let f = cat(
        eth([1, 0, 0x5e, 0, 0, 0xfb], &[], 0x0800),
        ipv4(OWN4, group, &router_alert),
    );
    assert_eq!(egress(f.as_slice(), &ALL), drop(DropReason::Multicast));
    let relaxed = P(ALL.0 | ALLOW_MULTICAST);
    assert_eq!(
        egress(f.as_slice(), &relaxed),
        Verdict::Pass(Pass::Exception(Exception::Multicast))
    );
    let spoofed = cat(
        eth([1, 0, 0x5e, 0, 0, 0xfb], &[], 0x0800),
        ipv4([192, 0, 2, 9], group, &[]),
    );
    assert_eq!(
        egress(spoofed.as_slice(), &relaxed),
        drop(DropReason::SpoofedSource)
    );
    let two_options = [0x94, 4, 0, 0, 1, 1, 1, 1];
    let f = cat(
        eth([1, 0, 0x5e, 0, 0, 0xfb], &[], 0x0800),
        ipv4(OWN4, group, &two_options),
    );
    assert_eq!(egress(f.as_slice(), &relaxed), drop(DropReason::IpOptions));
}

#[test]
fn knobs_off_mean_unenforced_and_count_only() {
    let junk = cat(eth([0xff; 6], &[0x8100, 0x8100], 0x88cc), vec![0; 20]);
    assert_eq!(
        egress(junk.as_slice(), &P(0)),
        Verdict::Pass(Pass::Unenforced)
    );
    assert_eq!(
        ingress(junk.as_slice(), &P(0)),
        Verdict::Pass(Pass::Unenforced)
    );
    assert_eq!(egress(junk.as_slice(), &ALL), drop(DropReason::VlanStack));
    assert_eq!(ingress(junk.as_slice(), &ALL), drop(DropReason::VlanStack));
    let spoofed = cat(
        eth([0xff; 6], &[], 0x0800),
        ipv4([10, 0, 0, 1], [192, 0, 2, 1], &[]),
    );
    assert_eq!(
        egress(spoofed.as_slice(), &P(ENFORCE_ROUTES)),
        Verdict::Pass(Pass::Route(0))
    );
    let outside = cat(eth([0xff; 6], &[], 0x0800), ipv4(OWN4, [10, 0, 0, 1], &[]));
    assert_eq!(
        egress(outside.as_slice(), &P(ANTI_SPOOFING)),
        Verdict::Pass(Pass::Unrouted)
    );
}

#[test]
fn ingress_takes_only_what_is_addressed_here() {
    let mut to_us = cat(eth(MAC, &[], 0x0800), ipv4([192, 0, 2, 1], OWN4, &[]));
    to_us[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    assert_eq!(ingress(to_us.as_slice(), &ALL), Verdict::Pass(Pass::Local));
    let to_other = cat(
        eth(MAC, &[], 0x0800),
        ipv4([192, 0, 2, 1], [192, 0, 2, 77], &[]),
    );
    assert_eq!(
        ingress(to_other.as_slice(), &ALL),
        drop(DropReason::NotLocal)
    );
    let broadcast = cat(
        eth([0xff; 6], &[], 0x0800),
        ipv4([192, 0, 2, 1], [192, 0, 2, 255], &[]),
    );
    assert_eq!(
        ingress(broadcast.as_slice(), &ALL),
        Verdict::Pass(Pass::Group)
    );
    assert_eq!(ingress(&to_us[..30], &ALL), drop(DropReason::Malformed));
}

/// An IPv4/UDP DHCP request from the device: BOOTREQUEST, Ethernet, `chaddr` = MAC,
/// `ciaddr` = `src`, the magic cookie and option 53 (DISCOVER) + end.
fn dhcp(src: [u8; 4], dst: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
    let mut bootp = vec![0u8; 236];
    bootp[0] = 1; // op: BOOTREQUEST
    bootp[1] = 1; // htype: Ethernet
    bootp[2] = 6; // hlen
    bootp[4..8].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    bootp[10] = 0x80; // BROADCAST flag
    bootp[12..16].copy_from_slice(&src);
    bootp[28..34].copy_from_slice(&MAC);
    bootp.extend([99, 130, 83, 99, 53, 1, 1, 255]);
    let udp_len = (8 + bootp.len()) as u16;
    let total = 20 + udp_len;
    let mut h = vec![0x45, 0];
    h.extend(total.to_be_bytes());
    h.extend([0, 0, 0, 0, 64, 17, 0, 0]);
    h.extend(src);
    h.extend(dst);
    h.extend(ports.0.to_be_bytes());
    h.extend(ports.1.to_be_bytes());
    h.extend(udp_len.to_be_bytes());
    h.extend([0, 0]);
    h.extend(bootp);
    cat(eth([0xff; 6], &[], 0x0800), h)
}

/// Offset of the BOOTP message in a [`dhcp`] frame.
const BOOTP: usize = 14 + 20 + 8;
const BCAST: [u8; 4] = [255; 4];
const DHCP: P = P(ENFORCE_ROUTES | ANTI_SPOOFING | INGRESS_FILTER | DHCP_CLIENT);

#[test]
fn dhcp_requests_pass_only_for_a_dhcp_claim() {
    let discover = dhcp([0; 4], BCAST, (68, 67));
    let pass = Verdict::Pass(Pass::Exception(Exception::Dhcp));
    assert_eq!(egress(discover.as_slice(), &DHCP), pass);
    assert_eq!(
        egress(discover.as_slice(), &ALL),
        drop(DropReason::SpoofedSource),
        "without the flag, 0.0.0.0 is no own source"
    );
    // Rebinding: from the leased address, still broadcast, ciaddr the same.
    let rebind = dhcp(OWN4, BCAST, (68, 67));
    assert_eq!(egress(rebind.as_slice(), &DHCP), pass);
    assert_eq!(egress(rebind.as_slice(), &ALL), drop(DropReason::NoRoute));
    // Renewing: unicast to the server from the leased address is ordinary traffic.
    let renew = dhcp(OWN4, [192, 0, 2, 1], (68, 67));
    assert_eq!(
        egress(renew.as_slice(), &DHCP),
        Verdict::Pass(Pass::Route(0))
    );
    let off_route = dhcp(OWN4, [203, 0, 113, 1], (68, 67));
    assert_eq!(
        egress(off_route.as_slice(), &DHCP),
        drop(DropReason::NoRoute)
    );
    // Behind a VLAN tag the same rules hold.
    let mut tagged = eth([0xff; 6], &[0x8100], 0x0800);
    tagged.extend_from_slice(&discover[14..]);
    assert_eq!(egress(tagged.as_slice(), &DHCP), pass);
}

#[test]
fn dhcp_lookalikes_are_dropped() {
    let pass = Verdict::Pass(Pass::Exception(Exception::Dhcp));
    let base = dhcp([0; 4], BCAST, (68, 67));
    assert_eq!(egress(base.as_slice(), &DHCP), pass);
    // Another client's hardware address in chaddr.
    let mut f = base.clone();
    f[BOOTP + 33] = 0x66;
    assert_eq!(egress(f.as_slice(), &DHCP), drop(DropReason::SpoofedMac));
    // A foreign source MAC on the frame itself.
    let mut f = base.clone();
    f[11] = 0x66;
    assert_eq!(egress(f.as_slice(), &DHCP), drop(DropReason::SpoofedMac));
    // Relaying (giaddr set) or claiming an address in ciaddr from 0.0.0.0.
    let mut f = base.clone();
    f[BOOTP + 24..BOOTP + 28].copy_from_slice(&[192, 0, 2, 10]);
    assert_eq!(egress(f.as_slice(), &DHCP), drop(DropReason::SpoofedSource));
    let mut f = base.clone();
    f[BOOTP + 12..BOOTP + 16].copy_from_slice(&[192, 0, 2, 77]);
    assert_eq!(egress(f.as_slice(), &DHCP), drop(DropReason::SpoofedSource));
    // From a foreign, non-zero source: ordinary traffic, spoofed.
    let f = dhcp([192, 0, 2, 77], BCAST, (68, 67));
    assert_eq!(egress(f.as_slice(), &DHCP), drop(DropReason::SpoofedSource));
    // Other ports from 0.0.0.0, or 0.0.0.0 to a unicast server.
    for ports in [(68, 68), (67, 67), (1234, 67), (68, 53)] {
        let f = dhcp([0; 4], BCAST, ports);
        assert_eq!(
            egress(f.as_slice(), &DHCP),
            drop(DropReason::SpoofedSource),
            "{ports:?}"
        );
    }
    let f = dhcp([0; 4], [192, 0, 2, 1], (68, 67));
    assert_eq!(egress(f.as_slice(), &DHCP), drop(DropReason::SpoofedSource));
    // A BOOTREPLY, a non-Ethernet htype, no magic cookie, a datagram cut short.
    for (at, value) in [
        (BOOTP, 2u8),
        (BOOTP + 1, 6),
        (BOOTP + 2, 8),
        (BOOTP + 236, 0),
    ] {
        let mut f = base.clone();
        f[at] = value;
        assert_eq!(
            egress(f.as_slice(), &DHCP),
            drop(DropReason::Malformed),
            "byte {at}"
        );
    }
    let mut short = base.clone();
    short.truncate(BOOTP + 100);
    assert_eq!(egress(short.as_slice(), &DHCP), drop(DropReason::Malformed));
    let mut f = base.clone();
    f[14 + 24..14 + 26].copy_from_slice(&200u16.to_be_bytes()); // UDP length
    assert_eq!(egress(f.as_slice(), &DHCP), drop(DropReason::Malformed));
    // A fragment gets no exception.
    let mut f = base.clone();
    f[14 + 6] = 0x20; // MF
    assert_eq!(egress(f.as_slice(), &DHCP), drop(DropReason::SpoofedSource));
}
