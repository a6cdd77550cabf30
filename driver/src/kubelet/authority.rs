//! Authority repair: lets gRPC clients that send a socket path as the HTTP/2
//! `:authority` talk to the plugin's servers.
//!
//! Kubelet (grpc-go) sends `localhost`. grpcio (C-core >= 1.57), grpc-java and
//! grpc-swift send the unix socket path, percent-encoded or raw
//! (`%2Fvar%2Flib%2Fkubelet%2F...`), which is no valid URI authority. The HTTP/2 server
//! under tonic (h2) answers such a request with `RST_STREAM(PROTOCOL_ERROR)` and logs
//! nothing, so operators' tools fail where kubelet works.
//!
//! Every accepted connection is wrapped in a [`RepairedStream`]: what the server writes
//! goes to the client untouched; what the client sends is read through an
//! [`AuthorityRepair`], which passes the client preface and whole frames on, decodes
//! every header block (HEADERS + CONTINUATION) with the client's HPACK context, and
//! replaces an `:authority` that is not a valid authority with `localhost`. The socket
//! is a unix socket: the authority names nothing a server could route by.
//!
//! Header blocks go on byte for byte until the first replacement. From then on every
//! block of that connection is re-encoded as literals without indexing, so the
//! server's HPACK table is never touched again (the client's view of that table and the
//! server's differ from the first rewritten block) and no dynamic table size update is
//! ever sent. Re-encoded blocks carry no padding or priority and are split at 16384
//! bytes, the largest frame every HTTP/2 peer accepts.
//!
//! What the server would refuse with a connection error (no HTTP/2 preface, a frame
//! over the server's SETTINGS_MAX_FRAME_SIZE, a broken header block, a misplaced
//! CONTINUATION, a client PUSH_PROMISE) closes the connection here, with a warning
//! naming the socket. Nothing a client sends can make this module panic.
//!
//! This module owns no socket and does not know the gRPC services; it only sits
//! between an accepted `UnixStream` and tonic.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use loona_hpack::decoder::DecoderError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

/// What a client must send first (RFC 9113 §3.4).
pub const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The authority a replaced `:authority` becomes (what kubelet sends).
pub const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// SETTINGS_MAX_FRAME_SIZE of the plugin's servers: tonic leaves it at h2's default,
/// which is also the smallest value HTTP/2 allows. Re-encoded blocks are split at it.
pub const MAX_FRAME_SIZE: usize = 16_384;

/// SETTINGS_HEADER_TABLE_SIZE of the plugin's servers (h2's default; tonic does not
/// change it): the largest HPACK table a client may make the server keep.
pub const HEADER_TABLE_SIZE: usize = 4_096;

/// Largest header block (all fragments of one HEADERS + CONTINUATION sequence) taken
/// in. The server behind refuses header lists over 16 KiB (hyper's default), so a
/// legitimate block is far smaller.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Largest decoded header list (RFC 9113 §6.5.2 sizes: name + value + 32 per field)
/// taken in; bounds what indexed references can blow a small block up to.
pub const MAX_HEADER_LIST: usize = 1024 * 1024;

const FRAME_HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Why a client's byte stream was not passed on. The connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("the client did not open with the HTTP/2 preface")]
    NotHttp2,
    #[error("stream {stream}: frame of type {kind:#x} is {length} bytes, over the server's SETTINGS_MAX_FRAME_SIZE {MAX_FRAME_SIZE}")]
    FrameTooLarge {
        stream: u32,
        kind: u8,
        length: usize,
    },
    #[error(
        "stream {stream}: padding of {padding} bytes does not fit the {length}-byte HEADERS frame"
    )]
    BadPadding {
        stream: u32,
        padding: usize,
        length: usize,
    },
    #[error("stream {stream}: header block over {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge { stream: u32 },
    #[error("stream {stream}: decoded header list over {MAX_HEADER_LIST} bytes")]
    HeaderListTooLarge { stream: u32 },
    #[error("stream {stream}: a frame of type {kind:#x} where CONTINUATION was expected")]
    ContinuationExpected { stream: u32, kind: u8 },
    #[error("stream {stream}: CONTINUATION without an open header block")]
    UnexpectedContinuation { stream: u32 },
    #[error("stream {stream}: a client must not send PUSH_PROMISE")]
    PushPromise { stream: u32 },
    #[error("stream {stream}: header block cannot be decoded: {source}")]
    Hpack {
        stream: u32,
        #[source]
        source: DecoderError,
    },
    #[error("the client stopped in the middle of {what}")]
    Truncated { what: &'static str },
}

