//! One body, two worlds: a scripted client sends a fixed sequence of Kafka request frames to a
//! broker in the simulator; `tests/conformance.rs` sends the same frames to the real binary over
//! TCP and compares the answers. A difference is a driver bug (DESIGN.md).

use crate::faults::FaultPlan;
use crate::scenario::Scenario;
use crate::world::World;
use bytes::Bytes;
use runnel_actors::client::ClientMsg;
use runnel_actors::core::{Actor, Addr, Cx, IoDone, TimerId};

/// Sends its frames one at a time, each after the previous one was answered.
pub struct Scripted {
    broker: Addr,
    frames: Vec<Bytes>,
    next: usize,
    /// Responses so far, in order.
    pub responses: Vec<Bytes>,
}

impl Scripted {
    /// A client that will send `frames` to `broker`.
    pub fn new(broker: Addr, frames: Vec<Bytes>) -> Self {
        Scripted { broker, frames, next: 0, responses: Vec::new() }
    }

    /// Whether every frame was answered.
    pub fn is_done(&self) -> bool {
        self.responses.len() == self.frames.len()
    }

    fn send_next(&mut self, cx: &mut Cx<ClientMsg>) {
        if let Some(frame) = self.frames.get(self.next) {
            self.next += 1;
            cx.send(self.broker, ClientMsg::Request(frame.clone()));
        }
    }
}

impl Actor for Scripted {
    type Msg = ClientMsg;
    fn on_start(&mut self, cx: &mut Cx<ClientMsg>) {
        // Give the broker time to recover and finish creating topics before the script starts.
        cx.set_timer(TimerId(1), 10);
    }
    fn on_message(&mut self, cx: &mut Cx<ClientMsg>, _from: Addr, msg: ClientMsg) {
        match msg {
            ClientMsg::Response(frame) => {
                self.responses.push(frame);
                cx.set_timer(TimerId(1), 5);
            }
            ClientMsg::Disconnected => panic!("scripted client disconnected after {} responses", self.responses.len()),
            ClientMsg::Request(_) => {}
        }
    }
    fn on_timer(&mut self, cx: &mut Cx<ClientMsg>, _timer: TimerId) {
        self.send_next(cx);
    }
    fn on_io(&mut self, _cx: &mut Cx<ClientMsg>, _done: IoDone) {}
}

/// Run `frames` against a single fault-free simulated broker; the response frames in order.
pub fn run_script(seed: u64, frames: Vec<Bytes>) -> Vec<Bytes> {
    let scenario = Scenario {
        name: "conformance",
        description: "a scripted client against one broker, no faults",
        nodes: 1,
        controller_only: 0,
        producers: 0,
        consumers: 0,
        group_consumers: 0,
        consumer_protocol: false,
        replication_factor: 1,
        partitions: 1,
        send_interval_ms: 1000,
        faults_until_ms: 0,
        deadline_ms: 120_000,
        broker_settings: &[],
        lost_at_heal: 0,
        reassign_every_ms: 0,
        delete_records_every_ms: 0,
        describe_quorum_every_ms: 0,
        list_offsets_every_ms: 0,
    };
    World::scripted(seed, &scenario, FaultPlan::default(), frames)
}
