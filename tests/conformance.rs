//! One body, two worlds (STYLE.md): the same Kafka request frames go to a broker inside the
//! deterministic simulator and to the real binary over TCP on the tokio driver; after removing
//! what legitimately differs (topic ids, advertised addresses), the answers must be identical.

mod common;

use bytes::{Bytes, BytesMut};
use common::TestBroker;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use runnel_actors::log::batch::{build_batch, PlainRecord};
use std::io::{Read, Write};
use std::net::TcpStream;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn name(v: &str) -> TopicName {
    TopicName(s(v))
}

/// One scripted step: the encoded frame and how to decode and normalise its answer.
struct Step {
    frame: Bytes,
    normalise: Box<dyn Fn(Bytes) -> String>,
}

fn step<R: Request + 'static>(correlation_id: i32, version: i16, request: R, clean: fn(&mut R::Response)) -> Step
where
    R::Response: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("conformance")))
        .encode(&mut buf, R::header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    let normalise = Box::new(move |mut frame: Bytes| {
        let header = ResponseHeader::decode(&mut frame, <R::Response as HeaderVersion>::header_version(version)).unwrap();
        let mut body = R::Response::decode(&mut frame, version).unwrap();
        clean(&mut body);
        format!("correlation {}: {body:?}", header.correlation_id)
    });
    Step { frame: buf.freeze(), normalise }
}

fn produce(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(-1).with_timeout_ms(10_000).with_topic_data(vec![produce_request::TopicProduceData::default()
        .with_name(name(topic))
        .with_partition_data(vec![produce_request::PartitionProduceData::default().with_index(partition).with_records(Some(records))])])
}

fn fetch(topic: &str, partitions: &[(i32, i64)]) -> FetchRequest {
    FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_session_epoch(-1).with_topics(vec![fetch_request::FetchTopic::default()
        .with_topic(name(topic))
        .with_partitions(
            partitions
                .iter()
                .map(|(p, o)| fetch_request::FetchPartition::default().with_partition(*p).with_fetch_offset(*o).with_partition_max_bytes(1 << 20))
                .collect(),
        )])
}

