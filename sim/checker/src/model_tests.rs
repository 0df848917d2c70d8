//! Property: histories from a correct Kafka-like log are always valid.
//!
//! The model is an in-memory set of append-only logs (one per key) with consumers that read
//! contiguously from a position. Each operation takes effect atomically at one instant between
//! its invocation and completion, so every dependency the checker can infer (ww, wr, realtime,
//! process) agrees with effect order, and no anomaly can appear. Faults the model injects, all
//! of which a correct system survives: indefinite (info) outcomes, with the effect applied or
//! not, after which the client is replaced by a fresh process; failed sends that had no effect;
//! failed polls that do not move the consumer; reassignment to a subset of keys; and offsets
//! left unobserved (gaps, like transaction markers).

use std::collections::BTreeMap;

use proptest::prelude::*;

use crate::history::{Handle, History, Key, Mop, OpType, Value, F};
use crate::{check, Options};

const KEYS: u64 = 3;

/// One step of the random schedule, interpreted against the model.
#[derive(Clone, Debug)]
enum Step {
    /// Client `client` starts a send of `count` values to keys chosen by `keys`.
    Send { client: usize, keys: Vec<u64> },
    /// Client `client` starts a poll of up to `max` records per key.
    Poll { client: usize, max: usize },
    /// Client starts a txn: poll, then send to `keys`.
    Txn { client: usize, keys: Vec<u64>, max: usize },
    /// Client starts an assign to the keys in bitmask `mask`.
    Assign { client: usize, mask: u8 },
    /// The pending op of `client` takes effect (if not yet) and completes with `outcome`.
    Complete { client: usize, outcome: Outcome },
    /// An offset nobody will ever see (a transaction marker) appears in `key`.
    Gap { key: u64 },
    /// Fault (negative tests only): the broker drops an acknowledged record nobody has read yet.
    LoseAcknowledged { key: u64 },
    /// Fault (negative tests only): the broker appends an acknowledged record a second time.
    DuplicateAcknowledged { key: u64 },
}

#[derive(Clone, Copy, Debug)]
enum Outcome {
    Ok,
    /// Info, with or without the effect applied.
    Info {
        applied: bool,
    },
    /// Fail: only for ops whose effect can be withheld.
    Fail,
}

#[derive(Default)]
struct Client {
    process: u64,
    /// Key -> next offset to read; absent keys are not assigned.
    positions: BTreeMap<Key, i64>,
    pending: Option<Pending>,
}

struct Pending {
    handle: Handle,
    f: F,
    sends: Vec<(Key, u64)>,
    max: usize,
    assign: Vec<Key>,
}

struct Model {
    /// Key -> (offset, Some(value)) records; None is an unreadable marker.
    logs: BTreeMap<Key, Vec<Option<u64>>>,
    clients: Vec<Client>,
    history: History,
    next_value: u64,
    next_process: u64,
    time_ns: u64,
    /// Key -> offsets of records from ok sends.
    acknowledged: BTreeMap<Key, Vec<usize>>,
    /// Every (key, value) any poll returned.
    returned: std::collections::BTreeSet<(Key, u64)>,
    /// Whether an injected fault must make the history invalid.
    broken: bool,
}

impl Model {
    fn new(clients: usize) -> Self {
        let clients = (0..clients).map(|i| Client { process: i as u64, positions: (0..KEYS).map(|k| (k, 0)).collect(), pending: None }).collect::<Vec<_>>();
        Model {
            logs: (0..KEYS).map(|k| (k, Vec::new())).collect(),
            next_process: clients.len() as u64,
            clients,
            history: History::new(),
            next_value: 1,
            time_ns: 0,
            acknowledged: BTreeMap::new(),
            returned: Default::default(),
            broken: false,
        }
    }

    fn tick(&mut self) -> u64 {
        self.time_ns += 10;
        self.time_ns
    }

    fn start(&mut self, client: usize, f: F, sends: Vec<Key>, max: usize, assign: Vec<Key>) {
        if self.clients[client].pending.is_some() {
            return;
        }
        let sends: Vec<(Key, u64)> = sends
            .into_iter()
            .map(|key| {
                self.next_value += 1;
                (key, self.next_value)
            })
            .collect();
        let mut mops = Vec::new();
        if matches!(f, F::Poll | F::Txn) {
            mops.push(Mop::poll());
        }
        mops.extend(sends.iter().map(|&(key, value)| Mop::send(key, value)));
        let value = if f == F::Assign { Value::Keys { keys: assign.clone(), seek_to_beginning: false } } else { Value::Mops(mops) };
        let time = self.tick();
        let handle = self.history.invoke(self.clients[client].process, f, value, time);
        self.clients[client].pending = Some(Pending { handle, f, sends, max, assign });
    }

