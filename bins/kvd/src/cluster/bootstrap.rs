//! Who this node is and how it takes its place in a cluster (DESIGN.md "Bootstrap and
//! identity"):
//!
//! - **Identity.** `kvd leader` is node 0, `kvd follower N` is node N. The id is stored in the
//!   controller's state at first start (`controller/raft-state.json`) and checked at every
//!   start after: a data directory of another node is refused.
//! - **A node with controller state** never initializes and never joins again: it takes the
//!   role the controller gives it, whatever command started it (`kvd leader` restarted after a
//!   failover follows the new leader). If its URL changed, it tells the cluster.
//! - **A node that lost its controller state** (`node.meta` written under the controller, no
//!   controller state) refuses to start, either role, before it serves a peer.
//! - **`kvd leader` with an empty controller** initializes a one-member cluster: a new cluster
//!   id, or the one in `node.meta` (a data directory from before the controller), and a first
//!   epoch above every epoch `node.meta` and the log used.
//! - **`kvd follower N` with an empty controller** asks the `--leader` URL to join (the
//!   request follows `421`s to the active controller), stores the cluster id it is admitted
//!   to, and from then on refuses peers of any other cluster.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kv_controller::{BootstrapSpec, Controller, ControllerOptions, ElectionPolicy};
use kv_http::{ClientError, ControllerClient, HttpControllerTransport, JoinRequest, PeerClient};
use kv_replication::NodeMeta;
use kv_store::Store;
use tokio::sync::watch;

use crate::config::{NodeConfig, Role};

/// This node as its peers know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 0 for `kvd leader`, N for `kvd follower N`.
    pub node_id: u64,
    /// The URL peers reach it at: `--advertise-url`, else `http://` + the bound address.
    pub url: String,
    /// Whom to ask when nothing better is known: `--leader` of `kvd follower`.
    pub seeds: Vec<String>,
}

impl Identity {
    /// The identity of the node `config` describes, listening on `bound`.
    pub fn of(config: &NodeConfig, bound: SocketAddr) -> Identity {
        let url = config
            .cluster
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{bound}"));
        let seeds = match &config.role {
            Role::Leader => Vec::new(),
            Role::Follower { leader_url, .. } => {
                vec![leader_url.trim_end_matches('/').to_owned()]
            }
        };
        Identity {
            node_id: config.node_id(),
            url,
            seeds,
        }
    }
}

/// How long one call to another node's controller endpoint may take.
pub const CONTROLLER_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between join attempts while no controller admits this node.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// Opens this node's controller (its files under `<data_dir>/controller/`, through kv-wal's
/// file seam) with the HTTP transport, and the client that reaches the active controller; a
/// peer's address in `dial` is reached by connecting to the address it maps to (tests).
pub async fn open_controller(
    config: &NodeConfig,
    identity: &Identity,
    dial: HashMap<String, String>,
) -> anyhow::Result<ControllerClient> {
    let peers = Arc::new(PeerClient::with_dial(dial));
    let mut options =
        ControllerOptions::new(identity.node_id, identity.url.clone(), &config.data_dir);
    options.timing = config.cluster.timing;
    options.election_policy = ElectionPolicy::CleanOnly;
    #[cfg(feature = "fault-injection")]
    {
        options.file_system = crate::faults::controller_file_system();
    }
    let transport = Arc::new(HttpControllerTransport::new(peers.clone()));
    let controller = Controller::open(options, transport)
        .await
        .map_err(|error| {
            let controller_dir = config.data_dir.join(kv_controller::CONTROLLER_DIR);
            let hint = match access_denied(&error) {
                true => access_hint(&controller_dir),
                false => controller_damage_hint(config, &controller_dir),
            };
            anyhow::anyhow!(
                "cannot open the controller in {}: {error:#}\n{hint}",
                controller_dir.display(),
            )
        })?;
    Ok(ControllerClient::new(
        identity.node_id,
        controller,
        peers,
        identity.seeds.clone(),
        CONTROLLER_REQUEST_TIMEOUT,
    ))
}

/// Whether opening the controller failed because this process may not read or write one of
/// its files (permissions, a read-only mount): nothing is damaged then.
fn access_denied(error: &kv_controller::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(io_error) = error.downcast_ref::<std::io::Error>() {
            return crate::writable::denied(io_error);
        }
        cause = error.source();
    }
    false
}

