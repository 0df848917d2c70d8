//! Kafka request framing inside the broker: the request header, the supported API table, and
//! response encoding. The size prefix is stripped by the driver (which also enforces
//! `socket.request.max.bytes`); everything after it is parsed here so the simulator exercises
//! the same code.
//!
//! Bad input never panics: an unknown API key, an unsupported version (other than ApiVersions,
//! which gets UNSUPPORTED_VERSION in a v0 body as Kafka answers) or a body that does not parse
//! closes the connection, as Kafka's SocketServer does.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

/// The APIs this broker answers, with the version range it implements.
pub const SUPPORTED_APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::ConsumerGroupDescribe, 0, 1),
    (ApiKey::DescribeQuorum, 0, 2),
];

/// A decoded request with what is needed to answer it.
#[derive(Debug)]
pub struct Request {
    /// API key.
    pub api_key: ApiKey,
    /// API version.
    pub version: i16,
    /// Correlation id to echo.
    pub correlation_id: i32,
    /// Client id from the header.
    pub client_id: Option<String>,
    /// The body.
    pub body: RequestKind,
}

/// What to do with a frame.
#[derive(Debug)]
pub enum Decoded {
    /// Handle this request.
    Request(Box<Request>),
    /// Answer with this frame right away (ApiVersions with an unsupported version).
    Respond(Bytes),
    /// Close the connection; the string says why (logged).
    Close(String),
}

/// The range this broker implements for `key`, if any.
pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED_APIS.iter().find(|(k, _, _)| *k == key).map(|(_, min, max)| (*min, *max))
}

/// The ApiVersions response body listing [`SUPPORTED_APIS`].
pub fn api_versions_body(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_error_code(error_code).with_api_keys(
        SUPPORTED_APIS.iter().map(|(k, min, max)| ApiVersion::default().with_api_key(*k as i16).with_min_version(*min).with_max_version(*max)).collect(),
    )
}

/// Parse one request frame.
pub fn decode_frame(frame: Bytes) -> Decoded {
    if frame.len() < 8 {
        return Decoded::Close(format!("request frame of {} bytes is shorter than a header", frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api_key) = ApiKey::try_from(raw_key) else {
        return Decoded::Close(format!("unknown api key {raw_key}"));
    };
    let Some((min, max)) = supported_range(api_key) else {
        return Decoded::Close(format!("unsupported api {api_key:?}"));
    };
    if version < min || version > max {
        if api_key == ApiKey::ApiVersions {
            // Kafka answers an ApiVersions it cannot parse with a v0 body so any client can read it.
            return match encode_response(correlation_id, 0, &api_versions_body(super::error::UNSUPPORTED_VERSION), 0) {
                Ok(b) => Decoded::Respond(b),
                Err(e) => Decoded::Close(e),
            };
        }
        return Decoded::Close(format!("{api_key:?} v{version} is not supported ({min}..={max})"));
    }
    let mut buf = frame;
    let header = match RequestHeader::decode(&mut buf, api_key.request_header_version(version)) {
        Ok(h) => h,
        Err(e) => return Decoded::Close(format!("bad request header: {e}")),
    };
    let body = match decode_body(api_key, &mut buf, version) {
        Ok(b) => b,
        Err(e) => return Decoded::Close(format!("cannot parse {api_key:?} v{version}: {e}")),
    };
    Decoded::Request(Box::new(Request { api_key, version, correlation_id, client_id: header.client_id.map(|s| s.to_string()), body }))
}

fn decode_body(api_key: ApiKey, buf: &mut Bytes, version: i16) -> Result<RequestKind, String> {
    // kafka-protocol 0.18 reserves Vec capacity from wire counts; the real driver's allocator
    // (src/alloc.rs) keeps such reservations virtual, and here a count can never exceed the bytes
    // left, which bounds what decoding can actually touch.
    RequestKind::decode(api_key, buf, version).map_err(|e| e.to_string())
}

/// Encode a response frame (without the size prefix).
pub fn encode_response<R: Encodable>(correlation_id: i32, header_version: i16, body: &R, version: i16) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(64);
    ResponseHeader::default().with_correlation_id(correlation_id).encode(&mut out, header_version).map_err(|e| e.to_string())?;
    body.encode(&mut out, version).map_err(|e| e.to_string())?;
    Ok(out.freeze())
}

/// Encode a response to `request`, using the header version its API and version call for.
pub fn respond<R: Encodable + HeaderVersion>(request: &Request, body: &R) -> Result<Bytes, String> {
    let header_version = request.api_key.response_header_version(request.version);
    encode_response(request.correlation_id, header_version, body, request.version)
}
