//! Hostile input against the real binary: truncated frames, wrong lengths, bad CRCs, giant
//! declared counts and lengths, unknown API keys and versions, garbage. Each gets Kafka's answer
//! or a closed connection; the broker keeps serving, its memory stays bounded, and records stored
//! before the attack are intact afterwards.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::TestBroker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use runnel_actors::log::batch::build_batch;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What came back for a frame.
#[derive(Debug, PartialEq)]
enum Answer {
    Frame(Bytes),
    Closed,
}

fn connect(broker: &TestBroker) -> TcpStream {
    let s = TcpStream::connect(broker.bootstrap()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// Send raw bytes and read one response frame, or observe the connection closing.
fn exchange(s: &mut TcpStream, raw: &[u8]) -> Answer {
    if s.write_all(raw).is_err() {
        return Answer::Closed;
    }
    let mut size = [0u8; 4];
    match s.read_exact(&mut size) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => panic!("broker neither answered nor closed"),
        Err(_) => return Answer::Closed,
    }
    let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
    s.read_exact(&mut body).expect("response body");
    Answer::Frame(Bytes::from(body))
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as i32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// A request frame body (header + encoded request) for `R` at `version`.
fn request_body<R: Request>(r: &R, version: i16, correlation_id: i32) -> BytesMut {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("hostile")))
        .encode(&mut buf, R::header_version(version))
        .expect("encode header");
    r.encode(&mut buf, version).expect("encode body");
    buf
}

fn call<R: Request>(s: &mut TcpStream, r: &R, version: i16) -> R::Response {
    let Answer::Frame(mut frame) = exchange(s, &framed(&request_body(r, version, 7))) else { panic!("connection closed on a valid request") };
    let header = ResponseHeader::decode(&mut frame, <R::Response as HeaderVersion>::header_version(version)).expect("response header");
    assert_eq!(header.correlation_id, 7);
    R::Response::decode(&mut frame, version).expect("response body")
}

/// A raw header: api key, version, correlation id, null client id.
fn raw_header(api_key: i16, version: i16) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&api_key.to_be_bytes());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(&42i32.to_be_bytes());
    v.extend_from_slice(&(-1i16).to_be_bytes());
    v
}

fn produce(s: &mut TcpStream, topic: &str, records: Bytes) -> i16 {
    let r = ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![produce_request::TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_string(topic.into())))
        .with_partition_data(vec![produce_request::PartitionProduceData::default().with_index(0).with_records(Some(records))])]);
    let response = call(s, &r, 9);
    response.responses[0].partition_responses[0].error_code
}

fn fetch_all(s: &mut TcpStream, topic: &str) -> Bytes {
    let r = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![fetch_request::FetchTopic::default()
        .with_topic(TopicName(StrBytes::from_string(topic.into())))
        .with_partitions(vec![fetch_request::FetchPartition::default().with_partition(0).with_fetch_offset(0).with_partition_max_bytes(1 << 20)])]);
    let response = call(s, &r, 11);
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.records.clone().unwrap_or_default()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

