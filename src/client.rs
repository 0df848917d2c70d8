//! A small blocking-free Kafka client used by the CLI (`runnel topic|produce|consume`): one TCP
//! connection, one request at a time, versions chosen from the broker's ApiVersions answer.

use anyhow::{bail, Context};
use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request as KafkaRequest, StrBytes};
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A connection to one broker.
pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
}

impl Client {
    /// Connect and negotiate versions. `addr` may list several `host:port`s separated by commas
    /// (as `--bootstrap-server` does): the first that answers is used.
    pub async fn connect(addr: &str) -> anyhow::Result<Client> {
        let mut failed = None;
        for one in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Client::connect_one(one).await {
                Ok(c) => return Ok(c),
                Err(e) => failed = Some(e),
            }
        }
        Err(failed.unwrap_or_else(|| anyhow::anyhow!("no address to connect to in {addr:?}")))
    }

    async fn connect_one(addr: &str) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = Client { stream, correlation_id: 0, versions: HashMap::new() };
        let r: ApiVersionsResponse = c.send_version(ApiVersionsRequest::default(), 0).await?;
        for k in r.api_keys {
            c.versions.insert(k.api_key, (k.min_version, k.max_version));
        }
        Ok(c)
    }

    /// Send `request` at the highest version both sides support (capped at `max`).
    pub async fn send<R: KafkaRequest>(&mut self, request: R, max: i16) -> anyhow::Result<R::Response> {
        let (lo, hi) = *self.versions.get(&R::KEY).with_context(|| format!("broker does not support api {}", R::KEY))?;
        let version = hi.min(max).min(R::VERSIONS.max);
        if version < lo.max(R::VERSIONS.min) {
            bail!("no common version for api {}", R::KEY);
        }
        self.send_version(request, version).await
    }

    async fn send_version<R: KafkaRequest>(&mut self, request: R, version: i16) -> anyhow::Result<R::Response> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("runnel-cli")));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, R::header_version(version))?;
        request.encode(&mut buf, version)?;
        self.stream.write_all(&(buf.len() as u32).to_be_bytes()).await?;
        self.stream.write_all(&buf).await?;
        // A no-op on a real socket; madsim's simulated stream sends on flush.
        self.stream.flush().await?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).await.context("broker closed the connection")?;
        let size = u32::from_be_bytes(size) as usize;
        if size > 1 << 30 {
            bail!("response of {size} bytes is too large");
        }
        let mut body = vec![0u8; size];
        self.stream.read_exact(&mut body).await?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, <R::Response as HeaderVersion>::header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!("correlation id {} does not match {}", header.correlation_id, self.correlation_id);
        }
        let response = R::Response::decode(&mut body, version)?;
        if body.has_remaining() {
            tracing::debug!("{} trailing bytes in response", body.remaining());
        }
        Ok(response)
    }
}

/// Turn a Kafka error code into a readable error.
pub fn check(code: i16, what: &str, message: Option<&StrBytes>) -> anyhow::Result<()> {
    if code == 0 {
        return Ok(());
    }
    let name = kafka_protocol::ResponseError::try_from_code(code).map(|e| format!("{e:?}")).unwrap_or_else(|| format!("error {code}"));
    match message {
        Some(m) => bail!("{what}: {name}: {}", m.as_str()),
        None => bail!("{what}: {name}"),
    }
}
