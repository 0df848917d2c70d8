//! The node-to-node transport of the tokio driver: carries actor messages between nodes over TCP.
//!
//! Every node listens on one address for its peers and dials each peer lazily, on the first
//! message for it. Each ordered pair of nodes therefore has its own connection: the dialer only
//! writes, the acceptor only reads, so a pair of nodes that talk both ways has two connections.
//!
//! Peers are known by node id. Those given to [`Transport::start`] are the quorum voters of the
//! configuration; others (broker-only nodes) are added, or moved to a new address, with
//! [`Transport::add_peer`] as registrations are learned. A peer that moves is redialed at its new
//! address at once: a connection to the old one is dropped, and a backoff wait is cut short.
//!
//! # Wire format
//! A connection starts with a 24-byte hello from the dialer:
//! `[b"RNLT"][u32 BE version = 2][i32 BE dialing node id][i32 BE node id it meant to reach]
//! [u64 BE incarnation]`, the incarnation drawn when the dialing process started its transport.
//! The acceptor closes a connection whose hello has another magic or version, or names another
//! node as the target. Then come frames, all integers big-endian:
//! `[u32 length of the rest][u32 crc32fast of the payload][payload]`, where the length counts the
//! CRC and the payload, and the payload is bincode 1.3 (`DefaultOptions`: varint integers, no
//! trailing bytes) of `(from.node, from.actor, to.node, to.actor, msg)`.
//!
//! # Backpressure
//! [`Transport::send`] never blocks: it encodes the message on the caller's thread and puts the
//! frame in the peer's bounded queue ([`TransportConfig::queue_capacity`] frames). A full queue,
//! an unknown peer, a message larger than [`TransportConfig::max_frame_bytes`] or a `from` on
//! another node drops the message and counts it ([`TransportStats::dropped`]); higher layers
//! retry (Raft and replication resend). One task per peer drains its queue, writing every frame
//! that is already queued before it flushes (batching).
//!
//! # Failures
//! - Connect takes at most `connect_timeout_ms`; a failed connect is retried after an exponential
//!   backoff with jitter between `reconnect_backoff_min_ms` and `reconnect_backoff_max_ms`. Queued
//!   messages wait meanwhile: nothing is lost while a connection is being (re)established unless
//!   the queue overflows.
//! - A write (a batch and its flush) taking longer than `write_timeout_ms`, a write error, or the
//!   acceptor closing its end (the dialer watches its read half for end-of-file) drops the
//!   connection; the frames of a failed batch are counted as dropped and never resent, so a frame
//!   is delivered at most once. The next queued message dials again.
//! - The acceptor closes a connection on a frame longer than `max_frame_bytes` (checked before
//!   anything is allocated for it; buffers grow only as bytes arrive), a CRC mismatch, an
//!   undecodable payload, or a frame whose `from.node` is not the hello's node or whose `to.node`
//!   is not this node. It warns and counts the frame ([`TransportStats::bad_frames`]); the dialer
//!   then reconnects.
//! - When a newer connection from the same node and incarnation says hello, the older one stops
//!   delivering, so per ordered pair of node processes messages arrive in the order they were
//!   sent, each at most once. Connections from different incarnations of a node all deliver: a
//!   restarted process's old connections end by themselves, and a second process started with a
//!   node id already in use (a misconfiguration the controller refuses to register) cannot cut
//!   the first one's connections off.
//! - Dropping the last [`Transport`] handle stops its listener and every connection task.
//! - A lost connection is redialed at once (after any backoff) even with nothing queued. A
//!   refused connect means nothing listens at the peer's address, so its process is gone: it is
//!   reported through [`Transport::on_peer_refused`], and the driver tells the node's controller
//!   (which fences that broker without waiting for its session to end) and broker (which stops
//!   naming it as a leader in Metadata meanwhile). A paused or cut-off peer is never reported.
//! - [`Transport::closed_peers`] asks the kernel, synchronously, which peers closed this node's
//!   newest connection to them: a crash is known there before the connection task notices.
//!
//! Delivering to the local node (`to.node == me`) is the driver's job, not the transport's.

use runnel_actors::core::Addr;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bincode::Options;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// First bytes of every connection.
pub const HELLO_MAGIC: [u8; 4] = *b"RNLT";
/// Version of the hello and frame format.
pub const WIRE_VERSION: u32 = 6;
/// Size of the hello.
pub const HELLO_LEN: usize = 24;
/// A batch stops collecting queued frames once it holds this many bytes.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// Timeouts, backoff and limits of a [`Transport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Longest wait for a TCP connect to a peer.
    pub connect_timeout_ms: u64,
    /// Longest wait for a batch of frames to be written and flushed; also the longest wait for a
    /// dialer's hello.
    pub write_timeout_ms: u64,
    /// First delay before redialing a peer after a failure.
    pub reconnect_backoff_min_ms: u64,
    /// Largest delay before redialing a peer.
    pub reconnect_backoff_max_ms: u64,
    /// Frames queued per peer before `send` drops.
    pub queue_capacity: usize,
    /// Largest payload of a frame, on both sides.
    pub max_frame_bytes: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            connect_timeout_ms: 1000,
            write_timeout_ms: 5000,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 1000,
            queue_capacity: 8192,
            max_frame_bytes: 64 << 20,
        }
    }
}

