//! Kafka connections: framing, request decoding, pipelined handling with in-order responses.
//!
//! ```text
//!  request  = size:i32 | api_key:i16 | api_version:i16 | correlation_id:i32 | client_id | [tags] | body
//!  response = size:i32 | correlation_id:i32 | [tags] | body
//! ```
//! Requests of one connection are handled concurrently (up to [`IN_FLIGHT_MAX`]) and answered
//! in arrival order, as Kafka requires. A frame that cannot be decoded closes only its own
//! connection.

use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use std::os::fd::{AsRawFd, RawFd};

use super::fetch_encode::{encode_fetch, Chunk, FileChunk};
use super::handlers::{self, Reply};
use crate::broker::shard::Shard;
use crate::kafka::errors as ec;

/// Requests of one connection being handled at once (librdkafka pipelines up to 5 per
/// partition leader, the Java client 5 by default).
pub const IN_FLIGHT_MAX: usize = 16;

/// Accepts connections on this shard's SO_REUSEPORT listener until the broker stops.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    crate::broker::shard::accept_loop(shard, listener, "kafka", |s, stream| async move {
        serve_connection(&s, stream).await
    })
    .await
}

type Pending = glommio::task::JoinHandle<Option<Vec<Chunk>>>;

async fn serve_connection(shard: &Rc<Shard>, stream: TcpStream) -> std::io::Result<()> {
    let socket = stream.as_raw_fd();
    set_send_buffer(socket, 4 << 20);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let (tx, rx) = glommio::channels::local_channel::new_bounded::<Pending>(IN_FLIGHT_MAX);
    let write_task = glommio::spawn_local(async move {
        while let Some(pending) = rx.recv().await {
            match pending.await {
                // An empty frame marks a response that could not be encoded: close.
                Some(Some(frame)) if frame.is_empty() => break,
                Some(Some(frame)) => {
                    for chunk in frame {
                        match chunk {
                            Chunk::Bytes(b) => writer.write_all(&b).await?,
                            Chunk::File(f) => {
                                // Everything before it must be on the socket first.
                                writer.flush().await?;
                                send_file(socket, &f).await?;
                            }
                        }
                    }
                }
                Some(None) => {}
                None => break,
            }
        }
        writer.flush().await?;
        writer.close().await
    });
    let max = shard.shared.config.request_bytes_max;
    let result = loop {
        let stop = shard.stop.notified();
        if shard.is_stopping() {
            break Ok(());
        }
        let mut size = [0u8; 4];
        let read =
            futures_lite::future::or(async { Some(reader.read_exact(&mut size).await) }, async {
                stop.await;
                None
            })
            .await;
        match read {
            None => break Ok(()),
            Some(Err(e)) => break Err(e),
            Some(Ok(())) => {}
        }
        let size = i32::from_be_bytes(size);
        if size < 8 || size as usize > max {
            break Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("request size {size} outside 8..={max} (socket.request.max.bytes)"),
            ));
        }
        let mut frame = vec![0u8; size as usize];
        reader.read_exact(&mut frame).await?;
        let work = match prepare(Bytes::from(frame)) {
            Ok(w) => w,
            Err(e) => break Err(e),
        };
        let shard = shard.clone();
        let task = glommio::spawn_local(async move { respond(&shard, work).await }).detach();
        if tx.send(task).await.is_err() {
            break Ok(());
        }
    };
    drop(tx);
    let written = write_task.await;
    result.and(written)
}

/// A decoded request, or an answer decided without decoding its body.
pub enum Work {
    Request {
        header: Box<RequestHeader>,
        key: ApiKey,
        body: Box<RequestKind>,
    },
    /// ApiVersions at a version we do not know: answer v0 with UNSUPPORTED_VERSION (KIP-511).
    UnsupportedApiVersions { correlation_id: i32 },
    /// A well-formed request for an API (or version) Sluice does not serve, whose response has
    /// a top-level error code: answered with UNSUPPORTED_VERSION.
    Unsupported {
        header: Box<RequestHeader>,
        key: ApiKey,
    },
}

/// Decodes one request frame (without its size prefix). Every error closes the connection.
pub fn prepare(mut frame: Bytes) -> std::io::Result<Work> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    if frame.len() < 8 {
        return Err(bad(format!(
            "request of {} bytes is shorter than a header",
            frame.len()
        )));
    }
    let key_raw = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(key_raw).map_err(|_| bad(format!("unknown api key {key_raw}")))?;
    let known = key.valid_versions();
    if !handlers::supports(key, version) {
        if key == ApiKey::ApiVersions {
            return Ok(Work::UnsupportedApiVersions { correlation_id });
        }
        // Requests we can parse and whose response carries a top-level error code get a clean
        // UNSUPPORTED_VERSION; anything else closes the connection, as Kafka does.
        if (known.min..=known.max).contains(&version)
            && handlers::unsupported_response(key, version).is_some()
        {
            let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
                .map_err(|e| bad(format!("bad {key:?} header: {e}")))?;
            RequestKind::decode(key, &mut frame, version)
                .map_err(|e| bad(format!("bad {key:?} v{version} body: {e}")))?;
            return Ok(Work::Unsupported {
                header: Box::new(header),
                key,
            });
        }
        return Err(bad(format!(
            "unsupported {key:?} v{version} (correlation id {correlation_id})"
        )));
    }
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| bad(format!("bad {key:?} header: {e}")))?;
    let body = RequestKind::decode(key, &mut frame, version)
        .map_err(|e| bad(format!("bad {key:?} v{version} body: {e}")))?;
    // Trailing bytes are ignored, as Kafka's own request parser does: librdkafka 2.16's
    // all-topics Metadata v12 request carries three bytes past what the schema describes.
    Ok(Work::Request {
        header: Box::new(header),
        key,
        body: Box::new(body),
    })
}

