//! Failover (issue 13) against real processes, on a cluster of kvd processes with fixed ports
//! whose nodes restart with their original commands (`cluster`), with writers that record
//! every acknowledged write (`load`):
//!
//! - `scenarios`: a dead leader replaced with no operator, 307s that follow the leader, nodes
//!   restarted with their original commands (`kvd leader` included), epochs never led twice,
//!   `/health` of a follower cut off from its leader;
//! - `disk`: a leader whose disk fails hands its leadership over, losing nothing;
//! - `divergence`: an old leader's unacknowledged suffix cut when it rejoins (also by the
//!   snapshot path), never served;
//! - `fencing`: a paused leader replaced, and once resumed acknowledging nothing and answering
//!   no linearizable read; a killed leader under quorum writes losing nothing, its successor
//!   from the ISR, the one holding the most; a restarted leader without a controller quorum
//!   serving no read;
//! - `isr`: a follower that copies nothing leaves the ISR (acks go on) and comes back;
//! - `membership`: join and removal of a node; a planned transfer under load, lossless.

pub mod cluster;
mod disk;
mod divergence;
mod fencing;
mod isr;
pub mod load;
mod membership;
mod scenarios;