/// A header block being reassembled: a HEADERS frame without END_HEADERS and the
/// CONTINUATION frames after it.
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    /// The header block fragments, without padding and priority fields.
    fragment: Vec<u8>,
    /// The frames as received, passed on unchanged when nothing is replaced.
    original: Vec<u8>,
}

/// The client→server half of one connection: bytes in, repaired bytes out. Pure (no
/// I/O), so every case is a unit test.
pub struct AuthorityRepair {
    /// How much of the client preface has been passed on.
    preface: usize,
    /// Received bytes not yet forming a whole frame.
    pending: Vec<u8>,
    /// The client's HPACK context, as the server would keep it.
    decoder: loona_hpack::Decoder<'static>,
    block: Option<OpenBlock>,
    /// True from the first replacement on: every block is re-encoded.
    reencoding: bool,
    replaced: usize,
    first_replaced: Option<Vec<u8>>,
}

impl Default for AuthorityRepair {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRepair {
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            preface: 0,
            pending: Vec::new(),
            decoder,
            block: None,
            reencoding: false,
            replaced: 0,
            first_replaced: None,
        }
    }

    /// How many `:authority` values were replaced so far.
    pub fn replaced(&self) -> usize {
        self.replaced
    }

    /// The first replaced `:authority`, for the log.
    pub fn first_replaced(&self) -> Option<&[u8]> {
        self.first_replaced.as_deref()
    }

    /// Takes `input` from the client and appends what the server may read to `out`
    /// (the preface and whole frames; a partial frame waits for the rest).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        if self.preface < CLIENT_PREFACE.len() {
            let want = &CLIENT_PREFACE[self.preface..];
            let take = want.len().min(input.len());
            if input[..take] != want[..take] {
                return Err(AuthorityError::NotHttp2);
            }
            out.extend_from_slice(&input[..take]);
            self.preface += take;
            input = &input[take..];
        }
        if input.is_empty() {
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        let pending = std::mem::take(&mut self.pending);
        let mut at = 0;
        let result = loop {
            let Some(header) = pending.get(at..at + FRAME_HEADER_LEN) else {
                break Ok(());
            };
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let kind = header[3];
            let flags = header[4];
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            if length > MAX_FRAME_SIZE {
                break Err(AuthorityError::FrameTooLarge {
                    stream,
                    kind,
                    length,
                });
            }
            let end = at + FRAME_HEADER_LEN + length;
            let Some(frame) = pending.get(at..end) else {
                break Ok(());
            };
            let frame = Frame {
                kind,
                flags,
                stream,
                raw: frame,
                payload: &frame[FRAME_HEADER_LEN..],
            };
            if let Err(err) = self.frame(frame, out) {
                break Err(err);
            }
            at = end;
        };
        self.pending = pending;
        self.pending.drain(..at);
        result
    }

    /// Checks that the client stopped between frames; call when its input ends.
    pub fn finish(&self) -> Result<(), AuthorityError> {
        if self.preface > 0 && self.preface < CLIENT_PREFACE.len() {
            return Err(AuthorityError::Truncated {
                what: "the preface",
            });
        }
        if !self.pending.is_empty() {
            return Err(AuthorityError::Truncated { what: "a frame" });
        }
        if self.block.is_some() {
            return Err(AuthorityError::Truncated {
                what: "a header block",
            });
        }
        Ok(())
    }

    fn frame(&mut self, frame: Frame<'_>, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let stream = frame.stream;
        if let Some(block) = self.block.as_mut() {
            if frame.kind != CONTINUATION || stream != block.stream {
                return Err(AuthorityError::ContinuationExpected {
                    stream: block.stream,
                    kind: frame.kind,
                });
            }
            push_fragment(block, frame.payload, frame.raw)?;
            if frame.flags & END_HEADERS != 0 {
                if let Some(block) = self.block.take() {
                    self.close_block(block, out)?;
                }
            }
            return Ok(());
        }
        match frame.kind {
            HEADERS => {
                let fragment = headers_fragment(&frame)?;
                let mut block = OpenBlock {
                    stream,
                    end_stream: frame.flags & END_STREAM != 0,
                    fragment: Vec::new(),
                    original: Vec::new(),
                };
                push_fragment(&mut block, fragment, frame.raw)?;
                if frame.flags & END_HEADERS != 0 {
                    self.close_block(block, out)
                } else {
                    self.block = Some(block);
                    Ok(())
                }
            }
            CONTINUATION => Err(AuthorityError::UnexpectedContinuation { stream }),
            PUSH_PROMISE => Err(AuthorityError::PushPromise { stream }),
            _ => {
                out.extend_from_slice(frame.raw);
                Ok(())
            }
        }
    }

    /// Decodes a whole block, repairs its `:authority` and passes it on.
    fn close_block(&mut self, block: OpenBlock, out: &mut Vec<u8>) -> Result<(), AuthorityError> {
        let stream = block.stream;
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                list_size = list_size.saturating_add(name.len() + value.len() + 32);
                if list_size <= MAX_HEADER_LIST {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|source| AuthorityError::Hpack { stream, source })?;
        if list_size > MAX_HEADER_LIST {
            return Err(AuthorityError::HeaderListTooLarge { stream });
        }
        let mut replaced = false;
        for (name, value) in fields.iter_mut() {
            if name == b":authority" && !is_valid_authority(value) {
                let old = std::mem::replace(value, REPLACEMENT_AUTHORITY.to_vec());
                self.replaced += 1;
                self.first_replaced.get_or_insert(old);
                replaced = true;
            }
        }
        self.reencoding |= replaced;
        if self.reencoding {
            let encoded = encode_literals(&fields);
            write_header_block(stream, block.end_stream, &encoded, out);
        } else {
            out.extend_from_slice(&block.original);
        }
        Ok(())
    }
}

