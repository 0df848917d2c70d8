//! The actor core: the [`Actor`] trait, the context [`Cx`] an actor is driven with, and the
//! [`Effect`]s it answers with.
//!
//! Invariants: an actor's behaviour is a pure function of its inputs (messages, timers, IO
//! completions, `Cx::now_ms`, `Cx::rng`). Effects are executed by a driver in the order they were
//! emitted; disk operations on one node start in the order they were issued (an `Fsync` may
//! complete after operations issued later, never before those issued earlier), and a completion
//! is delivered to `on_io` exactly once (unless the node crashes first, in which case the actor is
//! rebuilt through `on_start` and must recover from what reached the disk).

pub mod bugs;
mod disk;
pub mod mem_disk;
mod rng;

pub use disk::{DirEntry, DiskOp, IoDone, IoError, IoOutput, IoToken};
pub use rng::Rng;

use bytes::Bytes;

/// The address of an actor: the node it lives on and its index on that node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    /// Node id (Kafka's `node.id`).
    pub node: i32,
    /// Actor index within the node.
    pub actor: u32,
}

/// A client connection, as numbered by the driver that accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A timer chosen by the actor; setting a timer with an id that is already armed re-arms it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerId(pub u64);

/// What an actor asks its driver to do.
#[derive(Debug)]
pub enum Effect<M> {
    /// Deliver `msg` to the actor at `to`.
    Send {
        /// Destination.
        to: Addr,
        /// The message.
        msg: M,
    },
    /// Answer request number `seq` of connection `conn`. Responses are written to the socket in
    /// `seq` order whatever order they are produced in; `None` means "this request has no response"
    /// (Produce with acks=0) and only advances the sequence.
    Reply {
        /// The connection.
        conn: ConnId,
        /// The request's position in the connection's stream, as given by the driver.
        seq: u64,
        /// The encoded response frame (without the 4-byte size prefix).
        frame: Option<Bytes>,
    },
    /// Close a client connection (after the responses already queued are written).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Arm (or re-arm) a timer that fires after `after_ms` milliseconds.
    SetTimer {
        /// Which timer.
        id: TimerId,
        /// Delay in milliseconds.
        after_ms: u64,
    },
    /// Disarm a timer; a no-op if it is not armed.
    CancelTimer {
        /// Which timer.
        id: TimerId,
    },
    /// Start a disk operation; it completes through `Actor::on_io` with the same token.
    Disk {
        /// Identifies the completion.
        token: IoToken,
        /// The operation.
        op: DiskOp,
    },
    /// Node `node` listens for node-to-node traffic at `address` (`host:port`), as a broker
    /// registration says. The driver keeps the addresses it was configured with (the quorum
    /// voters); for any other node it sends to the address of the newest registration it was
    /// told about, and to an address from a registration not committed yet (`epoch` < 0) only
    /// while it knows no committed one.
    PeerAddress {
        /// The node.
        node: i32,
        /// Its node-to-node address.
        address: String,
        /// The broker epoch (metadata offset) of the committed registration this comes from, or
        /// -1 for a registration request that is not committed yet.
        epoch: i64,
    },
    /// Stop this actor; no further input is delivered.
    Stop,
}

/// Whether a driver that knows `known` (registration epoch, address) for a node takes `address`
/// learned with `epoch` instead (see [`Effect::PeerAddress`]): a newer committed registration
/// always replaces; an uncommitted one (`epoch` < 0) only while no committed one is known.
pub fn peer_address_replaces(known: Option<(i64, &str)>, epoch: i64, address: &str) -> bool {
    match known {
        None => true,
        Some((e, a)) if epoch < 0 => e < 0 && a != address,
        Some((e, _)) => epoch > e,
    }
}

/// The context an actor is driven with: time, randomness, its own address and the outbox.
pub struct Cx<M> {
    now_ms: u64,
    wall_clock_ms: i64,
    me: Addr,
    rng: Rng,
    next_token: u64,
    effects: Vec<Effect<M>>,
}

impl<M> Cx<M> {
    /// A context for actor `me`; `seed` seeds its random source and `first_token` numbers its IO.
    pub fn new(me: Addr, seed: u64) -> Self {
        Cx { now_ms: 0, wall_clock_ms: 0, me, rng: Rng::new(seed), next_token: 1, effects: Vec::new() }
    }

