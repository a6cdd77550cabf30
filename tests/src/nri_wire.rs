//! The runtime's end of the NRI socket: the connection multiplexer and ttrpc framing as
//! containerd speaks them, written for the test stand-in from the upstream sources
//! (containerd/nri `pkg/net/multiplex`, containerd/ttrpc `channel.go`, `client.go`,
//! `request.proto`). It shares no code with netclaim's `nri::mux` / `nri::ttrpc`, so a
//! framing bug in netclaim shows up as a failure here instead of being mirrored.
//!
//! What it follows from upstream:
//! - Mux frame: `[conn id u32 BE][payload length u32 BE][payload]`. Conn 1 carries the
//!   plugin's service (the runtime is the ttrpc client), conn 2 the runtime's service
//!   (the runtime is the server). Frames for other conn ids are read and dropped.
//! - The runtime reads each conn through a 4096-byte buffer (`bufio.NewReader` in
//!   ttrpc's channel); a frame larger than the buffer fails the read (`ENOMEM`) and the
//!   plugin is closed. The stand-in refuses every frame above 4096 bytes. (Go's bufio
//!   can read a continuation frame straight into a large destination; a plugin must
//!   not rely on that corner, so the stand-in does not allow it.)
//! - The runtime writes through a 4096-byte `bufio.Writer`, so one ttrpc message leaves
//!   as the frames [`upstream_frame_sizes`] lists, each at most 4 MiB + 10 bytes.
//! - ttrpc message: `[length u32 BE][stream id u32 BE][type u8][flags u8][body]`,
//!   type 1 request / 2 response, body at most 4 MiB; client stream ids are odd,
//!   starting at 1; a request carries the caller's remaining deadline in
//!   `timeout_nano`.
//!
//! What it must not touch: anything in `netclaim::nri` except the generated protobuf
//! message types, which the caller encodes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch, Mutex};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Mux conn on which the runtime calls the plugin's service.
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// Mux conn on which the plugin calls the runtime's service.
pub const RUNTIME_SERVICE_CONN: u32 = 2;
/// Mux frame header: conn id and payload length.
pub const MUX_HEADER_LEN: usize = 8;
/// The runtime's read buffer per conn (ttrpc's `bufio.NewReader` default).
pub const READ_BUFFER: usize = 4096;
/// The runtime's write buffer per conn (ttrpc's `bufio.NewWriter` default).
pub const WRITE_BUFFER: usize = 4096;
/// ttrpc message header: length, stream id, type, flags.
pub const TTRPC_HEADER_LEN: usize = 10;
/// Largest ttrpc message body.
pub const TTRPC_MESSAGE_MAX: usize = 4 << 20;
/// Largest mux frame payload the runtime writes.
pub const MUX_MAX_PAYLOAD: usize = TTRPC_HEADER_LEN + TTRPC_MESSAGE_MAX;
/// ttrpc message type of a request.
pub const TYPE_REQUEST: u8 = 1;
/// ttrpc message type of a response.
pub const TYPE_RESPONSE: u8 = 2;

/// Service names of the NRI protocol (`nri.pkg.api.v1alpha1`).
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

/// gRPC status codes used on the wire.
pub mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const UNAVAILABLE: i32 = 14;
}

/// ttrpc's `Request` envelope.
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(bytes = "vec", tag = "3")]
    pub payload: Vec<u8>,
    #[prost(int64, tag = "4")]
    pub timeout_nano: i64,
    #[prost(message, repeated, tag = "5")]
    pub metadata: Vec<KeyValue>,
}