/// Counters of a [`Transport`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Frames written and flushed to a peer's connection.
    pub sent: u64,
    /// Frames decoded and delivered.
    pub received: u64,
    /// Messages dropped: unknown peer, full queue, too large, or lost with a failed write.
    pub dropped: u64,
    /// Outbound connections established to a peer after its first one.
    pub reconnects: u64,
    /// Inbound hellos and frames rejected (each closes its connection).
    pub bad_frames: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    reconnects: AtomicU64,
    bad_frames: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Called for every decoded inbound message: `(from, to, msg)`.
pub type Deliver<M> = Arc<dyn Fn(Addr, Addr, M) + Send + Sync>;

/// What the listener and connection tasks share (never the handle itself, so that dropping the
/// last handle stops them).
struct Shared<M> {
    me: i32,
    config: TransportConfig,
    counters: Counters,
    deliver: Deliver<M>,
    /// Newest inbound connection per dialing node and incarnation; older ones stop delivering.
    inbound: Mutex<HashMap<(i32, u64), u64>>,
    /// This process's incarnation, sent in every hello.
    incarnation: u64,
    next_conn: AtomicU64,
    /// Told when a connect to a peer is refused (see [`Transport::on_peer_refused`]).
    refused: std::sync::OnceLock<PeerRefused>,
    /// The newest outbound connection to each peer (a duplicate of its socket), kept after it
    /// ends until another replaces it: [`Transport::closed_peers`] asks the kernel whether the
    /// peer's side closed it.
    #[cfg(not(madsim))]
    links: Mutex<BTreeMap<i32, std::net::TcpStream>>,
}

/// Called with a peer's node id when nothing listens at its address.
pub type PeerRefused = Arc<dyn Fn(i32) + Send + Sync>;

/// One peer's outbound side, as the handle sees it.
struct Peer {
    queue: mpsc::Sender<Vec<u8>>,
    /// Where its connection task dials; a change makes the task redial.
    address: watch::Sender<String>,
}

struct Inner<M> {
    me: i32,
    local_addr: SocketAddr,
    /// std Mutex: never held across an await, only to look a peer up or add one.
    peers: Mutex<BTreeMap<i32, Peer>>,
    shared: Arc<Shared<M>>,
    /// For the connection tasks of peers added later.
    shutdown: watch::Receiver<()>,
    /// Dropped with the last handle: every task watches it and stops.
    _shutdown: watch::Sender<()>,
    _msg: PhantomData<fn(M)>,
}

/// A handle to a node's transport; clones share it. Dropping the last one stops the transport.
pub struct Transport<M> {
    inner: Arc<Inner<M>>,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport { inner: self.inner.clone() }
    }
}

fn codec(max_frame_bytes: usize) -> impl Options + Copy {
    bincode::DefaultOptions::new().with_limit(max_payload(max_frame_bytes) as u64)
}

fn max_payload(max_frame_bytes: usize) -> usize {
    max_frame_bytes.min(u32::MAX as usize - 4)
}

/// Encode one frame (header and payload) as it goes on the wire.
pub fn encode_frame<M: serde::Serialize>(from: Addr, to: Addr, msg: &M, max_frame_bytes: usize) -> bincode::Result<Vec<u8>> {
    let mut frame = vec![0u8; 8];
    codec(max_frame_bytes).serialize_into(&mut frame, &(from.node, from.actor, to.node, to.actor, msg))?;
    let rest = (frame.len() - 4) as u32;
    let crc = crc32fast::hash(&frame[8..]);
    frame[0..4].copy_from_slice(&rest.to_be_bytes());
    frame[4..8].copy_from_slice(&crc.to_be_bytes());
    Ok(frame)
}

/// The hello a dialer `from` (in its `incarnation`) sends to `to`.
pub fn encode_hello(from: i32, to: i32, incarnation: u64) -> [u8; HELLO_LEN] {
    let mut hello = [0u8; HELLO_LEN];
    hello[0..4].copy_from_slice(&HELLO_MAGIC);
    hello[4..8].copy_from_slice(&WIRE_VERSION.to_be_bytes());
    hello[8..12].copy_from_slice(&from.to_be_bytes());
    hello[12..16].copy_from_slice(&to.to_be_bytes());
    hello[16..24].copy_from_slice(&incarnation.to_be_bytes());
    hello
}

/// An incarnation for a transport listening on `listen`: the start time (ns) mixed with the
/// process id and the address, so two processes (or two starts) differ.
fn incarnation(listen: SocketAddr) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    mix(nanos ^ ((std::process::id() as u64) << 32) ^ listen.port() as u64)
}

/// Resolves when the transport is dropped.
async fn stopped(mut shutdown: watch::Receiver<()>) {
    while shutdown.changed().await.is_ok() {}
}

/// Spawn `task` so that it ends when the transport is dropped.
fn spawn_until_stopped<F>(shutdown: &watch::Receiver<()>, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = task => {}
            _ = stopped(shutdown) => {}
        }
    });
}

