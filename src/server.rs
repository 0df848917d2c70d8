//! Running a node: bind the Kafka listener, start the broker actor on the tokio driver, serve
//! until the broker stops or the process is signalled.

use crate::config::ServerConfig;
use crate::driver::spawn_actor;
use crate::net::{serve, Connections};
use runnel_actors::broker::Broker;
use runnel_actors::core::Addr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Run a node until SIGINT/SIGTERM or until the broker stops on a fatal error.
pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listener).await.map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listener))?;
    let connections = Arc::new(Connections::default());
    let me = Addr { node: config.broker.node_id, actor: 0 };
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let mut broker = spawn_actor(Broker::new(config.broker.clone()), me, config.data_dir.clone(), connections.clone(), seed)?;
    let stopped = broker.stopped.take().expect("fresh handle");
    tracing::info!(listener = %config.listener, data = %config.data_dir.display(), node = config.broker.node_id, "runnel broker starting");
    let front = tokio::spawn(serve(listener, broker, connections, config.max_request_bytes));
    #[cfg(not(madsim))]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(not(madsim))]
    let terminated = term.recv();
    #[cfg(madsim)]
    let terminated = std::future::pending::<Option<()>>();
    tokio::select! {
        _ = stopped => {
            front.abort();
            anyhow::bail!("broker stopped on a fatal error (see the log above)");
        }
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted, shutting down"),
        _ = terminated => tracing::info!("terminated, shutting down"),
    }
    front.abort();
    Ok(())
}
