//! Real disk operations for one node: a thread that executes [`DiskOp`]s in issue order against
//! files under the node's data directory, and sync threads for fsync so that appends keep
//! flowing while a group commit is on the platter.
//!
//! An `Fsync` is handed to a sync thread only when every earlier write to that file has been
//! written, so its completion means all of them are durable. Fsyncs run on a few sync threads,
//! one file always on the same one. Index files (`.index`, `.timeindex`) written with
//! `IndexWrite` are memory-mapped with memmap2 and grown in 1 MiB steps; their `Fsync` is an
//! fdatasync of the mapped file. Renames sync the parent directory.

#[cfg(madsim)]
pub use simulated::{reset_simulated_disks, DiskExecutor};

#[cfg(not(madsim))]
pub use real::DiskExecutor;

#[cfg(not(madsim))]
mod real {
    use bytes::Bytes;
    use memmap2::MmapMut;
    use runnel_actors::core::{DirEntry, DiskOp, IoDone, IoError, IoOutput, IoToken};
    use std::collections::HashMap;
    use std::fs::{self, File, OpenOptions};
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;
    use std::sync::Arc;

    const INDEX_GROWTH: u64 = 1 << 20;
    /// Threads running fsyncs.
    const SYNC_THREADS: usize = 4;

    struct OpenFile {
        file: Arc<File>,
        len: u64,
        map: Option<MmapMut>,
        /// Logical length of a memory-mapped index file (the file itself is preallocated).
        map_len: u64,
    }

    /// Executes disk operations on a dedicated thread. Dropping it stops the thread.
    pub struct DiskExecutor {
        tx: mpsc::Sender<(IoToken, DiskOp)>,
    }

    impl DiskExecutor {
        /// Start the executor; `complete` receives every completion (from the IO or sync thread).
        pub fn start(root: PathBuf, complete: impl Fn(IoDone) + Send + Sync + 'static) -> std::io::Result<Self> {
            fs::create_dir_all(&root)?;
            let complete = Arc::new(complete);
            let (tx, rx) = mpsc::channel::<(IoToken, DiskOp)>();
            // Several sync threads: fsyncs of different files (partitions) run at once and share
            // the filesystem's journal commits instead of queueing behind each other. One file
            // always goes to the same thread, so its fsyncs complete in issue order.
            let mut sync_txs = Vec::with_capacity(SYNC_THREADS);
            for i in 0..SYNC_THREADS {
                let (sync_tx, sync_rx) = mpsc::channel::<(IoToken, Arc<File>)>();
                let sync_complete = complete.clone();
                std::thread::Builder::new().name(format!("runnel-fsync-{i}")).spawn(move || {
                    while let Ok((token, file)) = sync_rx.recv() {
                        let result = file.sync_data().map(|_| IoOutput::Done).map_err(io_error);
                        sync_complete(IoDone { token, result });
                    }
                })?;
                sync_txs.push(sync_tx);
            }
            std::thread::Builder::new().name("runnel-disk".into()).spawn(move || {
                let mut files: HashMap<String, OpenFile> = HashMap::new();
                while let Ok((token, op)) = rx.recv() {
                    if let DiskOp::Fsync { path } = &op {
                        match open(&root, &mut files, path) {
                            // A memory-mapped index too: on Linux, fdatasync writes back the
                            // pages dirtied through a shared mapping (it is what msync(MS_SYNC)
                            // does), and on a sync thread it does not hold up other writes.
                            Ok(f) => {
                                let _ = sync_txs[sync_thread_of(path)].send((token, f.file.clone()));
                                continue;
                            }
                            Err(e) => {
                                complete(IoDone { token, result: Err(e) });
                                continue;
                            }
                        }
                    }
                    let result = execute(&root, &mut files, op);
                    complete(IoDone { token, result });
                }
                // Shutting down: trim preallocated index files to their logical length.
                for f in files.values_mut() {
                    if let Some(m) = f.map.take() {
                        let _ = m.flush();
                        let _ = f.file.set_len(f.map_len);
                    }
                }
            })?;
            Ok(DiskExecutor { tx })
        }