impl<M: serde::Serialize + serde::de::DeserializeOwned + Send + 'static> Transport<M> {
    /// Listen on `listen` (for inbound peer connections) and dial peers lazily on first send.
    /// `deliver(from, to, msg)` is called for every decoded inbound message (from a tokio task).
    /// An entry for `me` in `peers` is ignored.
    pub async fn start(me: i32, listen: SocketAddr, peers: BTreeMap<i32, String>, config: TransportConfig, deliver: Deliver<M>) -> io::Result<Transport<M>> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (shutdown_tx, shutdown) = watch::channel(());
        let shared = Arc::new(Shared {
            me,
            config: config.clone(),
            counters: Counters::default(),
            deliver,
            inbound: Mutex::new(HashMap::new()),
            incarnation: incarnation(listen),
            next_conn: AtomicU64::new(0),
            refused: std::sync::OnceLock::new(),
            #[cfg(not(madsim))]
            links: Mutex::new(BTreeMap::new()),
        });
        let mut map = BTreeMap::new();
        for (peer, addr) in peers {
            if peer == me {
                continue;
            }
            map.insert(peer, spawn_peer(&shared, &shutdown, peer, addr));
        }
        spawn_until_stopped(&shutdown, accept_loop(listener, shared.clone(), shutdown.clone()));
        tracing::debug!(me, %local_addr, "transport listening");
        let inner = Inner { me, local_addr, peers: Mutex::new(map), shared, shutdown, _shutdown: shutdown_tx, _msg: PhantomData };
        Ok(Transport { inner: Arc::new(inner) })
    }

    /// Reach `node` at `address` (`host:port`) from now on: a new peer gets its own queue and
    /// connection task; a known peer at another address is redialed there (frames already
    /// queued go to the new address). Returns false if nothing changed (same address, or `node`
    /// is this node).
    pub fn add_peer(&self, node: i32, address: String) -> bool {
        let inner = &*self.inner;
        if node == inner.me {
            return false;
        }
        let mut peers = inner.peers.lock().expect("peers lock");
        match peers.get(&node) {
            Some(p) if *p.address.borrow() == address => false,
            Some(p) => {
                tracing::info!(me = inner.me, peer = node, %address, "transport: peer moved");
                p.address.send_replace(address);
                true
            }
            None => {
                tracing::debug!(me = inner.me, peer = node, %address, "transport: new peer");
                peers.insert(node, spawn_peer(&inner.shared, &inner.shutdown, node, address));
                true
            }
        }
    }

    /// Call `f(node)` whenever a connect to peer `node` is refused: nothing listens at its
    /// address, so its process is gone (a live node always listens for its peers). A
    /// connection the peer closed is redialed at once to find out, even with nothing to send,
    /// so a crashed peer is known within a round trip rather than at the next message for it.
    /// A silent peer (paused, or cut off) is never reported: its connects time out instead.
    /// Set once; later calls are ignored.
    pub fn on_peer_refused(&self, f: PeerRefused) {
        let _ = self.inner.shared.refused.set(f);
    }

    /// Peers whose side closed (or reset) this node's newest connection to them, as the kernel
    /// knows it now: a synchronous check, a non-blocking peek per peer, that does not wait for
    /// the connection tasks to notice. A process that exits closes its sockets at once, so
    /// this tells a crashed peer before anything else on this node can (the redial and its
    /// refusal come a little later). A peer is listed until a new connection to it opens.
    /// Under madsim there are no kernel sockets: always empty.
    pub fn closed_peers(&self) -> Vec<i32> {
        #[cfg(not(madsim))]
        {
            let links = self.inner.shared.links.lock().expect("links lock");
            links
                .iter()
                .filter(|(_, socket)| match socket.peek(&mut [0u8; 1]) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted,
                })
                .map(|(peer, _)| *peer)
                .collect()
        }
        #[cfg(madsim)]
        Vec::new()
    }

    /// The address `node` is dialed at, if it is a peer.
    pub fn peer_address(&self, node: i32) -> Option<String> {
        self.inner.peers.lock().expect("peers lock").get(&node).map(|p| p.address.borrow().clone())
    }

    /// The address the transport listens on (useful when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Queue `msg` for `to.node`; never blocks. false = dropped (unknown peer, or its queue is
    /// full: backpressure; also a message too large to encode or a `from` on another node).
    pub fn send(&self, from: Addr, to: Addr, msg: M) -> bool {
        let inner = &*self.inner;
        let counters = &inner.shared.counters;
        let Some(queue) = inner.peers.lock().expect("peers lock").get(&to.node).map(|p| p.queue.clone()) else {
            Counters::add(&counters.dropped, 1);
            return false;
        };
        if from.node != inner.me {
            tracing::warn!(?from, ?to, me = inner.me, "transport: refusing to send on behalf of another node");
            Counters::add(&counters.dropped, 1);
            return false;
        }
        let frame = match encode_frame(from, to, &msg, inner.shared.config.max_frame_bytes) {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(?from, ?to, "transport: cannot encode message: {e}");
                Counters::add(&counters.dropped, 1);
                return false;
            }
        };
        if queue.try_send(frame).is_err() {
            Counters::add(&counters.dropped, 1);
            return false;
        }
        true
    }

    /// Counters for tests/metrics: frames sent, received, dropped, reconnects, bad frames.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.shared.counters;
        TransportStats {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            bad_frames: c.bad_frames.load(Ordering::Relaxed),
        }
    }
}

/// splitmix64: jitter without a random-number crate, deterministic under madsim.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Delay before the next dial after `failures` consecutive failures (≥ 1): exponential between
/// the configured bounds, then jittered into its upper half.
fn backoff(config: &TransportConfig, failures: u32, seed: u64) -> Duration {
    let min = config.reconnect_backoff_min_ms.max(1);
    let max = config.reconnect_backoff_max_ms.max(min);
    let exp = min.saturating_mul(1u64 << failures.saturating_sub(1).min(32)).min(max);
    let half = exp / 2;
    Duration::from_millis(exp - half + mix(seed) % (half + 1))
}

/// Start the queue and connection task of `peer`.
fn spawn_peer<M>(shared: &Arc<Shared<M>>, shutdown: &watch::Receiver<()>, peer: i32, address: String) -> Peer
where
    M: Send + 'static,
{
    let (queue, rx) = mpsc::channel(shared.config.queue_capacity.max(1));
    let (address, address_rx) = watch::channel(address);
    spawn_until_stopped(shutdown, outbound(shared.clone(), peer, address_rx, rx));
    Peer { queue, address }
}