    /// Applies the pending op atomically now; returns its completion value.
    fn apply(&mut self, client: usize, commit_reads: bool) -> Value {
        let pending = self.clients[client].pending.as_ref().expect("pending");
        let (f, max, sends, assign) = (pending.f, pending.max, pending.sends.clone(), pending.assign.clone());
        if f == F::Assign {
            if !commit_reads {
                return Value::Keys { keys: assign, seek_to_beginning: false };
            }
            let positions = &mut self.clients[client].positions;
            positions.retain(|key, _| assign.contains(key));
            for key in &assign {
                positions.entry(*key).or_insert(0);
            }
            return Value::Keys { keys: assign, seek_to_beginning: false };
        }
        let mut mops = Vec::new();
        if matches!(f, F::Poll | F::Txn) {
            let mut reads: BTreeMap<Key, Vec<(i64, u64)>> = BTreeMap::new();
            let positions = self.clients[client].positions.clone();
            for (key, position) in positions {
                let log = &self.logs[&key];
                let mut at = position as usize;
                let mut records = Vec::new();
                while at < log.len() && records.len() < max {
                    if let Some(value) = log[at] {
                        records.push((at as i64, value));
                    }
                    at += 1;
                }
                self.returned.extend(records.iter().map(|&(_, value)| (key, value)));
                reads.insert(key, records);
                if commit_reads {
                    self.clients[client].positions.insert(key, at as i64);
                }
            }
            mops.push(Mop::Poll { reads });
        }
        for (key, value) in sends {
            let log = self.logs.get_mut(&key).expect("key");
            log.push(Some(value));
            mops.push(Mop::sent(key, log.len() as i64 - 1, value));
        }
        Value::Mops(mops)
    }

    fn complete(&mut self, client: usize, outcome: Outcome) {
        let Some(pending) = &self.clients[client].pending else { return };
        let invoked = self.history.ops()[pending.handle.index()].value.clone();
        let (kind, value) = match outcome {
            Outcome::Ok => (OpType::Ok, self.apply(client, true)),
            Outcome::Info { applied: true } => {
                let applied = self.apply(client, false);
                // The client may or may not have heard what happened to its sends.
                (OpType::Info, if pending_has_sends(&invoked) { invoked } else { applied })
            }
            Outcome::Info { applied: false } => (OpType::Info, invoked),
            Outcome::Fail => {
                // A failed poll returned data but did not move the consumer; a failed send did nothing.
                let value = if self.clients[client].pending.as_ref().unwrap().sends.is_empty() { self.apply(client, false) } else { invoked };
                (OpType::Fail, value)
            }
        };
        if kind == OpType::Ok {
            for mop in value.mops() {
                if let Mop::Send { key, offset: Some(offset), .. } = mop {
                    self.acknowledged.entry(*key).or_default().push(*offset as usize);
                }
            }
        }
        let pending = self.clients[client].pending.take().expect("pending");
        let time = self.tick();
        self.history.complete(pending.handle, time, kind, value, (kind == OpType::Info).then(|| "timeout".to_string()));
        if kind == OpType::Info {
            // An indefinite outcome retires the client: a fresh consumer starts from the beginning.
            let client = &mut self.clients[client];
            client.process = self.next_process;
            self.next_process += 1;
            client.positions = (0..KEYS).map(|k| (k, 0)).collect();
        }
    }

    fn run(&mut self, steps: Vec<Step>) {
        // At least one acknowledged send, so the history is never empty of dependencies.
        self.start(0, F::Send, vec![0], 0, Vec::new());
        self.complete(0, Outcome::Ok);
        for step in steps {
            match step {
                Step::Send { client, keys } => self.start(client, F::Send, keys, 0, Vec::new()),
                Step::Poll { client, max } => self.start(client, F::Poll, Vec::new(), max, Vec::new()),
                Step::Txn { client, keys, max } => self.start(client, F::Txn, keys, max, Vec::new()),
                Step::Assign { client, mask } => {
                    let keys = (0..KEYS).filter(|k| mask & (1 << k) != 0).collect();
                    self.start(client, F::Assign, Vec::new(), 0, keys)
                }
                Step::Complete { client, outcome } => self.complete(client, outcome),
                Step::Gap { key } => self.logs.get_mut(&key).expect("key").push(None),
                Step::LoseAcknowledged { key } => {
                    let log = self.logs.get_mut(&key).expect("key");
                    let offsets = self.acknowledged.get(&key).map(Vec::as_slice).unwrap_or_default();
                    let unread = offsets.iter().copied().find(|&at| log[at].is_some_and(|value| !self.returned.contains(&(key, value))));
                    if let Some(at) = unread {
                        log[at] = None;
                        self.broken = true;
                    }
                }
                Step::DuplicateAcknowledged { key } => {
                    let log = self.logs.get_mut(&key).expect("key");
                    let offsets = self.acknowledged.get(&key).map(Vec::as_slice).unwrap_or_default();
                    if let Some(value) = offsets.iter().find_map(|&at| log[at]) {
                        log.push(Some(value));
                        self.broken = true;
                    }
                }
            }
        }
        for client in 0..self.clients.len() {
            self.complete(client, Outcome::Ok);
        }
        // Final reads: a fresh consumer reads every key to its end.
        let reader = self.clients.len();
        self.clients.push(Client { process: self.next_process, positions: (0..KEYS).map(|k| (k, 0)).collect(), pending: None });
        self.start(reader, F::Poll, Vec::new(), usize::MAX, Vec::new());
        self.complete(reader, Outcome::Ok);
    }
}

