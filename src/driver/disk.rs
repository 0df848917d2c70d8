//! Real disk operations for one node, executed in issue order against files under the node's
//! data directory: page-cache writes and reads at once on the actor's own thread, operations that
//! wait on the device (a rename syncs its directory) on a disk thread, and fsyncs on sync threads
//! so that appends keep flowing while a group commit is on the platter.
//!
//! An `Fsync` is handed to a sync thread only when every earlier write to that file has been
//! written, so its completion means all of them are durable. Fsyncs run on a few sync threads:
//! a file's fsync on the thread its earlier ones are still queued on, else on the least busy.
//! Index files (`.index`, `.timeindex`) written with `IndexWrite` are memory-mapped with memmap2
//! and grown in 1 MiB steps; their `Fsync` is an fdatasync of the mapped file. Renames sync the
//! parent directory.

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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{mpsc, Arc, Mutex};

    const INDEX_GROWTH: u64 = 1 << 20;
    /// Threads running fsyncs.
    const SYNC_THREADS: usize = 4;

    /// An fsync for a sync thread: fdatasync the file (a full fsync for a directory), complete
    /// the token, then count it done on its file's and its thread's counters.
    pub(super) struct SyncJob {
        token: IoToken,
        file: Arc<File>,
        directory: bool,
        file_pending: Arc<AtomicUsize>,
    }

    /// The sync threads and which of them each file's fsyncs go to.
    pub(super) struct SyncPool {
        txs: Vec<mpsc::Sender<SyncJob>>,
        /// Fsyncs queued or running on each thread.
        busy: Vec<Arc<AtomicUsize>>,
        /// Per file: the thread its last fsync went to and how many of its fsyncs are queued or
        /// running there.
        owner: HashMap<String, (usize, Arc<AtomicUsize>)>,
    }

    impl SyncPool {
        /// A pool of `threads` channels with no threads behind them; their receivers are pushed
        /// onto `receivers`.
        #[cfg(test)]
        pub(super) fn for_test(threads: usize, receivers: &mut Vec<mpsc::Receiver<SyncJob>>) -> SyncPool {
            let mut pool = SyncPool { txs: Vec::new(), busy: Vec::new(), owner: HashMap::new() };
            for _ in 0..threads {
                let (tx, rx) = mpsc::channel();
                pool.txs.push(tx);
                pool.busy.push(Arc::new(AtomicUsize::new(0)));
                receivers.push(rx);
            }
            pool
        }

        /// Hand `path`'s fsync to a thread: the one its earlier fsyncs are still queued on or
        /// running on, if any (one file's fsyncs complete in issue order), else the least busy
        /// one (fsyncs of different files run at once rather than queue behind each other).
        pub(super) fn submit(&mut self, path: String, token: IoToken, file: Arc<File>, directory: bool) {
            let pending = self.owner.get(&path).filter(|(_, n)| n.load(Ordering::SeqCst) > 0).map(|(t, n)| (*t, n.clone()));
            let (thread, file_pending) = match pending {
                Some(p) => p,
                None => {
                    let thread = (0..self.busy.len()).min_by_key(|t| self.busy[*t].load(Ordering::SeqCst)).unwrap_or(0);
                    if self.owner.len() >= 4096 {
                        // Files deleted long ago: keep only those with fsyncs under way.
                        self.owner.retain(|_, (_, n)| n.load(Ordering::SeqCst) > 0);
                    }
                    let n = self.owner.entry(path).or_insert_with(|| (thread, Arc::new(AtomicUsize::new(0))));
                    n.0 = thread;
                    (thread, n.1.clone())
                }
            };
            file_pending.fetch_add(1, Ordering::SeqCst);
            self.busy[thread].fetch_add(1, Ordering::SeqCst);
            let _ = self.txs[thread].send(SyncJob { token, file, directory, file_pending });
        }
    }

    struct OpenFile {
        file: Arc<File>,
        len: u64,
        map: Option<MmapMut>,
        /// Logical length of a memory-mapped index file (the file itself is preallocated).
        map_len: u64,
    }

    /// The files of one node, shared by the actor's task and the disk thread (never both at once:
    /// see [`DiskExecutor::submit`]).
    struct Files {
        root: PathBuf,
        open: HashMap<String, OpenFile>,
        syncs: SyncPool,
    }

    /// Executes disk operations in issue order. Dropping it stops its threads.
    pub struct DiskExecutor {
        tx: mpsc::Sender<(IoToken, DiskOp)>,
        files: Arc<Mutex<Files>>,
        /// Operations handed to the disk thread and not yet executed.
        queued: Arc<AtomicUsize>,
        complete: Arc<dyn Fn(IoDone) + Send + Sync>,
    }

    impl DiskExecutor {
        /// Start the executor; `complete` receives every completion (from the caller's thread,
        /// the disk thread or a sync thread).
        pub fn start(root: PathBuf, complete: impl Fn(IoDone) + Send + Sync + 'static) -> std::io::Result<Self> {
            fs::create_dir_all(&root)?;
            let complete: Arc<dyn Fn(IoDone) + Send + Sync> = Arc::new(complete);
            // Several sync threads: fsyncs of different files (partitions) run at once and share
            // the filesystem's journal commits instead of queueing behind each other (see
            // [`SyncPool::submit`]).
            let mut syncs = SyncPool { txs: Vec::with_capacity(SYNC_THREADS), busy: Vec::with_capacity(SYNC_THREADS), owner: HashMap::new() };
            for i in 0..SYNC_THREADS {
                let (sync_tx, sync_rx) = mpsc::channel::<SyncJob>();
                let busy = Arc::new(AtomicUsize::new(0));
                let (sync_complete, thread_busy) = (complete.clone(), busy.clone());
                std::thread::Builder::new().name(format!("runnel-fsync-{i}")).spawn(move || {
                    while let Ok(job) = sync_rx.recv() {
                        let synced = if job.directory { job.file.sync_all() } else { job.file.sync_data() };
                        let result = synced.map(|_| IoOutput::Done).map_err(io_error);
                        sync_complete(IoDone { token: job.token, result });
                        // Only after the completion: a later fsync of this file, once it sees
                        // none pending, may go to another thread and must complete after this.
                        job.file_pending.fetch_sub(1, Ordering::SeqCst);
                        thread_busy.fetch_sub(1, Ordering::SeqCst);
                    }
                })?;
                syncs.txs.push(sync_tx);
                syncs.busy.push(busy);
            }
            let files = Arc::new(Mutex::new(Files { root, open: HashMap::new(), syncs }));
            let queued = Arc::new(AtomicUsize::new(0));
            let (tx, rx) = mpsc::channel::<(IoToken, DiskOp)>();
            let (thread_files, thread_queued, thread_complete) = (files.clone(), queued.clone(), complete.clone());
            std::thread::Builder::new().name("runnel-disk".into()).spawn(move || {
                while let Ok((token, op)) = rx.recv() {
                    let result = {
                        let mut files = thread_files.lock().expect("files lock");
                        run(&mut files, token, op)
                    };
                    thread_queued.fetch_sub(1, Ordering::SeqCst);
                    if let Some(result) = result {
                        thread_complete(IoDone { token, result });
                    }
                }
                // Shutting down: trim preallocated index files to their logical length.
                let mut files = thread_files.lock().expect("files lock");
                for f in files.open.values_mut() {
                    if let Some(m) = f.map.take() {
                        let _ = m.flush();
                        let _ = f.file.set_len(f.map_len);
                    }
                }
            })?;
            Ok(DiskExecutor { tx, files, queued, complete })
        }

        /// Execute or queue an operation. Writes to the page cache, reads, truncations and renames
        /// run at once on the caller's thread: a hop to another thread and back costs two
        /// wake-ups, which on a busy machine is most of a replicated produce's latency. What
        /// waits on the device goes to a sync thread: an fsync, and the directory sync that
        /// completes a rename. Operations that walk directories go to the disk thread, and while
        /// anything is queued there, everything after it queues too, so operations always take
        /// effect in issue order.
        pub fn submit(&self, token: IoToken, op: DiskOp) {
            let slow = matches!(op, DiskOp::DeleteDir { .. } | DiskOp::List { .. });
            if slow || self.queued.load(Ordering::SeqCst) > 0 {
                self.queued.fetch_add(1, Ordering::SeqCst);
                if self.tx.send((token, op)).is_err() {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                }
                return;
            }
            // Nothing is queued, so the disk thread is idle (it lowers the count only after
            // running an operation) and the lock is free.
            let result = {
                let mut files = self.files.lock().expect("files lock");
                run(&mut files, token, op)
            };
            if let Some(result) = result {
                (self.complete)(IoDone { token, result });
            }
        }
    }

    /// Run `op`; an fsync, and a rename's sync of its directory, go to a sync thread, which
    /// completes them (`None`).
    fn run(files: &mut Files, token: IoToken, op: DiskOp) -> Option<Result<IoOutput, IoError>> {
        let to_sync = match op {
            // A memory-mapped index too: on Linux, fdatasync writes back the pages dirtied
            // through a shared mapping (it is what msync(MS_SYNC) does).
            DiskOp::Fsync { path } => open(&files.root, &mut files.open, &path).map(|f| (path, f.file.clone(), false)),
            // The rename takes effect now, for the operations after it; its completion waits for
            // the directory's sync, which makes it durable.
            DiskOp::Rename { from, to } => rename(files, &from, &to),
            op => return Some(execute(&files.root, &mut files.open, op)),
        };
        match to_sync {
            Ok((path, file, directory)) => {
                files.syncs.submit(path, token, file, directory);
                None
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Rename `from` to `to`; returns the directory to sync.
    fn rename(files: &mut Files, from: &str, to: &str) -> Result<(String, Arc<File>, bool), IoError> {
        if let Some(mut f) = files.open.remove(from) {
            if f.map.take().is_some() {
                // Trim the preallocated index to its logical length.
                f.file.set_len(f.map_len).map_err(io_error)?;
            }
        }
        files.open.remove(to);
        let (src, dst) = (full_path(&files.root, from), full_path(&files.root, to));
        fs::rename(&src, &dst).map_err(io_error)?;
        let parent = dst.parent().unwrap_or(&files.root);
        let dir = File::open(parent).map_err(io_error)?;
        Ok((parent.to_string_lossy().into_owned(), Arc::new(dir), true))
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
        // Unmapping keeps what was written through the map in the page cache (an fsync writes it
        // back), so no msync here: it would wait on the device on the actor's thread.
        f.map = None;
        f.file.set_len(size).map_err(io_error)?;
        f.len = size;
        // SAFETY: the index file is owned by this executor alone (used by one thread at a time);
        // nothing else maps or resizes it while the map is alive, so the mapping stays valid.
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
            DiskOp::Truncate { path, len } => {
                let f = open(root, files, &path)?;
                f.map = None;
                f.file.set_len(len).map_err(io_error)?;
                f.len = len;
                f.map_len = len;
                Ok(IoOutput::Done)
            }
            DiskOp::Fsync { .. } | DiskOp::Rename { .. } => unreachable!("handled by the caller"),
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

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::DiskExecutor;
    use bytes::Bytes;
    use runnel_actors::core::{DiskOp, IoDone, IoOutput, IoToken};
    use std::collections::BTreeMap;
    use std::sync::mpsc;
    use std::time::Duration;

    /// An executor over a fresh directory, and the completions it reports.
    fn executor() -> (tempfile::TempDir, DiskExecutor, mpsc::Receiver<IoDone>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (tx, rx) = mpsc::channel();
        let executor = DiskExecutor::start(dir.path().to_path_buf(), move |done| {
            let _ = tx.send(done);
        })
        .expect("executor");
        (dir, executor, rx)
    }

    /// Submit `ops` in order and wait for all their completions, by token.
    fn run(executor: &DiskExecutor, rx: &mpsc::Receiver<IoDone>, ops: Vec<DiskOp>) -> BTreeMap<u64, IoDone> {
        let n = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            executor.submit(IoToken(i as u64), op);
        }
        (0..n).map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("completion")).map(|d| (d.token.0, d)).collect()
    }

    fn read(path: &str) -> DiskOp {
        DiskOp::Read { path: path.into(), position: 0, len: 1 << 20 }
    }

    fn bytes_of(done: &IoDone) -> Bytes {
        match &done.result {
            Ok(IoOutput::Read(b)) => b.clone(),
            other => panic!("expected bytes, got {other:?}"),
        }
    }

    #[test]
    fn operations_behind_a_queued_one_keep_issue_order() {
        let (_dir, executor, rx) = executor();
        // The directory delete goes to the disk thread; the append after it must not run first
        // (it would be deleted with the directory) and the read must see the append.
        let done = run(
            &executor,
            &rx,
            vec![
                DiskOp::Append { path: "d/f".into(), data: Bytes::from_static(b"old") },
                DiskOp::DeleteDir { path: "d".into() },
                DiskOp::Append { path: "d/f".into(), data: Bytes::from_static(b"new") },
                read("d/f"),
                DiskOp::List { path: "d".into() },
            ],
        );
        assert!(done.values().all(|d| d.result.is_ok()), "{done:?}");
        assert_eq!(bytes_of(&done[&3]), Bytes::from_static(b"new"));
        // Nothing is queued any more: the next operations run at once and see the same file.
        let done = run(&executor, &rx, vec![DiskOp::Append { path: "d/f".into(), data: Bytes::from_static(b"er") }, read("d/f")]);
        assert_eq!(bytes_of(&done[&1]), Bytes::from_static(b"newer"));
    }

    #[test]
    fn a_rename_takes_effect_for_the_next_operation_and_completes_once_synced() {
        let (dir, executor, rx) = executor();
        let done = run(
            &executor,
            &rx,
            vec![
                DiskOp::Append { path: "p/cp.tmp".into(), data: Bytes::from_static(b"checkpoint") },
                DiskOp::Fsync { path: "p/cp.tmp".into() },
                DiskOp::Rename { from: "p/cp.tmp".into(), to: "p/cp".into() },
                read("p/cp"),
            ],
        );
        assert!(done.values().all(|d| d.result.is_ok()), "{done:?}");
        assert_eq!(bytes_of(&done[&3]), Bytes::from_static(b"checkpoint"));
        assert!(!dir.path().join("p/cp.tmp").exists() && dir.path().join("p/cp").exists());
    }

    #[test]
    fn fsyncs_of_one_file_complete_in_issue_order_and_other_files_take_idle_threads() {
        // The policy, on threads that never run: a file with fsyncs pending stays on its thread;
        // any other file goes to the least busy one.
        let mut receivers = Vec::new();
        let mut pool = super::real::SyncPool::for_test(4, &mut receivers);
        let file = || std::sync::Arc::new(std::fs::File::open("/").expect("open /"));
        let job = |pool: &mut super::real::SyncPool, path: &str| {
            pool.submit(path.into(), IoToken(0), file(), false);
            receivers.iter().position(|r| r.try_recv().is_ok()).expect("a job on some thread")
        };
        let (a1, b, a2, c, d) = (job(&mut pool, "a"), job(&mut pool, "b"), job(&mut pool, "a"), job(&mut pool, "c"), job(&mut pool, "d"));
        assert_eq!(a1, a2, "a's second fsync follows its first");
        let mut spread = vec![a1, b, c, d];
        spread.sort_unstable();
        spread.dedup();
        assert_eq!(spread.len(), 4, "four files, four idle threads: one each");

        // Real threads: one file's completions arrive in issue order among other files' fsyncs.
        let (_dir, executor, rx) = executor();
        let mut ops = Vec::new();
        for i in 0..40 {
            let path = if i % 2 == 0 { "log/a".to_string() } else { format!("log/f{}", i % 7) };
            ops.push(DiskOp::Append { path: path.clone(), data: Bytes::from(vec![i as u8; 4096]) });
            ops.push(DiskOp::Fsync { path });
        }
        let n = ops.len();
        for (i, op) in ops.into_iter().enumerate() {
            executor.submit(IoToken(i as u64), op);
        }
        let order: Vec<u64> = (0..n).map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("completion")).map(|d| d.token.0).collect();
        // Tokens of a's fsyncs: 1, 5, 9, ... (every fourth op, counting from 1).
        let a: Vec<u64> = order.iter().copied().filter(|t| t % 4 == 1).collect();
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0] < w[1]), "a's fsyncs completed out of order: {a:?}");
    }

    #[test]
    fn an_index_written_through_its_map_survives_truncation_and_growth() {
        let (_dir, executor, rx) = executor();
        // Past the first 1 MiB mapping, then cut back: the bytes below the cut stay.
        let big = vec![7u8; (1 << 20) + 16];
        let done = run(
            &executor,
            &rx,
            vec![
                DiskOp::IndexWrite { path: "i.index".into(), position: 0, data: Bytes::from_static(b"abcd") },
                DiskOp::IndexWrite { path: "i.index".into(), position: 4, data: Bytes::from(big) },
                DiskOp::Truncate { path: "i.index".into(), len: 6 },
                DiskOp::IndexWrite { path: "i.index".into(), position: 6, data: Bytes::from_static(b"xy") },
                read("i.index"),
            ],
        );
        assert!(done.values().all(|d| d.result.is_ok()), "{done:?}");
        assert_eq!(bytes_of(&done[&4]), Bytes::from_static(b"abcd\x07\x07xy"));
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
