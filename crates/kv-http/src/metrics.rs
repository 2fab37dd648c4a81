//! Counters for `/metrics`, kept in fixed arrays of atomics (no locks on the request path),
//! and their rendering in the Prometheus text format together with the store's and the WAL's
//! own figures.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use kv_store::Store;
use kv_wal::FSYNC_BATCH_BOUNDS;

use crate::route::ROUTE_LABELS;
use kv_replication::Node;

/// Method labels; anything else counts as `other`.
const METHOD_LABELS: [&str; 5] = ["GET", "PUT", "DELETE", "POST", "other"];
/// Every status the service answers with; anything else counts under the last slot.
const STATUSES: [u16; 18] = [
    200, 307, 400, 404, 405, 408, 409, 410, 412, 413, 414, 422, 500, 503, 504, 507, 431, 0,
];
/// Upper bounds of the latency histogram, in microseconds.
const LATENCY_BOUNDS_MICROS: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
const ROUTE_METHODS: usize = ROUTE_LABELS.len() * METHOD_LABELS.len();

/// Request, latency and connection counters.
#[derive(Debug)]
pub struct Metrics {
    /// `[route][method][status]`
    requests: Vec<AtomicU64>,
    /// `[route][method][bucket]`; the last bucket is `+Inf`.
    latency_buckets: Vec<AtomicU64>,
    /// `[route][method]`
    latency_sum_micros: Vec<AtomicU64>,
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let zeros = |count: usize| (0..count).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            requests: zeros(ROUTE_METHODS * STATUSES.len()),
            latency_buckets: zeros(ROUTE_METHODS * (LATENCY_BOUNDS_MICROS.len() + 1)),
            latency_sum_micros: zeros(ROUTE_METHODS),
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts a finished request.
    pub fn record_request(
        &self,
        route_label_index: usize,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let method_index = match *method {
            Method::GET => 0,
            Method::PUT => 1,
            Method::DELETE => 2,
            Method::POST => 3,
            _ => 4,
        };
        let route_method = route_label_index * METHOD_LABELS.len() + method_index;
        let status_index = STATUSES
            .iter()
            .position(|&known| known == status.as_u16())
            .unwrap_or(STATUSES.len() - 1);
        self.requests[route_method * STATUSES.len() + status_index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BOUNDS_MICROS.len());
        self.latency_buckets[route_method * (LATENCY_BOUNDS_MICROS.len() + 1) + bucket]
            .fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros[route_method].fetch_add(micros, Ordering::Relaxed);
    }

    /// Counts an accepted connection.
    pub fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a closed connection.
    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Connections being served now.
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of these counters and of `store`.
    pub fn render(&self, node: &Node, role_name: &str) -> String {
        let store = node.store();
        let mut out = String::with_capacity(8 * 1024);
        self.render_requests(&mut out);
        self.render_latency(&mut out);
        gauge(
            &mut out,
            "kvd_http_connections_open",
            "Connections being served.",
            self.connections_open.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "kvd_http_connections_accepted_total",
            "Connections accepted.",
            self.connections_accepted.load(Ordering::Relaxed),
        );
        render_store(&mut out, store, role_name);
        render_replication(&mut out, node);
        out
    }

    fn render_requests(&self, out: &mut String) {
        out.push_str(
            "# HELP kvd_http_requests_total HTTP requests answered, by route, method and status.\n",
        );
        out.push_str("# TYPE kvd_http_requests_total counter\n");
        for (route_method, counts) in self.requests.chunks(STATUSES.len()).enumerate() {
            let (route, method) = route_method_labels(route_method);
            for (status, count) in STATUSES.iter().zip(counts) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let status = if *status == 0 {
                        "other".to_owned()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "kvd_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}"
                    );
                }
            }
        }
    }

    fn render_latency(&self, out: &mut String) {
        let name = "kvd_http_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from request head to response, by route and method."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let buckets_per = LATENCY_BOUNDS_MICROS.len() + 1;
        for (route_method, buckets) in self.latency_buckets.chunks(buckets_per).enumerate() {
            let counts: Vec<u64> = buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
            let total: u64 = counts.iter().sum();
            if total == 0 {
                continue;
            }
            let (route, method) = route_method_labels(route_method);
            let labels = format!("route=\"{route}\",method=\"{method}\"");
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BOUNDS_MICROS.iter().zip(&counts) {
                cumulative += count;
                let seconds = *bound as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{seconds}\"}} {cumulative}"
                );
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
            let sum_seconds =
                self.latency_sum_micros[route_method].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum_seconds}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
    }
}

