//! A small synchronous netlink request/response socket, used from inside a namespace
//! thread (see [`super::thread`]): the socket belongs to the namespace of the thread
//! that opened it, so every caller opens one per job and drops it afterwards.
//!
//! It speaks raw `nlmsghdr` framing so both rtnetlink ([`super::link`]) and generic
//! netlink ([`super::ethtool`]) sit on it. Kernel errors carry the errno and the
//! extended-ack text (`NLMSGERR_ATTR_MSG`), which is usually the only way to learn
//! *why* a request was refused. It owns nothing but the socket.

use std::{fmt, io};

use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader, NetlinkSerializable};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr};

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_NOOP: u16 = 1;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSGERR_ATTR_MISS_TYPE: u16 = 5;

/// A failed netlink exchange.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// The kernel refused the request.
    #[error("{}", kernel_text(*errno, message))]
    Kernel { errno: i32, message: Option<String> },
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("netlink: cannot decode kernel reply: {0}")]
    Decode(String),
}

fn kernel_text(errno: i32, message: &Option<String>) -> String {
    let base = io::Error::from_raw_os_error(errno);
    match message {
        Some(m) if !m.is_empty() => format!("{base} ({m})"),
        _ => base.to_string(),
    }
}

impl NlError {
    /// The errno the kernel returned, if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// One reply message: its header type and flags plus the payload after `nlmsghdr`.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub message_type: u16,
    pub flags: u16,
    pub payload: Vec<u8>,
}

/// A netlink socket of one protocol, bound in the calling thread's namespace.
pub struct NlSocket {
    socket: Socket,
    seq: u32,
    port: u32,
}

impl fmt::Debug for NlSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NlSocket")
            .field("port", &self.port)
            .finish()
    }
}

impl NlSocket {
    pub fn new(protocol: isize) -> Result<Self, NlError> {
        let mut socket = Socket::new(protocol)?;
        let addr = socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Both are best effort: old kernels lack them and we only lose error text.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self {
            socket,
            seq: 1,
            port: addr.port_number(),
        })
    }

    /// An rtnetlink socket.
    pub fn route() -> Result<Self, NlError> {
        Self::new(netlink_sys::protocols::NETLINK_ROUTE)
    }

    /// Asks the kernel to check requests strictly (`NETLINK_GET_STRICT_CHK`): dumps
    /// then honour the filters in their header and attributes (an address dump for one
    /// `ifa_index`, a route dump for one `RTA_OIF`) instead of returning the whole
    /// namespace, and malformed requests are refused instead of half read.
    pub fn set_strict(&mut self, on: bool) -> Result<(), NlError> {
        self.socket.set_netlink_get_strict_chk(on)?;
        Ok(())
    }

    /// A generic netlink socket.
    pub fn generic() -> Result<Self, NlError> {
        Self::new(netlink_sys::protocols::NETLINK_GENERIC)
    }

    /// Sends one message (`payload` after `nlmsghdr`) and collects every reply up to
    /// the ACK (non-dump) or `NLMSG_DONE` (dump). `NLM_F_REQUEST` is always set; pass
    /// `NLM_F_ACK` for requests that return nothing else.
    pub fn request_raw(
        &mut self,
        message_type: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<Vec<RawReply>, NlError> {
        if let Some(text) = crate::failpoints::fires(crate::failpoints::NETLINK) {
            return Err(NlError::Kernel {
                errno: libc::EIO,
                message: Some(text),
            });
        }
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let flags = flags | NLM_F_REQUEST;
        let len = NLMSG_HDRLEN + payload.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&message_type.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&self.port.to_ne_bytes());
        buf.extend_from_slice(payload);
        self.socket.send(&buf, 0)?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let wants_ack = flags & NLM_F_ACK != 0;
        let mut replies = Vec::new();
        loop {
            let datagram = self.recv_datagram()?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= datagram.len() {
                let h = &datagram[off..];
                let mlen = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
                let mtype = u16::from_ne_bytes([h[4], h[5]]);
                let mflags = u16::from_ne_bytes([h[6], h[7]]);
                let mseq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
                if mlen < NLMSG_HDRLEN || off + mlen > datagram.len() {
                    return Err(NlError::Decode(format!(
                        "message length {mlen} at offset {off} of {}",
                        datagram.len()
                    )));
                }
                let body = &datagram[off + NLMSG_HDRLEN..off + mlen];
                off += align4(mlen);
                if mseq != seq {
                    continue; // a stale reply to an earlier request
                }
                match mtype {
                    NLMSG_NOOP => {}
                    NLMSG_DONE => return Ok(replies),
                    NLMSG_ERROR => {
                        let (errno, message) = parse_error(mflags, body)?;
                        if errno != 0 {
                            return Err(NlError::Kernel { errno, message });
                        }
                        return Ok(replies); // the ACK
                    }
                    _ => {
                        replies.push(RawReply {
                            message_type: mtype,
                            flags: mflags,
                            payload: body.to_vec(),
                        });
                        if !dump && !wants_ack {
                            return Ok(replies);
                        }
                    }
                }
            }
        }
    }

    fn recv_datagram(&self) -> Result<Vec<u8>, NlError> {
        let mut peek: Vec<u8> = Vec::new();
        let (len, _) = self
            .socket
            .recv_from(&mut peek, libc::MSG_PEEK | libc::MSG_TRUNC)?;
        let mut buf: Vec<u8> = Vec::with_capacity(len.max(4096));
        let n = self.socket.recv(&mut buf, 0)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Sends one rtnetlink message and decodes the replies.
    pub fn route_request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        let mut payload = vec![0u8; message.buffer_len()];
        message.serialize(&mut payload);
        let replies = self.request_raw(message.message_type(), flags, &payload)?;
        let mut out = Vec::with_capacity(replies.len());
        for r in replies {
            let mut header = NetlinkHeader::default();
            header.message_type = r.message_type;
            header.flags = r.flags;
            header.length = (NLMSG_HDRLEN + r.payload.len()) as u32;
            match RouteNetlinkMessage::deserialize(&header, &r.payload) {
                Ok(m) => out.push(m),
                Err(e) => return Err(NlError::Decode(e.to_string())),
            }
        }
        Ok(out)
    }
}

pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// `nlmsgerr`: errno, the echoed request header (and body unless capped), then TLVs.
fn parse_error(flags: u16, body: &[u8]) -> Result<(i32, Option<String>), NlError> {
    if body.len() < 4 {
        return Err(NlError::Decode("short NLMSG_ERROR".into()));
    }
    let errno = -i32::from_ne_bytes([body[0], body[1], body[2], body[3]]);
    let mut message = None;
    if flags & NLM_F_ACK_TLVS != 0 && body.len() >= 4 + NLMSG_HDRLEN {
        let orig = &body[4..];
        let orig_len = u32::from_ne_bytes([orig[0], orig[1], orig[2], orig[3]]) as usize;
        let skip = if flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align4(orig_len)
        };
        if let Some(tlvs) = body.get(4 + skip..) {
            for (kind, value) in Attrs::new(tlvs) {
                if kind == NLMSGERR_ATTR_MSG {
                    message = Some(cstr(value));
                } else if kind == NLMSGERR_ATTR_MISS_TYPE && message.is_none() {
                    if let Some(t) = attr_u32(value) {
                        message = Some(format!("missing attribute {t}"));
                    }
                }
            }
        }
    }
    Ok((errno, message))
}

/// Iterator over netlink attributes (`nlattr`) in a byte slice; stops at the first
/// malformed one. Yields the type with `NLA_F_NESTED`/byte-order bits cleared.
pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let kind = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & 0x3fff;
        if len < 4 || len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let value = &self.buf[4..len];
        self.buf = self.buf.get(align4(len)..).unwrap_or(&[]);
        Some((kind, value))
    }
}

/// A NUL-terminated (or not) netlink string.
pub fn cstr(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

pub fn attr_u32(value: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(value.get(..4)?.try_into().ok()?))
}

/// Builder for attribute payloads (used for generic netlink messages).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttrWriter {
    pub buf: Vec<u8>,
}

impl AttrWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn bytes(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.bytes(kind, &v.to_ne_bytes())
    }

    pub fn u16(&mut self, kind: u16, v: u16) -> &mut Self {
        self.bytes(kind, &v.to_ne_bytes())
    }

    pub fn string(&mut self, kind: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.bytes(kind, &v)
    }

    pub fn flag(&mut self, kind: u16) -> &mut Self {
        self.bytes(kind, &[])
    }

    /// A nested attribute whose content `inner` writes.
    pub fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut AttrWriter)) -> &mut Self {
        let mut w = AttrWriter::new();
        inner(&mut w);
        self.bytes(kind | 0x8000, &w.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip_with_padding_and_nesting() {
        let mut w = AttrWriter::new();
        w.string(2, "eth1").u32(1, 7).nested(3, |n| {
            n.flag(1).u16(2, 9);
        });
        let got: Vec<_> = Attrs::new(&w.buf).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].0, 2);
        assert_eq!(cstr(got[0].1), "eth1");
        assert_eq!(attr_u32(got[1].1), Some(7));
        assert_eq!(got[2].0, 3);
        let inner: Vec<_> = Attrs::new(got[2].1).collect();
        assert_eq!(inner[0], (1, &[][..]));
        assert_eq!(inner[1].1, &9u16.to_ne_bytes()[..]);
        // "eth1\0" is 5 bytes: 4 header + 5 = 9, padded to 12.
        assert_eq!(&w.buf[..4], &[9, 0, 2, 0]);
        assert_eq!(w.buf.len(), 12 + 8 + 4 + 4 + 8);
    }

    #[test]
    fn malformed_attrs_stop_iteration() {
        assert_eq!(Attrs::new(&[200, 0, 1, 0, 0, 0]).count(), 0);
        assert_eq!(Attrs::new(&[1, 0, 1, 0]).count(), 0);
    }

    #[test]
    fn error_text_from_extack() {
        let mut body = (-22i32).to_ne_bytes().to_vec();
        body.extend_from_slice(&[16, 0, 0, 0, 16, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        let mut w = AttrWriter::new();
        w.string(NLMSGERR_ATTR_MSG, "too big");
        body.extend_from_slice(&w.buf);
        let (errno, msg) = parse_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &body).unwrap();
        assert_eq!(errno, 22);
        assert_eq!(msg.as_deref(), Some("too big"));
    }
}
