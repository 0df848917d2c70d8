//! An in-memory disk that executes [`DiskOp`]s synchronously, for tests, benchmarks and (later)
//! the simulator, plus a tiny driver ([`QueuedIo`], [`MemDisk::step`], [`MemDisk::run`]) that
//! feeds completions back to a [`PartitionLog`].
//!
//! Each file has a *current* image (what reads see) and a *durable* image (what survives a crash).
//! Fault model, applied by [`MemDisk::crash`]:
//! - data: every write not followed by a successful `Fsync` of its file is lost; with `tear`, a
//!   file whose unsynced writes were all appends may keep a random prefix of the appended bytes,
//!   sometimes ending in up to 512 bytes of garbage (torn sectors). Bit flips inside otherwise
//!   intact data are latent sector errors, left to the simulator: Kafka's batch CRC does not
//!   cover the first 21 bytes (base offset, length, leader epoch) of a batch;
//! - names: a file created and never fsynced disappears; `Delete` is not durable (the file comes
//!   back, with its durable contents, after a crash); `Rename` and `DeleteDir` are atomic and
//!   durable, as the driver contract promises (`durable_delete` makes `Delete` durable too);
//! - errors: `fail_fsync` makes every `Fsync` fail with EIO (and leaves the durable image
//!   untouched); reading, fsyncing or truncating a missing file fails.
//!
//! Not modelled (the simulator's disk adds them): latency, misdirected writes, latent sector
//! errors, ENOSPC. Fsynced data is never lost.

use super::{DirEntry, DiskIo, DiskOp, IoDone, IoError, IoOutput, IoToken, Rng};
use crate::log::{LogEvent, PartitionLog};
use bytes::Bytes;
use std::collections::BTreeMap;

#[derive(Clone, Debug, Default)]
struct MemFile {
    /// What reads see; `None`: deleted (but maybe durable).
    current: Option<Vec<u8>>,
    /// What survives a crash; `None`: the file does not exist after a crash.
    durable: Option<Vec<u8>>,
    /// Every write since the last fsync was an append: `current` = `durable` + appended bytes.
    appends_only: bool,
}

/// An in-memory disk. See the module documentation for its fault model.
#[derive(Clone, Debug, Default)]
pub struct MemDisk {
    files: BTreeMap<String, MemFile>,
    /// When set, every `Fsync` fails with an IO error.
    pub fail_fsync: bool,
    /// When set, `Delete` is durable at once (benchmarks set it so deleted segments free their
    /// memory; the default keeps the harsher model).
    pub durable_delete: bool,
    /// Number of operations applied.
    pub ops_applied: u64,
}