/// What to do when the controller's files could not be read for want of access: fix the
/// access. Before, the hint was the damage one ("move controller/ aside"), which for a node of
/// a larger cluster turns a permission problem into a lost member.
fn access_hint(controller_dir: &std::path::Path) -> String {
    format!(
        "kvd: it may not read or write this node's controller files: nothing is damaged and \
         nothing was changed. Give the user running kvd read and write access to {} and \
         everything in it (or mount the file system read-write) and start again; do not move \
         it aside",
        controller_dir.display()
    )
}

/// What an operator can do when the controller's files cannot be read (the error names the
/// file and the reason; this says how to go on): the way out of a lost controller state
/// ([`controller_way_out`]), moving `controller/` aside too.
fn controller_damage_hint(config: &NodeConfig, controller_dir: &std::path::Path) -> String {
    let aside = format!(
        "{} and {}",
        controller_dir.display(),
        NodeMeta::path(&config.data_dir).display()
    );
    format!(
        "kvd: this node's controller state is damaged, and kvd does not repair it. {}",
        controller_way_out(config, &aside)
    )
}

/// How to go on from a controller state lost or damaged, by role, `aside` naming what to move
/// out of the way: a leader's data becomes a new one-node cluster; a follower must leave its
/// cluster first, or its join is refused (its id is a member at its own URL).
fn controller_way_out(config: &NodeConfig, aside: &str) -> String {
    match config.role {
        Role::Leader => format!(
            "Restore it from a copy if you can. To make this node's data a new one-node cluster \
             instead, move {aside} aside: the node starts with its keys under a new cluster id \
             (the cluster's other nodes, if any, will refuse it as another cluster)"
        ),
        Role::Follower { .. } => format!(
            "Restore it from a copy if you can. Otherwise remove this node from the cluster \
             first (DELETE /admin/members/{id} on a running node), then move {aside} aside and \
             start it again: it joins as a new member and copies the leader's data",
            id = config.node_id(),
        ),
    }
}

/// Whether this node was admitted to a cluster: it has controller state, or at least the
/// cluster id its join stored (it crashed before the controller quorum reached it).
fn admitted(controller: &Controller) -> bool {
    controller.has_state() || controller.cluster_id() != 0
}

/// On `kvd leader` with an empty controller: creates the cluster, led by this node, in an epoch
/// above any this data directory used, and records its id in `node.meta` (so the data plane
/// and the controller name the same cluster). Does nothing for a node with controller state
/// or a follower — but refuses, before this node serves any peer, a data directory of either
/// role that lost its controller state ([`refuse_a_lost_controller`]).
pub async fn initialize_if_new(
    config: &NodeConfig,
    controller: &Controller,
    store: &Store,
) -> anyhow::Result<()> {
    // A joined node that crashed right after its join (no Raft entry yet) lost nothing.
    if admitted(controller) {
        return Ok(());
    }
    let node_meta = load_node_meta(config)?;
    refuse_a_lost_controller(config, &node_meta)?;
    if config.role != Role::Leader {
        return Ok(());
    }
    let cluster_id = match node_meta.cluster_id {
        0 => rand::random::<u64>().max(1),
        migrated => migrated,
    };
    let epoch_floor = node_meta.epoch.max(store.last_entry_epoch().unwrap_or(0));
    let meta = controller
        .initialize(BootstrapSpec {
            cluster_id,
            epoch_floor,
            write_quorum: config.replication.leader.write_quorum as u32,
        })
        .await
        .context("cannot initialize the cluster's controller")?;
    if node_meta.cluster_id != cluster_id {
        NodeMeta {
            cluster_id,
            ..node_meta
        }
        // The real file system, not the store's: a test's faulty disk counts the WAL's own work.
        .store(&kv_wal::fs::StdFs, &config.data_dir)
        .context("cannot record the cluster id in the node's meta file")?;
    }
    tracing::info!(
        cluster_id = %format!("{cluster_id:016x}"),
        epoch = meta.leader_epoch,
        migrated = node_meta.cluster_id != 0,
        write_quorum = meta.write_quorum,
        "initialized a new cluster, led by this node"
    );
    Ok(())
}