fn route_method_labels(route_method: usize) -> (&'static str, &'static str) {
    (
        ROUTE_LABELS[route_method / METHOD_LABELS.len()],
        METHOD_LABELS[route_method % METHOD_LABELS.len()],
    )
}

fn render_replication(out: &mut String, node: &Node) {
    let status = node.cluster_status();
    gauge(
        out,
        "kvd_replication_commit_id",
        "The commit id (followers: as last heard from the leader).",
        status.commit_id,
    );
    gauge(
        out,
        "kvd_replication_epoch",
        "The leader epoch.",
        status.epoch,
    );
    if let Some(followers) = &status.followers {
        out.push_str("# HELP kvd_replication_follower_lag_entries Entries a follower lacks, as the leader sees it.\n");
        out.push_str("# TYPE kvd_replication_follower_lag_entries gauge\n");
        for follower in followers {
            let _ = writeln!(
                out,
                "kvd_replication_follower_lag_entries{{follower=\"{}\"}} {}",
                follower.follower_id, follower.lag_entries
            );
        }
        out.push_str(
            "# HELP kvd_replication_follower_lag_ms How long a follower has been behind.\n",
        );
        out.push_str("# TYPE kvd_replication_follower_lag_ms gauge\n");
        for follower in followers {
            let _ = writeln!(
                out,
                "kvd_replication_follower_lag_ms{{follower=\"{}\"}} {}",
                follower.follower_id, follower.lag_ms
            );
        }
        out.push_str("# HELP kvd_replication_follower_up Whether a follower fetched within the down timeout.\n");
        out.push_str("# TYPE kvd_replication_follower_up gauge\n");
        for follower in followers {
            let up = u64::from(follower.status != kv_replication::FollowerHealth::Down);
            let _ = writeln!(
                out,
                "kvd_replication_follower_up{{follower=\"{}\"}} {up}",
                follower.follower_id
            );
        }
    }
    if let Some(age) = status.last_contact_age_ms {
        gauge(
            out,
            "kvd_replication_leader_contact_age_ms",
            "Time since the leader last answered a fetch.",
            age,
        );
    }
    if let Some(refused) = status.corrupt_batches_refused {
        counter(
            out,
            "kvd_replication_corrupt_batches_refused_total",
            "Fetched batches refused for a bad CRC or id.",
            refused,
        );
    }
    let streams = status.streams;
    gauge(
        out,
        "kvd_replication_streams_open",
        "Replication streams this node serves as the leader now.",
        streams.open,
    );
    counter(
        out,
        "kvd_replication_stream_pushes_total",
        "Pushes sent on replication streams (frames, commit ids, heartbeats).",
        streams.pushes,
    );
    counter(
        out,
        "kvd_replication_stream_acks_total",
        "Acknowledgements received on replication streams.",
        streams.acks,
    );
    counter(
        out,
        "kvd_replication_stream_sessions_total",
        "Replication streams this node opened to its leaders as a follower.",
        streams.sessions,
    );
    gauge(
        out,
        "kvd_replication_apply_lag_entries",
        "Entries held durably here but not yet applied (awaiting commit).",
        status.last_id.saturating_sub(status.applied_id),
    );
    let _ = writeln!(out, "# HELP kvd_node_meta_save_wait_seconds How long the save of the node's meta file (node.meta) still in flight has waited for the disk (0: none).\n# TYPE kvd_node_meta_save_wait_seconds gauge");
    let _ = writeln!(
        out,
        "kvd_node_meta_save_wait_seconds {}",
        node.meta_save_wait().as_secs_f64()
    );
}

fn render_store(out: &mut String, store: &Store, role_name: &str) {
    let _ = writeln!(
        out,
        "# HELP kvd_node_info The node's role.\n# TYPE kvd_node_info gauge"
    );
    let _ = writeln!(out, "kvd_node_info{{role=\"{role_name}\"}} 1");
    gauge(
        out,
        "kvd_store_keys",
        "Keys in the applied map.",
        store.key_count() as u64,
    );
    gauge(
        out,
        "kvd_store_history_links",
        "History links held: each reaches one replaced value still in the log.",
        store.history_links() as u64,
    );
    gauge(
        out,
        "kvd_store_applied_id",
        "Id of the last entry applied to the map.",
        store.applied_id(),
    );
    gauge(
        out,
        "kvd_store_pending_entries",
        "Entries submitted to the WAL, not yet applied.",
        store.pending_count() as u64,
    );
    render_wal(out, store);
}

