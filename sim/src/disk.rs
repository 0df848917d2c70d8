//! The simulated disk of one node.
//!
//! Fault model (what this disk does to the data, and what the protocol must survive):
//! - **Unsynced writes** (`Append`, `WriteAt`, `IndexWrite`, `Truncate` not yet covered by a
//!   completed `Fsync` of that file) live only in the page cache: a node crash loses them. Reads
//!   always see them.
//! - **Torn writes** (swarm fault `torn-write`): at a crash, a prefix of each file's unsynced
//!   writes survives, and the next one may survive in part (whole 512-byte sectors, the last one
//!   possibly garbage).
//! - **Misdirected writes** (`misdirected-write`): at a crash, one surviving unsynced write may
//!   land at the wrong position within the file's unsynced region.
//! - **Latent sector errors** (`latent-read`): a read returns data with one corrupted byte; the
//!   error is transient (a retry reads the right bytes). Durable data itself is never changed.
//! - **fsync EIO** (`fsync-eio`): an fsync fails; the writes it would have covered are dropped
//!   from the page cache (as Linux does), and the caller must not treat them as durable.
//! - **ENOSPC** (`enospc`): a write fails with no space and changes nothing.
//! - **Latency**: every operation takes a seeded time; spikes (`disk-latency`) make some 100×
//!   slower. Operations start in issue order; an fsync completes after every operation issued
//!   before it, as in the real driver.
//!
//! Never injected, because a single copy cannot survive it: corruption or loss of data whose
//! fsync completed successfully. Directory operations (rename, delete) are durable on completion.

use bytes::Bytes;
use runnel_actors::core::{DirEntry, DiskOp, IoError, IoOutput, Rng};
use std::collections::BTreeMap;

const SECTOR: usize = 512;

#[derive(Clone, Debug, Default)]
struct File {
    /// What survives a crash.
    durable: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    /// Unsynced writes in issue order: (sequence number, operation).
    pending: Vec<(u64, Pending)>,
}

#[derive(Clone, Debug)]
enum Pending {
    Write { position: usize, data: Bytes },
    Truncate { len: usize },
}

fn apply(buf: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write { position, data } => {
            let end = position + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*position..end].copy_from_slice(data);
        }
        Pending::Truncate { len } => buf.resize(*len, 0),
    }
}

/// Which disk faults are on, and how often.
#[derive(Clone, Debug, Default)]
pub struct DiskFaults {
    /// Crashes may tear the last unsynced write.
    pub torn_write: bool,
    /// Crashes may misdirect a surviving unsynced write.
    pub misdirected_write: bool,
    /// Probability that a read returns one corrupted byte.
    pub latent_read: f64,
    /// Probability that an fsync fails.
    pub fsync_eio: f64,
    /// Probability that a write fails with ENOSPC.
    pub enospc: f64,
    /// Probability of a 100x latency spike.
    pub latency_spike: f64,
}

/// Counts of faults this disk injected.
#[derive(Clone, Debug, Default)]
pub struct DiskFaultCounts {
    /// Torn writes at crashes.
    pub torn: u64,
    /// Misdirected writes at crashes.
    pub misdirected: u64,
    /// Corrupted reads.
    pub latent_reads: u64,
    /// Failed fsyncs.
    pub fsync_eio: u64,
    /// ENOSPC failures.
    pub enospc: u64,
    /// Latency spikes.
    pub spikes: u64,
}

/// One node's disk.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    files: BTreeMap<String, File>,
    next_seq: u64,
    /// Faults in force.
    pub faults: DiskFaults,
    /// Faults injected so far.
    pub counts: DiskFaultCounts,
}

/// A pending fsync: which file, and the last write sequence number it covers.
#[derive(Clone, Debug)]
pub struct FsyncTicket {
    path: String,
    up_to: u64,
}

