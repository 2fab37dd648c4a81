//! Running a node, leader or follower: open the store (replaying the WAL), take the
//! replication role, serve the HTTP API (and, on a follower, run the fetch loop), and on
//! SIGINT/SIGTERM stop accepting, let in-flight requests finish and sync the WAL.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use kv_http::{AppState, HttpTransport};
use kv_replication::{MaintenanceOptions, Node};
use kv_store::{Store, StoreOptions, EPOCH_DEFAULT};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::config::{NodeConfig, Role};

/// Runs the node until a shutdown signal; returns once the WAL is synced and closed.
pub fn run_node(config: NodeConfig) -> anyhow::Result<()> {
    let opening_started = Instant::now();
    let wal_dir = config.wal_dir();
    tracing::info!(
        role = match config.role { Role::Leader => "leader", Role::Follower { .. } => "follower" },
        wal_dir = %wal_dir.display(),
        sync_policy = %config.sync_policy,
        recovery_mode = %config.recovery_mode,
        segment_bytes_max = config.segment_bytes_max,
        "opening the store"
    );
    let role = match &config.role {
        Role::Leader => kv_replication::Role::Leader,
        Role::Follower { leader_url, .. } => kv_replication::Role::Follower {
            leader_url: leader_url.clone(),
        },
    };
    // A replica applies at open only what it knows committed; the rest waits for the cluster.
    let apply_limit = Node::apply_limit_at_open(
        &kv_wal::fs::StdFs,
        &config.data_dir,
        &role,
        config.replication.leader.write_quorum,
    )
    .context("cannot read the node's meta file")?;
    let options = StoreOptions {
        wal: config.wal_options(),
        epoch: EPOCH_DEFAULT,
        snapshot_dir: Some(config.snapshot_dir()),
        apply_limit,
        retention: config.retention,
    };
    let (store, report) = open_store(&config, options)?;
    if report.is_clean() {
        tracing::info!(%report, "WAL recovered");
    } else {
        tracing::warn!(%report, "WAL recovered after repairing damage");
    }
    let load = store.snapshot_load();
    for (path, reason) in &load.skipped {
        tracing::warn!(path = %path.display(), %reason, "skipped a damaged snapshot");
    }
    if let Some((path, applied_id)) = &load.loaded {
        tracing::info!(path = %path.display(), applied_id, replayed = load.replayed_records, "loaded snapshot, replayed the log after it");
    }
    let store = Arc::new(store);
    let node = match &config.role {
        Role::Leader => {
            Node::open_leader(store.clone(), &config.data_dir, config.replication.clone())
        }
        Role::Follower { leader_url, .. } => Node::open_follower(
            store.clone(),
            &config.data_dir,
            leader_url.clone(),
            config.replication.clone(),
        ),
    }
    .context("cannot take the node's replication role")?;
    tracing::info!(
        keys = store.key_count(),
        applied_id = store.applied_id(),
        elapsed_ms = opening_started.elapsed().as_millis() as u64,
        "store ready"
    );
    let node = Arc::new(node);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(serve(&config, node));
    drop(runtime);
    let closed = store.close().context("cannot sync and close the WAL");
    served?;
    closed?;
    tracing::info!(last_id = store.last_id(), "WAL synced and closed; bye");
    Ok(())
}

/// Opens the store. A follower whose data is damaged (a bad record before good ones, a log
/// that does not continue its snapshot) repairs itself from its leader: the damaged files are
/// moved into `damaged-<unix ms>/` in the data directory and the store starts empty, to be
/// filled by replication. A leader refuses to start instead: it has no one to copy from.
fn open_store(
    config: &NodeConfig,
    options: StoreOptions,
) -> anyhow::Result<(Store, kv_wal::RecoveryReport)> {
    let wal_dir = config.wal_dir();
    let context = || format!("cannot open the store in {}", wal_dir.display());
    match Store::open(&wal_dir, options.clone()) {
        Err(error) if error.is_damage() && matches!(config.role, Role::Follower { .. }) => {
            let moved_to = kv_store::repair::quarantine(
                &kv_wal::fs::StdFs,
                &config.data_dir,
                &[
                    crate::config::WAL_DIR_NAME,
                    crate::config::SNAPSHOT_DIR_NAME,
                ],
            )
            .with_context(context)?;
            tracing::error!(
                %error,
                moved_to = %moved_to.display(),
                "this follower's data is damaged: moved it aside, re-syncing from the leader"
            );
            Store::open(&wal_dir, options).with_context(context)
        }
        opened => opened.with_context(context),
    }
}

async fn serve(config: &NodeConfig, node: Arc<Node>) -> anyhow::Result<()> {
    // Signal handlers go in before the address is announced, so a signal sent as soon as the
    // node is up is a clean shutdown, not a kill.
    let shutdown = ShutdownSignals::install()?;
    let listener = kv_http::bind(&config.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(%address, "listening on {address}");
    // Also on stdout, for scripts and tests that need the port.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}").context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")?;
    drop(stdout);

    let (stop_replication, replication_stopped) = watch::channel(false);
    let follower_loop = match &config.role {
        Role::Leader => None,
        Role::Follower { leader_url, .. } => {
            let transport = HttpTransport::new(leader_url).map_err(anyhow::Error::msg)?;
            // Wrapped by the corrupting fault in a fault-injection build (`faults.rs`).
            let transport = crate::faults::follower_transport(transport)?;
            tracing::info!(leader = %leader_url, "following");
            let mut stopped = replication_stopped.clone();
            let node = node.clone();
            Some(tokio::spawn(async move {
                node.run_follower(transport, async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await;
            }))
        }
    };
    let maintenance = {
        let mut stopped = replication_stopped.clone();
        let options = MaintenanceOptions {
            compress_sealed_segments: config.compress_sealed_segments.is_some(),
            ..MaintenanceOptions::default()
        };
        tokio::spawn(node.clone().run_maintenance(options, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    };
    let state_node = node.clone();
    let state = Arc::new(AppState::new(node, config.http.clone()));
    let served = kv_http::serve(listener, state, shutdown.received()).await;
    let _ = stop_replication.send(true);
    let _ = maintenance.await;
    if let Some(follower_loop) = follower_loop {
        let _ = follower_loop.await;
    }
    if let Err(error) = state_node.persist_progress() {
        tracing::error!(%error, "cannot save the commit id and epoch");
    }
    served?;
    tracing::info!("all connections closed");
    Ok(())
}

struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    async fn received(mut self) {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        };
        tracing::info!(
            signal = name,
            "shutting down: no new connections, finishing requests in flight"
        );
    }
}
