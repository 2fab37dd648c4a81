//! kvd's part in a controlled cluster (issue 13): who the node is and how it takes its place
//! (`bootstrap`: identity, initialize, join, its URL), and the loop that keeps its data plane
//! in step with the controller (`driver`: heartbeats, leases, the meta watch, roles, ISR
//! proposals, planned transfers), and what a `kvd leader` that lost its data does once its old
//! cluster claims it (`claim`: it stops, and refuses to start again until the operator
//! chose), and how a leader stops (`stop`: it hands its leadership over first), and how the
//! driver applies views one at a time without waiting or losing one (`turns`). The controller
//! itself is kv-controller's; its HTTP transport and endpoints are
//! kv-http's.

pub mod bootstrap;
pub mod claim;
pub mod driver;
pub mod stop;
pub mod turns;
