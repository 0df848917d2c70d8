//! The `runnel` command: run a node, manage topics, produce and consume.

mod alloc;
mod sim_cli;

use clap::{Parser, Subcommand};
use runnel::config::ServerConfig;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: alloc::GuardedAlloc = alloc::GuardedAlloc;

/// runnel: a Kafka-compatible event-streaming platform.
#[derive(Parser)]
#[command(name = "runnel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node (broker and controller) with zero configuration: 127.0.0.1:9092, data in ./runnel-data.
    Standalone {
        /// Data directory.
        #[arg(long, default_value = "./runnel-data")]
        data_dir: PathBuf,
        /// Kafka listener address.
        #[arg(long, default_value = "127.0.0.1:9092")]
        listen: String,
    },
    /// Run a node configured by a Kafka server.properties file.
    Server {
        /// Path to server.properties.
        #[arg(long)]
        config: PathBuf,
    },
    /// Start a local cluster for trying things out: N combined broker+controller nodes (default
    /// 3), or separate controller-only and broker-only nodes.
    DevCluster {
        /// Number of combined broker+controller nodes.
        #[arg(long, conflicts_with_all = ["controllers", "brokers"])]
        nodes: Option<usize>,
        /// Number of controller-only nodes (with --brokers).
        #[arg(long, requires = "brokers")]
        controllers: Option<usize>,
        /// Number of broker-only nodes (with --controllers).
        #[arg(long, requires = "controllers")]
        brokers: Option<usize>,
        /// Where configs and data go.
        #[arg(long, default_value = "./runnel-dev-cluster")]
        dir: PathBuf,
        /// Kafka port of the first broker (the next broker listens on the next port).
        #[arg(long, default_value_t = 9092)]
        kafka_port: u16,
        /// Node-to-node port of node 1 (node i listens on port + i - 1).
        #[arg(long, default_value_t = 19092)]
        peer_port: u16,
    },
    /// Create, list, describe, alter and delete topics (like kafka-topics.sh).
    Topic {
        #[command(subcommand)]
        action: TopicAction,
        /// Broker to talk to.
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
    },
    /// Produce one record per line of standard input (like kafka-console-producer).
    Produce {
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Split each line into key and value at this separator.
        #[arg(long)]
        key_separator: Option<String>,
        /// Send every record to this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// acks: 1 or -1 (all).
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        acks: i16,
        /// Broker to talk to.
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
    },
    /// List, describe, delete consumer groups and reset their offsets (like kafka-consumer-groups.sh).
    Group {
        #[command(subcommand)]
        action: GroupAction,
        /// Broker to talk to.
        #[arg(long, global = true, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
    },
    /// Describe the metadata quorum: leader, epoch, high watermark, voters and observers (like
    /// kafka-metadata-quorum.sh describe --status; --replication for one line per replica).
    Quorum {
        /// One line per replica: log end, lag, last fetch and catch-up times, role.
        #[arg(long)]
        replication: bool,
        /// Broker to talk to.
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
    },
    /// The deterministic simulator: replay seeds, swarm, check determinism.
    Sim {
        #[command(subcommand)]
        action: SimAction,
    },
    /// Print records of a topic, one per line (like kafka-console-consumer).
    Consume {
        /// Topic.
        #[arg(long)]
        topic: String,
        /// Start at the earliest offset instead of the end.
        #[arg(long)]
        from_beginning: bool,
        /// Read only this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// Exit after this many records.
        #[arg(long)]
        max_messages: Option<usize>,
        /// Print keys too.
        #[arg(long)]
        print_key: bool,
        /// Separator between key and value when printing keys.
        #[arg(long, default_value = "\t")]
        key_separator: String,
        /// Exit after this many milliseconds without a record.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Broker to talk to.
        #[arg(long, default_value = "127.0.0.1:9092")]
        bootstrap_server: String,
    },
}

/// What a simulation runs: scenario, faults and planted bugs.
#[derive(clap::Args)]
struct SimWhat {
    /// Scenario (default: chosen by the seed); `runnel sim scenarios` lists them.
    #[arg(long)]
    scenario: Option<String>,
    /// Fault kinds, comma-separated, or `none` (default: the seed chooses).
    #[arg(long)]
    faults: Option<String>,
    /// Activate a planted bug (planted-bugs builds only; repeatable).
    #[arg(long = "bug")]
    bugs: Vec<String>,
}

