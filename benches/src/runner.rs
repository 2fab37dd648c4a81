//! Drives a run: resolve targets, wait for them, prefill, warm up, measure, report.
//!
//! Workers are tokio tasks. Each owns at most one connection per target, its own random number
//! generator and its own [`PhaseStats`]; the only shared state is a few atomic counters (the
//! measured-request cap, and in an open loop the schedule's ticket counter). A worker stops at
//! the first of: the measured phase's deadline, the request cap, its own iteration cap.
//!
//! In the `cas` and `txn` workloads a worker also owns its keys ([`OwnedKeys`]): before the
//! warm-up it reads each of them once on the first URL to learn its `mod_revision`, and then
//! keeps the revisions up to date from the answers to its own writes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use crate::cli::{BenchConfig, REQUEST_COUNT_MAX, RUN_DURATION_MAX};
use crate::conditional::{
    cas_condition, revision_after_cas, revision_of_read, txn_verdict, OwnedKeys, TxnPlan,
    TxnVerdict, ABSENT_REVISION,
};
use crate::connection::{wait_until_ready, HttpConnection};
use crate::outcome::{classify_response, BodyCheck, FailureKind, Outcome};
use crate::report::{BenchReport, PrefillReport};
use crate::schedule::{open_loop_latency_start_offset, OpenLoopSchedule};
use crate::stats::PhaseStats;
use crate::workload::{Operation, Workload};
use crate::BenchError;

/// The most iterations of one worker's loop in one phase, whatever the clock says.
pub const WORKER_ITERATION_COUNT_MAX: u64 = 2 * REQUEST_COUNT_MAX;
/// First pause after a failed connect in a closed loop; doubles up to [`CONNECT_BACKOFF_MAX`].
pub const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause after a failed connect in a closed loop.
pub const CONNECT_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Runs the whole benchmark described by `config` and returns its report.
pub async fn run_benchmark(config: BenchConfig) -> Result<BenchReport, BenchError> {
    let mut socket_addresses = Vec::with_capacity(config.targets.len());
    for target in &config.targets {
        socket_addresses.push(target.resolve(config.allow_non_loopback).await?);
    }
    if let Some(wait) = config.wait_ready {
        for (target, socket_address) in config.targets.iter().zip(&socket_addresses) {
            if let Err(last) = wait_until_ready(*socket_address, &target.authority, wait).await {
                return Err(BenchError::NotReady {
                    url: target.url_text.clone(),
                    waited_ms: wait.as_millis(),
                    last,
                });
            }
        }
    }
    let config = Arc::new(config);
    let socket_addresses = Arc::new(socket_addresses);

    let prefill_report = if config.prefill {
        Some(run_prefill(&config, &socket_addresses).await)
    } else {
        None
    };

    let followers = crate::followers::SimulatedFollowers::start(
        &config.targets[0],
        socket_addresses[0],
        config.stream_followers,
    )
    .await?;
    let mut workers: Vec<Worker> = (0..config.connection_count)
        .map(|worker_index| Worker::new(worker_index, &config, &socket_addresses))
        .collect();
    if config.workload.owns_keys() {
        workers = learn_revisions(workers).await;
    }

    let run_start = Instant::now();
    let timeline = Timeline {
        run_start,
        warmup_end: run_start + config.warmup,
        measure_end: run_start + config.warmup + config.duration,
    };
    let shared_counters = Arc::new(SharedCounters::default());
    let mut worker_handles = Vec::with_capacity(config.connection_count);
    for worker in workers {
        let shared_counters = Arc::clone(&shared_counters);
        worker_handles.push(tokio::spawn(async move {
            let stats = match worker.config.open_loop_schedule {
                Some(schedule) => {
                    worker
                        .run_open_loop(schedule, timeline, &shared_counters)
                        .await
                }
                None => worker.run_closed_loop(timeline, &shared_counters).await,
            };
            (stats, Instant::now())
        }));
    }
    let mut measured_stats = PhaseStats::default();
    let mut last_finish = timeline.warmup_end;
    for worker_handle in worker_handles {
        let (stats, finish) = worker_handle.await.expect("benchmark workers do not panic");
        measured_stats.merge(&stats);
        last_finish = last_finish.max(finish);
    }
    let elapsed = last_finish.saturating_duration_since(timeline.warmup_end);
    let scheduled_not_sent = match config.open_loop_schedule {
        Some(schedule) => {
            let due_before_measure_end =
                schedule.due_count_before(config.warmup.saturating_add(config.duration));
            let due_in_warmup = schedule.due_count_before(config.warmup);
            let scheduled = (due_before_measure_end - due_in_warmup).min(config.request_count_max);
            scheduled.saturating_sub(measured_stats.request_count())
        }
        None => 0,
    };
    let mut report = BenchReport::new(
        &config,
        &measured_stats,
        elapsed,
        scheduled_not_sent,
        prefill_report,
    );
    if config.stream_followers > 0 {
        report.stream_followers = Some(followers.stop().await);
    }
    Ok(report)
}