/// Resolves when the peer's address changes (never once the handle is gone: the task is being
/// stopped then anyway).
async fn moved(address: &mut watch::Receiver<String>) {
    if address.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// One peer's outbound side: dial on demand, write queued frames in batches, redial on failure
/// or when the peer moves to another address.
async fn outbound<M>(shared: Arc<Shared<M>>, peer: i32, mut address: watch::Receiver<String>, mut rx: mpsc::Receiver<Vec<u8>>) {
    let config = &shared.config;
    let me = shared.me;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut failures = 0u32;
    let mut connected_before = false;
    // Dial once even with nothing to send: the connection was lost, maybe because the peer
    // crashed, which a refused connect tells.
    let mut probe = false;
    let mut jitter_seed = ((me as u32 as u64) << 32) | peer as u32 as u64;
    loop {
        // Dial lazily: only with something to send (or to probe a peer that hung up).
        if batch.is_empty() && !std::mem::take(&mut probe) {
            match rx.recv().await {
                Some(frame) => batch.push(frame),
                None => return,
            }
        }
        if failures > 0 {
            jitter_seed = mix(jitter_seed);
            tokio::select! {
                _ = tokio::time::sleep(backoff(config, failures, jitter_seed)) => {}
                // A new address is worth trying at once.
                _ = moved(&mut address) => failures = 0,
            }
        }
        let addr = address.borrow_and_update().clone();
        let stream = match tokio::time::timeout(Duration::from_millis(config.connect_timeout_ms), TcpStream::connect(addr.as_str())).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(me, peer, %addr, failures, "transport: connect failed: {e}");
                if e.kind() == io::ErrorKind::ConnectionRefused {
                    if let Some(f) = shared.refused.get() {
                        f(peer);
                    }
                }
                failures += 1;
                continue;
            }
            Err(_) => {
                tracing::debug!(me, peer, %addr, failures, "transport: connect timed out");
                failures += 1;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        #[cfg(not(madsim))]
        {
            use std::os::fd::AsFd;
            // The duplicate shares the socket's non-blocking mode, so peeking never blocks.
            match stream.as_fd().try_clone_to_owned() {
                Ok(fd) => {
                    shared.links.lock().expect("links lock").insert(peer, std::net::TcpStream::from(fd));
                }
                Err(e) => {
                    tracing::debug!(me, peer, "transport: cannot keep a handle on the connection: {e}");
                    shared.links.lock().expect("links lock").remove(&peer);
                }
            }
        }
        if connected_before {
            Counters::add(&shared.counters.reconnects, 1);
        }
        connected_before = true;
        tracing::debug!(me, peer, %addr, "transport: connected");
        let started = tokio::time::Instant::now();
        #[cfg(not(madsim))]
        let (reader, writer) = stream.into_split();
        // madsim's simulated stream has no owned halves; the generic split works for both.
        #[cfg(madsim)]
        let (reader, writer) = tokio::io::split(stream);
        let reason = write_connection(&shared, peer, reader, writer, &mut batch, &mut rx, &mut address).await;
        let Some(reason) = reason else { return };
        tracing::warn!(me, peer, %addr, "transport: connection lost: {reason}");
        // Whatever ended it, dial again at once (after any backoff) to learn whether the peer
        // is still there.
        probe = true;
        // A connection that dies young counts as a failure, so a peer that accepts and closes at
        // once is redialed with backoff; one that lived long, or a peer that moved, is redialed
        // at once.
        if started.elapsed() >= Duration::from_millis(config.reconnect_backoff_max_ms) || *address.borrow() != addr {
            failures = 0;
        } else {
            failures += 1;
        }
    }
}

/// Write `batch` and then whatever arrives on `rx` to one connection until it fails (returns
/// why) or the queue closes (returns `None`). `batch` is empty on return.
async fn write_connection<M, R, W>(
    shared: &Shared<M>,
    peer: i32,
    mut reader: R,
    writer: W,
    batch: &mut Vec<Vec<u8>>,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    address: &mut watch::Receiver<String>,
) -> Option<String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let counters = &shared.counters;
    let write_timeout = Duration::from_millis(shared.config.write_timeout_ms);
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut hello = Some(encode_hello(shared.me, peer, shared.incarnation));
    let mut probe = [0u8; 64];
    loop {
        // Take everything already queued (up to a bound) into this batch.
        let mut bytes: usize = batch.iter().map(Vec::len).sum();
        while bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(frame) => {
                    bytes += frame.len();
                    batch.push(frame);
                }
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let write = async {
            if let Some(hello) = hello.take() {
                writer.write_all(&hello).await?;
            }
            for frame in batch.iter() {
                writer.write_all(frame).await?;
            }
            writer.flush().await
        };
        let result = tokio::time::timeout(write_timeout, write).await;
        batch.clear();
        match result {
            Ok(Ok(())) => Counters::add(&counters.sent, n),
            Ok(Err(e)) => {
                Counters::add(&counters.dropped, n);
                return Some(format!("write failed: {e}"));
            }
            Err(_) => {
                Counters::add(&counters.dropped, n);
                return Some(format!("write timed out after {write_timeout:?}"));
            }
        }
        // Wait for the next frame, watching for the acceptor closing its end.
        tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => batch.push(frame),
                None => return None,
            },
            read = reader.read(&mut probe) => {
                return Some(match read {
                    Ok(0) => "closed by peer".to_string(),
                    Ok(_) => "peer wrote on a write-only connection".to_string(),
                    Err(e) => format!("read failed: {e}"),
                });
            }
            // The node registered another address: it is another process now.
            _ = moved(address) => return Some(format!("peer moved to {}", *address.borrow())),
        }
    }
}