/// A data directory whose `node.meta` was written under the controller but whose controller
/// state is gone (deleted, or lost) lost its controller, and must not run with an empty one:
///
/// - `kvd leader`: migrating it as a data directory from before the controller would start a
///   second controller for its cluster. It did: in a 3-node cluster, node 0 restarted without
///   `controller/` led an epoch of its own, then took the other controller's log back, and no
///   node could acknowledge a write again.
/// - `kvd follower N`: it would rejoin as the member (often a voter) it was, with an empty
///   Raft log and vote: free to vote twice in a term, and to count toward a commit it does
///   not hold. It did worse: the active controller's openraft core panicked on the follower's
///   log going back ("follower log reversion is not allowed"), another node elected itself
///   with the empty node's vote, and the node never learned the cluster's metadata again.
///   The way out: remove the node from the cluster (`DELETE /admin/members/N` on a running
///   node), move `node.meta` aside, start it again: it joins as a new member and copies the
///   leader's data.
fn refuse_a_lost_controller(config: &NodeConfig, node_meta: &NodeMeta) -> anyhow::Result<()> {
    let under_controller = NodeMeta::written_under_controller(&kv_wal::fs::StdFs, &config.data_dir)
        .context(NODE_META_UNREADABLE)?;
    if node_meta.cluster_id == 0 || !under_controller {
        return Ok(());
    }
    let controller_dir = config.data_dir.join(kv_controller::CONTROLLER_DIR);
    let danger = match config.role {
        Role::Leader => "starting a new controller would split that cluster",
        Role::Follower { .. } => {
            "rejoining with an empty controller could vote twice in a term and break the \
             cluster's controller"
        }
    };
    anyhow::bail!(
        "{} has no controller state, but {} says this node was a member of cluster {:016x} \
         under a controller (epoch {}): {danger}. {}",
        controller_dir.display(),
        NodeMeta::path(&config.data_dir).display(),
        node_meta.cluster_id,
        node_meta.epoch,
        controller_way_out(config, "node.meta"),
    )
}

/// A data directory whose `node.meta` names another cluster than its controller state (a
/// `node.meta` copied from another node's directory, or edited) mixes two clusters' files: its
/// data plane would refuse every view the controller gives, and the node would serve nothing
/// for as long as it ran. It refuses to start, naming both, until the two agree.
pub fn refuse_mixed_cluster_ids(
    config: &NodeConfig,
    controller: &Controller,
) -> anyhow::Result<()> {
    let controller_id = controller.cluster_id();
    let node_meta = load_node_meta(config)?;
    if controller_id == 0 || node_meta.cluster_id == 0 || node_meta.cluster_id == controller_id {
        return Ok(());
    }
    let controller_dir = config.data_dir.join(kv_controller::CONTROLLER_DIR);
    anyhow::bail!(
        "{} says this node belongs to cluster {:016x}, but its controller state in {} is of \
         cluster {controller_id:016x}: the data directory mixes two clusters' files (a node.meta \
         copied from another node, or edited?). Put back this node's own node.meta. {}",
        NodeMeta::path(&config.data_dir).display(),
        node_meta.cluster_id,
        controller_dir.display(),
        controller_way_out(
            config,
            &format!(
                "{} and {}",
                controller_dir.display(),
                NodeMeta::path(&config.data_dir).display()
            )
        ),
    )
}

/// A node that is its cluster's only member and whose `node.meta` records an epoch above the
/// controller's: epochs come only from the controller, and alone its controller applied every
/// one it gave, so the file was edited or copied from another directory. The data plane never
/// goes back to a lower epoch, so it ignored every view the controller gave and the node
/// served no write for as long as it ran, with no error ("no leader is known right now"). It
/// refuses to start, naming the file and both epochs. With other members the controller here
/// may lag the cluster's, and nothing local tells an edit from a lag.
pub fn refuse_an_epoch_the_controller_never_gave(
    config: &NodeConfig,
    controller: &Controller,
) -> anyhow::Result<()> {
    let meta = controller.meta();
    let node_id = config.node_id();
    let alone = !meta.members.is_empty() && meta.members.keys().all(|&id| id == node_id);
    let node_meta = load_node_meta(config)?;
    if !alone || node_meta.epoch <= meta.leader_epoch {
        return Ok(());
    }
    anyhow::bail!(
        "{} records leader epoch {}, but the controller of this one-member cluster is at epoch \
         {}: epochs come only from the controller, so the file was edited or copied from \
         another data directory. Put back this node's own node.meta (or set its \"epoch\" to at \
         most {})",
        NodeMeta::path(&config.data_dir).display(),
        node_meta.epoch,
        meta.leader_epoch,
        meta.leader_epoch,
    )
}