/// Handles one request and encodes its response frame; `None` when no response is due
/// (acks=0), an empty frame when the response could not be encoded (the connection closes).
async fn respond(shard: &Rc<Shard>, work: Work) -> Option<Vec<Chunk>> {
    let (correlation_id, key, version, response) = match work {
        Work::UnsupportedApiVersions { correlation_id } => (
            correlation_id,
            ApiKey::ApiVersions,
            0,
            ResponseKind::ApiVersions(handlers::api_versions(ec::UNSUPPORTED_VERSION)),
        ),
        Work::Unsupported { header, key } => {
            let version = header.request_api_version;
            let response = handlers::unsupported_response(key, version)?;
            (header.correlation_id, key, version, response)
        }
        Work::Request { header, key, body } => {
            let version = header.request_api_version;
            let client_id = header
                .client_id
                .as_ref()
                .map(|c| c.as_str().to_string())
                .unwrap_or_default();
            match handlers::handle(shard, *body, version, &client_id).await? {
                Reply::Kind(response) => (header.correlation_id, key, version, *response),
                Reply::Fetch(topics) => {
                    return Some(encode_fetch(header.correlation_id, version, topics))
                }
            }
        }
    };
    let mut buf = BytesMut::with_capacity(256);
    buf.extend_from_slice(&[0, 0, 0, 0]);
    let mut h = ResponseHeader::default();
    h.correlation_id = correlation_id;
    let encoded = h
        .encode(&mut buf, key.response_header_version(version))
        .and_then(|_| response.encode(&mut buf, version));
    if let Err(e) = encoded {
        // A response we cannot encode is a bug; close the connection rather than lie.
        eprintln!("sluice: cannot encode {key:?} v{version} response: {e}");
        return Some(Vec::new());
    }
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Some(vec![Chunk::Bytes(buf.freeze())])
}

/// Sends `len` bytes of a file from `pos` to the socket with sendfile, without blocking the
/// reactor on a full socket buffer: each call sends at most what the send buffer has room for
/// (SIOCOUTQ against SO_SNDBUF), and waits briefly when it is full.
async fn send_file(socket: RawFd, f: &FileChunk) -> std::io::Result<()> {
    let mut off = f.pos as libc::off_t;
    let end = (f.pos + f.len) as libc::off_t;
    let sndbuf = socket_send_buffer(socket)?;
    while off < end {
        let remaining = (end - off) as usize;
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int.
        if unsafe { libc::ioctl(socket, libc::TIOCOUTQ, &mut queued) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let room = (sndbuf / 2).saturating_sub(queued.max(0) as usize);
        if room < (64 << 10).min(remaining) {
            glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
            continue;
        }
        let n = remaining.min(room);
        // SAFETY: both descriptors are open for the duration of the call; `off` is ours.
        let sent = unsafe { libc::sendfile(socket, f.fd.as_raw_fd(), &mut off, n) };
        if sent < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
                    continue;
                }
                _ => return Err(e),
            }
        }
        if sent == 0 {
            // The segment shrank under us (truncation): the frame cannot be completed.
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "segment ended inside a fetch region",
            ));
        }
        glommio::yield_if_needed().await;
    }
    Ok(())
}

fn socket_send_buffer(socket: RawFd) -> std::io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int into `v`.
    let r = unsafe {
        libc::getsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(v.max(0) as usize)
}

/// A larger send buffer lets one sendfile carry a whole fetch region (loopback autotuning
/// starts small).
fn set_send_buffer(socket: RawFd, bytes: libc::c_int) {
    // SAFETY: setsockopt reads one int.
    unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &bytes as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_array_lengths_are_refused_without_allocating() {
        // IncrementalAlterConfigs whose resource count promises ~600M entries in 2 bytes
        // (found by the kafka_request fuzz target; it aborted the process on OOM).
        let frame = Bytes::from_static(&[0, 44, 0, 0, 0, 0, 0, 126, 0, 0, 36, 0, 8, 0]);
        assert!(prepare(frame).is_err());
    }

    #[test]
    fn short_and_unknown_frames_are_refused() {
        assert!(prepare(Bytes::from_static(&[0, 3, 0])).is_err());
        assert!(prepare(Bytes::from_static(&[0x7f, 0x7f, 0, 0, 0, 0, 0, 1])).is_err());
        // ApiVersions at an unknown version is answered (KIP-511), not refused.
        assert!(matches!(
            prepare(Bytes::from_static(&[0, 18, 0, 99, 0, 0, 0, 1, 0xff, 0xff])),
            Ok(Work::UnsupportedApiVersions { correlation_id: 1 })
        ));
    }
}