struct Frame<'a> {
    kind: u8,
    flags: u8,
    stream: u32,
    /// The whole frame, header included.
    raw: &'a [u8],
    payload: &'a [u8],
}

/// The header block fragment of a HEADERS frame: its payload without the pad length,
/// the priority fields and the padding (RFC 9113 §6.2).
fn headers_fragment<'a>(frame: &Frame<'a>) -> Result<&'a [u8], AuthorityError> {
    let mut payload = frame.payload;
    let mut padding = 0usize;
    let bad_padding = |padding| AuthorityError::BadPadding {
        stream: frame.stream,
        padding,
        length: frame.payload.len(),
    };
    if frame.flags & PADDED != 0 {
        let (&pad, rest) = payload.split_first().ok_or(bad_padding(1))?;
        padding = usize::from(pad);
        payload = rest;
    }
    if frame.flags & PRIORITY != 0 {
        payload = payload.get(5..).ok_or(bad_padding(padding))?;
    }
    let keep = payload
        .len()
        .checked_sub(padding)
        .ok_or(bad_padding(padding))?;
    Ok(&payload[..keep])
}

fn push_fragment(block: &mut OpenBlock, fragment: &[u8], raw: &[u8]) -> Result<(), AuthorityError> {
    if block.fragment.len() + fragment.len() > MAX_HEADER_BLOCK {
        return Err(AuthorityError::HeaderBlockTooLarge {
            stream: block.stream,
        });
    }
    block.fragment.extend_from_slice(fragment);
    block.original.extend_from_slice(raw);
    Ok(())
}