async fn accept_loop<M: serde::de::DeserializeOwned + Send + 'static>(listener: TcpListener, shared: Arc<Shared<M>>, shutdown: watch::Receiver<()>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
                let shared = shared.clone();
                spawn_until_stopped(&shutdown, async move {
                    let reason = inbound(&shared, conn, stream).await;
                    tracing::debug!(me = shared.me, %peer, "transport: inbound connection closed: {reason}");
                });
            }
            Err(e) => {
                tracing::warn!(me = shared.me, "transport: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Read one inbound connection until it ends; returns why.
async fn inbound<M: serde::de::DeserializeOwned>(shared: &Shared<M>, conn: u64, stream: TcpStream) -> String {
    let me = shared.me;
    let counters = &shared.counters;
    let bad = |reason: String| {
        Counters::add(&counters.bad_frames, 1);
        tracing::warn!(me, "transport: closing inbound connection: {reason}");
        reason
    };
    // The acceptor never writes; the stream stays whole (and open) until this returns.
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut hello = [0u8; HELLO_LEN];
    match tokio::time::timeout(Duration::from_millis(shared.config.write_timeout_ms), reader.read_exact(&mut hello)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return format!("no hello: {e}"),
        Err(_) => return "no hello in time".into(),
    }
    if hello[0..4] != HELLO_MAGIC {
        return bad(format!("bad hello magic {:02x?}", &hello[0..4]));
    }
    let version = u32::from_be_bytes(hello[4..8].try_into().expect("4 bytes"));
    if version != WIRE_VERSION {
        return bad(format!("unsupported wire version {version}"));
    }
    let from_node = i32::from_be_bytes(hello[8..12].try_into().expect("4 bytes"));
    let to_node = i32::from_be_bytes(hello[12..16].try_into().expect("4 bytes"));
    let incarnation = u64::from_be_bytes(hello[16..24].try_into().expect("8 bytes"));
    if to_node != me {
        return bad(format!("node {from_node} dialed node {to_node}, this is node {me}"));
    }
    let key = (from_node, incarnation);
    shared.inbound.lock().expect("inbound lock").insert(key, conn);
    let reason = read_frames(shared, conn, key, &mut reader).await;
    let mut newest = shared.inbound.lock().expect("inbound lock");
    if newest.get(&key) == Some(&conn) {
        newest.remove(&key);
    }
    reason
}

async fn read_frames<M: serde::de::DeserializeOwned, R: AsyncRead + Unpin>(shared: &Shared<M>, conn: u64, key: (i32, u64), reader: &mut R) -> String {
    let from_node = key.0;
    let me = shared.me;
    let counters = &shared.counters;
    let max = max_payload(shared.config.max_frame_bytes);
    let codec = codec(shared.config.max_frame_bytes);
    let bad = |reason: String| {
        Counters::add(&counters.bad_frames, 1);
        tracing::warn!(me, from_node, "transport: closing inbound connection: {reason}");
        reason
    };
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 8];
        if let Err(e) = reader.read_exact(&mut header).await {
            return format!("closed: {e}");
        }
        let rest = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
        if rest < 4 || rest - 4 > max {
            return bad(format!("frame length {rest} outside 4..={}", max + 4));
        }
        let len = rest - 4;
        payload.clear();
        if payload.capacity() > MAX_BATCH_BYTES {
            payload.shrink_to(MAX_BATCH_BYTES);
        }
        // Grows only as bytes arrive: a length from the wire is never trusted for allocation.
        match (&mut *reader).take(len as u64).read_to_end(&mut payload).await {
            Ok(n) if n == len => {}
            Ok(_) => return "closed mid-frame".into(),
            Err(e) => return format!("closed mid-frame: {e}"),
        }
        if crc32fast::hash(&payload) != crc {
            return bad("frame CRC mismatch".into());
        }
        let (fnode, factor, tnode, tactor, msg): (i32, u32, i32, u32, M) = match codec.deserialize(&payload) {
            Ok(decoded) => decoded,
            Err(e) => return bad(format!("undecodable payload: {e}")),
        };
        if fnode != from_node || tnode != me {
            return bad(format!("frame from node {fnode} to node {tnode} on a connection from node {from_node} to node {me}"));
        }
        if shared.inbound.lock().expect("inbound lock").get(&key) != Some(&conn) {
            return "superseded by a newer connection from the same node".into();
        }
        Counters::add(&counters.received, 1);
        (shared.deliver)(Addr { node: fnode, actor: factor }, Addr { node: tnode, actor: tactor }, msg);
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use tokio::sync::mpsc::UnboundedReceiver;

    type Got = (Addr, Addr, u64);

    fn addr(node: i32, actor: u32) -> Addr {
        Addr { node, actor }
    }

    /// A port nothing listens on (yet).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    fn local(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn peers(list: &[(i32, u16)]) -> BTreeMap<i32, String> {
        list.iter().map(|&(n, p)| (n, format!("127.0.0.1:{p}"))).collect()
    }

    async fn start(me: i32, port: u16, peers: BTreeMap<i32, String>, config: TransportConfig) -> (Transport<u64>, UnboundedReceiver<Got>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let deliver: Deliver<u64> = Arc::new(move |from, to, msg| {
            let _ = tx.send((from, to, msg));
        });
        // A listener just dropped may linger for a moment (its task is being cancelled).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match Transport::start(me, local(port), peers.clone(), config.clone(), deliver.clone()).await {
                Ok(t) => return (t, rx),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("start transport on {port}: {e}"),
            }
        }
    }

    async fn recv(rx: &mut UnboundedReceiver<Got>) -> Got {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("message in time").expect("deliver channel open")
    }

    async fn pair() -> ((Transport<u64>, UnboundedReceiver<Got>), (Transport<u64>, UnboundedReceiver<Got>)) {
        let (pa, pb) = (free_port(), free_port());
        let a = start(1, pa, peers(&[(2, pb)]), TransportConfig::default()).await;
        let b = start(2, pb, peers(&[(1, pa)]), TransportConfig::default()).await;
        (a, b)
    }

    #[tokio::test]
    async fn round_trip_both_ways() {
        let ((a, mut a_rx), (b, mut b_rx)) = pair().await;
        assert!(a.send(addr(1, 3), addr(2, 4), 42));
        assert_eq!(recv(&mut b_rx).await, (addr(1, 3), addr(2, 4), 42));
        assert!(b.send(addr(2, 4), addr(1, 3), 43));
        assert_eq!(recv(&mut a_rx).await, (addr(2, 4), addr(1, 3), 43));
        assert_eq!(a.stats().sent, 1);
        assert_eq!(a.stats().received, 1);
        assert_eq!(b.stats().received, 1);
        // Local delivery is the driver's job; unknown peers are dropped.
        assert!(!a.send(addr(1, 0), addr(1, 1), 1));
        assert!(!a.send(addr(1, 0), addr(9, 1), 1));
        // Only this node's actors send through it.
        assert!(!a.send(addr(2, 0), addr(2, 1), 1));
        assert_eq!(a.stats().dropped, 3);
    }

    /// A crashed peer is reported: while it runs nothing is; when it goes away, the connection
    /// it closed is redialed at once with nothing to send, and the refused connect is reported
    /// without any further message for it. A peer that was never there is reported at the
    /// first send.
    #[tokio::test]
    async fn refused_peers_are_reported() {
        let ((a, _a_rx), (b, mut b_rx)) = pair().await;
        let (tx, mut refused) = mpsc::unbounded_channel();
        a.on_peer_refused(Arc::new(move |peer| {
            let _ = tx.send(peer);
        }));
        assert!(a.send(addr(1, 0), addr(2, 0), 1));
        assert_eq!(recv(&mut b_rx).await.2, 1);
        assert!(refused.try_recv().is_err(), "a live peer is not reported");
        drop(b);
        let peer = tokio::time::timeout(Duration::from_secs(5), refused.recv()).await.expect("reported in time without another send");
        assert_eq!(peer, Some(2));

        let (c, _c_rx) = start(3, free_port(), peers(&[(4, free_port())]), TransportConfig::default()).await;
        let (tx, mut refused) = mpsc::unbounded_channel();
        c.on_peer_refused(Arc::new(move |peer| {
            let _ = tx.send(peer);
        }));
        assert!(c.send(addr(3, 0), addr(4, 0), 1));
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), refused.recv()).await.expect("reported in time"), Some(4));
    }

    /// A peer whose process closes its end is listed by `closed_peers` as soon as the kernel
    /// has the close, and stays listed (through the refused redials) until a new connection to
    /// it opens.
    #[tokio::test]
    async fn closed_peers_are_listed_until_a_new_connection() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (a, _a_rx) = start(1, free_port(), peers(&[(2, port)]), TransportConfig::default()).await;
        assert!(a.closed_peers().is_empty(), "no connection yet");
        assert!(a.send(addr(1, 0), addr(2, 0), 7));
        // The hello is written after the connection is kept for checks.
        let (listener, conn) = tokio::task::spawn_blocking(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.read_exact(&mut [0u8; HELLO_LEN]).expect("hello");
            (listener, conn)
        })
        .await
        .expect("accept task");
        assert!(a.closed_peers().is_empty(), "an open connection is not listed");
        drop(listener);
        conn.shutdown(std::net::Shutdown::Both).expect("close");
        drop(conn);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while a.closed_peers() != [2] {
            assert!(std::time::Instant::now() < deadline, "the closed connection is not listed");
            tokio::task::yield_now().await;
        }
        // Back at the same port: the next message's dial opens a new connection, and the peer is
        // no longer listed.
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("rebind");
        assert!(a.send(addr(1, 0), addr(2, 0), 8));
        let _conn = tokio::task::spawn_blocking(move || listener.accept().expect("accept again")).await.expect("accept task");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !a.closed_peers().is_empty() {
            assert!(std::time::Instant::now() < deadline, "still listed after a new connection");
            tokio::task::yield_now().await;
        }
    }

    /// A node not given at start is unknown (its messages are dropped) until `add_peer` names
    /// its address; then it is dialed like any other peer, and it can answer back once it knows
    /// the sender's address too.
    #[tokio::test]
    async fn added_peer_is_reached() {
        let (pa, pb) = (free_port(), free_port());
        let (a, mut a_rx) = start(1, pa, BTreeMap::new(), TransportConfig::default()).await;
        let (b, mut b_rx) = start(4, pb, BTreeMap::new(), TransportConfig::default()).await;
        assert!(!a.send(addr(1, 1), addr(4, 0), 1), "unknown yet");
        assert_eq!(a.peer_address(4), None);
        assert!(a.add_peer(4, format!("127.0.0.1:{pb}")));
        assert!(!a.add_peer(4, format!("127.0.0.1:{pb}")), "same address: nothing changes");
        assert!(!a.add_peer(1, "127.0.0.1:1".into()), "never itself");
        assert!(a.send(addr(1, 1), addr(4, 0), 2));
        assert_eq!(recv(&mut b_rx).await, (addr(1, 1), addr(4, 0), 2));
        assert!(b.add_peer(1, format!("127.0.0.1:{pa}")));
        assert!(b.send(addr(4, 0), addr(1, 1), 3));
        assert_eq!(recv(&mut a_rx).await, (addr(4, 0), addr(1, 1), 3));
        assert_eq!(a.stats().dropped, 1);
    }

    /// When a peer moves (a restarted broker registers another address), the next messages go
    /// to the new address even though the connection to the old one is still open.
    #[tokio::test]
    async fn moved_peer_is_redialed() {
        let (pa, old_port, new_port) = (free_port(), free_port(), free_port());
        let (a, _a_rx) = start(1, pa, peers(&[(2, old_port)]), TransportConfig::default()).await;
        let (_old, mut old_rx) = start(2, old_port, BTreeMap::new(), TransportConfig::default()).await;
        let (_new, mut new_rx) = start(2, new_port, BTreeMap::new(), TransportConfig::default()).await;
        assert!(a.send(addr(1, 0), addr(2, 0), 1));
        assert_eq!(recv(&mut old_rx).await.2, 1);
        assert!(a.add_peer(2, format!("127.0.0.1:{new_port}")));
        assert_eq!(a.peer_address(2), Some(format!("127.0.0.1:{new_port}")));
        // Frames queued right after the move may still have gone out on the old connection
        // before its task saw the move; from the first frame the new process gets, all do.
        let mut next = 2;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let first = loop {
            assert!(a.send(addr(1, 0), addr(2, 0), next));
            next += 1;
            if let Ok(Some((_, _, m))) = tokio::time::timeout(Duration::from_millis(50), new_rx.recv()).await {
                break m;
            }
            assert!(tokio::time::Instant::now() < deadline, "the moved peer never received anything");
        };
        for i in next..next + 20 {
            assert!(a.send(addr(1, 0), addr(2, 0), i));
        }
        let mut got = vec![first];
        while got.len() < (next + 20 - first) as usize {
            got.push(recv(&mut new_rx).await.2);
        }
        assert_eq!(got, (first..next + 20).collect::<Vec<_>>(), "in order, nothing lost after the first");
        while let Ok(m) = old_rx.try_recv() {
            assert!(m.2 < first, "message {} reached the old address after the new one got {first}", m.2);
        }
    }

    #[tokio::test]
    async fn ordering_preserved_per_pair() {
        let ((a, _a_rx), (_b, mut b_rx)) = pair().await;
        for i in 0..5000u64 {
            assert!(a.send(addr(1, (i % 3) as u32), addr(2, 0), i));
        }
        for i in 0..5000u64 {
            let (from, _, msg) = recv(&mut b_rx).await;
            assert_eq!((from.actor, msg), ((i % 3) as u32, i));
        }
        assert_eq!(a.stats().sent, 5000);
        assert_eq!(a.stats().dropped, 0);
    }

    #[tokio::test]
    async fn late_peer_receives_queued_messages() {
        let (pa, pb) = (free_port(), free_port());
        let config = TransportConfig { reconnect_backoff_min_ms: 10, reconnect_backoff_max_ms: 100, ..Default::default() };
        let (a, _a_rx) = start(1, pa, peers(&[(2, pb)]), config).await;
        for i in 0..10 {
            assert!(a.send(addr(1, 0), addr(2, 0), i));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.stats().sent, 0, "nobody listens yet");
        let (_b, mut b_rx) = start(2, pb, peers(&[(1, pa)]), TransportConfig::default()).await;
        for i in 0..10 {
            assert_eq!(recv(&mut b_rx).await.2, i);
        }
        assert_eq!(a.stats().dropped, 0);
    }

    #[tokio::test]
    async fn restarted_peer_gets_later_messages() {
        let (pa, pb) = (free_port(), free_port());
        let (a, _a_rx) = start(1, pa, peers(&[(2, pb)]), TransportConfig::default()).await;
        let (b, mut b_rx) = start(2, pb, peers(&[(1, pa)]), TransportConfig::default()).await;
        assert!(a.send(addr(1, 0), addr(2, 0), 1));
        assert_eq!(recv(&mut b_rx).await.2, 1);
        drop(b);
        drop(b_rx);
        // Let the old connection close, so that A notices before its next send.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_b, mut b_rx) = start(2, pb, peers(&[(1, pa)]), TransportConfig::default()).await;
        for i in 2..=20 {
            assert!(a.send(addr(1, 0), addr(2, 0), i));
        }
        for i in 2..=20 {
            assert_eq!(recv(&mut b_rx).await.2, i);
        }
        assert_eq!(a.stats().reconnects, 1);
    }

    /// Whether the transport closes `stream` within a few seconds.
    async fn disconnected(stream: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }

    /// Connections from two incarnations of one node id (a second process started with an id in
    /// use) both deliver: the newer one does not cut the older one off. A newer connection of the
    /// same incarnation (a reconnect) does supersede its older one.
    #[tokio::test]
    async fn a_second_incarnation_does_not_supersede_the_first() {
        let ((_a, _a_rx), (b, mut b_rx)) = pair().await;
        let target = b.local_addr();
        let max = TransportConfig::default().max_frame_bytes;
        let connect = |incarnation: u64| async move {
            let mut raw = TcpStream::connect(target).await.unwrap();
            raw.write_all(&encode_hello(1, 2, incarnation)).await.unwrap();
            raw
        };
        let send = |n: u64| encode_frame(addr(1, 7), addr(2, 8), &n, max).unwrap();
        let mut first = connect(7).await;
        first.write_all(&send(1)).await.unwrap();
        assert_eq!(recv(&mut b_rx).await.2, 1);
        let mut second = connect(8).await;
        second.write_all(&send(2)).await.unwrap();
        assert_eq!(recv(&mut b_rx).await.2, 2);
        first.write_all(&send(3)).await.unwrap();
        assert_eq!(recv(&mut b_rx).await.2, 3, "the first incarnation's connection still delivers");
        let mut again = connect(7).await;
        again.write_all(&send(4)).await.unwrap();
        assert_eq!(recv(&mut b_rx).await.2, 4);
        first.write_all(&send(5)).await.unwrap();
        assert!(disconnected(&mut first).await, "a reconnect of the same incarnation supersedes its older connection");
        second.write_all(&send(6)).await.unwrap();
        assert_eq!(recv(&mut b_rx).await.2, 6, "frame 5 was not delivered; the other incarnation still is");
    }

    #[tokio::test]
    async fn bad_input_closes_the_connection_and_the_listener_keeps_serving() {
        let ((a, _a_rx), (b, mut b_rx)) = pair().await;
        let target = b.local_addr();
        let max = TransportConfig::default().max_frame_bytes;

        // A well-formed raw connection is served, then a bad CRC closes it.
        let mut raw = TcpStream::connect(target).await.unwrap();
        raw.write_all(&encode_hello(1, 2, 7)).await.unwrap();
        raw.write_all(&encode_frame(addr(1, 7), addr(2, 8), &99u64, max).unwrap()).await.unwrap();
        assert_eq!(recv(&mut b_rx).await, (addr(1, 7), addr(2, 8), 99));
        let mut frame = encode_frame(addr(1, 7), addr(2, 8), &100u64, max).unwrap();
        frame[4] ^= 0xff;
        raw.write_all(&frame).await.unwrap();
        assert!(disconnected(&mut raw).await, "bad CRC must close the connection");

        // An oversized frame is refused from its header alone.
        let mut raw = TcpStream::connect(target).await.unwrap();
        raw.write_all(&encode_hello(1, 2, 7)).await.unwrap();
        raw.write_all(&((max + 5) as u32).to_be_bytes()).await.unwrap();
        raw.write_all(&[0u8; 4]).await.unwrap();
        assert!(disconnected(&mut raw).await, "oversized frame must close the connection");

        // A correct CRC over an undecodable payload.
        let mut raw = TcpStream::connect(target).await.unwrap();
        raw.write_all(&encode_hello(1, 2, 7)).await.unwrap();
        let junk = [0xffu8; 3];
        raw.write_all(&7u32.to_be_bytes()).await.unwrap();
        raw.write_all(&crc32fast::hash(&junk).to_be_bytes()).await.unwrap();
        raw.write_all(&junk).await.unwrap();
        assert!(disconnected(&mut raw).await, "undecodable payload must close the connection");

        // A hello for another node, and one that is not a hello at all.
        let mut raw = TcpStream::connect(target).await.unwrap();
        raw.write_all(&encode_hello(1, 3, 7)).await.unwrap();
        assert!(disconnected(&mut raw).await, "hello for another node must close the connection");
        let mut raw = TcpStream::connect(target).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: runnel\r\n\r\n").await.unwrap();
        assert!(disconnected(&mut raw).await, "garbage hello must close the connection");

        assert_eq!(b.stats().bad_frames, 5);
        // The listener still serves the real peer.
        assert!(a.send(addr(1, 0), addr(2, 0), 7));
        assert_eq!(recv(&mut b_rx).await, (addr(1, 0), addr(2, 0), 7));
    }

    #[tokio::test]
    async fn queue_overflow_drops_and_counts() {
        let (pa, pb) = (free_port(), free_port());
        let config = TransportConfig { queue_capacity: 4, ..Default::default() };
        let (a, _a_rx) = start(1, pa, peers(&[(2, pb)]), config).await;
        // The current-thread runtime does not run the peer's task between these sends.
        let accepted = (0..10).filter(|&i| a.send(addr(1, 0), addr(2, 0), i)).count();
        assert_eq!(accepted, 4);
        assert_eq!(a.stats().dropped, 6);
        // Once the peer appears, the queued four arrive.
        let (_b, mut b_rx) = start(2, pb, peers(&[(1, pa)]), TransportConfig::default()).await;
        for i in 0..4 {
            assert_eq!(recv(&mut b_rx).await.2, i);
        }
    }

    #[tokio::test]
    async fn oversized_message_is_dropped_at_send() {
        let (pa, pb) = (free_port(), free_port());
        let config = TransportConfig { max_frame_bytes: 64, ..Default::default() };
        let a = Transport::<Vec<u8>>::start(1, local(pa), peers(&[(2, pb)]), config, Arc::new(|_, _, _| {})).await.unwrap();
        assert!(a.send(addr(1, 0), addr(2, 0), vec![0u8; 32]));
        assert!(!a.send(addr(1, 0), addr(2, 0), vec![0u8; 100]));
        assert_eq!(a.stats().dropped, 1);
    }
}
