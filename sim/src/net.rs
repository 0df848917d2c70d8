//! The simulated network.
//!
//! Fault model:
//! - **Latency**: every packet takes a seeded latency (a base plus an exponential-ish tail; the
//!   swarm fault `net-latency` adds spikes of tens of milliseconds).
//! - **Client connections are TCP streams**: packets on one connection arrive in order, exactly
//!   once, or the connection breaks. Loss therefore shows as a **reset** (`conn-reset`): both
//!   ends learn that the connection is gone and whatever was in flight is lost.
//! - **Datagrams** (actor messages between nodes, once there are several): independently lost
//!   (`net-loss`), duplicated (`net-duplicate`) and reordered (`net-reorder`, by extra delay).
//! - **Partitions** (`partition`, one-way with `partition-one-way`): a clogged direction of a link
//!   holds its packets until it heals (TCP retransmits); a stream clogged for long is reset.
//! - **Swizzle-clog** (`swizzle-clog`): clog the links one at a time, then heal them in a
//!   random order.
//!
//! A link is identified by its two endpoints; each direction is clogged separately. Faults never
//! corrupt bytes in flight (TCP and the node transport's CRC would catch that).

use runnel_actors::core::Rng;
use std::collections::BTreeSet;

/// One end of a link: a node or a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// A cluster node (index into the world's nodes).
    Node(usize),
    /// A client actor.
    Client(usize),
}

/// Network fault settings.
#[derive(Clone, Debug, Default)]
pub struct NetFaults {
    /// Probability that a packet takes a latency spike.
    pub latency_spike: f64,
    /// Datagram loss probability.
    pub loss: f64,
    /// Datagram duplication probability.
    pub duplicate: f64,
    /// Datagram reordering probability (extra delay).
    pub reorder: f64,
}

/// Link state and latency draws.
#[derive(Clone, Debug, Default)]
pub struct Network {
    /// Faults in force.
    pub faults: NetFaults,
    clogged: BTreeSet<(Endpoint, Endpoint)>,
    /// Latency spikes drawn.
    pub spikes: u64,
}

fn chance(rng: &mut Rng, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p
}

impl Network {
    /// A network with the given faults.
    pub fn new(faults: NetFaults) -> Self {
        Network { faults, ..Default::default() }
    }

    /// Latency of one packet in microseconds.
    pub fn latency_us(&mut self, rng: &mut Rng) -> u64 {
        let base = 50 + rng.below(150);
        // A light tail: 1 in 16 packets waits up to 2 ms more.
        let tail = if rng.below(16) == 0 { rng.below(2_000) } else { 0 };
        let spike = if chance(rng, self.faults.latency_spike) {
            self.spikes += 1;
            5_000 + rng.below(50_000)
        } else {
            0
        };
        base + tail + spike
    }

    /// Whether packets from `from` to `to` are held.
    pub fn is_clogged(&self, from: Endpoint, to: Endpoint) -> bool {
        self.clogged.contains(&(from, to))
    }

    /// Clog one direction.
    pub fn clog(&mut self, from: Endpoint, to: Endpoint) {
        self.clogged.insert((from, to));
    }

    /// Heal one direction.
    pub fn unclog(&mut self, from: Endpoint, to: Endpoint) {
        self.clogged.remove(&(from, to));
    }

    /// Heal everything.
    pub fn heal_all(&mut self) {
        self.clogged.clear();
    }

    /// Clogged directions.
    pub fn clogged(&self) -> impl Iterator<Item = &(Endpoint, Endpoint)> {
        self.clogged.iter()
    }

    /// For a datagram: how many copies arrive (0 = lost, 2 = duplicated) and extra delay for
    /// reordering.
    pub fn datagram_fate(&mut self, rng: &mut Rng) -> (usize, u64) {
        if chance(rng, self.faults.loss) {
            return (0, 0);
        }
        let copies = if chance(rng, self.faults.duplicate) { 2 } else { 1 };
        let extra = if chance(rng, self.faults.reorder) { rng.below(20_000) } else { 0 };
        (copies, extra)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clogging is per direction and healing restores it; datagram fates follow the rates.
    #[test]
    fn clogs_are_directional_and_fates_follow_rates() {
        let mut n = Network::new(NetFaults { loss: 0.5, duplicate: 0.5, ..Default::default() });
        n.clog(Endpoint::Client(0), Endpoint::Node(0));
        assert!(n.is_clogged(Endpoint::Client(0), Endpoint::Node(0)));
        assert!(!n.is_clogged(Endpoint::Node(0), Endpoint::Client(0)));
        n.heal_all();
        assert!(!n.is_clogged(Endpoint::Client(0), Endpoint::Node(0)));
        let mut rng = Rng::new(5);
        let fates: Vec<usize> = (0..1000).map(|_| n.datagram_fate(&mut rng).0).collect();
        assert!(fates.contains(&0) && fates.contains(&1) && fates.contains(&2));
        let lost = fates.iter().filter(|c| **c == 0).count();
        assert!((400..600).contains(&lost), "{lost} lost of 1000 at p=0.5");
    }
}