/// PUTs every key once, spread over `connection_count` workers, bounded by
/// [`RUN_DURATION_MAX`].
async fn run_prefill(
    config: &Arc<BenchConfig>,
    socket_addresses: &Arc<Vec<SocketAddr>>,
) -> PrefillReport {
    let prefill_start = Instant::now();
    let deadline = prefill_start + RUN_DURATION_MAX;
    let next_key_index = Arc::new(AtomicU64::new(0));
    let mut worker_handles = Vec::with_capacity(config.connection_count);
    for worker_index in 0..config.connection_count {
        let mut worker = Worker::new(worker_index, config, socket_addresses);
        let next_key_index = Arc::clone(&next_key_index);
        worker_handles.push(tokio::spawn(async move {
            let mut stats = PhaseStats::default();
            let key_count = worker.config.key_space.key_count();
            for _ in 0..key_count {
                let key_index = next_key_index.fetch_add(1, Ordering::Relaxed);
                if key_index >= key_count || Instant::now() >= deadline {
                    break;
                }
                let exchange = worker.execute(Operation::Put, key_index).await;
                exchange.record_into(&mut stats, Operation::Put);
            }
            stats
        }));
    }
    let mut prefill_stats = PhaseStats::default();
    for worker_handle in worker_handles {
        prefill_stats.merge(&worker_handle.await.expect("prefill workers do not panic"));
    }
    PrefillReport::from_stats(&prefill_stats, prefill_start.elapsed())
}

/// `cas`, `txn`: every worker reads each key it owns once, so it starts knowing their
/// revisions; bounded by [`RUN_DURATION_MAX`]. A read that fails leaves the key's revision
/// unknown (taken as absent): the worker's first write to it then fails its condition, and
/// learns the revision from that answer.
async fn learn_revisions(workers: Vec<Worker>) -> Vec<Worker> {
    let deadline = Instant::now() + RUN_DURATION_MAX;
    let worker_handles: Vec<_> = workers
        .into_iter()
        .map(|mut worker| {
            tokio::spawn(async move {
                worker.learn_revisions(deadline).await;
                worker
            })
        })
        .collect();
    let mut workers = Vec::with_capacity(worker_handles.len());
    for worker_handle in worker_handles {
        workers.push(worker_handle.await.expect("learning workers do not panic"));
    }
    workers
}

/// The three instants that divide a run.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    run_start: Instant,
    warmup_end: Instant,
    measure_end: Instant,
}

#[derive(Debug, Default)]
struct SharedCounters {
    /// Measured requests started so far (closed loop), for the request cap.
    measured_started_count: AtomicU64,
    /// The next open-loop ticket: the schedule index of the next request to send.
    next_ticket_index: AtomicU64,
}

/// What became of one request, as seen by the worker.
struct Exchange {
    outcome: Outcome,
    /// The answer's status, if one arrived.
    status: Option<http::StatusCode>,
    /// Whether an HTTP answer arrived (only then is latency meaningful).
    answered: bool,
    /// Whether a connection had to be reopened for it.
    reconnected: bool,
    /// `lag` workload: the follower read that followed an acknowledged write, with the
    /// follower's index (0: the second URL).
    replication_lag: Option<(usize, Result<Duration, FailureKind>)>,
}

/// The id in a write's answer, `{"status":"ok","id":N}`.
#[derive(serde::Deserialize)]
struct WrittenId {
    id: u64,
}

impl Exchange {
    fn record_into(&self, stats: &mut PhaseStats, operation: Operation) {
        self.record_with_latency(stats, operation, None);
    }

