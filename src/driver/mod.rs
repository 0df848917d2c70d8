//! The tokio driver: runs sans-IO actors on real time, real files and real sockets.
//!
//! Each actor gets one task and an unbounded mailbox of [`Input`]s. Effects are executed in the
//! order the actor emitted them: replies go to the connection's writer, timers go to the task's
//! own [`Timers`] (one tokio sleep for the earliest; a cancelled timer is forgotten at once, so
//! it never wakes the task), disk operations go to the actor's [`disk::DiskExecutor`]
//! (page-cache writes and reads run at once, in the actor's task; what waits on the device runs
//! on its threads), whose completions come back through the mailbox.

pub mod disk;

use crate::net::Connections;
use runnel_actors::core::{Actor, Addr, Cx, Effect, IoDone, TimerId};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
// tokio's clock: under madsim, the simulated one.
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as Deadline;

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

/// An actor's armed timers, earliest first. Arming a timer again replaces it; cancelling removes
/// it, so a timer that will not fire costs nothing later (a parked fetch arms one and usually
/// cancels it within milliseconds).
#[derive(Default)]
struct Timers {
    /// Armed timer → its deadline and arming sequence number.
    armed: HashMap<TimerId, (Deadline, u64)>,
    /// (deadline, sequence number, timer): the sequence number keeps timers with the same
    /// deadline apart and fires them in the order they were armed.
    queue: BTreeSet<(Deadline, u64, TimerId)>,
    next_seq: u64,
}

impl Timers {
    fn set(&mut self, id: TimerId, at: Deadline) {
        self.cancel(id);
        self.next_seq += 1;
        self.armed.insert(id, (at, self.next_seq));
        self.queue.insert((at, self.next_seq, id));
    }

    fn cancel(&mut self, id: TimerId) {
        if let Some((at, seq)) = self.armed.remove(&id) {
            self.queue.remove(&(at, seq, id));
        }
    }

    /// The earliest deadline.
    fn next(&self) -> Option<Deadline> {
        self.queue.first().map(|(at, _, _)| *at)
    }

    /// Disarm and return the earliest timer if it is due at `now`.
    fn pop_due(&mut self, now: Deadline) -> Option<TimerId> {
        let &(at, seq, id) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.remove(&(at, seq, id));
        self.armed.remove(&id);
        Some(id)
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
    let self_tx = tx.clone();
    tokio::spawn(async move {
        let start = Instant::now();
        let mut cx: Cx<A::Msg> = Cx::new(me, seed);
        let mut timers = Timers::default();
        let mut effects = Vec::new();
        let set_time = |cx: &mut Cx<A::Msg>| {
            let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
            cx.set_time(start.elapsed().as_millis() as u64, wall);
        };
        // One sleep for the earliest deadline, moved as that changes.
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut sleeping_until: Option<Deadline> = None;
        set_time(&mut cx);
        actor.on_start(&mut cx);
        let mut running = true;
        loop {
            cx.drain_effects_into(&mut effects);
            for effect in effects.drain(..) {
                match effect {
                    Effect::Send { to, msg } => {
                        if to == me {
                            let _ = self_tx.send(Input::Message { from: me, msg });
                        } else if let Some(route) = &route {
                            route.route(me, to, msg);
                        } else {
                            tracing::warn!(?to, "no route to actor");
                        }
                    }
                    Effect::Reply { conn, seq, frame } => connections.reply(conn, seq, frame),
                    Effect::Close { conn } => connections.close(conn),
                    Effect::SetTimer { id, after_ms } => timers.set(id, Deadline::now() + Duration::from_millis(after_ms)),
                    Effect::CancelTimer { id } => timers.cancel(id),
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
            // A due timer goes first, one per turn: the effects of one handler (a cancel among
            // them) apply before the next handler runs.
            if let Some(id) = timers.pop_due(Deadline::now()) {
                set_time(&mut cx);
                actor.on_timer(&mut cx, id);
                continue;
            }
            let input = match timers.next() {
                Some(at) => {
                    if sleeping_until != Some(at) {
                        sleep.as_mut().reset(at);
                        sleeping_until = Some(at);
                    }
                    tokio::select! {
                        input = rx.recv() => input,
                        () = &mut sleep => {
                            sleeping_until = None;
                            continue;
                        }
                    }
                }
                None => rx.recv().await,
            };
            let Some(input) = input else { break };
            set_time(&mut cx);
            match input {
                Input::Message { from, msg } => actor.on_message(&mut cx, from, msg),
                Input::Io(done) => actor.on_io(&mut cx, done),
            }
        }
        drop(executor);
        let _ = stopped_tx.send(());
    });
    Ok(ActorHandle { tx, stopped: Some(stopped_rx) })
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_deadline_order_and_cancelled_ones_never() {
        let mut t = Timers::default();
        let now = Deadline::now();
        let ms = Duration::from_millis;
        t.set(TimerId(1), now + ms(30));
        t.set(TimerId(2), now + ms(10));
        t.set(TimerId(3), now + ms(10));
        t.set(TimerId(4), now + ms(20));
        t.cancel(TimerId(4));
        // Re-arming replaces the earlier deadline.
        t.set(TimerId(1), now + ms(5));
        assert_eq!(t.next(), Some(now + ms(5)));
        assert_eq!(t.pop_due(now), None, "nothing is due before its deadline");
        let fired: Vec<u64> = std::iter::from_fn(|| t.pop_due(now + ms(100))).map(|id| id.0).collect();
        // Equal deadlines fire in the order they were armed.
        assert_eq!(fired, vec![1, 2, 3]);
        assert_eq!(t.next(), None);
        assert!(t.armed.is_empty());
        // Cancelling an unknown or fired timer is harmless.
        t.cancel(TimerId(2));
        assert_eq!(t.pop_due(now + ms(100)), None);
    }
}