        /// Queue an operation.
        pub fn submit(&self, token: IoToken, op: DiskOp) {
            let _ = self.tx.send((token, op));
        }
    }

    /// The sync thread that owns `path`'s fsyncs.
    fn sync_thread_of(path: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        (h.finish() % SYNC_THREADS as u64) as usize
    }

    fn io_error(e: std::io::Error) -> IoError {
        if e.raw_os_error() == Some(28) {
            IoError::NoSpace
        } else {
            IoError::Other(e.to_string())
        }
    }

    fn full_path(root: &Path, rel: &str) -> PathBuf {
        if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        }
    }

    fn open<'a>(root: &Path, files: &'a mut HashMap<String, OpenFile>, path: &str) -> Result<&'a mut OpenFile, IoError> {
        if !files.contains_key(path) {
            let p = full_path(root, path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).map_err(io_error)?;
            }
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&p).map_err(io_error)?;
            let len = file.metadata().map_err(io_error)?.len();
            files.insert(path.to_string(), OpenFile { file: Arc::new(file), len, map: None, map_len: len });
        }
        Ok(files.get_mut(path).expect("inserted"))
    }

    fn map_index(f: &mut OpenFile, needed: u64) -> Result<(), IoError> {
        let mapped = f.map.as_ref().map_or(0, |m| m.len() as u64);
        if needed <= mapped {
            return Ok(());
        }
        let size = needed.div_ceil(INDEX_GROWTH) * INDEX_GROWTH;
        if let Some(m) = f.map.take() {
            m.flush().map_err(io_error)?;
        }
        f.file.set_len(size).map_err(io_error)?;
        f.len = size;
        // SAFETY: the index file is owned by this thread alone; nothing else maps or resizes it while
        // the map is alive, so the mapping stays valid.
        #[allow(unsafe_code)]
        let map = unsafe { MmapMut::map_mut(&*f.file) }.map_err(io_error)?;
        f.map = Some(map);
        Ok(())
    }

    fn execute(root: &Path, files: &mut HashMap<String, OpenFile>, op: DiskOp) -> Result<IoOutput, IoError> {
        match op {
            DiskOp::Append { path, data } => {
                let f = open(root, files, &path)?;
                f.file.write_all_at(&data, f.len).map_err(io_error)?;
                f.len += data.len() as u64;
                f.map_len = f.len;
                Ok(IoOutput::Done)
            }
            DiskOp::WriteAt { path, position, data } => {
                let f = open(root, files, &path)?;
                f.file.write_all_at(&data, position).map_err(io_error)?;
                f.len = f.len.max(position + data.len() as u64);
                f.map_len = f.len;
                Ok(IoOutput::Done)
            }
            DiskOp::IndexWrite { path, position, data } => {
                let f = open(root, files, &path)?;
                if f.map.is_none() {
                    f.map_len = f.len;
                }
                let end = position + data.len() as u64;
                map_index(f, end)?;
                let map = f.map.as_mut().expect("mapped");
                map[position as usize..end as usize].copy_from_slice(&data);
                f.map_len = f.map_len.max(end);
                Ok(IoOutput::Done)
            }
            DiskOp::Read { path, position, len } => {
                let p = full_path(root, &path);
                if !files.contains_key(&path) && !p.exists() {
                    return Err(IoError::Other(format!("{path}: not found")));
                }
                let f = open(root, files, &path)?;
                let logical = if f.map.is_some() { f.map_len } else { f.len };
                let n = len.min(logical.saturating_sub(position));
                if let Some(map) = &f.map {
                    return Ok(IoOutput::Read(Bytes::copy_from_slice(&map[position as usize..(position + n) as usize])));
                }
                let mut buf = vec![0u8; n as usize];
                f.file.read_exact_at(&mut buf, position).map_err(io_error)?;
                Ok(IoOutput::Read(Bytes::from(buf)))
            }
            DiskOp::Fsync { .. } => unreachable!("handled by the caller"),
            DiskOp::Truncate { path, len } => {
                let f = open(root, files, &path)?;
                if let Some(m) = f.map.take() {
                    m.flush().map_err(io_error)?;
                }
                f.file.set_len(len).map_err(io_error)?;
                f.len = len;
                f.map_len = len;
                Ok(IoOutput::Done)
            }
            DiskOp::Rename { from, to } => {
                if let Some(mut f) = files.remove(&from) {
                    if let Some(m) = f.map.take() {
                        m.flush().map_err(io_error)?;
                        f.file.set_len(f.map_len).map_err(io_error)?;
                    }
                }
                if let Some(mut f) = files.remove(&to) {
                    if let Some(m) = f.map.take() {
                        let _ = m.flush();
                    }
                }
                let (src, dst) = (full_path(root, &from), full_path(root, &to));
                fs::rename(&src, &dst).map_err(io_error)?;
                if let Some(parent) = dst.parent() {
                    File::open(parent).and_then(|d| d.sync_all()).map_err(io_error)?;
                }
                Ok(IoOutput::Done)
            }
            DiskOp::Delete { path } => {
                files.remove(&path);
                match fs::remove_file(full_path(root, &path)) {
                    Ok(()) => Ok(IoOutput::Done),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IoOutput::Done),
                    Err(e) => Err(io_error(e)),
                }
            }
            DiskOp::DeleteDir { path } => {
                let prefix = format!("{path}/");
                files.retain(|k, _| !k.starts_with(&prefix));
                match fs::remove_dir_all(full_path(root, &path)) {
                    Ok(()) => Ok(IoOutput::Done),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(IoOutput::Done),
                    Err(e) => Err(io_error(e)),
                }
            }
            DiskOp::List { path } => {
                let dir = full_path(root, &path);
                let mut out = Vec::new();
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IoOutput::List(out)),
                    Err(e) => return Err(io_error(e)),
                };
                for entry in entries {
                    let entry = entry.map_err(io_error)?;
                    let meta = entry.metadata().map_err(io_error)?;
                    let name = entry.file_name().to_string_lossy().to_string();
                    let rel = if path.is_empty() { name.clone() } else { format!("{path}/{name}") };
                    // An index file this process has mapped reports its logical length.
                    let len = files.get(&rel).filter(|f| f.map.is_some()).map_or(meta.len(), |f| f.map_len);
                    out.push(DirEntry { name, len: if meta.is_dir() { 0 } else { len }, is_dir: meta.is_dir() });
                }
                out.sort();
                Ok(IoOutput::List(out))
            }
        }
    }
}

