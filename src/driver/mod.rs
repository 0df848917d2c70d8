//! The tokio driver: runs sans-IO actors on real time, real files and real sockets.
//!
//! Each actor gets one task and an unbounded mailbox of [`Input`]s. Effects are executed in the
//! order the actor emitted them: replies go to the connection's writer, timers become tokio
//! sleeps (cancelled by generation), disk operations go to the actor's [`disk::DiskExecutor`]
//! (page-cache writes and reads run at once, in the actor's task; what waits on the device runs
//! on its threads), whose completions come back through the mailbox.

pub mod disk;

use crate::net::Connections;
use runnel_actors::core::{Actor, Addr, Cx, Effect, IoDone, TimerId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// One input to an actor.
#[derive(Debug)]
pub enum Input<M> {
    /// A message from another actor or from the network front.
    Message {
        /// Sender.
        from: Addr,
        /// Message.
        msg: M,
    },
    /// A timer fired (with the generation it was armed with).
    Timer(TimerId, u64),
    /// A disk operation completed.
    Io(IoDone),
}

/// Sends inputs to a running actor.
pub struct ActorHandle<M> {
    tx: mpsc::UnboundedSender<Input<M>>,
    /// Resolves when the actor stops (by its own `Stop` effect or because its mailbox closed).
    pub stopped: Option<oneshot::Receiver<()>>,
}

impl<M> Clone for ActorHandle<M> {
    fn clone(&self) -> Self {
        ActorHandle { tx: self.tx.clone(), stopped: None }
    }
}

impl<M> ActorHandle<M> {
    /// Deliver a message; false if the actor has stopped.
    pub fn send(&self, from: Addr, msg: M) -> bool {
        self.tx.send(Input::Message { from, msg }).is_ok()
    }
}

/// What an actor reaches beyond itself: other actors, and the node-to-node addresses it learns.
pub trait Links<M>: Send + Sync {
    /// Deliver `msg` from `from` to `to` (on this node or another).
    fn route(&self, from: Addr, to: Addr, msg: M);
    /// Node `node` listens at `address` (see [`Effect::PeerAddress`]).
    fn peer_address(&self, node: i32, address: String, epoch: i64);
}

/// A shared [`Links`].
pub type Route<M> = Arc<dyn Links<M>>;

/// Start `actor` at `me` with its disk rooted at `data_dir`; replies go through `connections`,
/// messages to other actors and learned addresses through `route`.
pub fn spawn_actor<A>(
    mut actor: A,
    me: Addr,
    data_dir: PathBuf,
    connections: Arc<Connections>,
    seed: u64,
    route: Option<Route<A::Msg>>,
) -> std::io::Result<ActorHandle<A::Msg>>
where
    A: Actor + Send + 'static,
    A::Msg: Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Input<A::Msg>>();
    let (stopped_tx, stopped_rx) = oneshot::channel();
    let io_tx = tx.clone();
    let executor = disk::DiskExecutor::start(data_dir, move |done| {
        let _ = io_tx.send(Input::Io(done));
    })?;
    let timer_tx = tx.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut cx: Cx<A::Msg> = Cx::new(me, seed);
        let mut timers: HashMap<TimerId, u64> = HashMap::new();
        let mut generation = 0u64;
        let mut effects = Vec::new();
        let set_time = |cx: &mut Cx<A::Msg>| {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            cx.set_time(start.elapsed().as_millis() as u64, wall);
        };
        set_time(&mut cx);
        actor.on_start(&mut cx);
        let mut running = true;
        loop {
            cx.drain_effects_into(&mut effects);
            for effect in effects.drain(..) {
                match effect {
                    Effect::Send { to, msg } => {
                        if to == me {
                            let _ = timer_tx.send(Input::Message { from: me, msg });
                        } else if let Some(route) = &route {
                            route.route(me, to, msg);
                        } else {
                            tracing::warn!(?to, "no route to actor");
                        }
                    }
                    Effect::Reply { conn, seq, frame } => connections.reply(conn, seq, frame),
                    Effect::Close { conn } => connections.close(conn),
                    Effect::SetTimer { id, after_ms } => {
                        generation += 1;
                        timers.insert(id, generation);
                        let tx = timer_tx.clone();
                        let g = generation;
                        tokio::spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
                            let _ = tx.send(Input::Timer(id, g));
                        });
                    }
                    Effect::CancelTimer { id } => {
                        timers.remove(&id);
                    }
                    Effect::Disk { token, op } => executor.submit(token, op),
                    Effect::PeerAddress { node, address, epoch } => {
                        if let Some(route) = &route {
                            route.peer_address(node, address, epoch);
                        }
                    }
                    Effect::Stop => running = false,
                }
            }
            if !running {
                break;
            }
            let Some(input) = rx.recv().await else { break };
            set_time(&mut cx);
            match input {
                Input::Message { from, msg } => actor.on_message(&mut cx, from, msg),
                Input::Timer(id, g) => {
                    if timers.get(&id) == Some(&g) {
                        timers.remove(&id);
                        actor.on_timer(&mut cx, id);
                    }
                }
                Input::Io(done) => actor.on_io(&mut cx, done),
            }
        }
        drop(executor);
        let _ = stopped_tx.send(());
    });
    Ok(ActorHandle { tx, stopped: Some(stopped_rx) })
}
