//! Three controller actors (a metadata quorum without brokers) on in-memory disks, driven in
//! virtual time: with a tiny snapshot interval, voters snapshot their image and compact the
//! metadata log; a voter that was down while the others compacted is caught up by the leader's
//! snapshot (InstallSnapshot), persists it and restarts from it; brokers far behind get the image.

use runnel_actors::broker::BrokerMsg;
use runnel_actors::controller::rpc::{ControllerRequest, ControllerResponse, PeerMsg, CONTROLLER_ACTOR};
use runnel_actors::controller::{Controller, ControllerConfig};
use runnel_actors::core::mem_disk::MemDisk;
use runnel_actors::core::{Actor, Addr, Cx, Effect, IoDone, Rng, TimerId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const VOTERS: usize = 3;
/// The address requests come from (a broker that is not simulated); answers to it are kept.
const ASKER: Addr = Addr { node: 100, actor: 0 };

struct Node {
    controller: Option<Controller>,
    cx: Cx<BrokerMsg>,
    disk: MemDisk,
    timers: BTreeMap<TimerId, u64>,
    /// Brokers whose node-to-node address this incarnation announced to its driver.
    announced: BTreeSet<i32>,
}

struct Quorum {
    nodes: Vec<Node>,
    now: u64,
    /// (node index, from, message) waiting for delivery.
    mail: VecDeque<(usize, Addr, BrokerMsg)>,
    answers: Vec<(u64, ControllerResponse)>,
    rng: Rng,
    config: ControllerConfig,
}

impl Quorum {
    fn new(config: ControllerConfig) -> Quorum {
        let mut q = Quorum { nodes: Vec::new(), now: 1, mail: VecDeque::new(), answers: Vec::new(), rng: Rng::new(7), config };
        for i in 0..VOTERS {
            q.nodes.push(Node { controller: None, cx: Cx::new(Self::addr(i), 0), disk: MemDisk::new(), timers: BTreeMap::new(), announced: BTreeSet::new() });
            q.start(i);
        }
        q
    }

    fn addr(i: usize) -> Addr {
        Addr { node: i as i32 + 1, actor: CONTROLLER_ACTOR }
    }

    fn start(&mut self, i: usize) {
        let config = ControllerConfig { node_id: i as i32 + 1, voters: (1..=VOTERS as i32).collect(), ..self.config.clone() };
        let seed = self.rng.next_u64();
        let n = &mut self.nodes[i];
        n.controller = Some(Controller::new(config));
        n.cx = Cx::new(Self::addr(i), seed);
        n.timers.clear();
        n.announced.clear();
        self.step(i, |c, cx| c.on_start(cx));
    }

    /// Power loss: the actor is gone and unsynced writes with it.
    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.controller = None;
        n.timers.clear();
        n.disk.crash(&mut self.rng, true);
    }

    fn controller(&self, i: usize) -> &Controller {
        self.nodes[i].controller.as_ref().expect("node is up")
    }

    /// Deliver one input to node `i` and execute its effects; disk operations complete at once.
    fn step(&mut self, i: usize, input: impl FnOnce(&mut Controller, &mut Cx<BrokerMsg>)) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let Some(c) = n.controller.as_mut() else { return };
        n.cx.set_time(now, 1_700_000_000_000 + now as i64);
        input(c, &mut n.cx);
        loop {
            let effects = n.cx.take_effects();
            if effects.is_empty() {
                break;
            }
            for e in effects {
                match e {
                    Effect::Disk { token, op } => {
                        let result = n.disk.apply(op);
                        if let Some(c) = n.controller.as_mut() {
                            c.on_io(&mut n.cx, IoDone { token, result });
                        }
                    }
                    Effect::Send { to, msg } if to == ASKER => {
                        if let BrokerMsg::Peer(PeerMsg::FromController { id, response }) = msg {
                            self.answers.push((id, response));
                        }
                    }
                    Effect::Send { to, msg } => self.mail.push_back(((to.node - 1) as usize, Self::addr(i), msg)),
                    Effect::SetTimer { id, after_ms } => {
                        n.timers.insert(id, now + after_ms);
                    }
                    Effect::CancelTimer { id } => {
                        n.timers.remove(&id);
                    }
                    Effect::Stop => panic!("controller {} stopped", i + 1),
                    Effect::PeerAddress { node, .. } => {
                        n.announced.insert(node);
                    }
                    Effect::Reply { .. } | Effect::Close { .. } => {}
                }
            }
        }
    }

    /// Deliver mail and fire timers (advancing virtual time) until `done` holds.
    fn run_until(&mut self, what: &str, done: impl Fn(&Quorum) -> bool) {
        for _ in 0..200_000 {
            while let Some((to, from, msg)) = self.mail.pop_front() {
                self.step(to, |c, cx| c.on_message(cx, from, msg));
            }
            if done(self) {
                return;
            }
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.controller.is_some())
                .flat_map(|(i, n)| n.timers.iter().map(move |(id, due)| (*due, i, *id)))
                .min();
            let Some((due, i, id)) = next else { panic!("{what}: no timers left") };
            self.nodes[i].timers.remove(&id);
            self.now = self.now.max(due);
            self.step(i, |c, cx| c.on_timer(cx, id));
        }
        panic!("{what}: not reached by virtual time {} ms", self.now);
    }

    fn active(&self) -> Option<usize> {
        (0..VOTERS).find(|&i| self.nodes[i].controller.as_ref().is_some_and(|c| c.is_active()))
    }

    fn ask(&mut self, i: usize, id: u64, request: ControllerRequest) {
        self.step(i, |c, cx| c.on_message(cx, ASKER, BrokerMsg::Peer(PeerMsg::ToController { id, request })));
    }

    fn checkpoints(&self, i: usize) -> Vec<String> {
        self.nodes[i].disk.paths().into_iter().filter(|p| p.ends_with(".checkpoint")).collect()
    }
}

