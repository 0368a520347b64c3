//! A small blocking Kafka client for the CLI's admin commands: one request at a time over a
//! `std` TCP stream, messages encoded and decoded by `kafka-protocol`. It is not on any hot
//! path; the broker never uses it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

pub struct Client {
    stream: TcpStream,
    addr: String,
    correlation: i32,
}

/// Largest response the CLI accepts (a describe of a huge group is far below this).
const RESPONSE_BYTES_MAX: usize = 256 << 20;

impl Client {
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, String> {
        let sock = addr
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to no address"))?;
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(Client {
            stream,
            addr: addr.to_string(),
            correlation: 0,
        })
    }

    /// Sends `req` at `version` and waits for its response.
    pub fn call<R>(&mut self, req: &R, version: i16) -> Result<R::Response, String>
    where
        R: Request + Encodable + HeaderVersion,
        R::Response: Decodable + HeaderVersion,
    {
        self.correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(StrBytes::from_static_str("sluice-cli"));
        let mut body = BytesMut::new();
        let bad = |e: anyhow::Error| format!("cannot encode request: {e}");
        header
            .encode(&mut body, R::header_version(version))
            .map_err(bad)?;
        req.encode(&mut body, version).map_err(bad)?;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let io = |e: std::io::Error| format!("{}: {e}", self.addr);
        self.stream.write_all(&frame).map_err(io)?;
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(io)?;
        let len = u32::from_be_bytes(len) as usize;
        if len > RESPONSE_BYTES_MAX {
            return Err(format!(
                "{}: response of {len} bytes is too large",
                self.addr
            ));
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).map_err(io)?;
        let mut buf = bytes::Bytes::from(buf);
        let bad = |e: anyhow::Error| format!("cannot decode the response: {e}");
        let rh =
            ResponseHeader::decode(&mut buf, R::Response::header_version(version)).map_err(bad)?;
        if rh.correlation_id != self.correlation {
            return Err(format!(
                "response to request {} arrived for {}",
                rh.correlation_id, self.correlation
            ));
        }
        R::Response::decode(&mut buf, version).map_err(bad)
    }
}