fn script() -> Vec<Step> {
    let batch = |values: &[&str], ts: i64| {
        let records: Vec<PlainRecord<'_>> = values.iter().enumerate().map(|(i, v)| (Some(v.as_bytes()), Some(v.as_bytes()), ts + i as i64)).collect();
        build_batch(&records, (-1, -1, -1))
    };
    let mut bad = batch(&["x"], 1_000).to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0x55;
    let topic = |n: &str, partitions: i32| {
        create_topics_request::CreatableTopic::default().with_name(name(n)).with_num_partitions(partitions).with_replication_factor(1)
    };
    vec![
        step(1, 3, ApiVersionsRequest::default(), |_| {}),
        step(
            2,
            7,
            CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![topic("conf", 2)
                .with_configs(vec![create_topics_request::CreatableTopicConfig::default().with_name(s("retention.ms")).with_value(Some(s("86400000")))])]),
            |r| r.topics.iter_mut().for_each(|t| t.topic_id = Default::default()),
        ),
        step(3, 7, CreateTopicsRequest::default().with_timeout_ms(10_000).with_topics(vec![topic("conf", 2), topic("bad name!", 1)]), |r| {
            r.topics.iter_mut().for_each(|t| t.topic_id = Default::default())
        }),
        step(
            4,
            12,
            MetadataRequest::default()
                .with_topics(Some(vec![
                    metadata_request::MetadataRequestTopic::default().with_name(Some(name("conf"))),
                    metadata_request::MetadataRequestTopic::default().with_name(Some(name("missing"))),
                ]))
                .with_allow_auto_topic_creation(false),
            |r| {
                r.brokers.clear();
                r.topics.iter_mut().for_each(|t| t.topic_id = Default::default());
            },
        ),
        step(5, 9, produce("conf", 0, batch(&["a", "b", "c"], 1_000)), |_| {}),
        step(6, 9, produce("conf", 1, batch(&["d"], 5_000)), |_| {}),
        step(7, 9, produce("conf", 0, batch(&["e", "f"], 9_000)), |_| {}),
        step(8, 9, produce("conf", 0, Bytes::from(bad)), |_| {}),
        step(9, 9, produce("conf", 7, batch(&["g"], 1)), |_| {}),
        step(10, 12, fetch("conf", &[(0, 0), (1, 0)]), |_| {}),
        step(11, 12, fetch("conf", &[(0, 4)]), |_| {}),
        step(
            12,
            7,
            ListOffsetsRequest::default().with_topics(vec![list_offsets_request::ListOffsetsTopic::default().with_name(name("conf")).with_partitions(
                [-2i64, -1, -3, 0, 1_001, 9_000, 9_002]
                    .iter()
                    .map(|ts| list_offsets_request::ListOffsetsPartition::default().with_partition_index(0).with_timestamp(*ts).with_current_leader_epoch(-1))
                    .collect(),
            )]),
            |_| {},
        ),
        step(
            13,
            4,
            DescribeConfigsRequest::default().with_resources(vec![describe_configs_request::DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("conf"))
                .with_configuration_keys(None)]),
            |_| {},
        ),
        step(
            14,
            1,
            IncrementalAlterConfigsRequest::default().with_resources(vec![incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("conf"))
                .with_configs(vec![incremental_alter_configs_request::AlterableConfig::default().with_name(s("segment.bytes")).with_value(Some(s("tiny")))])]),
            |_| {},
        ),
        step(
            15,
            2,
            // (A timeout: the answer waits for the new log start to be on disk.)
            DeleteRecordsRequest::default().with_timeout_ms(30_000).with_topics(vec![delete_records_request::DeleteRecordsTopic::default()
                .with_name(name("conf"))
                .with_partitions(vec![delete_records_request::DeleteRecordsPartition::default().with_partition_index(0).with_offset(1)])]),
            |_| {},
        ),
        step(16, 12, fetch("conf", &[(0, 0)]), |_| {}),
        step(17, 4, InitProducerIdRequest::default().with_transactional_id(None).with_producer_id(ProducerId(-1)).with_producer_epoch(-1), |_| {}),
        step(18, 6, DeleteTopicsRequest::default().with_topics(vec![delete_topics_request::DeleteTopicState::default().with_name(Some(name("conf")))]), |r| {
            r.responses.iter_mut().for_each(|t| t.topic_id = Default::default())
        }),
        step(19, 12, MetadataRequest::default().with_topics(None), |r| r.brokers.clear()),
    ]
}

fn over_tcp(broker: &TestBroker, frames: &[Bytes]) -> Vec<Bytes> {
    let mut stream = TcpStream::connect(broker.bootstrap()).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    frames
        .iter()
        .map(|f| {
            stream.write_all(&(f.len() as i32).to_be_bytes()).unwrap();
            stream.write_all(f).unwrap();
            let mut size = [0u8; 4];
            stream.read_exact(&mut size).unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
            stream.read_exact(&mut body).unwrap();
            Bytes::from(body)
        })
        .collect()
}

/// The simulator and the tokio driver answer the same script identically.
#[test]
fn simulator_and_tokio_driver_agree() {
    let steps = script();
    let frames: Vec<Bytes> = steps.iter().map(|s| s.frame.clone()).collect();
    let simulated = runnel_sim::conformance::run_script(7, frames.clone());
    assert_eq!(simulated.len(), frames.len(), "the simulated broker answered every request");
    let broker = TestBroker::start();
    let real = over_tcp(&broker, &frames);
    for (i, step) in steps.iter().enumerate() {
        let (a, b) = ((step.normalise)(simulated[i].clone()), (step.normalise)(real[i].clone()));
        assert_eq!(a, b, "step {} differs between the simulator and the tokio driver", i + 1);
    }
    // The script exercised something: records were stored and read back in both worlds.
    let fetched = (steps[9].normalise)(real[9].clone());
    assert!(fetched.contains("high_watermark: 5") && fetched.contains("high_watermark: 1"), "{fetched}");
}
