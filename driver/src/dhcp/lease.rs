//! A DHCPv4 lease and the decisions about it, all pure: whether a server's reply is
//! an answer to us ([`check_reply`]), what the lease grants ([`Lease::from_ack`]),
//! when to renew and rebind ([`Timing`]), and what goes into the pod's namespace
//! ([`Lease::install_plan`]). No sockets, no netlink: [`super::exchange`] and
//! [`super::install`] act on these values.

use std::{
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// "Infinity" in option 51 (RFC 2131 3.3): the lease never expires.
pub const INFINITE: u32 = u32::MAX;

/// Why a reply is not (usable as) the answer we wait for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyProblem {
    #[error("not a BOOTREPLY")]
    NotReply,
    #[error("xid {got:#010x} is not ours ({want:#010x})")]
    Xid { got: u32, want: u32 },
    #[error("chaddr is not the device's MAC (htype {htype}, hlen {hlen})")]
    Chaddr { htype: u8, hlen: u8 },
    #[error("option 53 (message type): missing")]
    NoMessageType,
    #[error("option 53 (message type): {got:?}, waiting for {want:?}")]
    MessageType { got: MessageType, want: MessageType },
    #[error("option 54 (server identifier): missing")]
    NoServer,
    #[error("option 54 (server identifier): {got} is not the server we asked ({want})")]
    Server { got: Ipv4Addr, want: Ipv4Addr },
    #[error("option 51 (lease time): missing")]
    NoLeaseTime,
    #[error("option 51 (lease time): 0 seconds")]
    ZeroLease,
    #[error("option 1 (subnet mask): missing")]
    NoMask,
    #[error("option 1 (subnet mask): {0} is not a contiguous mask")]
    Mask(Ipv4Addr),
    #[error("yiaddr: {0} cannot be a host address")]
    Address(Ipv4Addr),
    #[error("option 3 (router): {0} cannot be a gateway")]
    Router(Ipv4Addr),
    #[error("server refused with DHCPNAK{}", .0.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Nak(Option<String>),
}

/// What a reply must match to be the answer to our request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    pub xid: u32,
    pub mac: [u8; 6],
    pub kind: MessageType,
    /// The server we sent a REQUEST to (selecting); `None` while discovering or when
    /// any server may answer (rebinding).
    pub server: Option<Ipv4Addr>,
}

fn option_kind(msg: &Message) -> Option<MessageType> {
    msg.opts().msg_type()
}

/// Whether `msg` answers the request described by `want`. A DHCPNAK from the server
/// we asked (or any server, when none was named) is an answer too, reported as
/// [`ReplyProblem::Nak`]; every other mismatch means "not for us, keep waiting".
pub fn check_reply(msg: &Message, want: &Expect) -> Result<(), ReplyProblem> {
    if msg.opcode() != Opcode::BootReply {
        return Err(ReplyProblem::NotReply);
    }
    if msg.xid() != want.xid {
        return Err(ReplyProblem::Xid {
            got: msg.xid(),
            want: want.xid,
        });
    }
    let htype = u8::from(msg.htype());
    if msg.htype() != HType::Eth || msg.hlen() != 6 || msg.chaddr().get(..6) != Some(&want.mac) {
        return Err(ReplyProblem::Chaddr {
            htype,
            hlen: msg.hlen(),
        });
    }
    let kind = option_kind(msg).ok_or(ReplyProblem::NoMessageType)?;
    let server = match msg.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    };
    if let (Some(w), Some(got)) = (want.server, server) {
        if w != got {
            return Err(ReplyProblem::Server { got, want: w });
        }
    }
    if kind == MessageType::Nak && want.kind == MessageType::Ack {
        let text = match msg.opts().get(OptionCode::Message) {
            Some(DhcpOption::Message(m)) => Some(m.clone()),
            _ => None,
        };
        return Err(ReplyProblem::Nak(text));
    }
    if kind != want.kind {
        return Err(ReplyProblem::MessageType {
            got: kind,
            want: want.kind,
        });
    }
    if server.is_none() {
        return Err(ReplyProblem::NoServer);
    }
    Ok(())
}

/// When a lease is renewed (T1), rebound (T2) and lost, counted from when it was
/// granted. `None` for an infinite lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    pub renew: Duration,
    pub rebind: Duration,
    pub expire: Duration,
}