fn pending_has_sends(value: &Value) -> bool {
    value.mops().iter().any(|mop| matches!(mop, Mop::Send { .. }))
}

fn step(clients: usize) -> impl Strategy<Value = Step> {
    let client = 0..clients;
    let keys = proptest::collection::vec(0..KEYS, 1..4);
    let outcome = prop_oneof![
        6 => Just(Outcome::Ok),
        1 => any::<bool>().prop_map(|applied| Outcome::Info { applied }),
        1 => Just(Outcome::Fail),
    ];
    prop_oneof![
        3 => (client.clone(), keys.clone()).prop_map(|(client, keys)| Step::Send { client, keys }),
        3 => (client.clone(), 1..4usize).prop_map(|(client, max)| Step::Poll { client, max }),
        2 => (client.clone(), keys, 1..4usize).prop_map(|(client, keys, max)| Step::Txn { client, keys, max }),
        1 => (client.clone(), 1..8u8).prop_map(|(client, mask)| Step::Assign { client, mask }),
        8 => (client, outcome).prop_map(|(client, outcome)| Step::Complete { client, outcome }),
        1 => (0..KEYS).prop_map(|key| Step::Gap { key }),
    ]
}

/// A model history of `steps` random steps over `clients` clients, and whether a fault broke it.
fn model_history(clients: usize, steps: Vec<Step>) -> (History, bool) {
    let mut model = Model::new(clients);
    model.run(steps);
    (model.history, model.broken)
}

fn fault() -> impl Strategy<Value = Step> {
    prop_oneof![(0..KEYS).prop_map(|key| Step::LoseAcknowledged { key }), (0..KEYS).prop_map(|key| Step::DuplicateAcknowledged { key }),]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn correct_logs_produce_valid_histories(steps in proptest::collection::vec(step(4), 0..120), ww_deps: bool, sub_via_subscribe: bool) {
        // Proves no check fires on a correct system, whatever the interleaving and faults.
        let (history, _) = model_history(4, steps);
        let report = check(&history, &Options { ww_deps, sub_via_subscribe, ..Options::default() });
        prop_assert!(report.valid, "{report}\n{:#?}", history.ops());
    }

    #[test]
    fn lost_or_duplicated_records_are_caught(
        mut steps in proptest::collection::vec(step(4), 1..120),
        faults in proptest::collection::vec((any::<proptest::sample::Index>(), fault()), 1..3),
        ww_deps: bool,
    ) {
        // Proves the checker is not vacuous: the same model with an acknowledged record dropped
        // before anyone read it, or appended twice, always yields an invalid history.
        for (at, fault) in faults {
            let at = at.index(steps.len());
            steps.insert(at, fault);
        }
        let (history, broken) = model_history(4, steps);
        let report = check(&history, &Options { ww_deps, sub_via_subscribe: true, ..Options::default() });
        prop_assert!(!broken || !report.valid, "{report}\n{:#?}", history.ops());
    }
}

#[test]
fn large_histories_check_quickly() {
    // Proves a large correct history checks as valid; `cargo test --release` times it.
    let runner_steps: Vec<Step> = {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
        let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
        let steps = if cfg!(debug_assertions) { 20_000 } else { 220_000 };
        proptest::collection::vec(step(8), steps).new_tree(&mut runner).expect("tree").current()
    };
    let (history, _) = model_history(8, runner_steps);
    let started = std::time::Instant::now();
    let report = check(&history, &Options { ww_deps: true, ..Options::default() });
    let elapsed = started.elapsed();
    assert!(report.valid, "{report}");
    eprintln!("checked {} ops in {elapsed:?}", history.ops().len());
}
