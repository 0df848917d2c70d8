//! Running a node: start the actors its `process.roles` ask for on the tokio driver — the
//! broker (with its Kafka listener) and/or the controller (a quorum voter) — connect them to
//! each other and to the other nodes through the node transport, and serve until the node stops
//! or the process is signalled.
//!
//! The node transport knows the quorum voters from the configuration. Every other node (a
//! broker-only node) is learned as registrations are: the actors emit the node-to-node address
//! of every broker registration they receive or apply, and the [`Router`] hands the newest to
//! the transport, so a controller can answer a broker it has no configured address for and
//! brokers can replicate from each other.

use crate::config::ServerConfig;
use crate::driver::{spawn_actor, ActorHandle, Links, Route};
use crate::net::{serve, Connections};
use crate::transport::{Transport, TransportConfig};
use runnel_actors::broker::{Broker, BrokerMsg};
use runnel_actors::controller::rpc::{PeerMsg, BROKER_ACTOR, CONTROLLER_ACTOR};
use runnel_actors::controller::Controller;
use runnel_actors::core::{peer_address_replaces, Addr};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::net::TcpListener;

/// Delivers actor messages: to an actor of this node through its mailbox, to another node
/// through the transport (only [`BrokerMsg::Peer`] messages cross nodes); and keeps the
/// transport's addresses of broker-only nodes up to date.
pub struct Router {
    me: i32,
    local: RwLock<BTreeMap<u32, ActorHandle<BrokerMsg>>>,
    transport: OnceLock<Transport<PeerMsg>>,
    /// The voters: their addresses come from the configuration and are never replaced.
    configured: BTreeSet<i32>,
    /// Learned addresses of the other nodes: node → (registration epoch, address); epoch -1 for
    /// a registration not committed yet. std Mutex: never held across an await.
    learned: Mutex<BTreeMap<i32, (i64, String)>>,
}

impl Router {
    fn new(me: i32, configured: BTreeSet<i32>) -> Arc<Router> {
        Arc::new(Router { me, local: RwLock::new(BTreeMap::new()), transport: OnceLock::new(), configured, learned: Mutex::new(BTreeMap::new()) })
    }
}

impl Links<BrokerMsg> for Router {
    fn route(&self, from: Addr, to: Addr, msg: BrokerMsg) {
        if to.node == self.me {
            let handle = self.local.read().expect("router lock").get(&to.actor).cloned();
            match handle {
                Some(h) => {
                    h.send(from, msg);
                }
                None => tracing::debug!(?to, "no such actor on this node"),
            }
        } else if let BrokerMsg::Peer(m) = msg {
            match self.transport.get() {
                Some(t) => {
                    if !t.send(from, to, m) {
                        tracing::trace!(?to, "node transport dropped a message (unknown node or full queue)");
                    }
                }
                None => tracing::warn!(?to, "no node transport: this node has no node-to-node listener"),
            }
        }
    }

    fn peer_address(&self, node: i32, address: String, epoch: i64) {
        if node == self.me || address.is_empty() || self.configured.contains(&node) {
            return;
        }
        let mut learned = self.learned.lock().expect("learned lock");
        if !peer_address_replaces(learned.get(&node).map(|(e, a)| (*e, a.as_str())), epoch, &address) {
            return;
        }
        learned.insert(node, (epoch, address.clone()));
        if let Some(t) = self.transport.get() {
            t.add_peer(node, address);
        }
    }
}