    fn record_with_latency(
        &self,
        stats: &mut PhaseStats,
        operation: Operation,
        latency: Option<Duration>,
    ) {
        let latency = if self.answered { latency } else { None };
        stats.record(operation, self.outcome, latency);
        if let Some((follower_index, replication_lag)) = self.replication_lag {
            stats.record_replication_lag(follower_index, replication_lag);
        }
        if self.reconnected {
            stats.reconnect_count += 1;
        }
    }
}

struct Worker {
    config: Arc<BenchConfig>,
    socket_addresses: Arc<Vec<SocketAddr>>,
    connections: Vec<Option<HttpConnection>>,
    has_connected: Vec<bool>,
    read_target_cursor: usize,
    /// `lag` workload: the next follower (targets after the first) to read from.
    follower_target_cursor: usize,
    /// `lag` workload: acknowledged writes so far, for `--lag-every`.
    acknowledged_write_count: u64,
    /// `cas`, `txn`: the keys this worker alone writes, with their last seen revisions.
    owned_keys: Option<OwnedKeys>,
    rng: StdRng,
    connect_backoff: Duration,
}

impl Worker {
    fn new(
        worker_index: usize,
        config: &Arc<BenchConfig>,
        socket_addresses: &Arc<Vec<SocketAddr>>,
    ) -> Worker {
        let target_count = socket_addresses.len();
        // Distinct, reproducible streams per worker: mix the index into the seed.
        let worker_seed = config
            .seed
            .wrapping_add((worker_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Worker {
            config: Arc::clone(config),
            socket_addresses: Arc::clone(socket_addresses),
            connections: (0..target_count).map(|_| None).collect(),
            has_connected: vec![false; target_count],
            read_target_cursor: worker_index % target_count,
            follower_target_cursor: worker_index % target_count.saturating_sub(1).max(1),
            acknowledged_write_count: 0,
            owned_keys: config.workload.owns_keys().then(|| {
                OwnedKeys::new(
                    worker_index,
                    config.connection_count,
                    config.key_space.key_count(),
                )
            }),
            rng: StdRng::seed_from_u64(worker_seed),
            connect_backoff: CONNECT_BACKOFF_MIN,
        }
    }

    async fn run_closed_loop(
        mut self,
        timeline: Timeline,
        shared_counters: &SharedCounters,
    ) -> PhaseStats {
        let mut stats = PhaseStats::default();
        for _ in 0..WORKER_ITERATION_COUNT_MAX {
            let started = Instant::now();
            if started >= timeline.measure_end {
                break;
            }
            let measured = started >= timeline.warmup_end;
            if measured
                && shared_counters
                    .measured_started_count
                    .fetch_add(1, Ordering::Relaxed)
                    >= self.config.request_count_max
            {
                break;
            }
            let operation = self.config.workload.choose_operation(&mut self.rng);
            let key_index = self.choose_key_index();
            let exchange = self.execute(operation, key_index).await;
            if measured {
                exchange.record_with_latency(&mut stats, operation, Some(started.elapsed()));
            }
            if exchange.outcome == Outcome::Failed(FailureKind::Connect) {
                let pause_end = (Instant::now() + self.connect_backoff).min(timeline.measure_end);
                tokio::time::sleep_until(pause_end).await;
                self.connect_backoff = (self.connect_backoff * 2).min(CONNECT_BACKOFF_MAX);
            } else {
                self.connect_backoff = CONNECT_BACKOFF_MIN;
            }
        }
        stats
    }

    async fn run_open_loop(
        mut self,
        schedule: OpenLoopSchedule,
        timeline: Timeline,
        shared_counters: &SharedCounters,
    ) -> PhaseStats {
        let mut stats = PhaseStats::default();
        let warmup_ticket_count = schedule.due_count_before(self.config.warmup);
        let ticket_count_max = warmup_ticket_count.saturating_add(self.config.request_count_max);
        for _ in 0..WORKER_ITERATION_COUNT_MAX {
            let ticket_index = shared_counters
                .next_ticket_index
                .fetch_add(1, Ordering::Relaxed);
            if ticket_index >= ticket_count_max {
                break;
            }
            let due = timeline.run_start + schedule.due_offset(ticket_index);
            if due >= timeline.measure_end {
                break;
            }
            let taken_at = Instant::now();
            if due < timeline.warmup_end && taken_at >= timeline.warmup_end {
                // An overloaded warm-up left a backlog: drop it (it would not be measured) and
                // let the measured phase start on its own schedule.
                shared_counters
                    .next_ticket_index
                    .fetch_max(warmup_ticket_count, Ordering::Relaxed);
                continue;
            }
            tokio::time::sleep_until(due).await;
            let woken_at = Instant::now();
            if woken_at >= timeline.measure_end {
                // Due in time but sent too late: counted as scheduled-not-sent in the report.
                break;
            }
            let latency_start = timeline.run_start
                + open_loop_latency_start_offset(
                    due - timeline.run_start,
                    taken_at - timeline.run_start,
                    woken_at - timeline.run_start,
                );
            let operation = self.config.workload.choose_operation(&mut self.rng);
            let key_index = self.choose_key_index();
            let exchange = self.execute(operation, key_index).await;
            if due >= timeline.warmup_end {
                exchange.record_with_latency(&mut stats, operation, Some(latency_start.elapsed()));
            }
        }
        stats
    }

    /// The key of the next request: any key, or in `cas` and `txn` one the worker owns.
    fn choose_key_index(&mut self) -> u64 {
        match &self.owned_keys {
            Some(owned_keys) => owned_keys.choose_key_index(&mut self.rng),
            None => self.rng.gen_range(0..self.config.key_space.key_count()),
        }
    }

    /// `cas`, `txn`: reads every owned key once on the first URL and remembers its
    /// `mod_revision` (absent keys: [`ABSENT_REVISION`]).
    async fn learn_revisions(&mut self, deadline: Instant) {
        let Some(owned_key_count) = self.owned_keys.as_ref().map(OwnedKeys::len) else {
            return;
        };
        for slot in 0..owned_key_count {
            if Instant::now() >= deadline {
                break;
            }
            let key_index = self
                .owned_keys
                .as_ref()
                .expect("checked above")
                .key_index(slot);
            let (exchange, answer_body) = self.exchange(Operation::Get, key_index, None, 0).await;
            let revision = match exchange.status {
                Some(http::StatusCode::OK) => revision_of_read(&answer_body),
                Some(http::StatusCode::NOT_FOUND) => Some(ABSENT_REVISION),
                _ => None,
            };
            if let (Some(revision), Some(owned_keys)) = (revision, self.owned_keys.as_mut()) {
                owned_keys.observe(key_index, revision);
            }
        }
    }

    /// Sends one request on the right connection, opening it if needed, and judges the answer.
    /// In a `lag` run, an acknowledged write is followed by its `min_id` read on a follower;
    /// in `cas` and `txn` runs the answer updates the revisions of the keys written.
    async fn execute(&mut self, operation: Operation, key_index: u64) -> Exchange {
        let target_index = if operation.is_write() {
            0
        } else {
            let target_index = self.read_target_cursor;
            self.read_target_cursor = (self.read_target_cursor + 1) % self.socket_addresses.len();
            target_index
        };
        let txn_plan = match (operation, &self.owned_keys) {
            (Operation::Txn, Some(owned_keys)) => Some(TxnPlan::draw(
                owned_keys,
                key_index,
                self.config.key_space.key_count(),
                &mut self.rng,
            )),
            _ => None,
        };
        let (mut exchange, answer_body) = self
            .exchange(operation, key_index, txn_plan.as_ref(), target_index)
            .await;
        if let (Some(status), Some(owned_keys)) = (exchange.status, self.owned_keys.as_mut()) {
            observe_conditional_answer(
                owned_keys,
                operation,
                key_index,
                txn_plan.as_ref(),
                status,
                &answer_body,
            );
        }
        let sampled = self.config.workload == Workload::Lag
            && exchange.outcome == Outcome::Ok
            && self.next_write_is_sampled();
        if sampled {
            let acknowledged_at = Instant::now();
            let follower_index = self.next_follower_index();
            let lag = match serde_json::from_slice::<WrittenId>(&answer_body) {
                Ok(written) => {
                    self.read_after_write(
                        follower_index + 1,
                        key_index,
                        written.id,
                        acknowledged_at,
                    )
                    .await
                }
                Err(_) => Err(FailureKind::BodyMismatch),
            };
            exchange.replication_lag = Some((follower_index, lag));
        }
        exchange
    }

    /// `lag`: counts an acknowledged write; true for one in `--lag-every`.
    fn next_write_is_sampled(&mut self) -> bool {
        self.acknowledged_write_count += 1;
        self.acknowledged_write_count
            .is_multiple_of(self.config.lag_every)
    }

    /// `lag`: the follower to read from next, in turn (0: the second URL).
    fn next_follower_index(&mut self) -> usize {
        let follower_count = self.socket_addresses.len() - 1;
        let follower_index = self.follower_target_cursor % follower_count;
        self.follower_target_cursor = (follower_index + 1) % follower_count;
        follower_index
    }

    /// `lag`: reads `key_index` on target `target_index` once it has applied `id`; the lag is
    /// the time from `acknowledged_at` to the follower's 200.
    async fn read_after_write(
        &mut self,
        target_index: usize,
        key_index: u64,
        id: u64,
        acknowledged_at: Instant,
    ) -> Result<Duration, FailureKind> {
        let path_and_query = format!(
            "/key/{}?min_id={id}&wait_ms={}",
            self.config.key_space.key(key_index),
            self.config.lag_wait.as_millis()
        );
        let request = http::Request::get(path_and_query)
            .header(
                http::header::HOST,
                self.config.targets[target_index].authority.as_str(),
            )
            .body(Full::new(Bytes::new()))
            .expect("ASCII keys and a parsed authority make a valid request");
        let timeout = self
            .config
            .request_timeout
            .max(self.config.lag_wait + Duration::from_secs(1));
        let (connection, _) = self
            .connection(target_index)
            .await
            .map_err(|_| FailureKind::Connect)?;
        let failure_kind = match tokio::time::timeout(timeout, connection.send(request)).await {
            Ok(Ok(answer)) => {
                let lag = acknowledged_at.elapsed();
                return match classify_response(
                    Operation::Get,
                    answer.status,
                    &answer.body,
                    BodyCheck::Shape,
                ) {
                    Outcome::Ok => Ok(lag),
                    Outcome::NotFound => Err(FailureKind::Status4xx),
                    Outcome::Failed(failure_kind) => Err(failure_kind),
                };
            }
            Ok(Err(_)) => FailureKind::Io,
            Err(_elapsed) => FailureKind::Timeout,
        };
        self.connections[target_index] = None;
        Err(failure_kind)
    }

    /// The worker's open connection to `target_index`, opened now if there is none; the
    /// flag says whether an earlier one to the same target had to be replaced.
    async fn connection(&mut self, target_index: usize) -> Result<(&mut HttpConnection, bool), ()> {
        let mut reconnected = false;
        if self.connections[target_index].is_none() {
            let connection = HttpConnection::connect(
                self.socket_addresses[target_index],
                self.config.request_timeout,
            )
            .await
            .map_err(|_| ())?;
            reconnected = self.has_connected[target_index];
            self.has_connected[target_index] = true;
            self.connections[target_index] = Some(connection);
        }
        let connection = self.connections[target_index]
            .as_mut()
            .expect("connection opened above");
        Ok((connection, reconnected))
    }

    /// Sends one request to `target_index` and judges the answer; returns the body too.
    async fn exchange(
        &mut self,
        operation: Operation,
        key_index: u64,
        txn_plan: Option<&TxnPlan>,
        target_index: usize,
    ) -> (Exchange, Bytes) {
        let request = self.build_request(operation, key_index, txn_plan, target_index);
        let request_timeout = self.config.request_timeout;
        let Ok((connection, reconnected)) = self.connection(target_index).await else {
            let exchange = Exchange {
                outcome: Outcome::Failed(FailureKind::Connect),
                status: None,
                answered: false,
                reconnected: false,
                replication_lag: None,
            };
            return (exchange, Bytes::new());
        };
        let answer = tokio::time::timeout(request_timeout, connection.send(request)).await;
        let failure_kind = match answer {
            Ok(Ok(answer)) => {
                let key_space = &self.config.key_space;
                let outcome = if self.config.verify_values && operation == Operation::Get {
                    let key = key_space.key(key_index);
                    let value = key_space.value(key_index);
                    let body_check = BodyCheck::Exact {
                        key: &key,
                        value: &value,
                    };
                    classify_response(operation, answer.status, &answer.body, body_check)
                } else {
                    classify_response(operation, answer.status, &answer.body, BodyCheck::Shape)
                };
                report_first_error_answer(&outcome, answer.status, &answer.body);
                let exchange = Exchange {
                    outcome,
                    status: Some(answer.status),
                    answered: true,
                    reconnected,
                    replication_lag: None,
                };
                return (exchange, answer.body);
            }
            Ok(Err(_)) => FailureKind::Io,
            Err(_elapsed) => FailureKind::Timeout,
        };
        // The connection's state is unknown after an error or a timeout: start afresh.
        self.connections[target_index] = None;
        let exchange = Exchange {
            outcome: Outcome::Failed(failure_kind),
            status: None,
            answered: false,
            reconnected,
            replication_lag: None,
        };
        (exchange, Bytes::new())
    }

    fn build_request(
        &self,
        operation: Operation,
        key_index: u64,
        txn_plan: Option<&TxnPlan>,
        target_index: usize,
    ) -> http::Request<Full<Bytes>> {
        let key_space = &self.config.key_space;
        let mut path_and_query = match operation {
            Operation::Txn => "/txn".to_string(),
            _ => format!("/key/{}", key_space.key(key_index)),
        };
        if let (true, Some(acks)) = (operation.is_write(), self.config.acks) {
            path_and_query.push_str("?acks=");
            path_and_query.push_str(acks.query_value());
        }
        let mut request_builder = http::Request::builder()
            .method(operation.method())
            .uri(path_and_query)
            .header(
                http::header::HOST,
                self.config.targets[target_index].authority.as_str(),
            );
        if matches!(
            operation,
            Operation::Put | Operation::CasPut | Operation::Txn
        ) {
            request_builder =
                request_builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        let body = match operation {
            Operation::Put => key_space.put_body(key_index),
            Operation::CasPut => {
                let revision = self
                    .owned_keys
                    .as_ref()
                    .map_or(ABSENT_REVISION, |owned_keys| owned_keys.revision(key_index));
                let (condition_name, condition_value) = cas_condition(revision);
                request_builder = request_builder.header(condition_name, condition_value);
                key_space.put_body(key_index)
            }
            Operation::Txn => txn_plan
                .expect("a txn request is built from its plan")
                .body(key_space),
            Operation::Get | Operation::Delete => Bytes::new(),
        };
        request_builder
            .body(Full::new(body))
            .expect("ASCII keys and a parsed authority make a valid request")
    }
}

/// `cas`, `txn`: what an answer to a conditional write says about the revisions of the owned
/// keys it wrote. An answer that says nothing (an error status, a broken body) leaves them
/// as they were.
fn observe_conditional_answer(
    owned_keys: &mut OwnedKeys,
    operation: Operation,
    key_index: u64,
    txn_plan: Option<&TxnPlan>,
    status: http::StatusCode,
    answer_body: &[u8],
) {
    match (operation, txn_plan) {
        (Operation::CasPut, _) => {
            if let Some(revision) = revision_after_cas(status, answer_body) {
                owned_keys.observe(key_index, revision);
            }
        }
        (Operation::Txn, Some(txn_plan)) if status == http::StatusCode::OK => {
            match txn_verdict(answer_body) {
                Some(TxnVerdict::Succeeded { revision }) => {
                    owned_keys.observe(txn_plan.compared_key_index, revision);
                    owned_keys.observe(txn_plan.second_key_index, revision);
                }
                Some(TxnVerdict::CompareFailed { current_revision }) => {
                    owned_keys.observe(txn_plan.compared_key_index, current_revision);
                }
                None => {}
            }
        }
        _ => {}
    }
}

/// Prints the first answer of this process that counts as an error status (4xx where not
/// expected, 5xx, other), with the start of its body, on stderr: the counters say how many
/// failed, this says why (kvd's 503s name their cause).
fn report_first_error_answer(outcome: &Outcome, status: http::StatusCode, body: &[u8]) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static REPORTED: AtomicBool = AtomicBool::new(false);
    let is_status_error = matches!(
        outcome,
        Outcome::Failed(FailureKind::Status4xx | FailureKind::Status5xx | FailureKind::StatusOther)
    );
    if is_status_error && !REPORTED.swap(true, Ordering::Relaxed) {
        let shown = &body[..body.len().min(300)];
        eprintln!(
            "kv-bench: first error answer: {status} {}",
            String::from_utf8_lossy(shown)
        );
    }
}
