//! The follower role. Its configuration is parsed and validated like the leader's; the
//! replication loop that copies the leader's log (kv-replication) is not built yet.

use anyhow::bail;

use crate::config::{NodeConfig, Role};

/// Runs a follower: today, refuses with a clear error (replication is the next milestone).
pub fn run_follower(config: NodeConfig) -> anyhow::Result<()> {
    let Role::Follower { number, leader_url } = &config.role else {
        bail!("run_follower called for a leader configuration");
    };
    tracing::info!(follower = number, leader = %leader_url, listen = %config.listen, data_dir = %config.data_dir.display(), "follower configuration is valid");
    bail!(
        "follower-{number}: replication is not built yet, so kvd cannot run as a follower; \
         run `kvd leader` (the configuration given is valid: listen {}, data dir {}, leader {leader_url})",
        config.listen,
        config.data_dir.display()
    )
}