/// Run a node until SIGINT/SIGTERM or until an actor stops on a fatal error.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    // Bind the Kafka listener first: a port in use fails the start at once.
    let listener = match config.listener {
        Some(addr) if config.roles.broker => Some(TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?),
        _ => None,
    };
    let connections = Arc::new(Connections::default());
    let node = config.broker.node_id;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let router = Router::new(node, config.peers.keys().copied().collect());
    let route: Route<BrokerMsg> = router.clone();
    if let Some(listen) = config.peer_listener {
        let r = router.clone();
        let deliver: crate::transport::Deliver<PeerMsg> = Arc::new(move |from, to, msg| r.route(from, to, BrokerMsg::Peer(msg)));
        let transport = Transport::start(node, listen, config.peers.clone(), TransportConfig::default(), deliver)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for peers on {listen}: {e}"))?;
        // A peer whose address refuses connections is gone: tell this node's controller (which
        // fences it) and broker (which stops naming it as a leader meanwhile).
        let r = router.clone();
        let actors: Vec<u32> = [(config.roles.controller, CONTROLLER_ACTOR), (config.roles.broker, BROKER_ACTOR)]
            .into_iter()
            .filter_map(|(on, actor)| on.then_some(actor))
            .collect();
        transport.on_peer_refused(Arc::new(move |peer| {
            for &actor in &actors {
                let me = Addr { node, actor };
                r.route(me, me, BrokerMsg::PeerRefused { node: peer });
            }
        }));
        let _ = router.transport.set(transport);
    }
    let mut stops = Vec::new();
    if config.roles.controller {
        let mut controller = spawn_actor(
            Controller::new(config.controller.clone()),
            Addr { node, actor: CONTROLLER_ACTOR },
            config.data_dir.clone(),
            connections.clone(),
            seed ^ 0x5eed,
            Some(route.clone()),
        )?;
        stops.push(("controller", controller.stopped.take().expect("fresh handle")));
        router.local.write().expect("router lock").insert(CONTROLLER_ACTOR, controller);
    }
    let mut front = None;
    if let Some(listener) = listener {
        let mut broker = spawn_actor(
            Broker::new(config.broker.clone()),
            Addr { node, actor: BROKER_ACTOR },
            config.data_dir.clone(),
            connections.clone(),
            seed,
            Some(route),
        )?;
        stops.push(("broker", broker.stopped.take().expect("fresh handle")));
        router.local.write().expect("router lock").insert(BROKER_ACTOR, broker.clone());
        let links = router.clone();
        let closed_links: crate::net::ClosedLinks = Arc::new(move || links.transport.get().map(|t| t.closed_peers()).unwrap_or_default());
        front = Some(tokio::spawn(serve(listener, broker, connections, config.max_request_bytes, closed_links)));
    }
    tracing::info!(
        roles = %config.roles,
        listener = ?config.listener.filter(|_| config.roles.broker),
        node_listener = ?config.peer_listener,
        data = %config.data_dir.display(),
        node,
        "runnel node starting"
    );
    let abort_front = |front: &Option<tokio::task::JoinHandle<()>>| {
        if let Some(f) = front {
            f.abort();
        }
    };
    #[cfg(not(madsim))]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(not(madsim))]
    let terminated = term.recv();
    #[cfg(madsim)]
    let terminated = std::future::pending::<Option<()>>();
    let mut stopped = first_stopped(stops);
    tokio::select! {
        Some(what) = stopped.recv() => {
            abort_front(&front);
            anyhow::bail!("the {what} stopped on a fatal error (see the log above)");
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: controlled shutdown"),
        _ = terminated => tracing::info!("terminated: controlled shutdown"),
    }
    if config.roles.broker {
        // Controlled shutdown: the controller moves leadership away, then the broker stops. A
        // controller-only node just stops; the quorum elects another leader if it led.
        router.route(Addr { node, actor: BROKER_ACTOR }, Addr { node, actor: BROKER_ACTOR }, BrokerMsg::Shutdown);
        let broker_stopped = async {
            while let Some(what) = stopped.recv().await {
                if what == "broker" {
                    return;
                }
            }
        };
        match tokio::time::timeout(std::time::Duration::from_secs(10), broker_stopped).await {
            Ok(_) => tracing::info!("controlled shutdown complete"),
            Err(_) => tracing::warn!("controlled shutdown did not finish within 10 s; exiting anyway"),
        }
    }
    abort_front(&front);
    Ok(())
}

/// Names the actors of `stops` as each one stops.
fn first_stopped(stops: Vec<(&'static str, tokio::sync::oneshot::Receiver<()>)>) -> tokio::sync::mpsc::Receiver<&'static str> {
    let (tx, rx) = tokio::sync::mpsc::channel(stops.len().max(1));
    for (what, s) in stops {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = s.await;
            let _ = tx.send(what).await;
        });
    }
    rx
}
