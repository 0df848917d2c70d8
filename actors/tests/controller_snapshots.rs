//! Three controller actors (a metadata quorum without brokers) on in-memory disks, driven in
//! virtual time: with a tiny snapshot interval, voters snapshot their image and compact the
//! metadata log; a voter that was down while the others compacted is caught up by the leader's
//! snapshot (InstallSnapshot, in chunks), persists it and restarts from it; brokers far behind
//! get the image in chunks. The same quorum also checks a controller decision about partition
//! reassignment.

use runnel_actors::broker::BrokerMsg;
use runnel_actors::controller::image::MetadataImage;
use runnel_actors::controller::rpc::{AdminOp, ControllerRequest, ControllerResponse, PeerMsg, CONTROLLER_ACTOR};
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
    next_request: u64,
}

impl Quorum {
    fn new(config: ControllerConfig) -> Quorum {
        let mut q = Quorum { nodes: Vec::new(), now: 1, mail: VecDeque::new(), answers: Vec::new(), rng: Rng::new(7), config, next_request: 0 };
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

    /// Send `request` to node `i` and run until it is answered; the answer.
    fn request(&mut self, i: usize, request: ControllerRequest) -> ControllerResponse {
        // Ids of their own, above those the tests pick.
        self.next_request += 1;
        let id = 1_000_000 + self.next_request;
        self.ask(i, id, request);
        self.run_until("an answer", move |q| q.answers.iter().any(|(a, _)| *a == id));
        let at = self.answers.iter().position(|(a, _)| *a == id).expect("answered");
        self.answers.remove(at).1
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
    const CHUNK: usize = 512;
    let config = ControllerConfig { max_record_bytes_between_snapshots: 600, snapshot_chunk_bytes: CHUNK, ..ControllerConfig::default() };
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

    // History before the log start is gone: a broker starting from scratch gets the image, in
    // chunks of at most `snapshot_chunk_bytes`, each fetch saying how much it holds.
    let mut held: Option<(u64, Vec<u8>)> = None;
    let mut chunks = 0;
    let image = loop {
        let cursor = held.as_ref().map(|(offset, bytes)| (*offset, bytes.len() as u64));
        q.ask(leader, 9_999, ControllerRequest::FetchMetadata { from: 0, image: cursor });
        let Some((9_999, ControllerResponse::Metadata { image: Some(chunk), .. })) = q.answers.pop() else { panic!("fetch from 0 answered no image chunk") };
        assert!(chunk.bytes.len() <= CHUNK, "a chunk of {} bytes", chunk.bytes.len());
        let (_, bytes) = held.get_or_insert((chunk.offset, Vec::new()));
        assert_eq!(chunk.position, bytes.len() as u64, "the chunk goes on from what is held");
        bytes.extend_from_slice(&chunk.bytes);
        chunks += 1;
        if bytes.len() as u64 == chunk.total {
            break MetadataImage::decode(bytes).expect("the image decodes");
        }
    };
    assert!(chunks > 3, "the image took {chunks} chunks");
    assert_eq!(image, *q.controller(leader).image());

    q.start(lagging);
    let leader_image = q.controller(leader).image().clone();
    q.run_until("the lagging voter catches up", |q| q.nodes[lagging].controller.as_ref().is_some_and(|c| c.image().offset >= leader_image.offset));
    assert_eq!(q.controller(lagging).snapshot_stats().installed, 1, "caught up through a snapshot");
    assert!(q.controller(lagging).snapshot_stats().chunks_received > 3, "the snapshot came in chunks: {:?}", q.controller(lagging).snapshot_stats());
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

/// A reassignment that supersedes one in progress drops the replicas the first was adding, and
/// the leader may be one of them (elected while being added, after the leader before it was
/// fenced): the controller then elects a leader from what is left of the ISR instead of
/// committing a leader outside it. (Found by the simulator: cluster-5-reassign seed 214.)
#[test]
fn a_superseding_reassignment_moves_leadership_off_a_dropped_replica() {
    let mut q = Quorum::new(ControllerConfig::default());
    q.run_until("an active controller", |q| q.active().is_some());
    let leader = q.active().unwrap();
    let ask = |q: &mut Quorum, request: ControllerRequest| q.request(leader, request);
    for b in 11..=14 {
        let ControllerResponse::Registered { epoch } = ask(&mut q, register(b)) else { panic!("broker {b} not registered") };
        let offset = q.controller(leader).image().offset;
        ask(&mut q, ControllerRequest::Heartbeat { broker: b, epoch, metadata_offset: offset, shutdown: false });
    }
    q.run_until("every broker unfenced", |q| (11..=14).all(|b| q.controller(leader).image().brokers.get(&b).is_some_and(|x| !x.fenced)));
    let admin = |op: AdminOp| ControllerRequest::Admin(op);
    let create = AdminOp::CreateTopic {
        name: "t".into(),
        partitions: 1,
        replication_factor: -1,
        assignments: vec![vec![11, 12]],
        configs: BTreeMap::new(),
        validate_only: false,
    };
    ask(&mut q, admin(create));
    let part = |q: &Quorum| q.controller(leader).image().partition("t", 0).cloned();
    q.run_until("the topic", |q| part(q).is_some());
    // Move it to [13, 14]; 13 catches up and joins the ISR, 14 not yet.
    ask(&mut q, admin(AdminOp::Reassign { topic: "t".into(), index: 0, replicas: Some(vec![13, 14]) }));
    q.run_until("the reassignment", |q| part(q).is_some_and(|p| p.adding == vec![13, 14]));
    let p = part(&q).unwrap();
    let epoch = q.controller(leader).image().brokers[&11].epoch;
    let isr = ControllerRequest::AlterPartition {
        broker: 11,
        epoch,
        topic: "t".into(),
        index: 0,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        isr: vec![11, 12, 13],
    };
    ask(&mut q, isr);
    q.run_until("13 in the ISR", |q| part(q).is_some_and(|p| p.isr.contains(&13)));
    // The leader's process is gone: 13, first in the replica order, takes over.
    q.step(leader, |c, cx| c.on_message(cx, ASKER, BrokerMsg::PeerRefused { node: 11 }));
    q.run_until("13 leads", |q| part(q).is_some_and(|p| p.leader == 13));
    // Back to [11, 12]: 13 leaves at once, and with it the leadership.
    ask(&mut q, admin(AdminOp::Reassign { topic: "t".into(), index: 0, replicas: Some(vec![11, 12]) }));
    q.run_until("the new reassignment", |q| part(q).is_some_and(|p| p.replicas == vec![11, 12]));
    let p = part(&q).unwrap();
    assert_eq!((p.leader, p.isr.clone()), (12, vec![12]), "{p:?}");
    assert_eq!(q.controller(leader).image().check(), Ok(()));
}

/// A registration under a live broker's id from another incarnation (a second process, or the
/// same broker restarted before its session ended) is refused with DUPLICATE_BROKER_REGISTRATION;
/// once the old session ends (no heartbeat for `broker.session.timeout.ms`), the new incarnation
/// registers with a new epoch.
#[test]
fn a_second_incarnation_waits_for_the_first_ones_session() {
    let mut q = Quorum::new(ControllerConfig::default());
    q.run_until("an active controller", |q| q.active().is_some());
    let leader = q.active().unwrap();
    let register_as =
        |incarnation: u64| ControllerRequest::Register { broker: 11, incarnation, host: "h".into(), port: 9092, peer: "broker-11:9094".into(), rack: None };
    let ask = |q: &mut Quorum, request: ControllerRequest| q.request(leader, request);
    let ControllerResponse::Registered { epoch } = ask(&mut q, register_as(1)) else { panic!("not registered") };
    let offset = q.controller(leader).image().offset;
    ask(&mut q, ControllerRequest::Heartbeat { broker: 11, epoch, metadata_offset: offset, shutdown: false });
    q.run_until("broker 11 unfenced", |q| q.controller(leader).image().brokers.get(&11).is_some_and(|b| !b.fenced));
    match ask(&mut q, register_as(2)) {
        ControllerResponse::RegisterRefused { error } => assert_eq!(error, 101, "DUPLICATE_BROKER_REGISTRATION"),
        other => panic!("a second incarnation during a live session got {other:?}"),
    }
    assert_eq!(q.controller(leader).image().brokers[&11].incarnation, 1);
    // No more heartbeats: the session ends, the broker is fenced, the new incarnation gets in.
    q.run_until("broker 11 fenced", |q| q.controller(leader).image().brokers.get(&11).is_some_and(|b| b.fenced));
    let ControllerResponse::Registered { epoch: new_epoch } = ask(&mut q, register_as(2)) else { panic!("not registered after the session") };
    assert!(new_epoch > epoch);
    assert_eq!(q.controller(leader).image().brokers[&11].incarnation, 2);
}
