//! The NRI connection multiplexer: several logical byte streams over one unix stream.
//!
//! Every frame is `[conn id: u32 BE][payload length: u32 BE][payload]`. Conn 0 is
//! reserved; NRI uses conn [`PLUGIN_SERVICE_CONN`] (1) for ttrpc where the plugin serves
//! and conn [`RUNTIME_SERVICE_CONN`] (2) for ttrpc where the plugin calls the runtime.
//! Writes larger than [`MAX_FRAME_PAYLOAD`] are split across frames; the reader joins
//! them back simply because each logical conn is a byte stream.
//!
//! [`Mux::start`] hands out one [`MuxConn`] (a tokio duplex pipe, `AsyncRead +
//! AsyncWrite`) per logical conn and pumps bytes between them and the socket with tasks
//! that live as long as the [`Mux`]. Frames for a conn id nobody opened are skipped. This
//! module knows nothing about ttrpc or NRI messages.

use std::collections::HashMap;

use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Conn id of the ttrpc connection on which the plugin is the server (service `Plugin`).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// Conn id of the ttrpc connection on which the plugin is the client (service `Runtime`).
pub const RUNTIME_SERVICE_CONN: u32 = 2;
/// Largest payload put into one frame; bigger writes are split. containerd's NRI
/// (v0.12) reads each frame through a 4096-byte buffer and closes the plugin on a
/// larger one, so a frame, header included, stays within 4096 bytes. (Frames read from
/// the runtime may be any size: this side joins them.)
pub const MAX_FRAME_PAYLOAD: usize = 4096 - FRAME_HEADER_LEN;
/// Size of a frame header.
pub const FRAME_HEADER_LEN: usize = 8;

/// Buffer of each logical conn's pipe.
const PIPE_BUFFER: usize = 256 << 10;
/// Largest single read from a logical conn before it becomes a frame.
const READ_CHUNK: usize = 64 << 10;

/// One logical connection of the multiplexer.
pub type MuxConn = DuplexStream;

/// Why the multiplexer cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("conn id 0 is reserved by the NRI multiplexer")]
    ReservedConn,
    #[error("conn id {0} requested twice")]
    DuplicateConn(u32),
}

/// Encodes the frame header for `len` payload bytes on `conn`.
pub fn frame_header(conn: u32, len: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..4].copy_from_slice(&conn.to_be_bytes());
    header[4..].copy_from_slice(&len.to_be_bytes());
    header
}

/// Encodes `payload` for `conn` as frames, splitting at [`MAX_FRAME_PAYLOAD`].
pub fn encode_frames(conn: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + FRAME_HEADER_LEN);
    for chunk in payload.chunks(MAX_FRAME_PAYLOAD) {
        // A chunk is at most 4 MiB, so the length always fits in u32.
        out.extend_from_slice(&frame_header(conn, chunk.len() as u32));
        out.extend_from_slice(chunk);
    }
    out
}

/// The running multiplexer. Dropping it stops the pumps and closes the socket, and every
/// [`MuxConn`] it handed out then reads EOF.
pub struct Mux {
    tasks: Vec<JoinHandle<()>>,
    closed: watch::Receiver<bool>,
}

impl Mux {
    /// Starts multiplexing `stream` and returns one conn per id in `ids`, in order.
    pub fn start<S>(stream: S, ids: &[u32]) -> Result<(Mux, Vec<MuxConn>), MuxError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut far_ends: HashMap<u32, WriteHalf<DuplexStream>> = HashMap::new();
        let mut near_ends = Vec::with_capacity(ids.len());
        let mut readers = Vec::with_capacity(ids.len());
        for &id in ids {
            if id == 0 {
                return Err(MuxError::ReservedConn);
            }
            if far_ends.contains_key(&id) {
                return Err(MuxError::DuplicateConn(id));
            }
            let (near, far) = tokio::io::duplex(PIPE_BUFFER);
            let (far_read, far_write) = tokio::io::split(far);
            far_ends.insert(id, far_write);
            readers.push((id, far_read));
            near_ends.push(near);
        }

        let (sock_read, sock_write) = tokio::io::split(stream);
        let (frames_tx, frames_rx) = mpsc::channel::<(u32, Vec<u8>)>(16);
        let (closed_tx, closed) = watch::channel(false);
        let mut tasks = Vec::with_capacity(readers.len() + 2);
        tasks.push(tokio::spawn(demux(sock_read, far_ends, closed_tx)));
        tasks.push(tokio::spawn(write_frames(sock_write, frames_rx)));
        for (id, far_read) in readers {
            tasks.push(tokio::spawn(pump_conn(id, far_read, frames_tx.clone())));
        }
        Ok((Mux { tasks, closed }, near_ends))
    }

    /// Resolves when the socket has been closed by the peer or failed.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        // An Err means the reader task is gone, which also means closed.
        let _ = closed.wait_for(|closed| *closed).await;
    }
}