/// What executing an operation at issue time produced.
pub enum Issued {
    /// Completed (successfully or not) with this result.
    Done(Result<IoOutput, IoError>),
    /// An fsync whose durability takes effect at completion ([`SimDisk::complete_fsync`]).
    Fsync(FsyncTicket),
}

fn chance(rng: &mut Rng, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p
}

impl SimDisk {
    /// An empty disk with the given faults.
    pub fn new(faults: DiskFaults) -> Self {
        SimDisk { faults, ..Default::default() }
    }

    /// The latency of `op` in microseconds.
    pub fn latency_us(&mut self, op: &DiskOp, rng: &mut Rng) -> u64 {
        let base = match op {
            DiskOp::Fsync { .. } => 500 + rng.below(3_000),
            // Reads cost what they return, not what they ask for.
            DiskOp::Read { path, position, len } => {
                let available = self.files.get(path).map_or(0, |f| (f.current.len() as u64).saturating_sub(*position));
                20 + (*len).min(available) / 2_000 + rng.below(50)
            }
            DiskOp::Append { data, .. } | DiskOp::WriteAt { data, .. } | DiskOp::IndexWrite { data, .. } => 5 + data.len() as u64 / 4_000 + rng.below(20),
            _ => 10 + rng.below(40),
        };
        if chance(rng, self.faults.latency_spike) {
            self.counts.spikes += 1;
            base * 100
        } else {
            base
        }
    }

