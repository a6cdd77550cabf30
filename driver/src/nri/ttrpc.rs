//! Minimal ttrpc: unary requests and responses over one byte stream (an NRI mux conn).
//!
//! Every message is a 10-byte header `[length u32 BE][stream id u32 BE][type u8][flags
//! u8]` followed by `length` bytes of protobuf: a [`Request`] (type 1) or a [`Response`]
//! (type 2). Clients open odd stream ids, one per call. Streaming (type 3, data) is not
//! used by NRI and is ignored here.
//!
//! [`Client`] multiplexes concurrent calls over one conn; [`serve`] answers requests with
//! a [`Service`], which dispatches on `(service, method)` and answers
//! [`code::UNIMPLEMENTED`] for anything it does not know. This module knows nothing about
//! NRI's messages; `nri::plugin` and the test runtime sit on top of it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;

/// Size of the ttrpc message header.
pub const MESSAGE_HEADER_LEN: usize = 10;
/// Largest message accepted or sent (ttrpc's own limit).
pub const MAX_MESSAGE_LEN: usize = 4 << 20;
/// Message type of a request.
pub const TYPE_REQUEST: u8 = 1;
/// Message type of a response.
pub const TYPE_RESPONSE: u8 = 2;
/// Message type of stream data (unused by NRI).
pub const TYPE_DATA: u8 = 3;

/// The gRPC status codes ttrpc uses.
pub mod code {
    pub const OK: i32 = 0;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
}

/// `ttrpc.Request`.
#[derive(Clone, PartialEq, prost::Message)]
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

/// `ttrpc.KeyValue`, request metadata.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `ttrpc.Response`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    #[prost(message, optional, tag = "1")]
    pub status: Option<Status>,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

/// `google.rpc.Status` (without details).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

impl Status {
    pub fn new(code: i32, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// The answer for a `(service, method)` nobody serves.
    pub fn unimplemented(service: &str, method: &str) -> Status {
        Status::new(
            code::UNIMPLEMENTED,
            format!("{service}/{method} is not implemented"),
        )
    }
}

/// What can go wrong on a ttrpc conn.
#[derive(Debug, thiserror::Error)]
pub enum TtrpcError {
    #[error("ttrpc connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("ttrpc message of {0} bytes exceeds the {MAX_MESSAGE_LEN} byte limit")]
    MessageTooLarge(usize),
    #[error("ttrpc message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ttrpc connection closed")]
    Closed,
    #[error("ttrpc call {service}/{method} timed out after {after:?}")]
    Timeout {
        service: String,
        method: String,
        after: Duration,
    },
    #[error("ttrpc call returned status {code}: {message}")]
    Status { code: i32, message: String },
}

impl TtrpcError {
    /// The gRPC code of a status error, if this is one.
    pub fn code(&self) -> Option<i32> {
        match self {
            TtrpcError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One decoded message header plus its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub stream_id: u32,
    pub kind: u8,
    pub flags: u8,
    pub body: Vec<u8>,
}

/// Encodes one message: header and body.
pub fn encode_message(
    stream_id: u32,
    kind: u8,
    flags: u8,
    body: &[u8],
) -> Result<Vec<u8>, TtrpcError> {
    if body.len() > MAX_MESSAGE_LEN {
        return Err(TtrpcError::MessageTooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(MESSAGE_HEADER_LEN + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(body);
    Ok(out)
}

/// Reads one message; `Ok(None)` on a clean EOF between messages.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
) -> Result<Option<RawMessage>, TtrpcError> {
    let mut header = [0u8; MESSAGE_HEADER_LEN];
    let mut filled = 0;
    while filled < MESSAGE_HEADER_LEN {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(TtrpcError::Closed)
            };
        }
        filled += n;
    }
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(TtrpcError::MessageTooLarge(len));
    }
    let stream_id = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let mut body = vec![0u8; len];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => TtrpcError::Closed,
            _ => TtrpcError::Io(err),
        })?;
    Ok(Some(RawMessage {
        stream_id,
        kind: header[8],
        flags: header[9],
        body,
    }))
}

type Pending = Arc<StdMutex<Option<HashMap<u32, oneshot::Sender<Response>>>>>;

/// A ttrpc client on one conn. Calls may run concurrently; dropping the client stops
/// its reader.
pub struct Client {
    writer: Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    pending: Pending,
    next_id: AtomicU32,
    reader: JoinHandle<()>,
}

