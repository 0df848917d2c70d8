//! The Kafka TCP front: accepts connections, splits the byte stream into size-prefixed frames,
//! hands each frame to the broker actor with a per-connection sequence number, and writes the
//! responses back in sequence order.
//!
//! Limits: a frame larger than `socket.request.max.bytes` (or with a negative size) closes the
//! connection before anything is allocated for it; a frame's buffer grows only as its bytes
//! arrive; at most [`MAX_IN_FLIGHT`] requests per connection are unanswered before the reader
//! stops reading (backpressure instead of unbounded queues).

use bytes::{Bytes, BytesMut};
use runnel_actors::broker::BrokerMsg;
use runnel_actors::core::{Addr, ConnId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::driver::ActorHandle;

/// Unanswered requests allowed per connection.
pub const MAX_IN_FLIGHT: usize = 64;

enum Out {
    Reply(u64, Option<Bytes>),
    Close,
}

/// Where actors' replies go: one writer channel per open connection.
#[derive(Default)]
pub struct Connections {
    // std Mutex: held only to clone a sender, never across an await.
    writers: Mutex<HashMap<ConnId, mpsc::UnboundedSender<Out>>>,
    next: AtomicU64,
}

impl Connections {
    /// Route a reply to its connection (dropped if the connection is gone).
    pub fn reply(&self, conn: ConnId, seq: u64, frame: Option<Bytes>) {
        if let Some(tx) = self.writers.lock().expect("connections lock").get(&conn) {
            let _ = tx.send(Out::Reply(seq, frame));
        }
    }

    /// Close a connection after the replies queued before this call.
    pub fn close(&self, conn: ConnId) {
        if let Some(tx) = self.writers.lock().expect("connections lock").get(&conn) {
            let _ = tx.send(Out::Close);
        }
    }
}

/// Lists the peers whose node-to-node connection the kernel knows the peer's side closed
/// (see [`crate::transport::Transport::closed_peers`]).
pub type ClosedLinks = Arc<dyn Fn() -> Vec<i32> + Send + Sync>;

/// Accept Kafka clients on `listener` forever, feeding frames to `broker`. A request whose
/// answer names brokers ([`runnel_actors::broker::names_brokers`]) reaches the broker right
/// after `closed_links()`, the peers whose connection the kernel already knows closed, so that
/// its answer leaves out a broker that died a moment ago, before this node's transport noticed
/// (a client that lost its own connection to that broker asks at once, and librdkafka keeps the
/// first leader it is told).
pub async fn serve(listener: TcpListener, broker: ActorHandle<BrokerMsg>, connections: Arc<Connections>, max_request_bytes: usize, closed_links: ClosedLinks) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnId(connections.next.fetch_add(1, Ordering::Relaxed) + 1);
        tracing::debug!(conn = conn.0, %peer, "connection opened");
        // Kafka shows a member's client host as `/address`.
        broker.send(Addr { node: -1, actor: 0 }, BrokerMsg::Connected { conn, host: format!("/{}", peer.ip()) });
        tokio::spawn(handle(stream, conn, broker.clone(), connections.clone(), max_request_bytes, closed_links.clone()));
    }
}

async fn handle(
    stream: TcpStream,
    conn: ConnId,
    broker: ActorHandle<BrokerMsg>,
    connections: Arc<Connections>,
    max_request_bytes: usize,
    closed_links: ClosedLinks,
) {
    // madsim's simulated stream has no owned halves; the generic split works for both.
    #[cfg(not(madsim))]
    let (mut reader, writer) = stream.into_split();
    #[cfg(madsim)]
    let (mut reader, writer) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    connections.writers.lock().expect("connections lock").insert(conn, tx);
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let writer_task = tokio::spawn(write_loop(writer, rx, permits.clone()));
    let front = Addr { node: -1, actor: 0 };
    let mut seq = 0u64;
    let reason: String = loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { break "closing".into() };
        permit.forget();
        let mut size = [0u8; 4];
        if reader.read_exact(&mut size).await.is_err() {
            break "peer closed".into();
        }
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > max_request_bytes {
            break format!("frame size {size} outside 0..={max_request_bytes} (socket.request.max.bytes)");
        }
        let mut frame = BytesMut::new();
        let mut remaining = size as usize;
        let mut failed = false;
        while remaining > 0 {
            let chunk = remaining.min(64 * 1024);
            frame.reserve(chunk);
            match (&mut reader).take(chunk as u64).read_buf(&mut frame).await {
                Ok(0) | Err(_) => {
                    failed = true;
                    break;
                }
                Ok(n) => remaining -= n,
            }
        }
        if failed {
            break "peer closed mid-frame".into();
        }
        if runnel_actors::broker::names_brokers(&frame) {
            broker.send(front, BrokerMsg::LinksClosed { nodes: closed_links() });
        }
        if !broker.send(front, BrokerMsg::Request { conn, seq, frame: frame.freeze() }) {
            break "broker stopped".into();
        }
        seq += 1;
    };
    tracing::debug!(conn = conn.0, "reader done: {reason}");
    // Let the writer flush what is queued; it exits on Close or when the last sender is dropped.
    connections.close(conn);
    let _ = writer_task.await;
    connections.writers.lock().expect("connections lock").remove(&conn);
    broker.send(front, BrokerMsg::Disconnected { conn });
}

async fn write_loop<W: tokio::io::AsyncWrite + Unpin>(writer: W, mut rx: mpsc::UnboundedReceiver<Out>, permits: Arc<Semaphore>) {
    let mut writer = BufWriter::with_capacity(256 * 1024, writer);
    let mut pending: BTreeMap<u64, Option<Bytes>> = BTreeMap::new();
    let mut next = 0u64;
    while let Some(out) = rx.recv().await {
        let mut closing = false;
        let mut batch = vec![out];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        for out in batch {
            match out {
                Out::Reply(seq, frame) => {
                    pending.insert(seq, frame);
                }
                Out::Close => closing = true,
            }
        }
        while let Some(frame) = pending.remove(&next) {
            next += 1;
            permits.add_permits(1);
            if let Some(frame) = frame {
                let ok = writer.write_all(&(frame.len() as u32).to_be_bytes()).await.is_ok() && writer.write_all(&frame).await.is_ok();
                if !ok {
                    permits.close();
                    return;
                }
            }
        }
        if writer.flush().await.is_err() || closing {
            permits.close();
            let _ = writer.shutdown().await;
            return;
        }
    }
}