/// True if `value` is what h2 accepts as `:authority` (an `http::uri::Authority`).
pub fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// HPACK "literal header field without indexing — new name" for every field (RFC
/// 7541 §6.2.2): the decoder's table is neither read nor changed.
pub fn encode_literals(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for string in [name, value] {
            encode_length(string.len(), &mut out);
            out.extend_from_slice(string);
        }
    }
    out
}

/// An HPACK string length: 7-bit prefix integer, Huffman bit clear (RFC 7541 §5.1).
fn encode_length(length: usize, out: &mut Vec<u8>) {
    if length < 0x7f {
        out.push(length as u8);
        return;
    }
    out.push(0x7f);
    let mut rest = length - 0x7f;
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// One HEADERS frame (END_STREAM as the client set it) and as many CONTINUATION
/// frames as `block` needs at [`MAX_FRAME_SIZE`]; the last carries END_HEADERS.
fn write_header_block(stream: u32, end_stream: bool, block: &[u8], out: &mut Vec<u8>) {
    let mut chunks = block.chunks(MAX_FRAME_SIZE).peekable();
    let mut kind = HEADERS;
    let mut flags = if end_stream { END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        write_frame(HEADERS, flags | END_HEADERS, stream, &[], out);
        return;
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        write_frame(kind, flags, stream, chunk, out);
        kind = CONTINUATION;
        flags = 0;
    }
}

fn write_frame(kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    let length = payload.len() as u32;
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Accepted connections of `listener`, each wrapped in a [`RepairedStream`]; hand it
/// to `serve_with_incoming_shutdown`. `socket` names the socket in warnings.
pub fn incoming(
    listener: UnixListener,
    socket: &Path,
) -> impl Stream<Item = io::Result<RepairedStream>> {
    let socket: Arc<Path> = Arc::from(socket);
    UnixListenerStream::new(listener)
        .map(move |accepted| accepted.map(|stream| RepairedStream::new(stream, socket.clone())))
}

/// A client connection whose reads go through an [`AuthorityRepair`]; writes pass
/// straight through.
pub struct RepairedStream {
    inner: UnixStream,
    socket: Arc<Path>,
    repair: AuthorityRepair,
    /// Repaired bytes the server has not read yet, from `ready_at` on.
    ready: Vec<u8>,
    ready_at: usize,
    scratch: Box<[u8]>,
    logged: bool,
    failed: bool,
}

impl RepairedStream {
    pub fn new(inner: UnixStream, socket: Arc<Path>) -> Self {
        Self {
            inner,
            socket,
            repair: AuthorityRepair::new(),
            ready: Vec::new(),
            ready_at: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            logged: false,
            failed: false,
        }
    }

    fn fail(&mut self, err: AuthorityError) -> io::Error {
        tracing::warn!(
            socket = %self.socket.display(),
            "closing a gRPC connection: {err}"
        );
        self.failed = true;
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

impl AsyncRead for RepairedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.ready_at < this.ready.len() {
                let take = (this.ready.len() - this.ready_at).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_at..this.ready_at + take]);
                this.ready_at += take;
                if this.ready_at == this.ready.len() {
                    this.ready.clear();
                    this.ready_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "connection closed by the authority repair",
                )));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let input = read.filled();
            if input.is_empty() {
                // The client is done: a clean end, or one in the middle of a frame.
                return Poll::Ready(match this.repair.finish() {
                    Ok(()) => Ok(()),
                    Err(err) => Err(this.fail(err)),
                });
            }
            if let Err(err) = this.repair.feed(input, &mut this.ready) {
                return Poll::Ready(Err(this.fail(err)));
            }
            if !this.logged && this.repair.replaced() > 0 {
                this.logged = true;
                let old = this.repair.first_replaced().unwrap_or_default();
                tracing::debug!(
                    socket = %this.socket.display(),
                    "gRPC client sent :authority {:?}, not a valid authority; serving it as localhost",
                    String::from_utf8_lossy(old)
                );
            }
        }
    }
}

impl AsyncWrite for RepairedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Connected for RepairedStream {
    type ConnectInfo = <UnixStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    const SETTINGS_FRAME: [u8; 9] = [0, 0, 0, 0x4, 0, 0, 0, 0, 0];

