//! The DHCPv4 client exchanges (RFC 2131): acquiring a lease (DISCOVER, OFFER,
//! REQUEST, ACK), renewing or rebinding it, and releasing it.
//!
//! The exchanges talk through a [`Transport`] (a UDP socket on the device in
//! [`super::socket`]; a scripted server in the tests), so retries, deadlines and
//! reply checks are tested without a network. Messages are built and parsed with
//! `dhcproto`; whether a reply is ours is decided by [`super::lease::check_reply`].
//!
//! Every request sets the BROADCAST flag while the client has no address, so the
//! server answers to 255.255.255.255 and the data path needs no ingress exception
//! (a unicast to an address the interface does not hold would not reach the socket
//! anyway). Retransmissions start at [`FIRST_RETRY`] and double up to [`MAX_RETRY`]:
//! RFC 2131's 4 s first wait would spend most of a pod start's budget on one lost
//! packet.

use std::{
    io,
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime},
};

use dhcproto::{
    v4::{DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode},
    Decodable, Decoder, Encodable, Encoder,
};

use super::lease::{check_reply, Expect, Lease, ReplyProblem};

/// First retransmission interval.
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest retransmission interval.
pub const MAX_RETRY: Duration = Duration::from_secs(4);

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:67.
    Broadcast,
    /// The server's address, port 67.
    Server(Ipv4Addr),
}

/// How the exchanges reach the network.
pub trait Transport {
    /// Sends one encoded message.
    fn send(&mut self, msg: &[u8], to: Destination) -> io::Result<()>;
    /// Waits until `until` for one datagram; `Ok(None)` when none came in time.
    fn recv(&mut self, until: Instant, buf: &mut [u8]) -> io::Result<Option<usize>>;
}

/// Why an exchange failed. The caller names the device and the pod.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("sending DHCP{phase}: {source}")]
    Send {
        phase: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("waiting for a reply to DHCP{phase}: {source}")]
    Recv {
        phase: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("encoding DHCP{phase}: {message}")]
    Encode {
        phase: &'static str,
        message: String,
    },
    #[error(
        "no usable DHCP{waiting_for} within {:.1} s ({sent} request(s) sent, {ignored} reply(ies) not for us)",
        waited.as_secs_f64()
    )]
    Timeout {
        waiting_for: &'static str,
        waited: Duration,
        sent: u32,
        ignored: u32,
    },
    #[error("server {server}: {problem}")]
    Refused {
        server: Ipv4Addr,
        #[source]
        problem: ReplyProblem,
    },
}

/// Who the client is on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId {
    pub mac: [u8; 6],
}

impl ClientId {
    /// Option 61: hardware type 1 (Ethernet) and the MAC.
    fn option(&self) -> DhcpOption {
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac);
        DhcpOption::ClientIdentifier(id)
    }
}

/// The options a client asks for (option 55).
const WANTED: [OptionCode; 7] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::ClasslessStaticRoute,
    OptionCode::AddressLeaseTime,
    OptionCode::ServerIdentifier,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// A BOOTREQUEST from `client` with the fields every request shares.
fn request_base(client: &ClientId, xid: u32, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
    let mut m = Message::new_with_id(
        xid,
        ciaddr,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &client.mac,
    );
    m.set_opcode(Opcode::BootRequest).set_htype(HType::Eth);
    m.set_flags(if broadcast {
        Flags::default().set_broadcast()
    } else {
        Flags::default()
    });
    m
}

/// DHCPDISCOVER.
pub fn discover(client: &ClientId, xid: u32) -> Message {
    let mut m = request_base(client, xid, Ipv4Addr::UNSPECIFIED, true);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Discover));
    o.insert(client.option());
    o.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
    m
}

/// DHCPREQUEST in SELECTING: asks `server` for the `offered` address (broadcast, so
/// the other servers learn their offers were declined).
pub fn request_offer(client: &ClientId, xid: u32, offered: Ipv4Addr, server: Ipv4Addr) -> Message {
    let mut m = request_base(client, xid, Ipv4Addr::UNSPECIFIED, true);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Request));
    o.insert(client.option());
    o.insert(DhcpOption::RequestedIpAddress(offered));
    o.insert(DhcpOption::ServerIdentifier(server));
    o.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
    m
}