fn missing(path: &str) -> IoError {
    IoError::Other(format!("{path}: no such file"))
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        MemDisk::default()
    }

    /// Execute one operation now.
    pub fn apply(&mut self, op: DiskOp) -> Result<IoOutput, IoError> {
        self.ops_applied += 1;
        match op {
            DiskOp::Append { path, data } => {
                let file = self.files.entry(path).or_insert_with(|| MemFile { appends_only: true, ..MemFile::default() });
                if file.current.is_none() {
                    file.appends_only = file.durable.is_none();
                }
                file.current.get_or_insert_with(Vec::new).extend_from_slice(&data);
                Ok(IoOutput::Done)
            }
            DiskOp::WriteAt { path, position, data } | DiskOp::IndexWrite { path, position, data } => {
                let file = self.files.entry(path).or_default();
                let current = file.current.get_or_insert_with(Vec::new);
                let end = position as usize + data.len();
                if current.len() < end {
                    current.resize(end, 0);
                }
                current[position as usize..end].copy_from_slice(&data);
                file.appends_only = false;
                Ok(IoOutput::Done)
            }
            DiskOp::Read { path, position, len } => {
                let current = self.files.get(&path).and_then(|f| f.current.as_ref()).ok_or_else(|| missing(&path))?;
                let start = (position as usize).min(current.len());
                let end = start.saturating_add(len as usize).min(current.len());
                Ok(IoOutput::Read(Bytes::copy_from_slice(&current[start..end])))
            }
            DiskOp::Fsync { path } => {
                let file = self.files.get_mut(&path).filter(|f| f.current.is_some()).ok_or_else(|| missing(&path))?;
                if self.fail_fsync {
                    return Err(IoError::Other(format!("{path}: fsync: EIO")));
                }
                let current = file.current.as_ref().expect("checked above");
                match &mut file.durable {
                    // Only appends since the last fsync: copy just the new bytes.
                    Some(durable) if file.appends_only => durable.extend_from_slice(&current[durable.len()..]),
                    durable => *durable = Some(current.clone()),
                }
                file.appends_only = true;
                Ok(IoOutput::Done)
            }
            DiskOp::Truncate { path, len } => {
                let file = self.files.get_mut(&path).ok_or_else(|| missing(&path))?;
                let current = file.current.as_mut().ok_or_else(|| missing(&path))?;
                current.resize(len as usize, 0);
                file.appends_only = false;
                Ok(IoOutput::Done)
            }
            DiskOp::Rename { from, to } => {
                let source = self.files.remove(&from).filter(|f| f.current.is_some()).ok_or_else(|| missing(&from))?;
                let MemFile { current, durable, appends_only } = source;
                let target = MemFile { current, durable: Some(durable.unwrap_or_default()), appends_only };
                self.files.insert(to, target);
                Ok(IoOutput::Done)
            }
            DiskOp::Delete { path } => {
                if self.durable_delete {
                    self.files.remove(&path);
                } else if let Some(file) = self.files.get_mut(&path) {
                    file.current = None;
                    file.appends_only = false;
                }
                Ok(IoOutput::Done)
            }
            DiskOp::DeleteDir { path } => {
                let prefix = format!("{path}/");
                self.files.retain(|name, _| !name.starts_with(&prefix));
                Ok(IoOutput::Done)
            }
            DiskOp::List { path } => {
                let prefix = format!("{path}/");
                let mut entries: Vec<DirEntry> = Vec::new();
                for (name, file) in self.files.range(prefix.clone()..) {
                    let Some(rest) = name.strip_prefix(&prefix) else { break };
                    let Some(current) = &file.current else { continue };
                    let entry = match rest.split_once('/') {
                        Some((dir, _)) => DirEntry { name: dir.to_string(), len: 0, is_dir: true },
                        None => DirEntry { name: rest.to_string(), len: current.len() as u64, is_dir: false },
                    };
                    if entries.last() != Some(&entry) {
                        entries.push(entry);
                    }
                }
                Ok(IoOutput::List(entries))
            }
        }
    }

    /// Crash the node: every file goes back to its durable image; with `tear`, unsynced appends
    /// may leave a prefix behind, possibly ending in garbage. See the module documentation.
    pub fn crash(&mut self, rng: &mut Rng, tear: bool) {
        for file in self.files.values_mut() {
            let durable_len = file.durable.as_ref().map_or(0, Vec::len);
            let current_len = file.current.as_ref().map_or(0, Vec::len);
            let torn = tear && file.appends_only && current_len > durable_len && rng.below(2) == 0;
            if torn {
                let current = file.current.as_ref().expect("current_len > 0");
                let keep = rng.below((current_len - durable_len) as u64 + 1) as usize;
                let mut image = file.durable.clone().unwrap_or_default();
                image.extend_from_slice(&current[durable_len..durable_len + keep]);
                if keep > 0 && rng.below(2) == 0 {
                    // The last sectors written hold garbage.
                    let garbage = 1 + rng.below(keep.min(512) as u64) as usize;
                    let len = image.len();
                    for byte in &mut image[len - garbage..] {
                        *byte = rng.next_u64() as u8;
                    }
                }
                if file.durable.is_some() || keep > 0 {
                    file.durable = Some(image);
                }
            }
            file.current = file.durable.clone();
            file.appends_only = true;
        }
        self.files.retain(|_, f| f.current.is_some());
    }

    /// The current contents of a file (what a read sees), if it exists.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).and_then(|f| f.current.as_deref())
    }

    /// Every existing file's path, sorted.
    pub fn paths(&self) -> Vec<String> {
        self.files.iter().filter(|(_, f)| f.current.is_some()).map(|(p, _)| p.clone()).collect()
    }

    /// Execute the oldest queued operation and deliver its completion to `log`; `None` when the
    /// queue is empty.
    pub fn step(&mut self, io: &mut QueuedIo, log: &mut PartitionLog) -> Option<Vec<LogEvent>> {
        if io.queue.is_empty() {
            return None;
        }
        let (token, op) = io.queue.remove(0);
        let result = self.apply(op);
        Some(log.on_io(io, IoDone { token, result }))
    }

    /// Execute queued operations, feeding completions to `log`, until the queue is empty; returns
    /// every event in order.
    pub fn run(&mut self, io: &mut QueuedIo, log: &mut PartitionLog) -> Vec<LogEvent> {
        let mut events = Vec::new();
        while let Some(more) = self.step(io, log) {
            events.extend(more);
        }
        events
    }
}