    /// What grpcio sends for a unary call, `:authority` as given.
    fn request(authority: &str, path: &str) -> Fields {
        [
            (":scheme", "http"),
            (":method", "POST"),
            (":authority", authority),
            (":path", path),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            (
                "user-agent",
                "grpc-python/1.51.1 grpc-c/29.0.0 (linux; chttp2)",
            ),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    /// A client-side encoder that indexes everything, as grpcio's does: later blocks
    /// refer to the dynamic table.
    fn encode(encoder: &mut loona_hpack::Encoder<'_>, fields: &Fields) -> Vec<u8> {
        encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(kind, flags, stream, payload, &mut out);
        out
    }

    fn repair(input: &[u8]) -> (AuthorityRepair, Result<Vec<u8>, AuthorityError>) {
        let mut repair = AuthorityRepair::new();
        let mut out = Vec::new();
        let result = repair.feed(input, &mut out).map(|()| out);
        (repair, result)
    }

    /// What the server makes of `bytes`: after the preface, the frames (type, flags,
    /// stream, payload) except header blocks, and every header block decoded with one
    /// HPACK decoder for the connection, as h2 keeps it. Checks frame sizes and that
    /// CONTINUATION follows HEADERS without END_HEADERS.
    #[derive(Debug, Default, PartialEq)]
    struct ServerView {
        blocks: Vec<(u32, bool, Fields)>,
        other: Vec<(u8, u8, u32, Vec<u8>)>,
        headers_frames: usize,
        continuation_frames: usize,
    }

    fn server_view(bytes: &[u8]) -> ServerView {
        assert_eq!(&bytes[..24], CLIENT_PREFACE);
        let mut decoder = loona_hpack::Decoder::new();
        let mut view = ServerView::default();
        let mut at = 24;
        let mut open: Option<(u32, bool, Vec<u8>)> = None;
        while at < bytes.len() {
            let h = &bytes[at..at + 9];
            let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
            assert!(len <= MAX_FRAME_SIZE, "frame of {len} bytes");
            let (kind, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
            let payload = bytes[at + 9..at + 9 + len].to_vec();
            at += 9 + len;
            let block = match (kind, open.take()) {
                (HEADERS, None) => {
                    view.headers_frames += 1;
                    let fragment = headers_fragment(&Frame {
                        kind,
                        flags,
                        stream,
                        raw: &[],
                        payload: &payload,
                    })
                    .unwrap();
                    (stream, flags & END_STREAM != 0, fragment.to_vec())
                }
                (CONTINUATION, Some((s, end, mut fragment))) => {
                    assert_eq!(s, stream);
                    view.continuation_frames += 1;
                    fragment.extend_from_slice(&payload);
                    (s, end, fragment)
                }
                (_, None) => {
                    view.other.push((kind, flags, stream, payload));
                    continue;
                }
                (kind, Some(_)) => panic!("frame {kind:#x} inside a header block"),
            };
            if flags & END_HEADERS != 0 {
                let fields = decoder.decode(&block.2).unwrap();
                view.blocks.push((block.0, block.1, fields));
            } else {
                open = Some(block);
            }
        }
        assert!(open.is_none(), "header block left open");
        view
    }

    fn authority_of(fields: &Fields) -> &[u8] {
        &fields.iter().find(|(n, _)| n == b":authority").unwrap().1
    }

    fn connection(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut input = CLIENT_PREFACE.to_vec();
        input.extend_from_slice(&SETTINGS_FRAME);
        for block in blocks {
            input.extend_from_slice(block);
        }
        input
    }

    #[test]
    fn percent_encoded_authority_becomes_localhost() {
        let mut encoder = loona_hpack::Encoder::new();
        let fields = request("%2Ftmp%2Fx%2Fplugin.sock", "/pkg.Svc/Get");
        let data = frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let input = connection(&[
            frame(HEADERS, END_HEADERS, 1, &encode(&mut encoder, &fields)),
            data.clone(),
        ]);
        let (repair, out) = repair(&input);
        let view = server_view(&out.unwrap());
        assert_eq!(view.blocks.len(), 1);
        let (stream, end_stream, got) = &view.blocks[0];
        assert_eq!((*stream, *end_stream), (1, false));
        let mut want = fields.clone();
        want[2].1 = b"localhost".to_vec();
        assert_eq!(
            got, &want,
            "same fields in the same order, authority replaced"
        );
        // SETTINGS and DATA pass unchanged, in order.
        assert_eq!(view.other[0], (0x4, 0, 0, Vec::new()));
        assert_eq!(view.other[1], (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0]));
        assert_eq!(repair.replaced(), 1);
        assert_eq!(
            repair.first_replaced(),
            Some(&b"%2Ftmp%2Fx%2Fplugin.sock"[..])
        );
    }

    #[test]
    fn valid_authority_passes_byte_for_byte() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut blocks = Vec::new();
        for (stream, authority) in [(1, "localhost"), (3, "localhost:1234"), (5, "[::1]:80")] {
            let block = encode(&mut encoder, &request(authority, "/pkg.Svc/Get"));
            blocks.push(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        }
        let input = connection(&blocks);
        let (repair, out) = repair(&input);
        assert_eq!(out.unwrap(), input);
        assert_eq!(repair.replaced(), 0);
        assert!(repair.finish().is_ok());
    }

    #[test]
    fn later_blocks_indexing_the_clients_table_still_decode_on_the_server() {
        // Block 1 is valid and passes unchanged (its fields enter the server's table),
        // block 2 needs a repair, block 3 is almost all references into the client's
        // dynamic table. The server must see all three as the client meant them.
        let mut encoder = loona_hpack::Encoder::new();
        let first = request("localhost", "/a.A/One");
        let mut second = request("/tmp/raw/path.sock", "/a.A/Two");
        second.push((b"x-tool".to_vec(), b"inspector".to_vec()));
        let third = second.clone();
        let b1 = encode(&mut encoder, &first);
        let b2 = encode(&mut encoder, &second);
        let b3 = encode(&mut encoder, &third);
        assert!(b3.len() < b2.len(), "the third block refers to the table");
        let input = connection(&[
            frame(HEADERS, END_HEADERS | END_STREAM, 1, &b1),
            frame(HEADERS, END_HEADERS | END_STREAM, 3, &b2),
            frame(HEADERS, END_HEADERS | END_STREAM, 5, &b3),
        ]);
        let (repair, out) = repair(&input);
        let view = server_view(&out.unwrap());
        let authorities: Vec<_> = view.blocks.iter().map(|b| authority_of(&b.2)).collect();
        assert_eq!(authorities, [&b"localhost"[..], b"localhost", b"localhost"]);
        let mut want = third.clone();
        want[2].1 = b"localhost".to_vec();
        assert_eq!(view.blocks[1].2, want);
        assert_eq!(
            view.blocks[2].2, want,
            "table references resolved as the client meant"
        );
        assert_eq!(view.blocks[0].2, first);
        assert_eq!(repair.replaced(), 2);
    }

    #[test]
    fn continuation_frames_are_reassembled() {
        let mut encoder = loona_hpack::Encoder::new();
        let fields = request("%2Fvar%2Frun%2Fdra.sock", "/k8s.io.DRAPlugin/Prepare");
        let block = encode(&mut encoder, &fields);
        let (a, rest) = block.split_at(7);
        let (b, c) = rest.split_at(20);
        let input = connection(&[
            frame(HEADERS, END_STREAM, 1, a),
            frame(CONTINUATION, 0, 1, b),
            frame(CONTINUATION, END_HEADERS, 1, c),
        ]);
        let (_, out) = repair(&input);
        let view = server_view(&out.unwrap());
        assert_eq!(view.blocks.len(), 1);
        assert_eq!(view.headers_frames, 1);
        assert_eq!(view.continuation_frames, 0, "small block: one frame");
        assert!(view.blocks[0].1, "END_STREAM kept");
        assert_eq!(authority_of(&view.blocks[0].2), b"localhost");
        assert_eq!(view.blocks[0].2.len(), fields.len());
    }

    #[test]
    fn padding_and_priority_are_dropped_from_a_repaired_block() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encode(&mut encoder, &request("%2Fx", "/p.S/M"));
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dep on 0, weight
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0, 0]);
        let flags = END_HEADERS | PADDED | PRIORITY | END_STREAM;
        let input = connection(&[frame(HEADERS, flags, 7, &payload)]);
        let (_, out) = repair(&input);
        let out = out.unwrap();
        let view = server_view(&out);
        assert_eq!(authority_of(&view.blocks[0].2), b"localhost");
        // The repaired frame carries only END_STREAM | END_HEADERS.
        let header = &out[24 + 9..24 + 18];
        assert_eq!((header[3], header[4]), (HEADERS, END_STREAM | END_HEADERS));
        assert_eq!(&header[5..], &7u32.to_be_bytes());
    }

    #[test]
    fn padded_valid_block_passes_unchanged() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encode(&mut encoder, &request("localhost", "/p.S/M"));
        let mut payload = vec![2];
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0]);
        let input = connection(&[frame(HEADERS, END_HEADERS | PADDED, 1, &payload)]);
        assert_eq!(repair(&input).1.unwrap(), input);
    }

    #[test]
    fn large_repaired_block_is_split_at_the_frame_size() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut fields = request("%2Fbig", "/p.S/M");
        fields.push((b"x-big".to_vec(), vec![b'a'; 40_000]));
        let block = encode(&mut encoder, &fields);
        let mut frames = Vec::new();
        let chunks: Vec<_> = block.chunks(MAX_FRAME_SIZE).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if last { END_HEADERS } else { 0 };
            frames.push(frame(kind, flags, 1, chunk));
        }
        let (_, out) = repair(&connection(&frames));
        let view = server_view(&out.unwrap());
        assert_eq!(view.headers_frames, 1);
        assert_eq!(view.continuation_frames, 2, "40 KB in 16 KiB frames");
        assert_eq!(view.blocks[0].2.last().unwrap().1.len(), 40_000);
        assert_eq!(authority_of(&view.blocks[0].2), b"localhost");
    }

    #[test]
    fn input_in_any_pieces_gives_the_same_output() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encode(&mut encoder, &request("%2Ftmp%2Fy", "/p.S/M"));
        let (a, b) = block.split_at(block.len() / 2);
        let input = connection(&[
            frame(HEADERS, 0, 1, a),
            frame(CONTINUATION, END_HEADERS, 1, b),
            frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 1, 42]),
        ]);
        let whole = repair(&input).1.unwrap();
        for piece in [1, 2, 5, 9, 24, 100] {
            let mut repair = AuthorityRepair::new();
            let mut out = Vec::new();
            for chunk in input.chunks(piece) {
                repair.feed(chunk, &mut out).unwrap();
            }
            repair.finish().unwrap();
            assert_eq!(out, whole, "fed {piece} bytes at a time");
        }
    }

    #[test]
    fn what_the_server_would_refuse_is_an_error() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encode(&mut encoder, &request("localhost", "/p.S/M"));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("http/1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            (
                "too large",
                connection(&[[&[0x01, 0x00, 0x00, 0x0, 0, 0, 0, 0, 1][..], &[0; 65536]].concat()]),
            ),
            (
                "padding",
                connection(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 1, 2])]),
            ),
            (
                "priority without room",
                connection(&[frame(HEADERS, END_HEADERS | PRIORITY, 1, &[1, 2])]),
            ),
            (
                "padded empty",
                connection(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[])]),
            ),
            (
                "interleaved",
                connection(&[frame(HEADERS, 0, 1, &block), frame(0x0, 0, 1, b"x")]),
            ),
            (
                "continuation on another stream",
                connection(&[
                    frame(HEADERS, 0, 1, &block),
                    frame(CONTINUATION, END_HEADERS, 3, &[]),
                ]),
            ),
            (
                "stray continuation",
                connection(&[frame(CONTINUATION, END_HEADERS, 1, &block)]),
            ),
            (
                "push promise",
                connection(&[frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])]),
            ),
            (
                "index out of the table",
                connection(&[frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f])]),
            ),
            (
                "table size over the server's",
                connection(&[frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x3f, 0x82])]),
            ),
            (
                "string past the end",
                connection(&[frame(HEADERS, END_HEADERS, 1, &[0x00, 0x05, b'a'])]),
            ),
        ];
        for (name, input) in cases {
            let (_, out) = repair(&input);
            assert!(out.is_err(), "{name}: accepted");
        }
    }

    #[test]
    fn huge_decoded_list_from_a_small_block_is_refused() {
        // One 4000-byte value in the table (4033 bytes with name and overhead), then
        // 300 one-byte references to it: 1.2 MB from a 4.3 KB block.
        let mut block = vec![0x40, 0x01, b'x'];
        encode_length(4000, &mut block);
        block.extend(std::iter::repeat_n(b'v', 4000));
        block.extend(std::iter::repeat_n(0x80 | 62, 300));
        let input = connection(&[frame(HEADERS, END_HEADERS, 1, &block)]);
        let (_, out) = repair(&input);
        assert!(
            matches!(out, Err(AuthorityError::HeaderListTooLarge { stream: 1 })),
            "{out:?}"
        );
    }

    #[test]
    fn a_client_stopping_mid_frame_is_truncated() {
        let input = connection(&[frame(0x0, 0, 1, b"hello")]);
        for cut in [10, 24 + 4, input.len() - 1] {
            let (repair, out) = repair(&input[..cut]);
            out.unwrap();
            assert!(repair.finish().is_err(), "cut at {cut}");
        }
        let (repair, _) = repair(&input);
        assert!(repair.finish().is_ok());
        assert!(AuthorityRepair::new().finish().is_ok(), "nothing sent");
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic generator: frames with random types, flags and payloads.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut errors = 0;
        for _ in 0..100_000 {
            let mut input = CLIENT_PREFACE.to_vec();
            for _ in 0..(next() % 4) {
                let len = (next() % 64) as usize;
                let kind = [HEADERS, CONTINUATION, PUSH_PROMISE, 0, 4, 8][(next() % 6) as usize];
                let flags = next() as u8;
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                input.extend(frame(kind, flags, (next() % 4) as u32, &payload));
            }
            let cut = (next() as usize) % (input.len() + 1);
            let mut repair = AuthorityRepair::new();
            let mut out = Vec::new();
            if repair.feed(&input[..cut], &mut out).is_err() || repair.finish().is_err() {
                errors += 1;
            }
        }
        assert!(errors > 10_000, "garbage is mostly refused: {errors}");
    }

    #[test]
    fn socket_paths_are_not_authorities() {
        assert!(is_valid_authority(b"localhost"));
        assert!(is_valid_authority(b"localhost:50051"));
        assert!(is_valid_authority(b"[2001:db8::1]:443"));
        assert!(!is_valid_authority(b"%2Ftmp%2Fx%2Fplugin.sock"));
        assert!(!is_valid_authority(b"/var/lib/kubelet/plugins/x/dra.sock"));
        assert!(!is_valid_authority(b""));
        assert!(!is_valid_authority(b"\xff"));
    }

    #[test]
    fn literals_encode_long_strings() {
        let fields = vec![(b"n".to_vec(), vec![b'v'; 300])];
        let encoded = encode_literals(&fields);
        let mut decoder = loona_hpack::Decoder::new();
        assert_eq!(decoder.decode(&encoded).unwrap(), fields);
        for len in [0, 126, 127, 128, 255, 16_511, 16_512, 70_000] {
            let fields = vec![(b"n".to_vec(), vec![b'v'; len])];
            assert_eq!(decoder.decode(&encode_literals(&fields)).unwrap(), fields);
        }
    }
}