/// Every kind of bad frame is answered or closed, and afterwards the broker still serves and
/// still holds exactly the records acknowledged before.
#[test]
fn hostile_frames_are_answered_or_closed_and_nothing_is_damaged() {
    let broker = TestBroker::start();
    let mut good = connect(&broker);
    let valid = build_batch(&[(Some(b"k".as_slice()), Some(b"before".as_slice()), 1_700_000_000_000)], (-1, -1, -1));
    // Metadata auto-creates the topic (as in Kafka); retry until its partition is ready.
    let metadata = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("victim"))))]))
        .with_allow_auto_topic_creation(true);
    let _: MetadataResponse = call(&mut good, &metadata, 9);
    let mut code = -1;
    for _ in 0..100 {
        code = produce(&mut good, "victim", valid.clone());
        if code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(code, 0, "initial produce failed");
    let stored = fetch_all(&mut good, "victim");
    assert!(!stored.is_empty());

    // ApiVersions at a version we do not know: UNSUPPORTED_VERSION in a v0 body, connection kept.
    let mut s = connect(&broker);
    let Answer::Frame(f) = exchange(&mut s, &framed(&raw_header(18, 99))) else { panic!("ApiVersions v99 closed the connection") };
    assert_eq!(&f[0..4], &42i32.to_be_bytes(), "correlation id echoed");
    assert_eq!(i16::from_be_bytes([f[4], f[5]]), 35, "UNSUPPORTED_VERSION");
    let ok: ApiVersionsResponse = call(&mut s, &ApiVersionsRequest::default(), 3);
    assert_eq!(ok.error_code, 0);

    let closes: Vec<(&str, Vec<u8>)> = vec![
        ("unknown api key", framed(&raw_header(999, 0))),
        ("unsupported Metadata version", framed(&raw_header(3, 99))),
        ("negative frame size", (-5i32).to_be_bytes().to_vec()),
        ("frame above socket.request.max.bytes", (200 * 1024 * 1024i32).to_be_bytes().to_vec()),
        ("frame shorter than a header", framed(&[0, 3])),
        ("garbage", framed(&(0..500u32).map(|i| (i * 7919 % 251) as u8).collect::<Vec<_>>())),
        ("Metadata v1 claiming 2^31-1 topics", {
            let mut b = raw_header(3, 1);
            b.extend_from_slice(&i32::MAX.to_be_bytes());
            framed(&b)
        }),
        ("Produce v3 claiming 2^31-1 topics", {
            let mut b = raw_header(0, 3);
            b.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id
            b.extend_from_slice(&1i16.to_be_bytes()); // acks
            b.extend_from_slice(&1000i32.to_be_bytes()); // timeout
            b.extend_from_slice(&i32::MAX.to_be_bytes());
            framed(&b)
        }),
        ("Produce v3 records claiming 2 GiB", {
            let mut b = raw_header(0, 3);
            b.extend_from_slice(&(-1i16).to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&1000i32.to_be_bytes());
            b.extend_from_slice(&1i32.to_be_bytes());
            b.extend_from_slice(&6i16.to_be_bytes());
            b.extend_from_slice(b"victim");
            b.extend_from_slice(&1i32.to_be_bytes());
            b.extend_from_slice(&0i32.to_be_bytes());
            b.extend_from_slice(&i32::MAX.to_be_bytes());
            b.extend_from_slice(&[0; 64]);
            framed(&b)
        }),
        ("CreateTopics v5 (flexible) claiming 2^32 topics", {
            let mut b = raw_header(19, 5);
            b.push(0); // header tagged fields
            b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // compact array length varint
            framed(&b)
        }),
    ];
    for (what, raw) in &closes {
        let mut s = connect(&broker);
        assert_eq!(exchange(&mut s, raw), Answer::Closed, "{what}: expected the connection to close");
    }

    // A frame cut short and abandoned: nothing to answer, the broker just drops the connection.
    {
        let mut s = connect(&broker);
        s.write_all(&100i32.to_be_bytes()).unwrap();
        s.write_all(&[0, 3, 0, 1]).unwrap();
    }

    // Batches that fail validation are refused with Kafka's codes and never stored.
    let mut bad_crc = valid.to_vec();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    assert_eq!(produce(&mut good, "victim", Bytes::from(bad_crc)), 2, "CORRUPT_MESSAGE for a bad CRC");
    let mut bad_magic = valid.to_vec();
    bad_magic[16] = 1;
    assert_eq!(produce(&mut good, "victim", Bytes::from(bad_magic)), 43, "UNSUPPORTED_FOR_MESSAGE_FORMAT for magic 1");
    let mut torn = BytesMut::new();
    torn.put_slice(&valid[..valid.len() - 3]);
    assert_eq!(produce(&mut good, "victim", torn.freeze()), 2, "CORRUPT_MESSAGE for a truncated batch");
    let mut lying_length = valid.to_vec();
    lying_length[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    assert_eq!(produce(&mut good, "victim", Bytes::from(lying_length)), 2, "CORRUPT_MESSAGE for a batch length beyond the data");

    // The broker is alive, serves new connections, and holds exactly what it held before.
    let mut fresh = connect(&broker);
    let ok: ApiVersionsResponse = call(&mut fresh, &ApiVersionsRequest::default(), 3);
    assert_eq!(ok.error_code, 0);
    assert_eq!(fetch_all(&mut fresh, "victim"), stored, "stored records changed");
    let pid = broker.pid().expect("broker running");
    let rss = rss_kib(pid);
    assert!(rss < 512 * 1024, "broker RSS {rss} KiB after hostile input");
}

/// Pipelined requests on one connection are answered in the order they were sent, even when
/// the first (an acks=all produce waiting for fsync) finishes last.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let broker = TestBroker::start();
    let mut s = connect(&broker);
    let metadata = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("piped"))))]))
        .with_allow_auto_topic_creation(true);
    let _: MetadataResponse = call(&mut s, &metadata, 9);
    let batch = build_batch(&[(None, Some(b"v".as_slice()), 1_700_000_000_000)], (-1, -1, -1));
    let produce = ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![produce_request::TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("piped")))
        .with_partition_data(vec![produce_request::PartitionProduceData::default().with_index(0).with_records(Some(batch))])]);
    // Wait until the auto-created partition takes writes.
    for _ in 0..100 {
        let raw = framed(&request_body(&produce, 9, 1));
        let Answer::Frame(mut f) = exchange(&mut s, &raw) else { panic!("closed") };
        ResponseHeader::decode(&mut f, 1).unwrap();
        if ProduceResponse::decode(&mut f, 9).unwrap().responses[0].partition_responses[0].error_code == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Three requests in one write: produce (slow: fsync), ApiVersions and Metadata (instant).
    let mut burst = Vec::new();
    burst.extend(framed(&request_body(&produce, 9, 100)));
    burst.extend(framed(&request_body(&ApiVersionsRequest::default(), 3, 101)));
    burst.extend(framed(&request_body(&metadata, 9, 102)));
    s.write_all(&burst).unwrap();
    for expected in [100, 101, 102] {
        let mut size = [0u8; 4];
        s.read_exact(&mut size).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
        s.read_exact(&mut body).unwrap();
        let correlation = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        assert_eq!(correlation, expected, "responses out of order");
    }
}
