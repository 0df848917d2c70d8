//! The real driver's async edge under madsim: the Kafka TCP front, connection handling and the
//! tokio driver run unchanged on madsim's simulated network and clock (built with
//! `RUSTFLAGS="--cfg madsim"`). A client produces with acks=all while the broker node is killed
//! and restarted and the link is clogged; afterwards every acknowledged record is read back at
//! its offset. With `MADSIM_TEST_CHECK_DETERMINISM=1` madsim runs the test twice and compares.
#![cfg(madsim)]

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use madsim::runtime::Handle;
use runnel::client::Client;
use runnel::config::ServerConfig;
use runnel_actors::log::batch::build_batch;
use std::collections::BTreeMap;
use std::time::Duration;

const BROKER: &str = "10.0.0.1:9092";

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("edge"))
}

async fn connect() -> Client {
    loop {
        match madsim::time::timeout(Duration::from_secs(2), Client::connect(BROKER)).await {
            Ok(Ok(c)) => return c,
            // Refused while the broker is down, timed out while the link is clogged: retry.
            Ok(Err(_)) | Err(_) => {}
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produce one record; `Ok(offset)` once acknowledged, `Err` if the connection or broker failed.
async fn produce(c: &mut Client, value: u64) -> anyhow::Result<i64> {
    let v = value.to_string().into_bytes();
    let batch = build_batch(&[(None, Some(&v), 1_700_000_000_000)], (-1, -1, -1));
    let r = ProduceRequest::default().with_acks(-1).with_timeout_ms(5_000).with_topic_data(vec![produce_request::TopicProduceData::default()
        .with_name(topic())
        .with_partition_data(vec![produce_request::PartitionProduceData::default().with_index(0).with_records(Some(batch))])]);
    let response = madsim::time::timeout(Duration::from_secs(3), c.send(r, 9)).await??;
    let p = &response.responses[0].partition_responses[0];
    anyhow::ensure!(p.error_code == 0, "produce error {}", p.error_code);
    Ok(p.base_offset)
}

async fn read_all(c: &mut Client, end: i64) -> anyhow::Result<BTreeMap<i64, u64>> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    while offset < end {
        let r = FetchRequest::default().with_max_wait_ms(100).with_max_bytes(1 << 20).with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(topic())
            .with_partitions(vec![fetch_request::FetchPartition::default().with_fetch_offset(offset).with_partition_max_bytes(1 << 20)])]);
        let response = c.send(r, 11).await?;
        let p = &response.responses[0].partitions[0];
        anyhow::ensure!(p.error_code == 0, "fetch error {}", p.error_code);
        let mut records = p.records.clone().unwrap_or_default();
        for set in kafka_protocol::records::RecordBatchDecoder::decode_all(&mut records)? {
            for rec in set.records {
                let value: u64 = std::str::from_utf8(rec.value.as_deref().unwrap_or_default())?.parse()?;
                out.insert(rec.offset, value);
                offset = offset.max(rec.offset + 1);
            }
        }
    }
    Ok(out)
}

/// Kills, restarts and clogs around a producing client lose no acknowledged record.
#[madsim::test]
async fn front_survives_kills_and_clogs() {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_writer(std::io::stderr).try_init();
    runnel::driver::disk::reset_simulated_disks();
    let handle = Handle::current();
    let broker = handle
        .create_node()
        .name("broker")
        .ip("10.0.0.1".parse().unwrap())
        .init(|| async {
            let config = ServerConfig { listener: Some(BROKER.parse().unwrap()), data_dir: "/madsim/broker".into(), ..Default::default() };
            if let Err(e) = runnel::server::run(config).await {
                eprintln!("broker exited: {e:#}");
            }
        })
        .build();
    let client_node = handle.create_node().name("client").ip("10.0.0.2".parse().unwrap()).build();
    let client = client_node.spawn(async move {
        let mut c = connect().await;
        let create = CreateTopicsRequest::default()
            .with_timeout_ms(5_000)
            .with_topics(vec![create_topics_request::CreatableTopic::default().with_name(topic()).with_num_partitions(1).with_replication_factor(1)]);
        let created = madsim::time::timeout(Duration::from_secs(10), c.send(create, 7)).await.expect("create topic in time").expect("create topic");
        assert_eq!(created.topics[0].error_code, 0);
        let mut acked: BTreeMap<i64, u64> = BTreeMap::new();
        let mut value = 0u64;
        while acked.len() < 300 {
            value += 1;
            match produce(&mut c, value).await {
                Ok(offset) => {
                    assert!(acked.insert(offset, value).is_none(), "offset {offset} acknowledged twice");
                }
                Err(_) => {
                    madsim::time::sleep(Duration::from_millis(50)).await;
                    c = connect().await;
                }
            }
        }
        let end = acked.keys().last().copied().unwrap() + 1;
        let read = read_all(&mut c, end).await.expect("read back");
        for (offset, v) in &acked {
            assert_eq!(read.get(offset), Some(v), "acknowledged record at offset {offset} lost");
        }
        acked.len()
    });
    // Faults while the client works: a clogged link, a kill and a restart.
    let net = madsim::net::NetSim::current();
    madsim::time::sleep(Duration::from_millis(300)).await;
    net.clog_link(client_node.id(), broker.id());
    madsim::time::sleep(Duration::from_millis(700)).await;
    net.unclog_link(client_node.id(), broker.id());
    madsim::time::sleep(Duration::from_millis(400)).await;
    handle.kill(broker.id());
    madsim::time::sleep(Duration::from_millis(500)).await;
    handle.restart(broker.id());
    let acked = client.await.expect("client task");
    assert_eq!(acked, 300);
}
