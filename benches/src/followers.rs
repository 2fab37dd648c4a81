//! Simulated followers (`--stream-followers N`): N replication streams to the leader (kvd's
//! `GET /replication/stream`, through kv-http's own follower transport), each acknowledging
//! what it receives at once, as a follower with an instant disk would. They measure the
//! leader's cost per follower — its CPU and its throughput with N streams beside a load —
//! without N real processes on two cores. They are not ISR members (the controller never
//! heard of them), so they never hold a commit back: only the leader's work per follower
//! shows.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use kv_http::HttpTransport;
use kv_replication::{last_frame_id, FetchRequest, FetchResponse, Transport};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::HttpConnection;
use crate::error::BenchError;
use crate::target::TargetUrl;

/// The node ids the simulated followers take (far above any real node's).
const FIRST_NODE_ID: u64 = 1_000_000;
/// How long opening a stream may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// What the simulated followers saw, for the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct FollowersReport {
    /// Streams asked for.
    pub followers: usize,
    /// Pushes received over all streams.
    pub pushes: u64,
    /// Pushes that carried frames.
    pub batches: u64,
    /// Frame bytes received.
    pub frame_bytes: u64,
    /// Acknowledgements sent.
    pub acks: u64,
    /// Streams that ended early (broken, refused, or the leader said something else).
    pub failures: u64,
    /// The first failure, if any.
    pub first_failure: Option<String>,
}

/// Running simulated followers.
pub struct SimulatedFollowers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<FollowersReport>>,
    followers: usize,
}

impl SimulatedFollowers {
    /// Opens `count` streams to the leader at `target` (at `socket_address`), from the end of
    /// its log (its `/cluster_status`: cluster id, epoch, last id).
    pub async fn start(
        target: &TargetUrl,
        socket_address: SocketAddr,
        count: usize,
    ) -> Result<SimulatedFollowers, BenchError> {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::with_capacity(count);
        if count > 0 {
            let position = leader_position(target, socket_address).await?;
            for index in 0..count {
                let transport = HttpTransport::new(&format!("http://{socket_address}"))
                    .map_err(|error| config_error(error.to_string()))?;
                let opening = FetchRequest {
                    node_id: FIRST_NODE_ID + index as u64,
                    ..position.clone()
                };
                tasks.push(tokio::spawn(follow(transport, opening, stopped.clone())));
            }
        }
        Ok(SimulatedFollowers {
            stop,
            tasks,
            followers: count,
        })
    }

    /// Stops the streams and sums what they saw.
    pub async fn stop(self) -> FollowersReport {
        let _ = self.stop.send(true);
        let mut total = FollowersReport {
            followers: self.followers,
            ..FollowersReport::default()
        };
        for task in self.tasks {
            let Ok(report) = task.await else {
                total.failures += 1;
                continue;
            };
            total.pushes += report.pushes;
            total.batches += report.batches;
            total.frame_bytes += report.frame_bytes;
            total.acks += report.acks;
            total.failures += report.failures;
            if total.first_failure.is_none() {
                total.first_failure = report.first_failure;
            }
        }
        total
    }
}

fn config_error(reason: String) -> BenchError {
    BenchError::InvalidConfig { reason }
}

/// An opening fetch from the end of the leader's log.
async fn leader_position(
    target: &TargetUrl,
    socket_address: SocketAddr,
) -> Result<FetchRequest, BenchError> {
    let failed = |reason: String| {
        config_error(format!(
            "--stream-followers needs the leader's /cluster_status: {reason}"
        ))
    };
    let mut connection = HttpConnection::connect(socket_address, OPEN_TIMEOUT)
        .await
        .map_err(|error| failed(format!("{error:?}")))?;
    let request = http::Request::get("/cluster_status")
        .header(http::header::HOST, &target.authority)
        .body(Full::new(Bytes::new()))
        .map_err(|error| failed(error.to_string()))?;
    let answer = connection
        .send(request)
        .await
        .map_err(|error| failed(format!("{error:?}")))?;
    let status: serde_json::Value =
        serde_json::from_slice(&answer.body).map_err(|error| failed(error.to_string()))?;
    let number = |name: &str| {
        status[name]
            .as_u64()
            .ok_or_else(|| failed(format!("no `{name}` in {status}")))
    };
    let cluster_id = status["cluster_id"]
        .as_str()
        .and_then(|text| u64::from_str_radix(text, 16).ok())
        .ok_or_else(|| failed(format!("no `cluster_id` in {status}")))?;
    if status["role"] != "leader" {
        return Err(failed(format!("the first URL is not the leader: {status}")));
    }
    let last_id = number("last_id")?;
    Ok(FetchRequest {
        cluster_id,
        node_id: FIRST_NODE_ID,
        leader_epoch: 0,
        next_id: last_id + 1,
        last_epoch: if last_id == 0 { 0 } else { number("epoch")? },
        durable_id: last_id,
        commit_id: 0,
        bytes_max: 4 << 20,
        wait_ms: 500,
    })
}

/// One simulated follower: opens its stream, acknowledges every push at once, until `stop`.
async fn follow(
    transport: HttpTransport,
    opening: FetchRequest,
    mut stop: watch::Receiver<bool>,
) -> FollowersReport {
    let mut report = FollowersReport::default();
    let fail = |report: &mut FollowersReport, reason: String| {
        report.failures += 1;
        report.first_failure.get_or_insert(reason);
    };
    let mut link = match transport.open_stream(&opening, OPEN_TIMEOUT).await {
        Ok(Some(link)) => link,
        Ok(None) => {
            fail(
                &mut report,
                "the leader offers no replication stream".to_owned(),
            );
            return report;
        }
        Err(error) => {
            fail(&mut report, error.to_string());
            return report;
        }
    };
    let mut ack = opening;
    let mut seq = 1;
    let started = Instant::now();
    loop {
        let received = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return report,
            received = link.from_leader.recv() => received,
        };
        let (_, answer) = match received {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                fail(&mut report, error.to_string());
                return report;
            }
            None => {
                fail(
                    &mut report,
                    format!("the leader closed the stream after {:?}", started.elapsed()),
                );
                return report;
            }
        };
        report.pushes += 1;
        match answer {
            FetchResponse::Entries {
                frames,
                leader_epoch,
                ..
            } => {
                if let Some(last_id) = last_frame_id(&frames) {
                    report.batches += 1;
                    report.frame_bytes += frames.len() as u64;
                    ack.next_id = last_id + 1;
                    ack.durable_id = last_id;
                    ack.last_epoch = leader_epoch;
                }
            }
            other => {
                fail(&mut report, format!("the leader answered {other:?}"));
                return report;
            }
        }
        seq += 1;
        report.acks += 1;
        if !link.to_leader.send(seq, &ack) {
            fail(&mut report, "the stream's writer stopped".to_owned());
            return report;
        }
    }
}