impl Client {
    pub fn new<S>(conn: S) -> Client
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write): (ReadHalf<S>, WriteHalf<S>) = tokio::io::split(conn);
        let pending: Pending = Arc::new(StdMutex::new(Some(HashMap::new())));
        let reader = tokio::spawn(read_responses(read, pending.clone()));
        Client {
            writer: Mutex::new(Box::new(write)),
            pending,
            next_id: AtomicU32::new(1),
            reader,
        }
    }

    /// Calls `service/method` with an encoded request; returns the encoded answer.
    pub async fn call_raw(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, TtrpcError> {
        let stream_id = self.next_id.fetch_add(2, Ordering::Relaxed);
        let request = Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: timeout
                .map(|t| t.as_nanos().min(i64::MAX as u128) as i64)
                .unwrap_or(0),
            metadata: Vec::new(),
        };
        let frame = encode_message(stream_id, TYPE_REQUEST, 0, &request.encode_to_vec())?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match pending.as_mut() {
                Some(map) => map.insert(stream_id, tx),
                None => return Err(TtrpcError::Closed),
            };
        }
        let sent = async {
            let mut writer = self.writer.lock().await;
            writer.write_all(&frame).await?;
            writer.flush().await
        }
        .await;
        if let Err(err) = sent {
            self.forget(stream_id);
            return Err(TtrpcError::Io(err));
        }
        let answer = match timeout {
            Some(after) => match tokio::time::timeout(after, rx).await {
                Ok(answer) => answer,
                Err(_) => {
                    self.forget(stream_id);
                    return Err(TtrpcError::Timeout {
                        service: service.to_string(),
                        method: method.to_string(),
                        after,
                    });
                }
            },
            None => rx.await,
        };
        let response = answer.map_err(|_| TtrpcError::Closed)?;
        match response.status {
            Some(status) if status.code != code::OK => Err(TtrpcError::Status {
                code: status.code,
                message: status.message,
            }),
            _ => Ok(response.payload),
        }
    }

    /// Calls `service/method` with typed request and response messages.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, TtrpcError> {
        let payload = self
            .call_raw(service, method, request.encode_to_vec(), timeout)
            .await?;
        Ok(Resp::decode(payload.as_slice())?)
    }

    fn forget(&self, stream_id: u32) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(map) = pending.as_mut() {
            map.remove(&stream_id);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_responses<R: AsyncRead>(mut read: ReadHalf<R>, pending: Pending) {
    loop {
        let message = match read_message(&mut read).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(err) => {
                tracing::debug!(error = %err, "ttrpc client: connection ended");
                break;
            }
        };
        if message.kind != TYPE_RESPONSE {
            tracing::debug!(
                kind = message.kind,
                stream = message.stream_id,
                "ttrpc client: ignored message"
            );
            continue;
        }
        let response = match Response::decode(message.body.as_slice()) {
            Ok(response) => response,
            Err(err) => {
                tracing::warn!(error = %err, stream = message.stream_id, "ttrpc client: undecodable response");
                Response {
                    status: Some(Status::new(
                        code::INTERNAL,
                        format!("undecodable response: {err}"),
                    )),
                    payload: Vec::new(),
                }
            }
        };
        let waiter = {
            let mut pending = pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            pending
                .as_mut()
                .and_then(|map| map.remove(&message.stream_id))
        };
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(response);
            }
            None => tracing::debug!(
                stream = message.stream_id,
                "ttrpc client: response for no pending call"
            ),
        }
    }
    // Closing the map fails every pending and future call with Closed.
    let mut pending = pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *pending = None;
}

/// The server side: one call in, one encoded answer or a status out.
#[async_trait::async_trait]
pub trait Service: Send + Sync {
    async fn call(&self, service: &str, method: &str, payload: &[u8]) -> Result<Vec<u8>, Status>;
}