#[derive(Subcommand)]
enum SimAction {
    /// Run (or replay) one seed: prints a trace summary, any violation and the replay command.
    Run {
        /// The seed.
        #[arg(long)]
        seed: u64,
        #[command(flatten)]
        what: SimWhat,
        /// Run the seed again in-process and in a second process and compare trace hashes.
        #[arg(long)]
        check_determinism: bool,
        /// Write an HTML report with latency and fault-timeline plots.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Run many seeds in parallel and summarise violations, fault coverage and speed.
    Swarm {
        /// How many seeds.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        first_seed: u64,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        #[command(flatten)]
        what: SimWhat,
        /// Stop at the first failing seed.
        #[arg(long)]
        stop_on_first: bool,
        /// Also recompute every seed's trace hash here and in a second process and compare.
        #[arg(long)]
        check_determinism: bool,
    },
    /// List the planted bugs of a planted-bugs build.
    Bugs,
    /// List scenarios and fault kinds.
    Scenarios,
    /// Print `seed trace-hash` lines (used by --check-determinism).
    #[command(hide = true)]
    Hashes {
        #[arg(long)]
        first_seed: u64,
        #[arg(long)]
        seeds: u64,
        #[command(flatten)]
        what: SimWhat,
    },
}

#[derive(Subcommand)]
enum GroupAction {
    /// List groups (name, protocol type, state).
    List {
        /// Only groups in this state (Empty, Stable, PreparingRebalance, CompletingRebalance).
        #[arg(long)]
        state: Option<String>,
    },
    /// A group's state and, per partition, committed offset, log end and lag with its owner.
    Describe {
        /// Group id.
        group: String,
        /// List the members instead of the partitions.
        #[arg(long)]
        members: bool,
    },
    /// Delete a group without members, with its committed offsets.
    Delete {
        /// Group id.
        group: String,
    },
    /// Move the committed offsets of an inactive group on a topic (dry run unless --execute).
    ResetOffsets {
        /// Group id.
        group: String,
        /// Topic (all its partitions).
        #[arg(long, required_unless_present = "all_topics", conflicts_with = "all_topics")]
        topic: Option<String>,
        /// Every topic the group has committed offsets on.
        #[arg(long)]
        all_topics: bool,
        /// To the log start.
        #[arg(long, conflicts_with_all = ["to_latest", "to_offset", "shift_by", "to_datetime"])]
        to_earliest: bool,
        /// To the log end.
        #[arg(long, conflicts_with_all = ["to_offset", "shift_by", "to_datetime"])]
        to_latest: bool,
        /// To this offset.
        #[arg(long, conflicts_with_all = ["shift_by", "to_datetime"])]
        to_offset: Option<i64>,
        /// By this many records from the committed offset (negative: back).
        #[arg(long, allow_hyphen_values = true, conflicts_with = "to_datetime")]
        shift_by: Option<i64>,
        /// To the first record at or after this time: YYYY-MM-DDTHH:mm:SS.sss (UTC) or ms since
        /// the epoch (the log end if there is none).
        #[arg(long)]
        to_datetime: Option<String>,
        /// Commit the new offsets (without it, only print them).
        #[arg(long)]
        execute: bool,
    },
}

#[derive(Subcommand)]
enum TopicAction {
    /// Create a topic.
    Create {
        /// Topic name.
        name: String,
        /// Partition count (-1: the broker's num.partitions).
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        partitions: i32,
        /// Replication factor (-1: the broker's default).
        #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
        replication_factor: i16,
        /// Topic config, key=value (repeatable).
        #[arg(long = "config")]
        configs: Vec<String>,
    },
    /// List topic names.
    List,
    /// Describe one topic or all of them.
    Describe {
        /// Topic name (all topics if omitted).
        name: Option<String>,
    },
    /// Delete a topic.
    Delete {
        /// Topic name.
        name: String,
    },
    /// Change a topic's configs or raise its partition count.
    Alter {
        /// Topic name.
        name: String,
        /// New partition count.
        #[arg(long)]
        partitions: Option<i32>,
        /// Set a config, key=value (repeatable).
        #[arg(long = "config")]
        configs: Vec<String>,
        /// Remove a config override (repeatable).
        #[arg(long = "delete-config")]
        delete_configs: Vec<String>,
    },
}

/// Log timestamps in simulated time, so a seed's log lines up with its history and faults.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let us = runnel_sim::world::sim_now_us();
        write!(w, "[{}.{:03} ms]", us / 1000, us % 1000)
    }
}

