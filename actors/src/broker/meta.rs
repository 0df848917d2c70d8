//! The node's metadata file (`meta/topics`): topics with their ids, partition counts and config
//! overrides, dynamic broker configs, and the end of the last producer-id block handed out.
//!
//! It is replaced atomically (write `meta/topics.tmp`, fsync, rename) and protected by a CRC-32
//! (crc32fast) on its last line, so a torn write is detected and the previous version kept. This
//! is the single-node stand-in for the controller's `__cluster_metadata` log.

use std::collections::BTreeMap;
use uuid::Uuid;

/// One topic's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    /// Topic id.
    pub id: Uuid,
    /// Partition count.
    pub partitions: i32,
    /// Config overrides.
    pub configs: BTreeMap<String, String>,
}

/// Everything in the metadata file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMeta {
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// Dynamic broker-level topic defaults (topic config keys).
    pub dynamic_broker: BTreeMap<String, String>,
    /// Producer ids below this may have been handed out already.
    pub producer_id_block_end: i64,
}

/// Path of the metadata file, relative to the data directory.
pub const META_PATH: &str = "meta/topics";
/// Temporary path used for atomic replacement.
pub const META_TMP_PATH: &str = "meta/topics.tmp";

fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '%' | ' ' | '=' | '\n' | '\t' => out.push_str(&format!("%{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            let hex: String = chars.by_ref().take(2).collect();
            out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
        } else {
            out.push(c);
        }
    }
    Some(out)
}

impl NodeMeta {
    /// Serialise: one line per item, then `crc <hex>` over everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = String::from("runnel-meta 1\n");
        s.push_str(&format!("producer-id-block-end {}\n", self.producer_id_block_end));
        for (k, v) in &self.dynamic_broker {
            s.push_str(&format!("broker-config {}={}\n", escape(k), escape(v)));
        }
        for (name, t) in &self.topics {
            s.push_str(&format!("topic {} {} {}", escape(name), t.id, t.partitions));
            for (k, v) in &t.configs {
                s.push_str(&format!(" {}={}", escape(k), escape(v)));
            }
            s.push('\n');
        }
        let crc = crc32fast::hash(s.as_bytes());
        s.push_str(&format!("crc {crc:08x}\n"));
        s.into_bytes()
    }

    /// Parse; `None` if the file is torn, corrupt or of an unknown version.
    pub fn decode(bytes: &[u8]) -> Option<NodeMeta> {
        let text = std::str::from_utf8(bytes).ok()?;
        let body_end = text.trim_end_matches('\n').rfind('\n')? + 1;
        let (body, crc_line) = text.split_at(body_end);
        let crc = u32::from_str_radix(crc_line.trim().strip_prefix("crc ")?, 16).ok()?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return None;
        }
        let mut lines = body.lines();
        if lines.next()? != "runnel-meta 1" {
            return None;
        }
        let mut meta = NodeMeta::default();
        let kv = |item: &str| -> Option<(String, String)> {
            let (k, v) = item.split_once('=')?;
            Some((unescape(k)?, unescape(v)?))
        };
        for line in lines {
            let mut words = line.split(' ');
            match words.next()? {
                "producer-id-block-end" => meta.producer_id_block_end = words.next()?.parse().ok()?,
                "broker-config" => {
                    let (k, v) = kv(words.next()?)?;
                    meta.dynamic_broker.insert(k, v);
                }
                "topic" => {
                    let name = unescape(words.next()?)?;
                    let id = Uuid::parse_str(words.next()?).ok()?;
                    let partitions = words.next()?.parse().ok()?;
                    let mut configs = BTreeMap::new();
                    for item in words {
                        let (k, v) = kv(item)?;
                        configs.insert(k, v);
                    }
                    meta.topics.insert(name, TopicMeta { id, partitions, configs });
                }
                _ => return None,
            }
        }
        Some(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metadata round-trips, and any truncation or bit flip is rejected rather than misread.
    #[test]
    fn round_trip_and_corruption() {
        let mut meta = NodeMeta { producer_id_block_end: 2000, ..Default::default() };
        meta.dynamic_broker.insert("retention.ms".into(), "5".into());
        let mut configs = BTreeMap::new();
        configs.insert("segment.bytes".into(), "1 000=%".into());
        meta.topics.insert("orders.v1".into(), TopicMeta { id: Uuid::from_u128(7), partitions: 3, configs });
        let bytes = meta.encode();
        assert_eq!(NodeMeta::decode(&bytes), Some(meta));
        for cut in 0..bytes.len() - 1 {
            assert_eq!(NodeMeta::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert_eq!(NodeMeta::decode(&flipped), None);
    }
}