/// DHCPREQUEST in RENEWING or REBINDING: the lease's address in `ciaddr`, neither
/// option 50 nor 54 (RFC 2131 4.3.2).
pub fn request_extend(client: &ClientId, xid: u32, lease: &Lease) -> Message {
    let mut m = request_base(client, xid, lease.address.addr(), false);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Request));
    o.insert(client.option());
    o.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
    m
}

/// DHCPRELEASE: unicast to the server, no reply.
pub fn release_message(client: &ClientId, xid: u32, lease: &Lease) -> Message {
    let mut m = request_base(client, xid, lease.address.addr(), false);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(MessageType::Release));
    o.insert(client.option());
    o.insert(DhcpOption::ServerIdentifier(lease.server));
    m
}

/// The wait before retransmission number `sent` (1 = after the first send).
pub fn retry_after(sent: u32) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1u32 << sent.saturating_sub(1).min(8));
    doubled.min(MAX_RETRY)
}

/// A fresh transaction id.
pub fn new_xid() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        // Uniqueness per exchange is all that matters: time and pid will do.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        t ^ std::process::id().rotate_left(16)
    }
}

fn encode(m: &Message, phase: &'static str) -> Result<Vec<u8>, ExchangeError> {
    let mut buf = Vec::with_capacity(300);
    m.encode(&mut Encoder::new(&mut buf))
        .map_err(|e| ExchangeError::Encode {
            phase,
            message: e.to_string(),
        })?;
    Ok(buf)
}

/// How an exchange went (for logs and the benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Requests sent (first sends and retransmissions).
    pub sent: u32,
    /// Datagrams that were not the awaited answer.
    pub ignored: u32,
}

/// One request and the answer it waits for.
struct Ask<'a> {
    msg: &'a [u8],
    to: Destination,
    want: Expect,
    /// The request's name in errors (`DISCOVER`, `REQUEST`).
    phase: &'static str,
    /// The awaited answer's name in errors (`OFFER`, `ACK`).
    waiting_for: &'static str,
}

/// Sends the request and retransmits it on the [`retry_after`] schedule until a
/// matching reply arrives or `deadline` passes. A DHCPNAK from the right server is
/// returned as [`ExchangeError::Refused`].
fn send_until_answered<T: Transport>(
    t: &mut T,
    ask: Ask<'_>,
    deadline: Instant,
    stats: &mut ExchangeStats,
) -> Result<Message, ExchangeError> {
    let Ask {
        msg,
        to,
        want,
        phase,
        waiting_for,
    } = ask;
    let want = &want;
    let started = Instant::now();
    let mut buf = vec![0u8; 1500];
    let mut round = 0u32;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ExchangeError::Timeout {
                waiting_for,
                waited: now - started,
                sent: stats.sent,
                ignored: stats.ignored,
            });
        }
        t.send(msg, to)
            .map_err(|source| ExchangeError::Send { phase, source })?;
        stats.sent += 1;
        round += 1;
        let resend_at = (Instant::now() + retry_after(round)).min(deadline);
        while let Some(n) = t
            .recv(resend_at, &mut buf)
            .map_err(|source| ExchangeError::Recv { phase, source })?
        {
            let Some(bytes) = buf.get(..n) else {
                continue;
            };
            let Ok(reply) = Message::decode(&mut Decoder::new(bytes)) else {
                stats.ignored += 1;
                continue;
            };
            match check_reply(&reply, want) {
                Ok(()) => return Ok(reply),
                Err(problem @ ReplyProblem::Nak(_)) => {
                    let server = match reply.opts().get(OptionCode::ServerIdentifier) {
                        Some(DhcpOption::ServerIdentifier(s)) => *s,
                        _ => Ipv4Addr::UNSPECIFIED,
                    };
                    return Err(ExchangeError::Refused { server, problem });
                }
                Err(_) => stats.ignored += 1,
            }
        }
    }
}