/// Planted-bugs builds only: activate the bugs named in `RUNNEL_PLANTED_BUGS` (comma-separated)
/// on every runtime thread, so that the Jepsen suite can measure itself against a broken node
/// as the simulator does. Without the variable nothing is active.
#[cfg(feature = "planted-bugs")]
fn plant_bugs_from_env(builder: &mut tokio::runtime::Builder) -> anyhow::Result<()> {
    let names: Vec<String> =
        std::env::var("RUNNEL_PLANTED_BUGS").unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if names.is_empty() {
        return Ok(());
    }
    runnel_actors::core::bugs::set_planted(&names).map_err(|e| anyhow::anyhow!("RUNNEL_PLANTED_BUGS: {e}"))?;
    tracing::warn!(bugs = ?names, "planted bugs active (RUNNEL_PLANTED_BUGS)");
    builder.on_thread_start(move || {
        let _ = runnel_actors::core::bugs::set_planted(&names);
    });
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Sim { action } = cli.command {
        // The simulator is synchronous and logs nothing unless asked.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")))
            .with_writer(std::io::stderr)
            .with_timer(SimTime)
            .with_ansi(false)
            .init();
        let ok = match action {
            SimAction::Run { seed, what, check_determinism, report } => {
                sim_cli::cmd_run(seed, what.scenario.as_deref(), what.faults.as_deref(), what.bugs, check_determinism, report)?
            }
            SimAction::Swarm { seeds, first_seed, jobs, what, stop_on_first, check_determinism } => {
                sim_cli::cmd_swarm(first_seed, seeds, jobs, what.scenario.as_deref(), what.faults.as_deref(), what.bugs, stop_on_first, check_determinism)?
            }
            SimAction::Bugs => sim_cli::cmd_bugs().map(|_| true)?,
            SimAction::Scenarios => {
                sim_cli::cmd_scenarios();
                true
            }
            SimAction::Hashes { first_seed, seeds, what } => {
                sim_cli::cmd_hashes(first_seed, seeds, what.scenario.as_deref(), what.faults.as_deref(), what.bugs).map(|_| true)?
            }
        };
        std::process::exit(if ok { 0 } else { 1 });
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // A node's configuration is read before its runtime is built: `num.network.threads` sizes it.
    let mut server_config = None;
    if let Command::Server { config } = &cli.command {
        let text = std::fs::read_to_string(config).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", config.display()))?;
        let parsed = ServerConfig::parse(&text)?;
        if let Some(threads) = parsed.network_threads {
            builder.worker_threads(threads);
        }
        server_config = Some(parsed);
    }
    #[cfg(feature = "planted-bugs")]
    plant_bugs_from_env(&mut builder)?;
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Standalone { data_dir, listen } => {
                let listen: std::net::SocketAddr = listen.parse()?;
                let mut config = ServerConfig { data_dir, listener: Some(listen), ..Default::default() };
                config.broker.advertised_host = listen.ip().to_string();
                config.broker.advertised_port = listen.port() as i32;
                // One node: the internal topics can only have one replica.
                config.broker.groups.offsets_replication_factor = 1;
                config.broker.groups.transaction_replication_factor = 1;
                runnel::server::run(config).await
            }
            Command::Server { .. } => runnel::server::run(server_config.expect("parsed above")).await,
            Command::DevCluster { nodes, controllers, brokers, dir, kafka_port, peer_port } => {
                let layout = match (controllers, brokers) {
                    (Some(controllers), Some(brokers)) => runnel::dev_cluster::Layout::Separate { controllers, brokers },
                    _ => runnel::dev_cluster::Layout::Combined { nodes: nodes.unwrap_or(3) },
                };
                runnel::dev_cluster::run(layout, dir, kafka_port, peer_port).await
            }
            Command::Topic { action, bootstrap_server: b } => match action {
                TopicAction::Create { name, partitions, replication_factor, configs } => {
                    runnel::cli::topic_create(&b, &name, partitions, replication_factor, &configs).await
                }
                TopicAction::List => runnel::cli::topic_list(&b).await,
                TopicAction::Describe { name } => runnel::cli::topic_describe(&b, name.as_deref()).await,
                TopicAction::Delete { name } => runnel::cli::topic_delete(&b, &name).await,
                TopicAction::Alter { name, partitions, configs, delete_configs } => {
                    runnel::cli::topic_alter(&b, &name, partitions, &configs, &delete_configs).await
                }
            },
            Command::Quorum { replication, bootstrap_server } => runnel::cli::quorum(&bootstrap_server, replication).await,
            Command::Produce { topic, key_separator, partition, acks, bootstrap_server } => {
                runnel::cli::produce(&bootstrap_server, &topic, key_separator.as_deref(), partition, acks).await
            }
            Command::Group { action, bootstrap_server: b } => match action {
                GroupAction::List { state } => runnel::group_cli::group_list(&b, state.as_deref()).await,
                GroupAction::Describe { group, members } => runnel::group_cli::group_describe(&b, &group, members).await,
                GroupAction::Delete { group } => runnel::group_cli::group_delete(&b, &group).await,
                GroupAction::ResetOffsets { group, topic, all_topics: _, to_earliest, to_latest, to_offset, shift_by, to_datetime, execute } => {
                    use runnel::group_cli::ResetTo;
                    let to = match (to_earliest, to_latest, to_offset, shift_by, to_datetime) {
                        (true, ..) => ResetTo::Earliest,
                        (_, true, ..) => ResetTo::Latest,
                        (_, _, Some(o), ..) => ResetTo::Offset(o),
                        (_, _, _, Some(n), _) => ResetTo::ShiftBy(n),
                        (_, _, _, _, Some(t)) => ResetTo::Datetime(runnel::group_cli::parse_datetime(&t)?),
                        _ => anyhow::bail!("say where to: --to-earliest, --to-latest, --to-offset N, --shift-by N or --to-datetime T"),
                    };
                    runnel::group_cli::group_reset_offsets(&b, &group, topic.as_deref(), to, execute).await
                }
            },
            Command::Sim { .. } => unreachable!("handled above"),
            Command::Consume { topic, from_beginning, partition, max_messages, print_key, key_separator, timeout_ms, bootstrap_server } => {
                runnel::cli::consume(&bootstrap_server, &topic, from_beginning, partition, max_messages, print_key, &key_separator, timeout_ms).await
            }
        }
    })
}