/// A [`DiskIo`] that queues operations for a test (or benchmark) to execute with [`MemDisk`].
#[derive(Debug, Default)]
pub struct QueuedIo {
    next_token: u64,
    /// Operations issued and not executed yet, oldest first.
    pub queue: Vec<(IoToken, DiskOp)>,
}

impl DiskIo for QueuedIo {
    fn disk(&mut self, op: DiskOp) -> IoToken {
        self.next_token += 1;
        let token = IoToken(self.next_token);
        self.queue.push((token, op));
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(disk: &mut MemDisk, path: &str, data: &'static [u8]) {
        disk.apply(DiskOp::Append { path: path.into(), data: Bytes::from_static(data) }).unwrap();
    }

    /// Fsynced bytes survive a crash and unsynced ones do not; a never-fsynced file vanishes.
    #[test]
    fn crash_keeps_only_fsynced() {
        let mut disk = MemDisk::new();
        append(&mut disk, "d/a", b"hello");
        disk.apply(DiskOp::Fsync { path: "d/a".into() }).unwrap();
        append(&mut disk, "d/a", b" world");
        append(&mut disk, "d/b", b"gone");
        assert_eq!(disk.file("d/a"), Some(&b"hello world"[..]));
        disk.crash(&mut Rng::new(1), false);
        assert_eq!(disk.file("d/a"), Some(&b"hello"[..]));
        assert_eq!(disk.file("d/b"), None);
    }

    /// A torn crash keeps the durable prefix and at most the unsynced appended bytes, over many
    /// seeds; some seeds keep part of the tail.
    #[test]
    fn torn_crash_keeps_a_prefix() {
        let mut kept_some = false;
        for seed in 0..64 {
            let mut disk = MemDisk::new();
            append(&mut disk, "d/a", b"durable");
            disk.apply(DiskOp::Fsync { path: "d/a".into() }).unwrap();
            append(&mut disk, "d/a", b"-unsynced-tail");
            disk.crash(&mut Rng::new(seed), true);
            let after = disk.file("d/a").unwrap();
            assert!(after.starts_with(b"durable") && after.len() <= 21, "seed {seed}: {after:?}");
            kept_some |= after.len() > 7;
        }
        assert!(kept_some);
    }

    /// Rename is durable and atomic; Delete is not durable; List shows names, sizes and subdirs.
    #[test]
    fn rename_delete_list() {
        let mut disk = MemDisk::new();
        append(&mut disk, "d/tmp", b"new");
        disk.apply(DiskOp::Fsync { path: "d/tmp".into() }).unwrap();
        disk.apply(DiskOp::Rename { from: "d/tmp".into(), to: "d/real".into() }).unwrap();
        append(&mut disk, "d/old", b"x");
        disk.apply(DiskOp::Fsync { path: "d/old".into() }).unwrap();
        disk.apply(DiskOp::Delete { path: "d/old".into() }).unwrap();
        append(&mut disk, "d/sub/f", b"y");
        let IoOutput::List(entries) = disk.apply(DiskOp::List { path: "d".into() }).unwrap() else { panic!("not a list") };
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.len, e.is_dir)).collect();
        assert_eq!(names, vec![("real", 3, false), ("sub", 0, true)]);
        disk.crash(&mut Rng::new(3), false);
        assert_eq!(disk.file("d/real"), Some(&b"new"[..]));
        assert_eq!(disk.file("d/tmp"), None);
        assert_eq!(disk.file("d/old"), Some(&b"x"[..]));
        assert!(disk.apply(DiskOp::Read { path: "d/none".into(), position: 0, len: 1 }).is_err());
    }
}
