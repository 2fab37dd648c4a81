//! Running a node: open the store (replaying the WAL), open the controller and take the node's
//! place in the cluster (`cluster::bootstrap`), serve the HTTP API, run the driver that keeps
//! the node in the role the controller gives (`cluster::driver`), the fetch loop for whichever
//! leader it follows and the maintenance task; on SIGINT/SIGTERM stop accepting, let in-flight
//! requests finish, stop the rest and sync the WAL.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use kv_http::{AppState, ClusterState, HttpTransport};
use kv_replication::{MaintenanceOptions, Node};
use kv_store::{Store, StoreOptions, EPOCH_DEFAULT};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::cluster::bootstrap::{self, Identity, JoinOutcome};
use crate::cluster::claim::ClaimWatch;
use crate::cluster::driver::Driver;
use crate::cluster::stop;
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
    crate::cluster::claim::refuse_a_claimed_node(&config)?;
    crate::writable::refuse_unwritable_directories(&config)?;
    // A node applies at open only what it knows committed; the rest waits for the cluster
    // (whatever role the controller gives it).
    let apply_limit = Node::apply_limit_at_open(
        &kv_wal::fs::StdFs,
        &config.data_dir,
        &kv_replication::Role::NoLeader,
        config.replication.leader.write_quorum,
    )
    .context(crate::cluster::bootstrap::NODE_META_UNREADABLE)?;
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
    } else if !report.changed_the_log() {
        // Only damage among records the newest snapshot covers (`WalOptions::needed_from`):
        // nothing was changed, and nothing the node needs was lost.
        tracing::warn!(
            %report,
            "WAL recovered past damage among records the newest snapshot covers: those records              cannot be read (a follower that needs them gets the snapshot), every later one is served"
        );
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
    tracing::info!(
        keys = store.key_count(),
        applied_id = store.applied_id(),
        elapsed_ms = opening_started.elapsed().as_millis() as u64,
        "store ready"
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = async_workers() {
        builder.worker_threads(workers);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    tracing::info!(
        workers = runtime.metrics().num_workers(),
        "async runtime started"
    );
    // True once the node stops (a signal, a claim, a refused join).
    let (stopping, _) = watch::channel(false);
    let disk_watch = crate::disk_watch::DiskWatch::start(
        store.clone(),
        runtime.handle().clone(),
        stopping.subscribe(),
    )
    .context("cannot start the disk watch thread")?;
    let served = runtime.block_on(serve(
        &config,
        store.clone(),
        &report,
        stopping,
        &disk_watch,
    ));
    drop(runtime);
    let closed = store.close().context("cannot sync and close the WAL");
    drop(disk_watch);
    served?;
    closed?;
    tracing::info!(last_id = store.last_id(), "WAL synced and closed; bye");
    Ok(())
}

/// Opens the store. A follower whose data is damaged (a bad record before good ones, a log
/// that does not continue its snapshot) repairs itself from its leader: the damaged files are
/// moved into `damaged-<unix ms>/` in the data directory and the store starts empty, to be
/// filled by replication. A leader refuses to start instead: it has no one to copy from.
///
/// A follower never keeps a copy a lossy recovery mode (`skip-corrupt`, `point-in-time`) made:
/// its log with a hole, or cut short with ids skipped, would serve older values of the keys it
/// lost and count as in sync, the cluster's copy never fetched again. It opens in the default
/// mode, so damage moves its data aside as above, and the loss is the cluster's to repair.
fn open_store(
    config: &NodeConfig,
    mut options: StoreOptions,
) -> anyhow::Result<(Store, kv_wal::RecoveryReport)> {
    let wal_dir = config.wal_dir();
    let context = || format!("cannot open the store in {}", wal_dir.display());
    if matches!(config.role, Role::Follower { .. }) && config.recovery_mode.may_lose_records() {
        tracing::warn!(
            recovery_mode = %config.recovery_mode,
            "a follower does not repair its log by losing records: damaged data is moved aside \
             and re-synced from the leader instead (the recovery mode is for a node with no \
             replica to copy from)"
        );
        options.wal.recovery_mode = kv_wal::RecoveryMode::default();
    }
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
        Err(error) if error.is_damage() => Err(anyhow::anyhow!(
            "{}: {error}\n{}",
            context(),
            damage_hint(config, &error)
        )),
        Err(kv_store::Error::Wal(error)) if error.is_out_of_space() => Err(anyhow::anyhow!(
            "{}: {error}\nkvd: the disk is full, and a new log segment takes {} bytes of it up \
             front (--max-segment-size, at most {} MiB): free space on the disk, or start with \
             a smaller --max-segment-size",
            context(),
            options.wal.preallocated_segment_bytes(),
            options.wal.segment_preallocation_bytes >> 20,
        )),
        opened => opened.with_context(context),
    }
}

/// What an operator can do about damage a `kvd leader` node refuses to start on (the refusal
/// names the file and the reason; this says how to go on).
fn damage_hint(config: &NodeConfig, error: &kv_store::Error) -> String {
    let resync = format!(
        "move this node's wal/ and snapshots/ out of {}: it re-syncs from the leader",
        config.data_dir.display()
    );
    if let kv_store::Error::Wal(kv_wal::Error::Corrupt {
        segment, reason, ..
    }) = error
    {
        if segment.file_name() == Some(std::ffi::OsStr::new("wal.meta"))
            && reason.contains("identity file")
        {
            // Every mode reads the log's identity first: no mode gets past it.
            return format!(
                "kvd: this node's data is damaged, and `kvd leader` does not repair it by \
                 itself; --recovery-mode cannot help (every mode needs the log's identity file \
                 to tell its segments from another log's): {resync}, or put back a good copy \
                 of {}",
                segment.display()
            );
        }
    }
    if matches!(error, kv_store::Error::Gap { .. }) {
        // The ids are in no file: no recovery mode brings them back.
        return format!(
            "kvd: this node's data is damaged, and `kvd leader` does not repair it by itself; \
             --recovery-mode cannot help (the missing ids are in no file here): {resync}, or \
             put back a good copy of the damaged snapshot"
        );
    }
    format!(
        "kvd: this node's data is damaged, and `kvd leader` does not repair it by itself \
         (started with --recovery-mode {}). If other nodes of its cluster hold the data, {resync}, \
         losing nothing (a node with other members refuses the modes below: its copy would miss \
         what they hold). If it is its cluster's only node, choose what to give up: \
         `--recovery-mode skip-corrupt` skips the damaged records and keeps the rest; \
         `--recovery-mode point-in-time` keeps everything before the damage and drops the rest \
         (docs/wal-format.md, \"Recovery\")",
        config.recovery_mode,
    )
}

/// How long a starting node waits to take its role from the controller before it announces
/// its address anyway (a node that cannot reach the cluster still serves reads and status).
const ROLE_WAIT_MAX: Duration = Duration::from_secs(10);

/// Serves the node until a shutdown signal: binds, opens the controller, takes the node's
/// place in the cluster (initialize, join, or neither), serves HTTP, runs the driver (the
/// heartbeats and roles), the fetch loop and the maintenance task, and announces the address
/// once the node took its role. On SIGINT/SIGTERM: stops accepting and lets requests in flight
/// finish (the lease still renewed), then stops the driver, the fetch loop, the maintenance
/// task and the controller, and saves the node's progress.
async fn serve(
    config: &NodeConfig,
    store: Arc<Store>,
    report: &kv_wal::RecoveryReport,
    signalled: watch::Sender<bool>,
    disk_watch: &crate::disk_watch::DiskWatch,
) -> anyhow::Result<()> {
    // Signal handlers go in before the address is announced, so a signal sent as soon as the
    // node is up is a clean shutdown, not a kill.
    let signals = ShutdownSignals::install()?;
    let signal_received = signalled.subscribe();
    let signalled = Arc::new(signalled);
    let serving: Serving = Arc::default();
    tokio::spawn(stop_on_signal(signals, signalled.clone(), serving.clone()));
    // A fault-injection build checks its fetch fault's settings once, here.
    crate::faults::follower_transport(
        HttpTransport::new("http://127.0.0.1:1").map_err(anyhow::Error::msg)?,
    )?;
    let listener = kv_http::bind(&config.listen).await?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    tracing::info!(%address, "listening on {address}");
    let identity = Identity::of(config, address);
    // Where to connect for each peer: its own address (a fault build's tests may route links
    // through proxies).
    let dial = crate::faults::peer_dial()?;
    let client = bootstrap::open_controller(config, &identity, dial.clone()).await?;
    let controller = client.controller().clone();
    bootstrap::initialize_if_new(config, &controller, &store).await?;
    bootstrap::refuse_mixed_cluster_ids(config, &controller)?;
    bootstrap::refuse_an_epoch_the_controller_never_gave(config, &controller)?;
    bootstrap::refuse_lost_acknowledged_writes(config, &controller, &store)?;
    bootstrap::refuse_a_lossy_repair_among_other_members(config, &controller, report)?;
    let node = open_node(config, &store, identity.node_id, disk_watch)?;
    // A `kvd leader` that lost its data stops once its old cluster claims it.
    let claim = ClaimWatch::start(config, &identity, &controller, &node, signalled.clone());
    let cluster = Arc::new(ClusterState::new(
        identity.node_id,
        identity.url.clone(),
        client,
        config.cluster.timing,
    ));
    let state =
        Arc::new(AppState::new(node.clone(), config.http.clone()).with_cluster(cluster.clone()));
    // Serve at once: peers' controllers talk to this one over HTTP.
    let server = tokio::spawn(kv_http::serve(listener, state.clone(), {
        let mut signal_received = signal_received.clone();
        async move {
            let _ = signal_received.wait_for(|stop| *stop).await;
        }
    }));
    let joined =
        bootstrap::join_if_new(config, &identity, cluster.client(), signal_received.clone()).await;
    if !matches!(joined, Ok(JoinOutcome::Member)) {
        // Refused (an error), or stopped by a signal while no seed answered (a wrong
        // `--leader`, a cluster not up yet): a clean stop, exit status 0 as any SIGINT.
        let _ = signalled.send(true);
        let _ = server.await;
        let _ = controller.shutdown().await;
        joined?;
        tracing::info!("stopped before joining the cluster");
        return Ok(());
    }
    tracing::info!(node_id = identity.node_id, url = %identity.url, "this node's identity");

    // The driver, the fetch loop and the maintenance task stop once the server has drained.
    let (stop_background, background_stopped) = watch::channel(false);
    let background =
        Background::start(config, &identity, &node, &cluster, dial, background_stopped);
    let _ = serving.set((state, background.driver.clone()));
    announce_when_ready(
        &address,
        &cluster,
        &identity,
        background.ready.clone(),
        signal_received,
    )
    .await?;

    let served = server.await.context("the server task failed")?;
    let _ = stop_background.send(true);
    background.join().await;
    if let Err(error) = controller.shutdown().await {
        tracing::warn!(%error, "the controller did not stop cleanly");
    }
    if let Err(error) = node.persist_progress() {
        tracing::error!(%error, "cannot save the commit id and epoch");
    }
    claim.finish().await?;
    served?;
    tracing::info!("all connections closed");
    Ok(())
}

/// Opens the node's replication state: it starts following nobody, the controller's view
/// gives it its role. The disk watch watches its meta file's saves from then on.
fn open_node(
    config: &NodeConfig,
    store: &Arc<Store>,
    node_id: u64,
    disk_watch: &crate::disk_watch::DiskWatch,
) -> anyhow::Result<Arc<Node>> {
    let node = Node::open_controlled(
        store.clone(),
        &config.data_dir,
        node_id,
        config.replication.clone(),
    )
    .context("cannot open the node's replication state")?;
    disk_watch.watch_meta_saves(node.meta_saves());
    Ok(Arc::new(node))
}

/// Set once the node has taken its place (its driver runs): the node then hands its
/// leaderships over before it stops (`cluster/stop.rs`).
type Serving = Arc<OnceLock<(Arc<AppState>, Arc<Driver>)>>;

/// Waits for the first shutdown signal; then, once the node serves, hands its leaderships over
/// (a second signal cuts that short) and tells the node to stop (`signalled`).
async fn stop_on_signal(
    mut signals: ShutdownSignals,
    signalled: Arc<watch::Sender<bool>>,
    serving: Serving,
) {
    signals.received().await;
    if let Some((state, driver)) = serving.get() {
        tokio::select! {
            () = stop::hand_over_before_stopping(state, driver) => {}
            () = signals.received() => {}
        }
    }
    let _ = signalled.send(true);
}

/// The node's tasks besides the server: the driver (heartbeats and roles), the fetch loop, the
/// URL announcement and the maintenance task.
struct Background {
    ready: watch::Receiver<bool>,
    driver: Arc<Driver>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    /// Starts them; they stop when `stopped` turns true.
    fn start(
        config: &NodeConfig,
        identity: &Identity,
        node: &Arc<Node>,
        cluster: &Arc<ClusterState>,
        dial: HashMap<String, String>,
        stopped: watch::Receiver<bool>,
    ) -> Background {
        let until_stopped = |mut receiver: watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        };
        let driver = Driver::new(node.clone(), cluster.clone(), stopped.clone())
            .with_write_quorum(config.cluster.write_quorum);
        let ready = driver.ready();
        let mut tasks = vec![tokio::spawn(driver.clone().run())];
        // Replication also ends as soon as the node begins to stop (`Driver::stopping`).
        let (background_stops, node_stops) =
            (until_stopped(stopped.clone()), driver.until_stopping());
        tasks.push(tokio::spawn(node.clone().run_replication(
            move |leader_url: &str| {
                follower_transport(&crate::faults::dialed_url(leader_url, &dial))
            },
            async move {
                tokio::select! {
                    () = background_stops => {}
                    () = node_stops => {}
                }
            },
        )));
        tasks.push(tokio::spawn({
            let cluster = cluster.clone();
            let identity = identity.clone();
            let stopped = stopped.clone();
            async move { bootstrap::announce_url(&identity, cluster.client(), stopped).await }
        }));
        let options = MaintenanceOptions {
            compress_sealed_segments: config.compress_sealed_segments.is_some(),
            ..MaintenanceOptions::default()
        };
        tasks.push(tokio::spawn(
            node.clone()
                .run_maintenance(options, until_stopped(stopped)),
        ));
        Background {
            ready,
            driver,
            tasks,
        }
    }

    /// Waits until every task ended.
    async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Waits until the node took its role from the controller (or a signal came, or
/// [`ROLE_WAIT_MAX`] passed), then announces its address on stdout, for scripts and tests.
async fn announce_when_ready(
    address: &std::net::SocketAddr,
    cluster: &ClusterState,
    identity: &Identity,
    mut ready: watch::Receiver<bool>,
    mut signal_seen: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    tokio::select! {
        _ = ready.wait_for(|ready| *ready) => {}
        _ = signal_seen.wait_for(|stop| *stop) => {}
        _ = tokio::time::sleep(ROLE_WAIT_MAX) => {
            tracing::warn!("no role from the controller yet; serving anyway");
        }
    }
    if let Some(view) = cluster.view() {
        tracing::info!(
            epoch = view.leader_epoch,
            leader = ?view.data_leader,
            leads = view.data_leader == Some(identity.node_id),
            "took the role the controller gives"
        );
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}").context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")?;
    Ok(())
}

/// The follower's transport to the leader at `leader_url`: kvd's HTTP transport (wrapped by
/// the corrupting fault in a fault-injection build, `faults.rs`). The URL comes from the
/// controller's metadata, where only `http://` URLs are admitted.
fn follower_transport(leader_url: &str) -> impl kv_replication::Transport {
    let transport = HttpTransport::new(leader_url).unwrap_or_else(|error| {
        tracing::error!(%error, "the leader's URL is unusable; fetching from nowhere");
        HttpTransport::new("http://127.0.0.1:1").expect("a valid URL")
    });
    crate::faults::follower_transport(transport).expect("checked at startup")
}

/// The signals that stop kvd gracefully: SIGINT, SIGTERM, and SIGHUP (the terminal it ran in
/// closed), whose default action would kill it on the spot.
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    async fn received(&mut self) {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        };
        tracing::info!(
            signal = name,
            "shutting down: no new connections, finishing requests in flight"
        );
    }
}

/// Async worker threads at least: a write whose disk hangs holds the worker that polls it (a
/// write group's leader runs its `fdatasync` inside its poll, `docs/wal-format.md`), and the
/// node answers — `/health`, reads, a 503 for the writes behind it, its heartbeats — on
/// another. tokio starts one worker per CPU, so on a one-CPU machine a hung disk froze the
/// whole node (the `failover::disk` tests fail with one worker).
const ASYNC_WORKERS_MIN: usize = 2;

/// How many async workers to start: one per CPU, at least [`ASYNC_WORKERS_MIN`]; `None` (tokio's
/// own choice) when `TOKIO_WORKER_THREADS` sets it.
fn async_workers() -> Option<usize> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        return None;
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    Some(cpus.max(ASYNC_WORKERS_MIN))
}