/// Serves requests on `conn` until the peer closes it. Requests run concurrently; a
/// request still running when the conn closes finishes, its answer is dropped.
pub async fn serve<S>(conn: S, service: Arc<dyn Service>) -> Result<(), TtrpcError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut read, write) = tokio::io::split(conn);
    let write = Arc::new(Mutex::new(write));
    loop {
        let message = match read_message(&mut read).await? {
            Some(message) => message,
            None => return Ok(()),
        };
        if message.kind != TYPE_REQUEST {
            tracing::debug!(
                kind = message.kind,
                stream = message.stream_id,
                "ttrpc server: ignored message"
            );
            continue;
        }
        let service = service.clone();
        let write = write.clone();
        tokio::spawn(async move {
            let response = match Request::decode(message.body.as_slice()) {
                Ok(request) => match service
                    .call(&request.service, &request.method, &request.payload)
                    .await
                {
                    Ok(payload) => Response {
                        status: Some(Status::new(code::OK, "")),
                        payload,
                    },
                    Err(status) => Response {
                        status: Some(status),
                        payload: Vec::new(),
                    },
                },
                Err(err) => Response {
                    status: Some(Status::new(
                        code::INVALID_ARGUMENT,
                        format!("undecodable request: {err}"),
                    )),
                    payload: Vec::new(),
                },
            };
            let frame = match encode_message(
                message.stream_id,
                TYPE_RESPONSE,
                0,
                &response.encode_to_vec(),
            ) {
                Ok(frame) => frame,
                Err(err) => {
                    tracing::warn!(error = %err, "ttrpc server: answer not sendable");
                    return;
                }
            };
            let mut write = write.lock().await;
            if write.write_all(&frame).await.is_ok() {
                let _ = write.flush().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_ttrpc() {
        let frame = encode_message(3, TYPE_REQUEST, 0, b"abcd").unwrap();
        assert_eq!(&frame[..10], &[0, 0, 0, 4, 0, 0, 0, 3, 1, 0]);
        assert_eq!(&frame[10..], b"abcd");
    }

    #[test]
    fn request_field_numbers() {
        let request = Request {
            service: "s".into(),
            method: "m".into(),
            payload: vec![9],
            timeout_nano: 1,
            metadata: vec![KeyValue {
                key: "k".into(),
                value: "v".into(),
            }],
        };
        // 1:"s" 2:"m" 3:[9] 4:1 5:{1:"k" 2:"v"}
        assert_eq!(
            request.encode_to_vec(),
            vec![
                0x0a, 1, b's', 0x12, 1, b'm', 0x1a, 1, 9, 0x20, 1, 0x2a, 6, 0x0a, 1, b'k', 0x12, 1,
                b'v'
            ]
        );
        let response = Response {
            status: Some(Status::new(12, "x")),
            payload: vec![7],
        };
        assert_eq!(
            response.encode_to_vec(),
            vec![0x0a, 5, 0x08, 12, 0x12, 1, b'x', 0x12, 1, 7]
        );
    }

    #[tokio::test]
    async fn oversized_length_is_refused_without_allocating() {
        let mut wire: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0];
        assert!(matches!(
            read_message(&mut wire).await,
            Err(TtrpcError::MessageTooLarge(_))
        ));
        let mut truncated: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 1, 1, 0, b'a'];
        assert!(matches!(
            read_message(&mut truncated).await,
            Err(TtrpcError::Closed)
        ));
        let mut empty: &[u8] = &[];
        assert!(matches!(read_message(&mut empty).await, Ok(None)));
    }

    struct Echo;

    #[async_trait::async_trait]
    impl Service for Echo {
        async fn call(
            &self,
            service: &str,
            method: &str,
            payload: &[u8],
        ) -> Result<Vec<u8>, Status> {
            match (service, method) {
                ("test.Echo", "Echo") => Ok(payload.to_vec()),
                ("test.Echo", "Fail") => Err(Status::new(code::UNKNOWN, "refused")),
                ("test.Echo", "Slow") => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok(Vec::new())
                }
                _ => Err(Status::unimplemented(service, method)),
            }
        }
    }

    #[tokio::test]
    async fn client_and_server_round_trip() {
        let (a, b) = tokio::io::duplex(4096);
        let server = tokio::spawn(serve(b, Arc::new(Echo)));
        let client = Client::new(a);
        let calls = (0..8u8).map(|i| client.call_raw("test.Echo", "Echo", vec![i; 3], None));
        let answers = futures::future::join_all(calls).await;
        for (i, answer) in answers.into_iter().enumerate() {
            assert_eq!(answer.unwrap(), vec![i as u8; 3]);
        }
        let err = client
            .call_raw("test.Echo", "Fail", Vec::new(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code::UNKNOWN));
        let err = client
            .call_raw("test.Other", "Echo", Vec::new(), None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code::UNIMPLEMENTED));
        let err = client
            .call_raw(
                "test.Echo",
                "Slow",
                Vec::new(),
                Some(Duration::from_millis(20)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, TtrpcError::Timeout { .. }));
        drop(client);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn client_stream_ids_are_odd() {
        let (a, mut b) = tokio::io::duplex(4096);
        let client = Arc::new(Client::new(a));
        let c = client.clone();
        tokio::spawn(async move { c.call_raw("s", "m", Vec::new(), None).await });
        let c = client.clone();
        tokio::spawn(async move { c.call_raw("s", "m", Vec::new(), None).await });
        let first = read_message(&mut b).await.unwrap().unwrap();
        let second = read_message(&mut b).await.unwrap().unwrap();
        assert_eq!(first.stream_id % 2, 1);
        assert_eq!(second.stream_id % 2, 1);
        assert_ne!(first.stream_id, second.stream_id);
    }

    #[tokio::test]
    async fn pending_call_fails_when_the_conn_closes() {
        let (a, b) = tokio::io::duplex(4096);
        let client = Client::new(a);
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(b);
        });
        let err = client
            .call_raw("s", "m", Vec::new(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, TtrpcError::Closed | TtrpcError::Io(_)));
        closer.await.unwrap();
    }
}