/// A node that is its cluster's only member and whose log ends below the commit id its
/// `node.meta` recorded lost acknowledged writes that no replica holds: under `batch` and
/// `always` nothing is acknowledged before it is on disk, so only damage (a deleted or cut
/// newest segment, a disk that lied) explains it. It refuses to start, as it does on any
/// other damage, unless its recovery mode accepts losing data (`point-in-time`,
/// `skip-corrupt`): then, leading, it fills the lost ids with no-ops (never handed out again).
/// Under `interval`/`never` the loss is documented (the last interval of acknowledged writes)
/// and it starts. A node with other members re-syncs from them instead: it does not lead
/// while another in-sync replica exists (`kv_replication::view::may_lead`).
pub fn refuse_lost_acknowledged_writes(
    config: &NodeConfig,
    controller: &Controller,
    store: &Store,
) -> anyhow::Result<()> {
    use kv_wal::SyncPolicy;
    let node_id = config.node_id();
    let alone = controller.meta().members.keys().all(|&id| id == node_id);
    let losing_accepted = config.recovery_mode.may_lose_records();
    let acknowledged_only_durable =
        matches!(config.sync_policy, SyncPolicy::Always | SyncPolicy::Batch);
    if !alone || losing_accepted || !acknowledged_only_durable {
        return Ok(());
    }
    let committed = NodeMeta::load(&kv_wal::fs::StdFs, &config.data_dir)
        .context("cannot read the node's meta file")?
        .map_or(0, |meta| meta.commit_id);
    let last_id = store.last_id();
    if last_id >= committed {
        return Ok(());
    }
    anyhow::bail!(
        "this node's log ends at id {last_id}, but {} records id {committed} as committed: the \
         acknowledged writes {}..={committed} are lost (a deleted or cut newest segment in {}?), \
         and this node is its cluster's only member, so no replica holds them. Put the missing \
         segment back if you can. To start without them, use --recovery-mode point-in-time: \
         their ids are filled with no-ops, never handed out again",
        NodeMeta::path(&config.data_dir).display(),
        last_id + 1,
        config.wal_dir().display(),
    )
}

/// A `kvd leader` node whose log a recovery mode repaired by losing records (a hole skipped, or
/// everything after the damage dropped) refuses to start when its cluster has other members:
/// they hold what it lost, and with the loss kept it would count as in sync, serve the lost
/// keys' older values and could lead with them missing (a `kvd follower` never keeps such a
/// copy: `node::open_store`). Moving its data aside makes it re-sync instead. A node that is
/// its cluster's only member keeps the repair: it has no one to copy from.
pub fn refuse_a_lossy_repair_among_other_members(
    config: &NodeConfig,
    controller: &Controller,
    report: &kv_wal::RecoveryReport,
) -> anyhow::Result<()> {
    let holes: Vec<String> = report
        .holes
        .iter()
        .filter(|hole| hole.first_missing_id <= hole.last_missing_id)
        .map(|hole| format!("{}..={}", hole.first_missing_id, hole.last_missing_id))
        .collect();
    let lost = match &report.dropped {
        Some(dropped) => format!(
            "dropped everything from {}:{} on ({} later record(s))",
            dropped.segment.display(),
            dropped.offset,
            dropped.records_dropped
        ),
        None if !holes.is_empty() => format!("skipped the ids {}", holes.join(", ")),
        None => return Ok(()),
    };
    let members = controller.meta().members.len();
    if members <= 1 {
        return Ok(());
    }
    anyhow::bail!(
        "--recovery-mode {} repaired this node's log and {lost}; this node is one of the {members} \
         members of its cluster, whose other nodes hold what it lost: kept, the loss would serve \
         older values of the keys it lost (and could lead without them). Move this node's wal/ \
         and snapshots/ out of {} and start it again without --recovery-mode: it re-syncs from \
         the leader, losing nothing",
        config.recovery_mode,
        config.data_dir.display(),
    )
}

/// How [`join_if_new`] ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The node is a member: it joined now, or was one already (or is `kvd leader`).
    Member,
    /// SIGINT/SIGTERM came before any seed admitted the node: a clean stop, not an error.
    StoppedBeforeJoining,
}