    fn write(&mut self, path: &str, position: Option<usize>, data: Bytes, rng: &mut Rng) -> Result<IoOutput, IoError> {
        if chance(rng, self.faults.enospc) {
            self.counts.enospc += 1;
            return Err(IoError::NoSpace);
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        let f = self.files.entry(path.to_string()).or_default();
        let position = position.unwrap_or(f.current.len());
        let p = Pending::Write { position, data };
        apply(&mut f.current, &p);
        f.pending.push((seq, p));
        Ok(IoOutput::Done)
    }

    /// Execute `op` against the page cache now; an fsync's effect waits for its completion.
    pub fn issue(&mut self, op: DiskOp, rng: &mut Rng) -> Issued {
        let result = match op {
            DiskOp::Append { path, data } => self.write(&path, None, data, rng),
            DiskOp::WriteAt { path, position, data } | DiskOp::IndexWrite { path, position, data } => self.write(&path, Some(position as usize), data, rng),
            DiskOp::Fsync { path } => {
                let up_to = self.next_seq;
                return Issued::Fsync(FsyncTicket { path, up_to });
            }
            DiskOp::Read { path, position, len } => match self.files.get(&path) {
                None => Err(IoError::Other(format!("{path}: not found"))),
                Some(f) => {
                    let start = (position as usize).min(f.current.len());
                    let end = (start + len as usize).min(f.current.len());
                    let mut data = f.current[start..end].to_vec();
                    if !data.is_empty() && chance(rng, self.faults.latent_read) {
                        self.counts.latent_reads += 1;
                        let i = rng.below(data.len() as u64) as usize;
                        data[i] ^= 1 << rng.below(8);
                    }
                    Ok(IoOutput::Read(Bytes::from(data)))
                }
            },
            DiskOp::Truncate { path, len } => {
                self.next_seq += 1;
                let seq = self.next_seq;
                let f = self.files.entry(path).or_default();
                let p = Pending::Truncate { len: len as usize };
                apply(&mut f.current, &p);
                f.pending.push((seq, p));
                Ok(IoOutput::Done)
            }
            DiskOp::Rename { from, to } => match self.files.remove(&from) {
                None => Err(IoError::Other(format!("{from}: not found"))),
                Some(f) => {
                    // The driver syncs the directory: the rename is durable, the contents are as
                    // durable as they were.
                    self.files.insert(to, f);
                    Ok(IoOutput::Done)
                }
            },
            DiskOp::Delete { path } => {
                self.files.remove(&path);
                Ok(IoOutput::Done)
            }
            DiskOp::DeleteDir { path } => {
                let prefix = format!("{path}/");
                self.files.retain(|k, _| !k.starts_with(&prefix) && *k != path);
                Ok(IoOutput::Done)
            }
            DiskOp::List { path } => {
                let prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
                let mut entries: BTreeMap<String, DirEntry> = BTreeMap::new();
                for (name, f) in &self.files {
                    let Some(rest) = name.strip_prefix(&prefix) else { continue };
                    match rest.split_once('/') {
                        Some((dir, _)) => {
                            entries.entry(dir.to_string()).or_insert(DirEntry { name: dir.to_string(), len: 0, is_dir: true });
                        }
                        None => {
                            entries.insert(rest.to_string(), DirEntry { name: rest.to_string(), len: f.current.len() as u64, is_dir: false });
                        }
                    }
                }
                Ok(IoOutput::List(entries.into_values().collect()))
            }
        };
        Issued::Done(result)
    }

    /// An fsync completes: make its writes durable, or fail and drop them.
    pub fn complete_fsync(&mut self, ticket: FsyncTicket, rng: &mut Rng) -> Result<IoOutput, IoError> {
        let fail = chance(rng, self.faults.fsync_eio);
        let Some(f) = self.files.get_mut(&ticket.path) else {
            return Err(IoError::Other(format!("{}: not found", ticket.path)));
        };
        let covered: Vec<(u64, Pending)> = f.pending.iter().filter(|(seq, _)| *seq <= ticket.up_to).cloned().collect();
        f.pending.retain(|(seq, _)| *seq > ticket.up_to);
        if fail {
            // Linux drops dirty pages whose writeback failed: those writes are gone everywhere.
            self.counts.fsync_eio += 1;
            let mut current = f.durable.clone();
            for (_, p) in &f.pending {
                apply(&mut current, p);
            }
            f.current = current;
            return Err(IoError::Other("fsync: input/output error".into()));
        }
        for (_, p) in &covered {
            apply(&mut f.durable, p);
        }
        Ok(IoOutput::Done)
    }

    /// The node lost power: unsynced writes vanish, except what the torn/misdirected faults keep.
    pub fn crash(&mut self, rng: &mut Rng) {
        let (torn, misdirected) = (self.faults.torn_write, self.faults.misdirected_write);
        for f in self.files.values_mut() {
            let mut image = f.durable.clone();
            if !f.pending.is_empty() && (torn || misdirected) {
                // A prefix of the unsynced writes reached the platter.
                let survivors = rng.below(f.pending.len() as u64 + 1) as usize;
                for (_, p) in &f.pending[..survivors] {
                    apply(&mut image, p);
                }
                if let Some((_, Pending::Write { position, data })) = f.pending.get(survivors) {
                    if torn {
                        // Part of the next write: whole sectors of a large write, a byte prefix of a
                        // small one; the tail of what survived may be damaged (a few bytes
                        // flipped, so the damage can hide behind an intact header).
                        let keep = if data.len() > SECTOR {
                            rng.below((data.len() / SECTOR) as u64 + 1) as usize * SECTOR
                        } else {
                            rng.below(data.len() as u64 + 1) as usize
                        }
                        .min(data.len());
                        let mut part = data[..keep].to_vec();
                        if keep > 0 && rng.below(2) == 0 {
                            let from = keep.saturating_sub(SECTOR);
                            for _ in 0..1 + rng.below(4) {
                                let i = from + rng.below((keep - from) as u64) as usize;
                                part[i] ^= 1 + rng.below(255) as u8;
                            }
                        }
                        apply(&mut image, &Pending::Write { position: *position, data: Bytes::from(part) });
                        self.counts.torn += 1;
                    } else if misdirected && rng.below(2) == 0 {
                        let durable_end = f.durable.len();
                        let shift = rng.below(2 * SECTOR as u64) as usize;
                        let target = (*position + shift).max(durable_end);
                        apply(&mut image, &Pending::Write { position: target, data: data.clone() });
                        self.counts.misdirected += 1;
                    }
                }
            }
            f.current = image.clone();
            f.durable = image;
            f.pending.clear();
        }
    }

    /// Bytes of every file as reads see them (for tests and replica comparisons).
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.files.iter().map(|(k, f)| (k.clone(), f.current.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(d: &mut SimDisk, op: DiskOp, rng: &mut Rng) -> Result<IoOutput, IoError> {
        match d.issue(op, rng) {
            Issued::Done(r) => r,
            Issued::Fsync(t) => d.complete_fsync(t, rng),
        }
    }

    /// Synced writes survive a crash byte for byte; unsynced ones vanish without torn writes.
    #[test]
    fn crash_keeps_exactly_the_synced_prefix() {
        let mut rng = Rng::new(1);
        let mut d = SimDisk::new(DiskFaults::default());
        run(&mut d, DiskOp::Append { path: "a/x".into(), data: Bytes::from_static(b"hello") }, &mut rng).unwrap();
        run(&mut d, DiskOp::Fsync { path: "a/x".into() }, &mut rng).unwrap();
        run(&mut d, DiskOp::Append { path: "a/x".into(), data: Bytes::from_static(b" world") }, &mut rng).unwrap();
        assert_eq!(d.snapshot()["a/x"], b"hello world");
        d.crash(&mut rng);
        assert_eq!(d.snapshot()["a/x"], b"hello");
    }

    /// An fsync issued before a write does not cover it, even if it completes after it.
    #[test]
    fn fsync_covers_only_earlier_writes() {
        let mut rng = Rng::new(2);
        let mut d = SimDisk::new(DiskFaults::default());
        run(&mut d, DiskOp::Append { path: "f".into(), data: Bytes::from_static(b"1") }, &mut rng).unwrap();
        let Issued::Fsync(ticket) = d.issue(DiskOp::Fsync { path: "f".into() }, &mut rng) else { panic!("fsync") };
        run(&mut d, DiskOp::Append { path: "f".into(), data: Bytes::from_static(b"2") }, &mut rng).unwrap();
        d.complete_fsync(ticket, &mut rng).unwrap();
        d.crash(&mut rng);
        assert_eq!(d.snapshot()["f"], b"1");
    }

    /// A failed fsync drops the writes it covered from what reads see, and nothing becomes durable.
    #[test]
    fn failed_fsync_drops_its_writes() {
        let mut rng = Rng::new(3);
        let mut d = SimDisk::new(DiskFaults { fsync_eio: 1.0, ..Default::default() });
        run(&mut d, DiskOp::Append { path: "f".into(), data: Bytes::from_static(b"abc") }, &mut rng).unwrap();
        assert!(run(&mut d, DiskOp::Fsync { path: "f".into() }, &mut rng).is_err());
        assert_eq!(d.snapshot()["f"], b"");
    }

    /// Torn writes never damage the synced prefix.
    #[test]
    fn torn_writes_spare_synced_data() {
        for seed in 0..200 {
            let mut rng = Rng::new(seed);
            let mut d = SimDisk::new(DiskFaults { torn_write: true, misdirected_write: true, ..Default::default() });
            let synced = vec![7u8; 3000];
            run(&mut d, DiskOp::Append { path: "f".into(), data: Bytes::from(synced.clone()) }, &mut rng).unwrap();
            run(&mut d, DiskOp::Fsync { path: "f".into() }, &mut rng).unwrap();
            for _ in 0..3 {
                run(&mut d, DiskOp::Append { path: "f".into(), data: Bytes::from(vec![9u8; 2000]) }, &mut rng).unwrap();
            }
            d.crash(&mut rng);
            assert_eq!(&d.snapshot()["f"][..3000], &synced[..], "seed {seed}");
        }
    }
}