/// Acquires a lease before `deadline`: DISCOVER until an OFFER, REQUEST until the
/// ACK. A DHCPNAK starts over with a new DISCOVER while time remains.
pub fn acquire<T: Transport>(
    t: &mut T,
    client: &ClientId,
    deadline: Instant,
    stats: &mut ExchangeStats,
) -> Result<Lease, ExchangeError> {
    loop {
        let xid = new_xid();
        let msg = encode(&discover(client, xid), "DISCOVER")?;
        let ask = Ask {
            msg: &msg,
            to: Destination::Broadcast,
            want: Expect {
                xid,
                mac: client.mac,
                kind: MessageType::Offer,
                server: None,
            },
            phase: "DISCOVER",
            waiting_for: "OFFER",
        };
        let offer = send_until_answered(t, ask, deadline, stats)?;
        let offered = offer.yiaddr();
        let server = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            // check_reply refuses offers without one.
            _ => continue,
        };
        let msg = encode(&request_offer(client, xid, offered, server), "REQUEST")?;
        let ask = Ask {
            msg: &msg,
            to: Destination::Broadcast,
            want: Expect {
                xid,
                mac: client.mac,
                kind: MessageType::Ack,
                server: Some(server),
            },
            phase: "REQUEST",
            waiting_for: "ACK",
        };
        let ack = send_until_answered(t, ask, deadline, stats);
        match ack {
            Ok(ack) => {
                return Lease::from_ack(&ack, SystemTime::now())
                    .map_err(|problem| ExchangeError::Refused { server, problem })
            }
            Err(ExchangeError::Refused {
                problem: ReplyProblem::Nak(text),
                ..
            }) => {
                tracing::info!(%server, message = text.as_deref().unwrap_or(""),
                    "DHCPNAK while selecting; discovering again");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Extends `lease`: unicast to its server while renewing, broadcast to any server
/// while rebinding. Returns the new lease from the ACK.
pub fn extend<T: Transport>(
    t: &mut T,
    client: &ClientId,
    lease: &Lease,
    rebinding: bool,
    deadline: Instant,
    stats: &mut ExchangeStats,
) -> Result<Lease, ExchangeError> {
    let xid = new_xid();
    let msg = encode(&request_extend(client, xid, lease), "REQUEST")?;
    let (to, server) = if rebinding {
        (Destination::Broadcast, None)
    } else {
        (Destination::Server(lease.server), Some(lease.server))
    };
    let ask = Ask {
        msg: &msg,
        to,
        want: Expect {
            xid,
            mac: client.mac,
            kind: MessageType::Ack,
            server,
        },
        phase: "REQUEST",
        waiting_for: "ACK",
    };
    let ack = send_until_answered(t, ask, deadline, stats)?;
    let got =
        Lease::from_ack(&ack, SystemTime::now()).map_err(|problem| ExchangeError::Refused {
            server: lease.server,
            problem,
        })?;
    if got.address != lease.address {
        return Err(ExchangeError::Refused {
            server: got.server,
            problem: ReplyProblem::Address(got.address.addr()),
        });
    }
    Ok(got)
}

/// Gives `lease` back to its server (DHCPRELEASE; the server does not answer).
pub fn release<T: Transport>(
    t: &mut T,
    client: &ClientId,
    lease: &Lease,
) -> Result<(), ExchangeError> {
    let msg = encode(&release_message(client, new_xid(), lease), "RELEASE")?;
    t.send(&msg, Destination::Server(lease.server))
        .map_err(|source| ExchangeError::Send {
            phase: "RELEASE",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    /// A scripted server: answers each request with what `answer` returns.
    struct Scripted<F: FnMut(&Message) -> Vec<Message>> {
        answer: F,
        queue: VecDeque<Vec<u8>>,
        sent: Vec<(Message, Destination)>,
    }

    impl<F: FnMut(&Message) -> Vec<Message>> Transport for Scripted<F> {
        fn send(&mut self, msg: &[u8], to: Destination) -> io::Result<()> {
            let m = Message::decode(&mut Decoder::new(msg)).expect("we send valid messages");
            for reply in (self.answer)(&m) {
                let mut buf = Vec::new();
                reply.encode(&mut Encoder::new(&mut buf)).expect("encode");
                self.queue.push_back(buf);
            }
            self.sent.push((m, to));
            Ok(())
        }
        fn recv(&mut self, until: Instant, buf: &mut [u8]) -> io::Result<Option<usize>> {
            match self.queue.pop_front() {
                Some(b) => {
                    buf[..b.len()].copy_from_slice(&b);
                    Ok(Some(b.len()))
                }
                None => {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    Ok(None)
                }
            }
        }
    }

    fn scripted<F: FnMut(&Message) -> Vec<Message>>(answer: F) -> Scripted<F> {
        Scripted {
            answer,
            queue: VecDeque::new(),
            sent: Vec::new(),
        }
    }

    fn reply(to: &Message, kind: MessageType, addr: [u8; 4]) -> Message {
        let mut m = Message::new_with_id(
            to.xid(),
            Ipv4Addr::UNSPECIFIED,
            addr.into(),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &to.chaddr()[..6],
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(SERVER));
        o.insert(DhcpOption::AddressLeaseTime(120));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![SERVER]));
        m
    }

    fn server(req: &Message) -> Vec<Message> {
        match req.opts().msg_type() {
            Some(MessageType::Discover) => vec![reply(req, MessageType::Offer, [192, 0, 2, 100])],
            Some(MessageType::Request) => vec![reply(req, MessageType::Ack, [192, 0, 2, 100])],
            _ => vec![],
        }
    }

    const CLIENT: ClientId = ClientId { mac: MAC };

    #[test]
    fn discover_offer_request_ack() {
        let mut t = scripted(server);
        let mut stats = ExchangeStats::default();
        let lease = acquire(
            &mut t,
            &CLIENT,
            Instant::now() + Duration::from_secs(2),
            &mut stats,
        )
        .unwrap();
        assert_eq!(lease.address.to_string(), "192.0.2.100/24");
        assert_eq!(stats.sent, 2);
        let (discover, to) = &t.sent[0];
        assert_eq!(discover.opts().msg_type(), Some(MessageType::Discover));
        assert_eq!(*to, Destination::Broadcast);
        assert!(
            discover.flags().broadcast(),
            "no address yet: replies broadcast"
        );
        assert_eq!(discover.ciaddr(), Ipv4Addr::UNSPECIFIED);
        let (request, _) = &t.sent[1];
        assert_eq!(request.xid(), discover.xid());
        assert_eq!(
            request.opts().get(OptionCode::RequestedIpAddress),
            Some(&DhcpOption::RequestedIpAddress([192, 0, 2, 100].into()))
        );
        assert_eq!(
            request.opts().get(OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(&request.chaddr()[..6], &MAC);
    }

    #[test]
    fn replies_for_others_are_skipped_and_lost_requests_resent() {
        let mut calls = 0;
        let mut t = scripted(|req: &Message| {
            calls += 1;
            if calls == 1 {
                return vec![]; // the first DISCOVER is lost
            }
            let mut stranger = reply(req, MessageType::Offer, [192, 0, 2, 101]);
            stranger.set_xid(req.xid() ^ 1);
            let mut other_mac = reply(req, MessageType::Offer, [192, 0, 2, 102]);
            other_mac.set_chaddr(&[2, 0, 0, 0, 0, 9]);
            let mut v = vec![stranger, other_mac];
            v.extend(server(req));
            v
        });
        let mut stats = ExchangeStats::default();
        let lease = acquire(
            &mut t,
            &CLIENT,
            Instant::now() + Duration::from_secs(3),
            &mut stats,
        )
        .unwrap();
        assert_eq!(lease.address.addr(), Ipv4Addr::new(192, 0, 2, 100));
        assert_eq!(stats.sent, 3, "DISCOVER twice, REQUEST once");
        assert_eq!(stats.ignored, 4, "two strangers per answered round");
    }

    #[test]
    fn silence_ends_at_the_deadline() {
        let mut t = scripted(|_: &Message| vec![]);
        let mut stats = ExchangeStats::default();
        let start = Instant::now();
        let err = acquire(
            &mut t,
            &CLIENT,
            start + Duration::from_millis(1600),
            &mut stats,
        )
        .unwrap_err();
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1600) && took < Duration::from_millis(1900),
            "{took:?}"
        );
        assert!(
            matches!(
                err,
                ExchangeError::Timeout {
                    waiting_for: "OFFER",
                    sent: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_nak_while_selecting_starts_over() {
        let mut requests = 0;
        let mut t = scripted(|req: &Message| match req.opts().msg_type() {
            Some(MessageType::Request) => {
                requests += 1;
                if requests == 1 {
                    vec![reply(req, MessageType::Nak, [0; 4])]
                } else {
                    server(req)
                }
            }
            _ => server(req),
        });
        let mut stats = ExchangeStats::default();
        acquire(
            &mut t,
            &CLIENT,
            Instant::now() + Duration::from_secs(2),
            &mut stats,
        )
        .unwrap();
        let kinds: Vec<_> = t.sent.iter().map(|(m, _)| m.opts().msg_type()).collect();
        assert_eq!(
            kinds,
            vec![
                Some(MessageType::Discover),
                Some(MessageType::Request),
                Some(MessageType::Discover),
                Some(MessageType::Request)
            ]
        );
    }

    #[test]
    fn renew_is_unicast_with_ciaddr_and_rebind_broadcast() {
        let mut t = scripted(server);
        let mut stats = ExchangeStats::default();
        let deadline = Instant::now() + Duration::from_secs(2);
        let lease = acquire(&mut t, &CLIENT, deadline, &mut stats).unwrap();
        let renewed = extend(&mut t, &CLIENT, &lease, false, deadline, &mut stats).unwrap();
        assert_eq!(renewed.address, lease.address);
        let (m, to) = t.sent.last().unwrap();
        assert_eq!(*to, Destination::Server(SERVER));
        assert_eq!(m.ciaddr(), lease.address.addr());
        assert!(!m.flags().broadcast());
        assert!(m.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(m.opts().get(OptionCode::RequestedIpAddress).is_none());
        extend(&mut t, &CLIENT, &lease, true, deadline, &mut stats).unwrap();
        assert_eq!(t.sent.last().unwrap().1, Destination::Broadcast);
        release(&mut t, &CLIENT, &lease).unwrap();
        let (m, to) = t.sent.last().unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Release));
        assert_eq!(*to, Destination::Server(SERVER));
        assert_eq!(m.ciaddr(), lease.address.addr());
    }

    #[test]
    fn a_renewal_granting_another_address_is_refused() {
        let mut acquired = false;
        let mut t = scripted(|req: &Message| {
            let addr = if acquired {
                [192, 0, 2, 120]
            } else {
                [192, 0, 2, 100]
            };
            if req.opts().msg_type() == Some(MessageType::Request) {
                acquired = true;
            }
            match req.opts().msg_type() {
                Some(MessageType::Discover) => vec![reply(req, MessageType::Offer, addr)],
                _ => vec![reply(req, MessageType::Ack, addr)],
            }
        });
        let mut stats = ExchangeStats::default();
        let deadline = Instant::now() + Duration::from_secs(2);
        let lease = acquire(&mut t, &CLIENT, deadline, &mut stats).unwrap();
        let err = extend(&mut t, &CLIENT, &lease, false, deadline, &mut stats).unwrap_err();
        assert!(matches!(
            err,
            ExchangeError::Refused {
                problem: ReplyProblem::Address(_),
                ..
            }
        ));
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let waits: Vec<u64> = (1..=6).map(|n| retry_after(n).as_millis() as u64).collect();
        assert_eq!(waits, vec![500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(retry_after(u32::MAX), MAX_RETRY);
    }
}