fn register(broker: i32) -> ControllerRequest {
    ControllerRequest::Register { broker, incarnation: broker as u64 * 7, host: "h".into(), port: 9092, peer: format!("broker-{broker}:9094"), rack: None }
}

/// A voter that missed the entries the others compacted away is caught up by InstallSnapshot:
/// it ends with the leader's image (announcing the brokers it registered), persists the snapshot
/// as a checkpoint and restarts from it;
/// a broker fetching from offset 0 gets the image, since the history before the log start is
/// gone.
#[test]
fn a_lagging_voter_is_caught_up_by_install_snapshot() {
    let config = ControllerConfig { max_record_bytes_between_snapshots: 600, ..ControllerConfig::default() };
    let mut q = Quorum::new(config);
    q.run_until("an active controller", |q| q.active().is_some());
    let leader = q.active().unwrap();
    let lagging = (0..VOTERS).find(|&i| i != leader).unwrap();
    q.crash(lagging);

    const BROKERS: i32 = 120;
    for b in 1..=BROKERS {
        q.ask(leader, b as u64, register(b));
        q.run_until("the registration commits", move |q| q.answers.iter().any(|(id, _)| *id == b as u64));
    }
    assert!(q.answers.iter().all(|(_, r)| matches!(r, ControllerResponse::Registered { .. })), "{:?}", &q.answers[..3]);
    let stats = q.controller(leader).snapshot_stats();
    assert!(stats.taken >= 5, "the leader took {stats:?}");
    let cps = q.checkpoints(leader);
    assert_eq!(cps.len(), 2, "two newest checkpoints kept: {cps:?}");

    // History before the log start is gone: a broker starting from scratch gets the image.
    q.ask(leader, 9_999, ControllerRequest::FetchMetadata { from: 0 });
    match q.answers.pop() {
        Some((9_999, ControllerResponse::Metadata { snapshot: Some(image), .. })) => assert_eq!(*image, *q.controller(leader).image()),
        other => panic!("fetch from 0 answered {other:?}"),
    }

    q.start(lagging);
    let leader_image = q.controller(leader).image().clone();
    q.run_until("the lagging voter catches up", |q| q.nodes[lagging].controller.as_ref().is_some_and(|c| c.image().offset >= leader_image.offset));
    assert_eq!(q.controller(lagging).snapshot_stats().installed, 1, "caught up through a snapshot");
    // Registrations it knows only from the snapshot are announced too: a controller-only voter
    // reaches broker-only nodes at the addresses they registered.
    assert_eq!(q.nodes[lagging].announced.len(), BROKERS as usize - 1, "every other broker's address announced");
    assert!(!q.checkpoints(lagging).is_empty(), "the installed snapshot is on disk");
    let at = q.controller(leader).image().offset;
    assert_eq!(q.controller(lagging).image().brokers, q.controller(leader).image().brokers);
    assert!(q.controller(lagging).image().offset >= at.min(leader_image.offset));

    // A restart loads the checkpoint and the log after it.
    q.crash(lagging);
    q.start(lagging);
    assert!(q.controller(lagging).snapshot_stats().loaded_index > 0, "restarted from a checkpoint");
    let target = q.controller(leader).image().offset;
    q.run_until("the restarted voter catches up", |q| q.nodes[lagging].controller.as_ref().is_some_and(|c| c.image().offset >= target));
    assert_eq!(q.nodes[lagging].announced.len(), BROKERS as usize - 1, "every other broker's address announced after a load");
    let (a, b) = (q.controller(lagging).image().clone(), q.controller(leader).image().clone());
    assert_eq!(a.brokers.len(), BROKERS as usize);
    if a.offset == b.offset {
        assert_eq!(a, b);
    }

    // And the whole quorum restarted at once recovers the same image from its checkpoints.
    for i in 0..VOTERS {
        q.crash(i);
    }
    for i in 0..VOTERS {
        q.start(i);
    }
    q.run_until("a new active controller", |q| q.active().is_some());
    let leader = q.active().unwrap();
    assert_eq!(q.controller(leader).image().brokers.len(), BROKERS as usize);
}