impl Timing {
    /// RFC 2131 4.4.5: T1 defaults to half the lease, T2 to 7/8 of it; a server's own
    /// values are used when they keep `T1 <= T2 <= lease`, otherwise the defaults.
    pub fn of(lease_secs: u32, t1: Option<u32>, t2: Option<u32>) -> Option<Self> {
        if lease_secs == INFINITE {
            return None;
        }
        let lease = u64::from(lease_secs);
        let default_t1 = lease / 2;
        let default_t2 = lease * 7 / 8;
        let t2 = t2
            .map(u64::from)
            .filter(|t| *t <= lease)
            .unwrap_or(default_t2);
        let t1 = t1
            .map(u64::from)
            .filter(|t| *t <= t2)
            .unwrap_or(default_t1.min(t2));
        Some(Self {
            renew: Duration::from_secs(t1),
            rebind: Duration::from_secs(t2),
            expire: Duration::from_secs(lease),
        })
    }
}

/// What a server granted, as read from its DHCPACK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased address with the prefix from option 1.
    pub address: Ipv4Net,
    /// Option 54: where renewals and the release go.
    pub server: Ipv4Addr,
    /// Option 3, in the server's order.
    pub routers: Vec<Ipv4Addr>,
    /// Option 121 (RFC 3442): destination and gateway (0.0.0.0 = on-link).
    pub classless_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// Option 51 in seconds ([`INFINITE`] for ever).
    pub lease_secs: u32,
    pub timing: Option<Timing>,
    /// Unix seconds when the ACK arrived (lease times count from here).
    pub granted_at: u64,
}

/// Whether `mask` is a contiguous netmask, and its prefix length.
fn prefix_of(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// A unicast address a host may hold.
fn host_address(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback())
}

/// Unix seconds of `t` (0 before the epoch).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Lease {
    /// Reads the lease out of a DHCPACK that [`check_reply`] accepted, received at
    /// `now`. Fails when the ACK lacks what a lease needs (options 51, 54, 1) or
    /// grants something no host can use.
    pub fn from_ack(msg: &Message, now: SystemTime) -> Result<Self, ReplyProblem> {
        let opts = msg.opts();
        let server = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => return Err(ReplyProblem::NoServer),
        };
        let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
            Some(DhcpOption::AddressLeaseTime(t)) => *t,
            _ => return Err(ReplyProblem::NoLeaseTime),
        };
        if lease_secs == 0 {
            return Err(ReplyProblem::ZeroLease);
        }
        let mask = match opts.get(OptionCode::SubnetMask) {
            Some(DhcpOption::SubnetMask(m)) => *m,
            _ => return Err(ReplyProblem::NoMask),
        };
        let prefix = prefix_of(mask)
            .filter(|p| *p > 0 && *p <= 32)
            .ok_or(ReplyProblem::Mask(mask))?;
        let addr = msg.yiaddr();
        if !host_address(addr) {
            return Err(ReplyProblem::Address(addr));
        }
        let address = Ipv4Net::new(addr, prefix).map_err(|_| ReplyProblem::Mask(mask))?;
        if prefix < 31 && (addr == address.network() || addr == address.broadcast()) {
            return Err(ReplyProblem::Address(addr));
        }
        let routers = match opts.get(OptionCode::Router) {
            Some(DhcpOption::Router(r)) => r.clone(),
            _ => Vec::new(),
        };
        if let Some(bad) = routers.iter().find(|r| !host_address(**r) || **r == addr) {
            return Err(ReplyProblem::Router(*bad));
        }
        let classless_routes = match opts.get(OptionCode::ClasslessStaticRoute) {
            Some(DhcpOption::ClasslessStaticRoute(r)) => {
                r.iter().map(|(net, gw)| (net.trunc(), *gw)).collect()
            }
            _ => Vec::new(),
        };
        let t1 = match opts.get(OptionCode::Renewal) {
            Some(DhcpOption::Renewal(t)) => Some(*t),
            _ => None,
        };
        let t2 = match opts.get(OptionCode::Rebinding) {
            Some(DhcpOption::Rebinding(t)) => Some(*t),
            _ => None,
        };
        Ok(Self {
            address,
            server,
            routers,
            classless_routes,
            lease_secs,
            timing: Timing::of(lease_secs, t1, t2),
            granted_at: unix_secs(now),
        })
    }

    /// Unix seconds when the lease runs out (`None`: never).
    pub fn expires_at(&self) -> Option<u64> {
        self.timing
            .map(|t| self.granted_at.saturating_add(t.expire.as_secs()))
    }

    /// The routes the lease asks for. RFC 3442: when option 121 is present, option 3
    /// is ignored; otherwise the first router becomes the default gateway.
    pub fn install_plan(&self) -> InstallPlan {
        let routes = if !self.classless_routes.is_empty() {
            self.classless_routes
                .iter()
                .map(|(destination, gw)| LeaseRoute {
                    destination: *destination,
                    gateway: (!gw.is_unspecified()).then_some(*gw),
                })
                .collect()
        } else {
            self.routers
                .first()
                .map(|gw| LeaseRoute {
                    destination: Ipv4Net::default(),
                    gateway: Some(*gw),
                })
                .into_iter()
                .collect()
        };
        InstallPlan {
            address: self.address,
            routes,
        }
    }
}