/// The WAL under the store: ids, segments, health, and the write path's counters.
fn render_wal(out: &mut String, store: &Store) {
    let log = store.log_status();
    let segments = store.segments();
    gauge(
        out,
        "kvd_wal_last_id",
        "Last id written to the WAL (0 when empty).",
        log.last_id.unwrap_or(0),
    );
    gauge(
        out,
        "kvd_wal_durable_id",
        "Highest id known to be on stable storage.",
        log.durable_id,
    );
    gauge(
        out,
        "kvd_wal_segments",
        "Segment files in the WAL.",
        segments.len() as u64,
    );
    gauge(
        out,
        "kvd_wal_segment_bytes",
        "Bytes of records in the WAL's segment files (not the space preallocated ahead of the active segment's end).",
        segments.iter().map(|segment| segment.size_bytes).sum(),
    );
    gauge(
        out,
        "kvd_wal_segment_original_bytes",
        "Bytes the WAL's segments would take uncompressed (equal to kvd_wal_segment_bytes when none is compressed).",
        segments.iter().map(|segment| segment.original_bytes).sum(),
    );
    gauge(
        out,
        "kvd_wal_segments_compressed",
        "Sealed WAL segments stored compressed.",
        segments
            .iter()
            .filter(|segment| segment.codec.is_some())
            .count() as u64,
    );
    gauge(
        out,
        "kvd_wal_poisoned",
        "1 when the WAL refuses writes after an I/O failure.",
        u64::from(log.poisoned.is_some()),
    );
    render_wal_stats(out, store);
}

/// The WAL's write path: appends, writes, fsyncs and the group-commit batch sizes.
fn render_wal_stats(out: &mut String, store: &Store) {
    let stats = store.wal_stats();
    counter(
        out,
        "kvd_wal_append_calls_total",
        "Append calls (single or batch).",
        stats.append_calls,
    );
    counter(
        out,
        "kvd_wal_records_appended_total",
        "Records appended.",
        stats.records_appended,
    );
    counter(
        out,
        "kvd_wal_writes_total",
        "write calls to segment files.",
        stats.writes,
    );
    counter(
        out,
        "kvd_wal_bytes_written_total",
        "Bytes written to segment files.",
        stats.bytes_written,
    );
    counter(
        out,
        "kvd_wal_fsyncs_total",
        "fdatasync calls.",
        stats.fsyncs,
    );
    counter(
        out,
        "kvd_wal_inline_commits_total",
        "Commits a write ran itself, finding the log idle (the write-group leader; included in kvd_wal_fsyncs_total).",
        stats.inline_commits,
    );
    let _ = writeln!(out, "# HELP kvd_wal_fsync_seconds_total Time spent in fdatasync.\n# TYPE kvd_wal_fsync_seconds_total counter");
    let _ = writeln!(
        out,
        "kvd_wal_fsync_seconds_total {}",
        stats.fsync_seconds_total
    );
    let _ = writeln!(out, "# HELP kvd_wal_disk_wait_seconds How long the oldest write or fdatasync of the log still in flight has waited for the disk (0: none).\n# TYPE kvd_wal_disk_wait_seconds gauge");
    let _ = writeln!(out, "kvd_wal_disk_wait_seconds {}", stats.disk_wait_seconds);
    let name = "kvd_wal_fsync_batch_records";
    let _ = writeln!(
        out,
        "# HELP {name} Records made durable per group-commit fsync.\n# TYPE {name} histogram"
    );
    let mut cumulative = 0;
    for (index, count) in stats.fsync_batch_counts.iter().enumerate() {
        cumulative += count;
        match FSYNC_BATCH_BOUNDS.get(index) {
            Some(bound) => {
                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
            }
            None => {
                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
            }
        }
    }
    let _ = writeln!(out, "{name}_sum {}", stats.fsync_batch_records_total);
    let _ = writeln!(out, "{name}_count {cumulative}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}
