//! Running a node: bind the Kafka listener, start the broker actor (and, on a voter, the
//! controller actor) on the tokio driver, connect them to each other and to the other nodes
//! through the node transport, and serve until the node stops or the process is signalled.

use crate::config::ServerConfig;
use crate::driver::{spawn_actor, ActorHandle, Route};
use crate::net::{serve, Connections};
use crate::transport::{Transport, TransportConfig};
use runnel_actors::broker::{Broker, BrokerMsg};
use runnel_actors::controller::rpc::{PeerMsg, BROKER_ACTOR, CONTROLLER_ACTOR};
use runnel_actors::controller::Controller;
use runnel_actors::core::Addr;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use tokio::net::TcpListener;

/// Delivers actor messages: to an actor of this node through its mailbox, to another node
/// through the transport (only [`BrokerMsg::Peer`] messages cross nodes).
pub struct Router {
    me: i32,
    local: RwLock<BTreeMap<u32, ActorHandle<BrokerMsg>>>,
    transport: OnceLock<Transport<PeerMsg>>,
}

impl Router {
    fn new(me: i32) -> Arc<Router> {
        Arc::new(Router { me, local: RwLock::new(BTreeMap::new()), transport: OnceLock::new() })
    }

    /// Deliver `msg` from `from` to `to`.
    pub fn route(&self, from: Addr, to: Addr, msg: BrokerMsg) {
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
                    t.send(from, to, m);
                }
                None => tracing::warn!(?to, "no node transport: this node has no peers configured"),
            }
        }
    }
}

/// Run a node until SIGINT/SIGTERM or until an actor stops on a fatal error.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listener).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listener))?;
    let connections = Arc::new(Connections::default());
    let node = config.broker.node_id;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let router = Router::new(node);
    let r = router.clone();
    let route: Route<BrokerMsg> = Arc::new(move |from, to, msg| r.route(from, to, msg));
    if !config.peers.is_empty() {
        let listen =
            config.peer_listener.ok_or_else(|| anyhow::anyhow!("a multi-node cluster needs a CONTROLLER listener in `listeners` for node-to-node traffic"))?;
        let r = router.clone();
        let deliver: crate::transport::Deliver<PeerMsg> = Arc::new(move |from, to, msg| r.route(from, to, BrokerMsg::Peer(msg)));
        let transport = Transport::start(node, listen, config.peers.clone(), TransportConfig::default(), deliver)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for peers on {listen}: {e}"))?;
        let _ = router.transport.set(transport);
    }
    let mut stops = Vec::new();
    if config.controller_role {
        let mut controller = spawn_actor(
            Controller::new(config.controller.clone()),
            Addr { node, actor: CONTROLLER_ACTOR },
            config.data_dir.clone(),
            connections.clone(),
            seed ^ 0x5eed,
            Some(route.clone()),
        )?;
        stops.push(controller.stopped.take().expect("fresh handle"));
        router.local.write().expect("router lock").insert(CONTROLLER_ACTOR, controller);
    }
    let mut broker =
        spawn_actor(Broker::new(config.broker.clone()), Addr { node, actor: BROKER_ACTOR }, config.data_dir.clone(), connections.clone(), seed, Some(route))?;
    stops.push(broker.stopped.take().expect("fresh handle"));
    router.local.write().expect("router lock").insert(BROKER_ACTOR, broker.clone());
    tracing::info!(listener = %config.listener, data = %config.data_dir.display(), node, controller = config.controller_role, "runnel node starting");
    let front = tokio::spawn(serve(listener, broker, connections, config.max_request_bytes));
    #[cfg(not(madsim))]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(not(madsim))]
    let terminated = term.recv();
    #[cfg(madsim)]
    let terminated = std::future::pending::<Option<()>>();
    let mut broker_stopped = stops.pop().expect("the broker's stop signal");
    let controller_stopped = futures_select_all(stops);
    tokio::select! {
        _ = &mut broker_stopped => {
            front.abort();
            anyhow::bail!("the broker stopped on a fatal error (see the log above)");
        }
        _ = controller_stopped => {
            front.abort();
            anyhow::bail!("the controller stopped on a fatal error (see the log above)");
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: controlled shutdown"),
        _ = terminated => tracing::info!("terminated: controlled shutdown"),
    }
    // Controlled shutdown: the controller moves leadership away, then the broker stops.
    router.route(Addr { node, actor: BROKER_ACTOR }, Addr { node, actor: BROKER_ACTOR }, BrokerMsg::Shutdown);
    match tokio::time::timeout(std::time::Duration::from_secs(10), broker_stopped).await {
        Ok(_) => tracing::info!("controlled shutdown complete"),
        Err(_) => tracing::warn!("controlled shutdown did not finish within 10 s; exiting anyway"),
    }
    front.abort();
    Ok(())
}

/// Resolves when the first of `stops` resolves.
async fn futures_select_all(stops: Vec<tokio::sync::oneshot::Receiver<()>>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    for s in stops {
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = s.await;
            let _ = tx.send(()).await;
        });
    }
    rx.recv().await;
}