    /// Set the clocks before delivering an input (drivers only).
    pub fn set_time(&mut self, now_ms: u64, wall_clock_ms: i64) {
        self.now_ms = now_ms;
        self.wall_clock_ms = wall_clock_ms;
    }

    /// Monotonic milliseconds since the driver started (virtual time under the simulator).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Wall-clock milliseconds since the Unix epoch, for record timestamps and retention.
    pub fn wall_clock_ms(&self) -> i64 {
        self.wall_clock_ms
    }

    /// This actor's address.
    pub fn me(&self) -> Addr {
        self.me
    }

    /// The actor's seeded random source.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Send a message to another actor.
    pub fn send(&mut self, to: Addr, msg: M) {
        self.effects.push(Effect::Send { to, msg });
    }

    /// Answer a client request (see [`Effect::Reply`]).
    pub fn reply(&mut self, conn: ConnId, seq: u64, frame: Option<Bytes>) {
        self.effects.push(Effect::Reply { conn, seq, frame });
    }

    /// Close a client connection.
    pub fn close(&mut self, conn: ConnId) {
        self.effects.push(Effect::Close { conn });
    }

    /// Arm a timer.
    pub fn set_timer(&mut self, id: TimerId, after_ms: u64) {
        self.effects.push(Effect::SetTimer { id, after_ms });
    }

    /// Disarm a timer.
    pub fn cancel_timer(&mut self, id: TimerId) {
        self.effects.push(Effect::CancelTimer { id });
    }

    /// Tell the driver where node `node` listens for node-to-node traffic (see
    /// [`Effect::PeerAddress`]).
    pub fn peer_address(&mut self, node: i32, address: String, epoch: i64) {
        self.effects.push(Effect::PeerAddress { node, address, epoch });
    }

    /// Stop this actor.
    pub fn stop(&mut self) {
        self.effects.push(Effect::Stop);
    }

    /// Take the effects emitted so far (drivers only).
    pub fn take_effects(&mut self) -> Vec<Effect<M>> {
        std::mem::take(&mut self.effects)
    }

    /// Drain the effects into `out`, keeping the outbox's allocation (drivers only).
    pub fn drain_effects_into(&mut self, out: &mut Vec<Effect<M>>) {
        out.append(&mut self.effects);
    }
}

/// Issuing disk operations. `Cx` implements it; components such as the partition log take
/// `&mut impl DiskIo` so they can be tested without an actor around them.
pub trait DiskIo {
    /// Start `op`; its completion carries the returned token.
    fn disk(&mut self, op: DiskOp) -> IoToken;
}

impl<M> DiskIo for Cx<M> {
    fn disk(&mut self, op: DiskOp) -> IoToken {
        let token = IoToken(self.next_token);
        self.next_token += 1;
        self.effects.push(Effect::Disk { token, op });
        token
    }
}

/// A message-passing state machine. See the crate documentation and DESIGN.md.
pub trait Actor {
    /// The messages this actor receives from other actors and from its driver.
    type Msg;
    /// Called once after (re)start: recover from disk.
    fn on_start(&mut self, cx: &mut Cx<Self::Msg>);
    /// A message from another actor (or from the driver, e.g. a client frame).
    fn on_message(&mut self, cx: &mut Cx<Self::Msg>, from: Addr, msg: Self::Msg);
    /// A timer armed with [`Cx::set_timer`] fired.
    fn on_timer(&mut self, cx: &mut Cx<Self::Msg>, timer: TimerId);
    /// A disk operation completed (or failed).
    fn on_io(&mut self, cx: &mut Cx<Self::Msg>, done: IoDone);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newer committed registration replaces an address, an older one does not; a request's
    /// address (epoch -1) is taken only while no committed one is known.
    #[test]
    fn newest_registration_wins() {
        assert!(peer_address_replaces(None, -1, "a:1"));
        assert!(peer_address_replaces(None, 5, "a:1"));
        assert!(peer_address_replaces(Some((-1, "a:1")), -1, "a:2"));
        assert!(!peer_address_replaces(Some((-1, "a:1")), -1, "a:1"));
        assert!(peer_address_replaces(Some((-1, "a:1")), 3, "a:1"));
        assert!(!peer_address_replaces(Some((5, "a:1")), -1, "a:2"));
        assert!(!peer_address_replaces(Some((5, "a:1")), 4, "a:2"));
        assert!(!peer_address_replaces(Some((5, "a:1")), 5, "a:2"));
        assert!(peer_address_replaces(Some((5, "a:1")), 9, "a:2"));
    }
}