/// On `kvd follower N` with an empty controller: asks the seeds (and whoever they point at)
/// to admit this node, until one does or `shutdown` turns true; then stores the cluster id.
/// A refusal (another cluster, this id taken at another URL) is an error: the node must not
/// run. Does nothing for a node with controller state or a leader.
pub async fn join_if_new(
    config: &NodeConfig,
    identity: &Identity,
    client: &ControllerClient,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<JoinOutcome> {
    let controller = client.controller();
    if controller.has_state() || config.role == Role::Leader {
        return Ok(JoinOutcome::Member);
    }
    // Asking itself, it would retry for ever: nobody there can admit it.
    if !identity.seeds.is_empty() && identity.seeds.iter().all(|seed| *seed == identity.url) {
        anyhow::bail!(
            "--leader {} is this node's own address: a follower joins its cluster through \
             another node (the leader's, or any member's), e.g. --leader http://127.0.0.1:8000 \
             for a `kvd leader` started with the defaults",
            identity.url
        );
    }
    let known_cluster_id = match controller.cluster_id() {
        0 => NodeMeta::load(&kv_wal::fs::StdFs, &config.data_dir)
            .context("cannot read the node's meta file")?
            .map_or(0, |meta| meta.cluster_id),
        known => known,
    };
    let mut attempts = 0u64;
    let reply = loop {
        attempts += 1;
        // A node admitted before (its cluster id stored: it crashed before the controller
        // quorum reached it, maybe restarted at another URL) or reached since (a join whose
        // answer was lost) is that member, not a node that lost its state.
        let request = JoinRequest {
            id: identity.node_id,
            url: identity.url.clone(),
            cluster_id: known_cluster_id,
            has_state: admitted(controller),
        };
        match client.join(&request).await {
            Ok(reply) => break reply,
            Err(ClientError::Refused { status, detail }) if status.is_client_error() => {
                anyhow::bail!("the cluster refused this node's join: {detail}");
            }
            Err(error) => {
                if attempts == 1 || attempts.is_power_of_two() {
                    tracing::warn!(%error, attempts, seeds = ?identity.seeds, "cannot join the cluster yet; retrying");
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return Ok(JoinOutcome::StoppedBeforeJoining),
            _ = tokio::time::sleep(JOIN_RETRY) => {}
        }
    };
    controller
        .adopt_cluster_id(reply.cluster_id)
        .context("cannot store the cluster id")?;
    tracing::info!(
        cluster_id = %format!("{:016x}", reply.cluster_id),
        node_id = identity.node_id,
        url = %identity.url,
        "joined the cluster"
    );
    Ok(JoinOutcome::Member)
}

/// Keeps the cluster's record of this node's URL in step with the one it runs with (an
/// `--advertise-url` or a listen address that changed across a restart): the metadata and the
/// controller quorum's membership move together. Retries until done or `shutdown`.
pub async fn announce_url(
    identity: &Identity,
    client: &ControllerClient,
    mut shutdown: watch::Receiver<bool>,
) {
    let controller = client.controller();
    loop {
        let meta = controller.meta();
        if meta.url_of(identity.node_id) == Some(identity.url.as_str()) {
            return;
        }
        if meta.is_bootstrapped() && meta.members.contains_key(&identity.node_id) {
            let request = JoinRequest {
                id: identity.node_id,
                url: identity.url.clone(),
                cluster_id: meta.cluster_id,
                has_state: true,
            };
            let result = if client.is_active_here() {
                kv_http::admit(controller, &request)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            } else {
                client
                    .join(&request)
                    .await
                    .map(drop)
                    .map_err(|error| error.to_string())
            };
            match result {
                Ok(()) => {
                    tracing::info!(url = %identity.url, "told the cluster this node's new URL");
                    return;
                }
                Err(error) => tracing::warn!(%error, "cannot announce this node's URL yet"),
            }
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(JOIN_RETRY) => {}
        }
    }
}

/// What a node that cannot read its `node.meta` says, with the way out when the file is
/// damaged: the node rebuilds what it holds from `controller/`, its log and the cluster
/// (`durability::a_flipped_bit_in_a_state_file_is_refused_naming_it` follows it).
pub const NODE_META_UNREADABLE: &str = "cannot read the node's meta file (node.meta holds this \
     node's cluster id, epochs and saved commit id; if it is damaged and controller/ is intact, \
     moving it aside starts the node with them rebuilt from controller/, its log and the cluster)";

/// The node's `node.meta` (the default when there is none yet), read from the real file system:
/// a test's faulty disk counts the WAL's own work.
fn load_node_meta(config: &NodeConfig) -> anyhow::Result<NodeMeta> {
    Ok(NodeMeta::load(&kv_wal::fs::StdFs, &config.data_dir)
        .context(NODE_META_UNREADABLE)?
        .unwrap_or_default())
}