/// ttrpc's `KeyValue` (request metadata).
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.rpc.Status` without details.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// ttrpc's `Response` envelope.
#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<RpcStatus>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// A gRPC status as the runtime received or answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: i32,
    pub message: String,
}

impl Status {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Status {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code {}: {}", self.code, self.message)
    }
}

/// Why the connection to the plugin ended.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(
        "mux frame on conn {conn} carries {len} bytes; the runtime reads through a \
         {READ_BUFFER}-byte buffer and refuses it"
    )]
    FrameTooLarge { conn: u32, len: usize },
    #[error("ttrpc message on conn {conn}, stream {stream}: {len} bytes is above the 4 MiB limit")]
    MessageTooLarge { conn: u32, stream: u32, len: usize },
    #[error("ttrpc message on conn {conn}, stream {stream}: type {kind} is not expected there")]
    UnexpectedType { conn: u32, stream: u32, kind: u8 },
    #[error("ttrpc {what} on conn {conn}, stream {stream} does not decode")]
    Decode {
        what: &'static str,
        conn: u32,
        stream: u32,
        #[source]
        source: prost::DecodeError,
    },
    #[error("outgoing ttrpc message of {len} bytes is above the 4 MiB limit")]
    Oversized { len: usize },
    #[error("reading the NRI socket")]
    Read(#[source] std::io::Error),
    #[error("writing the NRI socket")]
    Write(#[source] std::io::Error),
    #[error("the plugin closed the NRI socket")]
    Eof,
    #[error("the runtime closed the plugin")]
    ClosedByRuntime,
}

/// Why a call produced no response payload.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with a non-OK status.
    #[error("{0}")]
    Status(Status),
    /// No answer before the deadline.
    #[error("no answer within {0:?}")]
    DeadlineExceeded(Duration),
    /// The connection ended before the answer.
    #[error("connection closed")]
    Closed(#[source] Arc<WireError>),
}

impl CallError {
    /// Errors after which containerd closes the plugin (`isFatalError` in
    /// nri/pkg/adaptation/plugin.go: closed, protocol error, deadline exceeded).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CallError::Status(_))
    }

    /// The status code this error reads as.
    pub fn code(&self) -> i32 {
        match self {
            CallError::Status(status) => status.code,
            CallError::DeadlineExceeded(_) => code::DEADLINE_EXCEEDED,
            CallError::Closed(_) => code::UNAVAILABLE,
        }
    }
}

/// A decoded ttrpc message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtrpcHeader {
    pub length: u32,
    pub stream: u32,
    pub kind: u8,
    pub flags: u8,
}

/// One ttrpc message, header and body, as bytes.
pub fn encode_message(stream: u32, kind: u8, flags: u8, body: &[u8]) -> Result<Vec<u8>, WireError> {
    if body.len() > TTRPC_MESSAGE_MAX {
        return Err(WireError::Oversized { len: body.len() });
    }
    let mut out = Vec::with_capacity(TTRPC_HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(body);
    Ok(out)
}

/// The sizes of the mux frames the Go runtime writes for one ttrpc message of
/// `message_len` bytes (header included): ttrpc writes the header, then the body, into
/// a 4096-byte `bufio.Writer` and flushes; every write that reaches the mux becomes
/// frames of at most [`MUX_MAX_PAYLOAD`] bytes.
pub fn upstream_frame_sizes(message_len: usize) -> Vec<usize> {
    fn emit(frames: &mut Vec<usize>, mut n: usize) {
        while n > 0 {
            let size = n.min(MUX_MAX_PAYLOAD);
            frames.push(size);
            n -= size;
        }
    }
    let mut frames = Vec::new();
    // bufio.Writer: buffered byte count.
    let mut buffered = 0usize;
    let header = message_len.min(TTRPC_HEADER_LEN);
    let mut writes = vec![header];
    if message_len > header {
        writes.push(message_len - header);
    }
    for mut len in writes {
        while len > WRITE_BUFFER - buffered {
            if buffered == 0 {
                // Large write with an empty buffer goes straight to the conn.
                emit(&mut frames, len);
                len = 0;
                break;
            }
            let n = WRITE_BUFFER - buffered;
            emit(&mut frames, WRITE_BUFFER);
            buffered = 0;
            len -= n;
        }
        buffered += len;
    }
    emit(&mut frames, buffered);
    frames
}

/// The bytes the runtime puts on the trunk for one ttrpc message on `conn`.
pub fn frame_message(conn: u32, message: &[u8]) -> Vec<u8> {
    let sizes = upstream_frame_sizes(message.len());
    let mut out = Vec::with_capacity(message.len() + sizes.len() * MUX_HEADER_LEN);
    let mut rest = message;
    for size in sizes {
        let (chunk, tail) = rest.split_at(size);
        out.extend_from_slice(&conn.to_be_bytes());
        out.extend_from_slice(&(size as u32).to_be_bytes());
        out.extend_from_slice(chunk);
        rest = tail;
    }
    out
}

/// Decodes a mux frame header, refusing frames the runtime's read buffer cannot take.
/// Frames for conns the runtime has not opened are returned too (the caller drops them).
pub fn parse_mux_header(header: [u8; MUX_HEADER_LEN]) -> Result<(u32, usize), WireError> {
    let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let opened = conn == PLUGIN_SERVICE_CONN || conn == RUNTIME_SERVICE_CONN;
    if opened && len > READ_BUFFER {
        return Err(WireError::FrameTooLarge { conn, len });
    }
    Ok((conn, len))
}

/// Reassembles ttrpc messages from the byte stream of one mux conn.
#[derive(Debug)]
pub struct TtrpcAssembler {
    conn: u32,
    buffer: Vec<u8>,
}

impl TtrpcAssembler {
    pub fn new(conn: u32) -> Self {
        TtrpcAssembler {
            conn,
            buffer: Vec::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next complete message, if the buffer holds one.
    pub fn next_message(&mut self) -> Result<Option<(TtrpcHeader, Vec<u8>)>, WireError> {
        if self.buffer.len() < TTRPC_HEADER_LEN {
            return Ok(None);
        }
        let b = &self.buffer;
        let header = TtrpcHeader {
            length: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            stream: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            kind: b[8],
            flags: b[9],
        };
        let len = header.length as usize;
        if len > TTRPC_MESSAGE_MAX {
            return Err(WireError::MessageTooLarge {
                conn: self.conn,
                stream: header.stream,
                len,
            });
        }
        if self.buffer.len() < TTRPC_HEADER_LEN + len {
            return Ok(None);
        }
        let body = self.buffer[TTRPC_HEADER_LEN..TTRPC_HEADER_LEN + len].to_vec();
        self.buffer.drain(..TTRPC_HEADER_LEN + len);
        Ok(Some((header, body)))
    }
}

/// Answers the plugin's calls on the runtime service (conn 2).
pub type Handler = Arc<dyn Fn(&str, &str, &[u8]) -> Result<Vec<u8>, Status> + Send + Sync>;

type Pending = Arc<StdMutex<HashMap<u32, oneshot::Sender<Response>>>>;

/// One plugin connection seen from the runtime: calls on conn 1, the runtime service on
/// conn 2. Dropping it (or [`Session::close`]) closes the socket, as containerd's
/// `plugin.close()` does.
pub struct Session {
    writer: Arc<Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next_stream: AtomicU32,
    ended: watch::Receiver<Option<Arc<WireError>>>,
    reader: JoinHandle<()>,
}

impl Session {
    /// Starts reading the trunk; calls from the plugin go to `handler`.
    pub fn start(stream: UnixStream, handler: Handler) -> Session {
        let (read, write) = stream.into_split();
        let writer = Arc::new(Mutex::new(write));
        let pending: Pending = Arc::default();
        let (ended_tx, ended) = watch::channel(None);
        let reader = tokio::spawn(read_trunk(
            read,
            writer.clone(),
            pending.clone(),
            handler,
            ended_tx,
        ));
        Session {
            writer,
            pending,
            next_stream: AtomicU32::new(1),
            ended,
            reader,
        }
    }

    /// Why the connection ended, if it has.
    pub fn ended(&self) -> Option<Arc<WireError>> {
        self.ended.borrow().clone()
    }

    /// Calls `service/method` on the plugin; the answer must arrive by `deadline`.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        if let Some(reason) = self.ended() {
            return Err(CallError::Closed(reason));
        }
        let started = Instant::now();
        let stream = self.next_stream.fetch_add(2, Ordering::Relaxed);
        let remaining = deadline.saturating_duration_since(started);
        let request = Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: i64::try_from(remaining.as_nanos()).unwrap_or(i64::MAX),
            metadata: Vec::new(),
        };
        let message = encode_message(stream, TYPE_REQUEST, 0, &request.encode_to_vec())
            .map_err(|err| CallError::Closed(Arc::new(err)))?;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(stream, tx);
        let sent = tokio::time::timeout_at(
            deadline,
            write_all(&self.writer, &frame_message(PLUGIN_SERVICE_CONN, &message)),
        )
        .await;
        let answer = match sent {
            Err(_) => None,
            Ok(Err(err)) => {
                lock(&self.pending).remove(&stream);
                return Err(CallError::Closed(Arc::new(err)));
            }
            Ok(Ok(())) => Some(tokio::time::timeout_at(deadline, rx).await),
        };
        match answer {
            None | Some(Err(_)) => {
                lock(&self.pending).remove(&stream);
                Err(CallError::DeadlineExceeded(started.elapsed()))
            }
            Some(Ok(Err(_))) => Err(CallError::Closed(
                self.ended()
                    .unwrap_or_else(|| Arc::new(WireError::ClosedByRuntime)),
            )),
            Some(Ok(Ok(response))) => match response.status {
                Some(status) if status.code != code::OK => {
                    Err(CallError::Status(Status::new(status.code, status.message)))
                }
                _ => Ok(response.payload),
            },
        }
    }

    /// Calls with protobuf messages on both sides.
    pub async fn call_message<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        request: &Req,
        deadline: Instant,
    ) -> Result<Resp, CallError> {
        let payload = self
            .call(service, method, request.encode_to_vec(), deadline)
            .await?;
        Resp::decode(payload.as_slice()).map_err(|source| {
            CallError::Closed(Arc::new(WireError::Decode {
                what: "response payload",
                conn: PLUGIN_SERVICE_CONN,
                stream: 0,
                source,
            }))
        })
    }

    /// Closes the connection: the plugin sees the socket end.
    pub async fn close(self) {
        self.reader.abort();
        let _ = self.writer.lock().await.shutdown().await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(m: &StdMutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn write_all(writer: &Mutex<OwnedWriteHalf>, bytes: &[u8]) -> Result<(), WireError> {
    let mut writer = writer.lock().await;
    writer.write_all(bytes).await.map_err(WireError::Write)?;
    writer.flush().await.map_err(WireError::Write)
}

async fn read_trunk(
    read: OwnedReadHalf,
    writer: Arc<Mutex<OwnedWriteHalf>>,
    pending: Pending,
    handler: Handler,
    ended: watch::Sender<Option<Arc<WireError>>>,
) {
    let reason = match serve_trunk(read, &writer, &pending, &handler).await {
        Ok(()) => WireError::Eof,
        Err(err) => err,
    };
    ended.send_replace(Some(Arc::new(reason)));
    // Waiting callers see their sender dropped and read the reason from `ended`.
    lock(&pending).clear();
    let _ = writer.lock().await.shutdown().await;
}

/// Reads frames until the plugin hangs up (`Ok`) or breaks the protocol (`Err`).
async fn serve_trunk(
    mut read: OwnedReadHalf,
    writer: &Mutex<OwnedWriteHalf>,
    pending: &Pending,
    handler: &Handler,
) -> Result<(), WireError> {
    let mut plugin_conn = TtrpcAssembler::new(PLUGIN_SERVICE_CONN);
    let mut runtime_conn = TtrpcAssembler::new(RUNTIME_SERVICE_CONN);
    loop {
        let mut header = [0u8; MUX_HEADER_LEN];
        match read.read_exact(&mut header).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(WireError::Read(err)),
        }
        let (conn, len) = parse_mux_header(header)?;
        let assembler = match conn {
            PLUGIN_SERVICE_CONN => &mut plugin_conn,
            RUNTIME_SERVICE_CONN => &mut runtime_conn,
            _ => {
                // Not a conn the runtime opened: read past it.
                let mut sink = tokio::io::sink();
                let copied = tokio::io::copy(&mut (&mut read).take(len as u64), &mut sink)
                    .await
                    .map_err(WireError::Read)?;
                if copied < len as u64 {
                    return Ok(());
                }
                continue;
            }
        };
        let mut payload = vec![0u8; len];
        match read.read_exact(&mut payload).await {
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(WireError::Read(err)),
        }
        assembler.push(&payload);
        while let Some((header, body)) = assembler.next_message()? {
            match (conn, header.kind) {
                (PLUGIN_SERVICE_CONN, TYPE_RESPONSE) => {
                    let response =
                        Response::decode(body.as_slice()).map_err(|source| WireError::Decode {
                            what: "response",
                            conn,
                            stream: header.stream,
                            source,
                        })?;
                    // An answer for a call that already gave up is dropped.
                    if let Some(tx) = lock(pending).remove(&header.stream) {
                        let _ = tx.send(response);
                    }
                }
                (RUNTIME_SERVICE_CONN, TYPE_REQUEST) => {
                    let request =
                        Request::decode(body.as_slice()).map_err(|source| WireError::Decode {
                            what: "request",
                            conn,
                            stream: header.stream,
                            source,
                        })?;
                    let response =
                        match handler(&request.service, &request.method, &request.payload) {
                            Ok(payload) => Response {
                                status: Some(RpcStatus {
                                    code: code::OK,
                                    message: String::new(),
                                }),
                                payload,
                            },
                            Err(status) => Response {
                                status: Some(RpcStatus {
                                    code: status.code,
                                    message: status.message,
                                }),
                                payload: Vec::new(),
                            },
                        };
                    let message =
                        encode_message(header.stream, TYPE_RESPONSE, 0, &response.encode_to_vec())?;
                    write_all(writer, &frame_message(RUNTIME_SERVICE_CONN, &message)).await?;
                }
                (conn, kind) => {
                    return Err(WireError::UnexpectedType {
                        conn,
                        stream: header.stream,
                        kind,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_message_is_one_frame() {
        assert_eq!(upstream_frame_sizes(10), vec![10]);
        assert_eq!(upstream_frame_sizes(4096), vec![4096]);
    }

    #[test]
    fn message_over_the_write_buffer_splits_like_bufio() {
        // The 4193-byte message from issue 11: the buffer fills to 4096 and flushes,
        // the remaining 97 bytes follow on the final Flush.
        assert_eq!(upstream_frame_sizes(4193), vec![4096, 97]);
        // After the first flush the rest is larger than the buffer: written directly.
        assert_eq!(upstream_frame_sizes(10 + 10_000), vec![4096, 5914]);
        // Exactly one more buffer's worth stays buffered and is flushed at the end.
        assert_eq!(upstream_frame_sizes(8192), vec![4096, 4096]);
        let big = TTRPC_HEADER_LEN + TTRPC_MESSAGE_MAX;
        let sizes = upstream_frame_sizes(big);
        assert_eq!(sizes.iter().sum::<usize>(), big);
        assert!(sizes.iter().all(|s| *s <= MUX_MAX_PAYLOAD));
    }

    #[test]
    fn frames_carry_the_message_in_order() {
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let message = encode_message(3, TYPE_REQUEST, 0, &body).unwrap();
        let trunk = frame_message(PLUGIN_SERVICE_CONN, &message);
        let mut assembler = TtrpcAssembler::new(PLUGIN_SERVICE_CONN);
        let mut rest = trunk.as_slice();
        let mut frames = 0;
        while !rest.is_empty() {
            let header: [u8; 8] = rest[..8].try_into().unwrap();
            let conn = u32::from_be_bytes(header[..4].try_into().unwrap());
            let len = u32::from_be_bytes(header[4..].try_into().unwrap()) as usize;
            assert_eq!(conn, PLUGIN_SERVICE_CONN);
            assert!(assembler.next_message().unwrap().is_none());
            assembler.push(&rest[8..8 + len]);
            rest = &rest[8 + len..];
            frames += 1;
        }
        assert_eq!(frames, 2);
        let (header, got) = assembler.next_message().unwrap().unwrap();
        assert_eq!(
            header,
            TtrpcHeader {
                length: 5000,
                stream: 3,
                kind: TYPE_REQUEST,
                flags: 0
            }
        );
        assert_eq!(got, body);
        assert!(assembler.next_message().unwrap().is_none());
    }

    #[test]
    fn frames_above_the_read_buffer_are_refused_on_open_conns() {
        let header = |conn: u32, len: u32| {
            let mut h = [0u8; 8];
            h[..4].copy_from_slice(&conn.to_be_bytes());
            h[4..].copy_from_slice(&len.to_be_bytes());
            h
        };
        assert_eq!(parse_mux_header(header(1, 4096)).unwrap(), (1, 4096));
        assert!(matches!(
            parse_mux_header(header(2, 4097)),
            Err(WireError::FrameTooLarge { conn: 2, len: 4097 })
        ));
        // Conns the runtime did not open are dropped by the caller, whatever their size.
        assert_eq!(parse_mux_header(header(7, 9000)).unwrap(), (7, 9000));
    }

    #[test]
    fn oversized_ttrpc_messages_are_refused() {
        let mut assembler = TtrpcAssembler::new(RUNTIME_SERVICE_CONN);
        let mut header = Vec::new();
        header.extend_from_slice(&((TTRPC_MESSAGE_MAX + 1) as u32).to_be_bytes());
        header.extend_from_slice(&1u32.to_be_bytes());
        header.extend_from_slice(&[TYPE_REQUEST, 0]);
        assembler.push(&header);
        assert!(matches!(
            assembler.next_message(),
            Err(WireError::MessageTooLarge {
                conn: 2,
                stream: 1,
                ..
            })
        ));
        assert!(matches!(
            encode_message(1, TYPE_REQUEST, 0, &vec![0; TTRPC_MESSAGE_MAX + 1]),
            Err(WireError::Oversized { .. })
        ));
    }
}