impl Drop for Mux {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reads frames from the socket and hands each payload to its conn's pipe.
async fn demux<R: AsyncRead>(
    mut sock: ReadHalf<R>,
    mut conns: HashMap<u32, WriteHalf<DuplexStream>>,
    closed: watch::Sender<bool>,
) {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut payload = vec![0u8; READ_CHUNK];
    loop {
        if sock.read_exact(&mut header).await.is_err() {
            break;
        }
        let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let mut left = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let mut sink = conns.get_mut(&conn);
        if sink.is_none() {
            tracing::warn!(
                conn,
                len = left,
                "NRI mux: frame for an unknown conn id, skipped"
            );
        }
        let mut failed = false;
        while left > 0 {
            let take = left.min(payload.len());
            if sock.read_exact(&mut payload[..take]).await.is_err() {
                failed = true;
                break;
            }
            left -= take;
            if let Some(pipe) = sink.as_mut() {
                if pipe.write_all(&payload[..take]).await.is_err() {
                    // The local side dropped this conn; keep draining the socket.
                    sink = None;
                }
            }
        }
        if failed {
            break;
        }
    }
    // Shutting the far ends' write side makes every conn read EOF (dropping one half of
    // a split duplex would not: the pump still holds the other half).
    for pipe in conns.values_mut() {
        let _ = pipe.shutdown().await;
    }
    drop(conns);
    let _ = closed.send(true);
}

/// Reads what the local side wrote to a conn and queues it as frames.
async fn pump_conn(
    id: u32,
    mut pipe: ReadHalf<DuplexStream>,
    frames: mpsc::Sender<(u32, Vec<u8>)>,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if frames.send((id, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// The only writer of the socket: frames are written whole, so conns never interleave
/// inside a frame.
async fn write_frames<W: AsyncWrite>(
    mut sock: WriteHalf<W>,
    mut frames: mpsc::Receiver<(u32, Vec<u8>)>,
) {
    while let Some((id, payload)) = frames.recv().await {
        if sock.write_all(&encode_frames(id, &payload)).await.is_err() {
            break;
        }
        if sock.flush().await.is_err() {
            break;
        }
    }
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn header_is_big_endian_conn_then_length() {
        assert_eq!(frame_header(1, 0x0102), [0, 0, 0, 1, 0, 0, 1, 2]);
        assert_eq!(frame_header(2, 5), [0, 0, 0, 2, 0, 0, 0, 5]);
    }

    #[test]
    fn large_payload_splits_into_frames_of_at_most_4096_bytes() {
        let payload = vec![7u8; MAX_FRAME_PAYLOAD + 10];
        let frames = encode_frames(2, &payload);
        assert_eq!(frames.len(), payload.len() + 2 * FRAME_HEADER_LEN);
        assert_eq!(&frames[..8], &frame_header(2, MAX_FRAME_PAYLOAD as u32));
        let second = FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD;
        assert_eq!(&frames[second..second + 8], &frame_header(2, 10));
        assert_eq!(FRAME_HEADER_LEN + MAX_FRAME_PAYLOAD, 4096);
    }

    #[tokio::test]
    async fn reserved_and_duplicate_ids_are_refused() {
        let (a, _b) = tokio::io::duplex(64);
        assert!(matches!(Mux::start(a, &[0]), Err(MuxError::ReservedConn)));
        let (a, _b) = tokio::io::duplex(64);
        assert!(matches!(
            Mux::start(a, &[1, 1]),
            Err(MuxError::DuplicateConn(1))
        ));
    }

    #[tokio::test]
    async fn writes_become_frames_on_the_socket() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (_mux, mut conns) = Mux::start(ours, &[1, 2]).unwrap();
        conns[1].write_all(b"hello").await.unwrap();
        let mut got = [0u8; 13];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..8], &frame_header(2, 5));
        assert_eq!(&got[8..], b"hello");
    }

    #[tokio::test]
    async fn frames_are_joined_and_routed_by_conn_id() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (_mux, mut conns) = Mux::start(ours, &[1, 2]).unwrap();
        // Interleaved, split frames, plus one for an unknown conn in the middle.
        let mut wire = Vec::new();
        wire.extend(encode_frames(1, b"abc"));
        wire.extend(encode_frames(2, b"xy"));
        wire.extend(encode_frames(9, b"junk-for-nobody"));
        wire.extend(encode_frames(1, b"def"));
        wire.extend(encode_frames(2, b"z"));
        theirs.write_all(&wire).await.unwrap();
        let mut one = [0u8; 6];
        conns[0].read_exact(&mut one).await.unwrap();
        assert_eq!(&one, b"abcdef");
        let mut two = [0u8; 3];
        conns[1].read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"xyz");
    }

    #[tokio::test]
    async fn payload_larger_than_a_frame_round_trips_between_two_muxes() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (_mux_a, mut conns_a) = Mux::start(a, &[1, 2]).unwrap();
        let (_mux_b, mut conns_b) = Mux::start(b, &[1, 2]).unwrap();
        let payload: Vec<u8> = (0..(4 << 20) + 12345).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let mut writer = conns_a.remove(0);
        let send = tokio::spawn(async move { writer.write_all(&payload).await.map(|_| writer) });
        let mut got = vec![0u8; expected.len()];
        conns_b[0].read_exact(&mut got).await.unwrap();
        assert!(got == expected);
        send.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn peer_close_gives_eof_on_every_conn() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mux, mut conns) = Mux::start(ours, &[1, 2]).unwrap();
        drop(theirs);
        mux.closed().await;
        let mut buf = [0u8; 1];
        assert_eq!(conns[0].read(&mut buf).await.unwrap(), 0);
        assert_eq!(conns[1].read(&mut buf).await.unwrap(), 0);
    }
}