/// One route a lease asks for: through `gateway`, or on-link when `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRoute {
    pub destination: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
}

/// What a lease puts on the interface inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallPlan {
    pub address: Ipv4Net,
    pub routes: Vec<LeaseRoute>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::Flags;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn ack(kind: MessageType) -> Message {
        let mut m = Message::new_with_id(
            0x1234_5678,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(192, 0, 2, 100),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply).set_flags(Flags::default());
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        o.insert(DhcpOption::AddressLeaseTime(120));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![SERVER]));
        m
    }

    fn expect(kind: MessageType, server: Option<Ipv4Addr>) -> Expect {
        Expect {
            xid: 0x1234_5678,
            mac: MAC,
            kind,
            server,
        }
    }

    #[test]
    fn an_answer_matches_xid_chaddr_type_and_server() {
        let m = ack(MessageType::Ack);
        assert_eq!(
            check_reply(&m, &expect(MessageType::Ack, Some(SERVER))),
            Ok(())
        );
        assert!(matches!(
            check_reply(&m, &expect(MessageType::Offer, None)),
            Err(ReplyProblem::MessageType { .. })
        ));
        let mut other = m.clone();
        other.set_xid(1);
        assert!(matches!(
            check_reply(&other, &expect(MessageType::Ack, None)),
            Err(ReplyProblem::Xid { .. })
        ));
        let mut other = m.clone();
        other.set_chaddr(&[2, 0, 0, 0, 0, 0x66]);
        assert!(matches!(
            check_reply(&other, &expect(MessageType::Ack, None)),
            Err(ReplyProblem::Chaddr { .. })
        ));
        assert!(matches!(
            check_reply(
                &m,
                &expect(MessageType::Ack, Some(Ipv4Addr::new(192, 0, 2, 2)))
            ),
            Err(ReplyProblem::Server { .. })
        ));
        let mut other = m.clone();
        other.set_opcode(Opcode::BootRequest);
        assert_eq!(
            check_reply(&other, &expect(MessageType::Ack, None)),
            Err(ReplyProblem::NotReply)
        );
        let mut other = m.clone();
        other.opts_mut().remove(OptionCode::ServerIdentifier);
        assert_eq!(
            check_reply(&other, &expect(MessageType::Ack, None)),
            Err(ReplyProblem::NoServer)
        );
        let mut other = m;
        other.opts_mut().remove(OptionCode::MessageType);
        assert_eq!(
            check_reply(&other, &expect(MessageType::Ack, None)),
            Err(ReplyProblem::NoMessageType)
        );
    }

    #[test]
    fn a_nak_is_an_answer_with_its_text() {
        let mut m = ack(MessageType::Nak);
        m.opts_mut()
            .insert(DhcpOption::Message("wrong network".into()));
        assert_eq!(
            check_reply(&m, &expect(MessageType::Ack, Some(SERVER))),
            Err(ReplyProblem::Nak(Some("wrong network".into())))
        );
    }

    #[test]
    fn the_lease_reads_address_mask_server_router_and_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let l = Lease::from_ack(&ack(MessageType::Ack), now).unwrap();
        assert_eq!(l.address.to_string(), "192.0.2.100/24");
        assert_eq!(l.server, SERVER);
        assert_eq!(l.routers, vec![SERVER]);
        assert_eq!(l.lease_secs, 120);
        assert_eq!(
            l.timing,
            Some(Timing {
                renew: Duration::from_secs(60),
                rebind: Duration::from_secs(105),
                expire: Duration::from_secs(120),
            })
        );
        assert_eq!(l.expires_at(), Some(1_120));
        let plan = l.install_plan();
        assert_eq!(plan.address.to_string(), "192.0.2.100/24");
        assert_eq!(
            plan.routes,
            vec![LeaseRoute {
                destination: "0.0.0.0/0".parse().unwrap(),
                gateway: Some(SERVER)
            }]
        );
    }

    #[test]
    fn a_lease_without_its_essentials_is_refused() {
        let now = SystemTime::now();
        for (code, problem) in [
            (OptionCode::AddressLeaseTime, ReplyProblem::NoLeaseTime),
            (OptionCode::ServerIdentifier, ReplyProblem::NoServer),
            (OptionCode::SubnetMask, ReplyProblem::NoMask),
        ] {
            let mut m = ack(MessageType::Ack);
            m.opts_mut().remove(code);
            assert_eq!(Lease::from_ack(&m, now), Err(problem), "{code:?}");
        }
        let mut m = ack(MessageType::Ack);
        m.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
        assert!(matches!(
            Lease::from_ack(&m, now),
            Err(ReplyProblem::Mask(_))
        ));
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.0",
            "192.0.2.255",
        ] {
            let mut m = ack(MessageType::Ack);
            m.set_yiaddr(bad.parse::<Ipv4Addr>().unwrap());
            assert!(
                matches!(Lease::from_ack(&m, now), Err(ReplyProblem::Address(_))),
                "{bad}"
            );
        }
        let mut m = ack(MessageType::Ack);
        m.opts_mut()
            .insert(DhcpOption::Router(vec![Ipv4Addr::new(224, 0, 0, 1)]));
        assert!(matches!(
            Lease::from_ack(&m, now),
            Err(ReplyProblem::Router(_))
        ));
        let mut m = ack(MessageType::Ack);
        m.opts_mut().insert(DhcpOption::AddressLeaseTime(0));
        assert_eq!(Lease::from_ack(&m, now), Err(ReplyProblem::ZeroLease));
    }

    #[test]
    fn classless_routes_replace_the_router_option() {
        let mut m = ack(MessageType::Ack);
        m.opts_mut().insert(DhcpOption::ClasslessStaticRoute(vec![
            (
                "198.51.100.0/24".parse().unwrap(),
                Ipv4Addr::new(192, 0, 2, 254),
            ),
            ("192.0.2.128/25".parse().unwrap(), Ipv4Addr::UNSPECIFIED),
        ]));
        let plan = Lease::from_ack(&m, SystemTime::now())
            .unwrap()
            .install_plan();
        assert_eq!(
            plan.routes,
            vec![
                LeaseRoute {
                    destination: "198.51.100.0/24".parse().unwrap(),
                    gateway: Some(Ipv4Addr::new(192, 0, 2, 254)),
                },
                LeaseRoute {
                    destination: "192.0.2.128/25".parse().unwrap(),
                    gateway: None,
                },
            ],
            "RFC 3442: option 3 is ignored when option 121 is present"
        );
    }

    #[test]
    fn timing_keeps_t1_before_t2_before_expiry() {
        let t = Timing::of(1000, None, None).unwrap();
        assert_eq!((t.renew.as_secs(), t.rebind.as_secs()), (500, 875));
        let t = Timing::of(1000, Some(100), Some(200)).unwrap();
        assert_eq!((t.renew.as_secs(), t.rebind.as_secs()), (100, 200));
        // T2 beyond the lease, T1 beyond T2: the defaults.
        let t = Timing::of(1000, Some(900), Some(5000)).unwrap();
        assert_eq!((t.renew.as_secs(), t.rebind.as_secs()), (500, 875));
        let t = Timing::of(1000, Some(950), Some(900)).unwrap();
        assert_eq!((t.renew.as_secs(), t.rebind.as_secs()), (500, 900));
        let t = Timing::of(1000, None, Some(300)).unwrap();
        assert_eq!(
            (t.renew.as_secs(), t.rebind.as_secs()),
            (300, 300),
            "T1 never after T2"
        );
        assert_eq!(Timing::of(INFINITE, None, None), None);
    }

    #[test]
    fn masks_must_be_contiguous() {
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_of(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_of(Ipv4Addr::new(255, 0, 255, 0)), None);
    }
}