/// Under madsim (`--cfg madsim`): operations run inline, in issue order, on an in-memory disk
/// kept per data directory, so a node that madsim kills and restarts finds its files again.
/// The real executor's threads would make completion order depend on the OS scheduler.
#[cfg(madsim)]
mod simulated {
    use runnel_actors::core::mem_disk::MemDisk;
    use runnel_actors::core::{DiskOp, IoDone, IoToken};
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex, OnceLock};

    type Disks = Mutex<BTreeMap<PathBuf, Arc<Mutex<MemDisk>>>>;

    fn disks() -> &'static Disks {
        static DISKS: OnceLock<Disks> = OnceLock::new();
        DISKS.get_or_init(Default::default)
    }

    /// Forget every simulated disk (a test starting a new simulated world calls this first).
    pub fn reset_simulated_disks() {
        disks().lock().expect("disks lock").clear();
    }

    /// Executes disk operations inline against the node's in-memory disk.
    pub struct DiskExecutor {
        disk: Arc<Mutex<MemDisk>>,
        complete: Box<dyn Fn(IoDone) + Send + Sync>,
    }

    impl DiskExecutor {
        /// The executor for `root`; `complete` receives every completion.
        pub fn start(root: PathBuf, complete: impl Fn(IoDone) + Send + Sync + 'static) -> std::io::Result<Self> {
            let disk = disks().lock().expect("disks lock").entry(root).or_default().clone();
            Ok(DiskExecutor { disk, complete: Box::new(complete) })
        }

        /// Execute an operation now; its completion goes to the actor's mailbox.
        pub fn submit(&self, token: IoToken, op: DiskOp) {
            let result = self.disk.lock().expect("disk lock").apply(op);
            (self.complete)(IoDone { token, result });
        }
    }
}
