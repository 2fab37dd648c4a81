//! The leader's and followers' logic on virtual time over a network that drops, duplicates and
//! reorders messages. Checked after every event: followers agree with the leader on every
//! committed id, nothing uncommitted is applied, and the commit id is held by a real write
//! quorum. Once the network heals, every follower converges to the leader's log. The seed is
//! printed; `KV_TEST_SEED=<seed>` replays a run.

use std::time::{Duration, Instant};

use kv_replication::{
    FetchDecision, FetchRequest, FetchResponse, FollowerOptions, FollowerState, LeaderOptions,
    LeaderState, LogView, Step,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{epoch_of, payload, seed_from_env, VecLog};

const CLUSTER: u64 = 0x5eed;
const WRITE_QUORUM: usize = 2;
const REQUEST_TIMEOUT_TICKS: u64 = 20;

struct Follower {
    log: VecLog,
    state: FollowerState,
    applied_id: u64,
    outstanding: Option<(u64, FetchRequest)>,
    retry_at: u64,
}

enum Message {
    Request {
        from: usize,
        request: FetchRequest,
    },
    Response {
        to: usize,
        request: FetchRequest,
        response: FetchResponse,
    },
}

struct Simulation {
    rng: StdRng,
    tick: u64,
    start: Instant,
    leader: LeaderState,
    leader_log: VecLog,
    followers: Vec<Follower>,
    network: Vec<Message>,
    drop_percent: u32,
    duplicate_percent: u32,
    events: u64,
    truncations: u64,
    refused: u64,
}

impl Simulation {
    fn new(seed: u64) -> Simulation {
        let mut leader_log = VecLog::new();
        // History: epoch 1, then this leader's epoch 3.
        for index in 0..20 {
            leader_log.append(1, payload(1, &format!("e1-{index}")));
        }
        leader_log.sync();
        let mut followers = Vec::new();
        for number in 0..3 {
            let mut log = VecLog::new();
            // follower 0 starts empty; 1 has the epoch-1 prefix; 2 has the prefix plus an old
            // leader's unreplicated epoch-2 tail that must be cut.
            if number >= 1 {
                for entry in &leader_log.entries[..15] {
                    log.entries.push(entry.clone());
                }
            }
            if number == 2 {
                for index in 0..7 {
                    log.append(2, payload(2, &format!("stale-{index}")));
                }
            }
            log.sync();
            let options = FollowerOptions {
                follower_id: format!("follower-{number}"),
                backoff_initial: Duration::from_millis(1),
                backoff_max: Duration::from_millis(16),
                jitter_seed: seed ^ number,
                ..FollowerOptions::default()
            };
            let cluster = if number == 0 { 0 } else { CLUSTER };
            followers.push(Follower {
                log,
                state: FollowerState::new(options, cluster),
                applied_id: 0,
                outstanding: None,
                retry_at: 0,
            });
        }
        Simulation {
            rng: StdRng::seed_from_u64(seed),
            tick: 0,
            start: Instant::now(),
            leader: LeaderState::new(
                CLUSTER,
                3,
                LeaderOptions {
                    write_quorum: WRITE_QUORUM,
                    ..LeaderOptions::default()
                },
            ),
            leader_log,
            followers,
            network: Vec::new(),
            drop_percent: 15,
            duplicate_percent: 10,
            events: 0,
            truncations: 0,
            refused: 0,
        }
    }

    fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.tick)
    }

    fn step(&mut self, writing: bool) {
        self.tick += 1;
        if writing && self.rng.gen_ratio(1, 3) {
            for _ in 0..self.rng.gen_range(1..4) {
                let tag = format!("e3-{}", self.leader_log.next_id());
                self.leader_log.append(3, payload(3, &tag));
            }
        }
        if self.rng.gen_ratio(1, 2) {
            self.leader_log.sync();
            self.leader.recompute_commit(self.leader_log.durable_id);
        }
        for number in 0..self.followers.len() {
            let now = self.now();
            let follower = &mut self.followers[number];
            if let Some((sent, _)) = &follower.outstanding {
                if self.tick - sent > REQUEST_TIMEOUT_TICKS {
                    follower.outstanding = None;
                    if let Step::Retry { after } =
                        follower.state.on_failure(now, "timed out".to_owned())
                    {
                        follower.retry_at = self.tick + after.as_millis() as u64;
                    }
                }
            }
            if follower.outstanding.is_none() && self.tick >= follower.retry_at {
                let request = follower.state.request(&follower.log);
                follower.outstanding = Some((self.tick, request.clone()));
                self.network.push(Message::Request {
                    from: number,
                    request,
                });
            }
        }
        for _ in 0..self.rng.gen_range(0..4) {
            self.deliver_one();
        }
    }

    fn deliver_one(&mut self) {
        if self.network.is_empty() {
            return;
        }
        let index = self.rng.gen_range(0..self.network.len());
        if self.rng.gen_range(0..100) < self.drop_percent {
            self.network.swap_remove(index);
            return;
        }
        let message = if self.rng.gen_range(0..100) < self.duplicate_percent {
            match &self.network[index] {
                Message::Request { from, request } => Message::Request {
                    from: *from,
                    request: request.clone(),
                },
                Message::Response {
                    to,
                    request,
                    response,
                } => Message::Response {
                    to: *to,
                    request: request.clone(),
                    response: response.clone(),
                },
            }
        } else {
            self.network.swap_remove(index)
        };
        self.events += 1;
        match message {
            Message::Request { from, request } => {
                let now = self.now();
                let decision = self
                    .leader
                    .on_fetch(now, &request, &self.leader_log, false, true);
                let FetchDecision::Respond(response) = decision else {
                    panic!("the leader waited with may_wait = false")
                };
                self.network.push(Message::Response {
                    to: from,
                    request,
                    response,
                });
            }
            Message::Response {
                to,
                request,
                response,
            } => self.answer(to, request, response),
        }
        self.check();
    }

    fn answer(&mut self, number: usize, request: FetchRequest, response: FetchResponse) {
        let now = self.now();
        let tick = self.tick;
        let follower = &mut self.followers[number];
        // A client takes only the answer to the request it is waiting for.
        if follower
            .outstanding
            .as_ref()
            .map(|(_, outstanding)| outstanding)
            != Some(&request)
        {
            return;
        }
        follower.outstanding = None;
        match follower.state.on_response(now, &request, response) {
            Step::Append {
                frames, commit_id, ..
            } => {
                follower.log.append_frames(&frames, epoch_of);
                follower.log.sync();
                follower.applied_id = follower
                    .applied_id
                    .max(commit_id.min(follower.log.durable_id));
            }
            Step::Apply { commit_id, .. } => {
                follower.applied_id = follower
                    .applied_id
                    .max(commit_id.min(follower.log.durable_id));
            }
            Step::Truncate { after_id } => {
                assert!(after_id >= follower.applied_id, "truncated applied entries");
                follower.log.truncate_after(after_id);
                self.truncations += 1;
            }
            Step::Retry { after } => {
                self.refused += 1;
                follower.retry_at = tick + after.as_millis() as u64;
            }
            Step::Stop { reason } => panic!("follower-{number} stopped: {reason}"),
            Step::InstallSnapshot { .. } => panic!("the simulated leader never compacts"),
        }
    }

    fn check(&self) {
        let commit = self.leader.commit_id();
        assert!(
            commit <= self.leader_log.durable_id,
            "commit {commit} above the leader's durable id"
        );
        let mut holders = 1; // the leader
        for (number, follower) in self.followers.iter().enumerate() {
            let agree_through = |id: u64| {
                follower
                    .log
                    .entries
                    .iter()
                    .filter(|(entry, _, _)| *entry <= id)
                    .eq(self
                        .leader_log
                        .entries
                        .iter()
                        .filter(|(entry, _, _)| *entry <= id))
            };
            assert!(
                follower.applied_id <= commit,
                "follower-{number} applied {} beyond commit {commit}",
                follower.applied_id
            );
            assert!(
                agree_through(follower.applied_id),
                "follower-{number} applied entries the leader does not have"
            );
            if follower.log.durable_id >= commit && agree_through(commit) {
                holders += 1;
            }
        }
        assert!(
            holders >= WRITE_QUORUM || commit == 0,
            "commit {commit} is held by {holders} node(s) only"
        );
    }

    fn converged(&self) -> bool {
        self.followers
            .iter()
            .all(|follower| follower.log.entries == self.leader_log.entries)
            && self.leader.commit_id() == self.leader_log.last_id()
            && self
                .followers
                .iter()
                .all(|follower| follower.applied_id == self.leader.commit_id())
    }
}

#[test]
fn followers_converge_over_a_lossy_network() {
    let seed = seed_from_env();
    println!("simulation seed: {seed} (replay with KV_TEST_SEED={seed})");
    for run in 0..20u64 {
        let mut simulation = Simulation::new(seed.wrapping_add(run));
        for _ in 0..2_000 {
            simulation.step(true);
        }
        // Heal the network and stop writing: everyone must catch up.
        simulation.drop_percent = 0;
        simulation.duplicate_percent = 0;
        let mut ticks = 0;
        while !simulation.converged() {
            simulation.step(false);
            ticks += 1;
            assert!(
                ticks < 20_000,
                "run {run} (seed {}) did not converge",
                seed.wrapping_add(run)
            );
        }
        assert!(
            simulation.truncations >= 1,
            "the diverged follower was never cut back"
        );
        if run == 0 {
            println!(
                "run 0: {} events, {} entries, {} truncation(s), {} retries, converged {ticks} ticks after healing",
                simulation.events,
                simulation.leader_log.last_id(),
                simulation.truncations,
                simulation.refused
            );
        }
    }
}
