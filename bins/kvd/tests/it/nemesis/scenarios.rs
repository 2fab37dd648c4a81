//! The scenarios: a cluster, clients, a nemesis, then the checks. Each is CI-sized by default
//! and scales with env variables for a long campaign:
//!
//! | variable | default | what |
//! |---|---|---|
//! | `KVD_TEST_SEED` | fresh, printed | replays the run's choices (ops, keys, faults, timings) |
//! | `KVD_NEMESIS_SECS` | 12 | how long the nemesis runs |
//! | `KVD_NEMESIS_FAULTS` | 200 | faults at most |
//! | `KVD_NEMESIS_FAILOVERS` | 20 | leader kills of `leader_kill_9_failovers_…` (it runs until done) |
//! | `KVD_NEMESIS_CLIENTS` | per scenario | concurrent clients |
//! | `KVD_NEMESIS_LEADER` | `discover` | `discover`: clients find the leader by `/cluster_status` and 307s; `fixed`: node 0 first |
//!
//! The kill scenario, the disk-fault one and the five-node one ask for a planned leadership
//! transfer to a random node just before half their faults (`faults.rs`), so the faults also
//! land on transfers under way.
//!
//! Leader reads carry `?linearizable=true`, so only the node that leads, with a lease and its
//! epoch's first entry committed and applied, answers them; every one is checked. (Before the
//! controller a leader restarted after `kill -9` with a write quorum above 1 served reads older
//! than writes it had acknowledged; this suite found it, and `known_issues.rs` keeps the
//! reproduction as a regression test.)
//!
//! ```text
//! KVD_NEMESIS_SECS=600 cargo test -p kvd --release --test it nemesis::scenarios -- --nocapture --test-threads 1
//! ```
//!
//! Thread timing is not replayed: a seed gives the same plan, not the same interleaving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::checker::{check_follower_reads, check_linearizable};
use super::client::{discover_leader, Client, Directory, KeySpace, LeaderMode, Shared};
use super::cluster::{Cluster, ClusterOptions};
use super::faults::{self, describe_durations, DiskFault, FaultKind, NemesisOptions};
use super::history::{Clock, Counts, Op, Outcome, Record};
use super::proxy::Partition;
use crate::harness::{base_seed, env_number, TestRng, DEADLINE};

const SECS_DEFAULT: u64 = 12;
const FAULTS_MAX_DEFAULT: u64 = 200;
/// Keys in use at a time, and the answered operations after which fresh keys replace them.
const KEYS_PER_GENERATION: u64 = 4;
const ANSWERS_PER_GENERATION: u64 = 240;
/// The clients stop when the nemesis is done, and at the latest this long after it was due
/// to end (it may run on to hit every node and kind once).
const CLIENT_GRACE: Duration = Duration::from_secs(90);

struct Scenario {
    name: &'static str,
    nodes: usize,
    write_quorum: usize,
    clients: usize,
    kinds: Vec<FaultKind>,
    targets_max: usize,
    hold_ms: std::ops::RangeInclusive<u64>,
    /// Every fault hits the leader of the moment, this many times (`KVD_NEMESIS_FAILOVERS`
    /// overrides it), however long it takes; `None`: faults for `KVD_NEMESIS_SECS`.
    failovers: Option<u64>,
    /// Half the faults come just after a planned leadership transfer was asked for.
    transfers: bool,
}

fn leader_mode() -> LeaderMode {
    match std::env::var("KVD_NEMESIS_LEADER").as_deref() {
        Ok("discover") | Err(_) => LeaderMode::Discover,
        Ok("fixed") => LeaderMode::Fixed,
        Ok(other) => panic!("KVD_NEMESIS_LEADER must be fixed or discover, not {other}"),
    }
}

const PARTITIONS: [FaultKind; 4] = [
    FaultKind::Partition(Partition::Cut),
    FaultKind::Partition(Partition::BlackHole),
    FaultKind::Partition(Partition::Deafen),
    FaultKind::Partition(Partition::Slow(Duration::from_millis(40))),
];

#[test]
fn kill_9_of_any_node_of_3_with_write_quorum_2_keeps_every_key_linearizable() {
    run(Scenario {
        name: "nemesis_kill_9_3_nodes",
        nodes: 3,
        write_quorum: 2,
        clients: 4,
        kinds: vec![FaultKind::Kill],
        targets_max: 1,
        hold_ms: 100..=1200,
        failovers: None,
        transfers: true,
    });
}

#[test]
fn sigstop_of_any_node_of_3_with_write_quorum_2_keeps_every_key_linearizable() {
    run(Scenario {
        name: "nemesis_sigstop_3_nodes",
        nodes: 3,
        write_quorum: 2,
        clients: 4,
        kinds: vec![FaultKind::Pause],
        targets_max: 1,
        hold_ms: 100..=1500,
        failovers: None,
        transfers: false,
    });
}

#[test]
fn partitions_of_followers_and_of_the_leader_keep_every_key_linearizable() {
    run(Scenario {
        name: "nemesis_partitions_3_nodes",
        nodes: 3,
        write_quorum: 2,
        clients: 4,
        kinds: PARTITIONS.to_vec(),
        targets_max: 1,
        hold_ms: 300..=2500,
        failovers: None,
        transfers: false,
    });
}

#[test]
fn every_fault_on_5_nodes_with_write_quorum_3_keeps_every_key_linearizable() {
    let mut kinds = vec![FaultKind::Kill, FaultKind::Pause];
    kinds.extend(PARTITIONS);
    run(Scenario {
        name: "nemesis_mixed_5_nodes",
        nodes: 5,
        write_quorum: 3,
        clients: 5,
        kinds,
        targets_max: 2,
        hold_ms: 100..=1500,
        failovers: None,
        transfers: true,
    });
}

/// Disks that stop answering — every write, or only the `fsync`s — or fill up, on any node,
/// the leader included, for 0.5–8 s. Past 5 s a hung node goes silent on purpose and a leader
/// is replaced (`DISK_HUNG_AFTER`), so some hangs end in a failover with the old leader's
/// writes still waiting on its disk, completed there once it answers (after its leadership
/// passed) and cut when it follows; shorter ones leave writes to end 503 with their outcome
/// unknown. A full leader refuses writes with nothing appended (507) and a full follower
/// copies nothing until it has room. Half the faults land on a planned transfer under way.
#[test]
fn disk_faults_of_any_node_of_3_with_write_quorum_2_keep_every_key_linearizable() {
    run(Scenario {
        name: "nemesis_disk_faults_3_nodes",
        nodes: 3,
        write_quorum: 2,
        clients: 4,
        kinds: DiskFault::ALL.map(FaultKind::Disk).to_vec(),
        targets_max: 1,
        hold_ms: 500..=8000,
        failovers: None,
        transfers: true,
    });
}

/// Issue 13's CI-sized failover run: `kill -9` of whichever node leads, 20 times (each held
/// long enough for the controller to elect another: 1.5–2.5 s), under concurrent clients; every
/// key's history must stay linearizable and every node agree after.
#[test]
fn leader_kill_9_failovers_keep_every_key_linearizable() {
    run(Scenario {
        name: "nemesis_leader_failovers_3_nodes",
        nodes: 3,
        write_quorum: 2,
        clients: 4,
        kinds: vec![FaultKind::Kill],
        targets_max: 1,
        hold_ms: 1500..=2500,
        failovers: Some(20),
        transfers: false,
    });
}

fn run(scenario: Scenario) {
    let seed = base_seed(scenario.name);
    let mut rng = TestRng::new(seed);
    let failovers = scenario
        .failovers
        .map(|failovers| env_number("KVD_NEMESIS_FAILOVERS", failovers));
    let duration = match failovers {
        // As long as the failovers take: the count ends the run (a failover takes a few
        // seconds; the bound, a deadline for each, only stops a run that is stuck).
        Some(failovers) => DEADLINE * failovers.max(20) as u32,
        None => Duration::from_secs(env_number("KVD_NEMESIS_SECS", SECS_DEFAULT)),
    };
    let faults_max =
        failovers.unwrap_or_else(|| env_number("KVD_NEMESIS_FAULTS", FAULTS_MAX_DEFAULT));
    let clients = env_number("KVD_NEMESIS_CLIENTS", scenario.clients as u64) as usize;
    let leader_mode = leader_mode();
    let started = Instant::now();

    let mut cluster = Cluster::start(&ClusterOptions {
        nodes: scenario.nodes,
        write_quorum: scenario.write_quorum,
    });
    let directory = Arc::new(Directory {
        nodes: cluster.addresses(),
        proxies: cluster.network.proxies(),
    });
    let clock = Clock::start();
    let shared = Shared {
        clock,
        directory: directory.clone(),
        keys: Arc::new(KeySpace::new(KEYS_PER_GENERATION, ANSWERS_PER_GENERATION)),
        leader_mode,
        stop: Arc::new(AtomicBool::new(false)),
        deadline: Instant::now() + duration + CLIENT_GRACE,
        operations_max: u64::MAX,
    };
    let threads: Vec<_> = (0..clients)
        .map(|id| {
            let client = Client::new(id, shared.clone(), rng.next_u64());
            std::thread::spawn(move || client.run())
        })
        .collect();

    let options = NemesisOptions {
        kinds: scenario.kinds.clone(),
        faults_max,
        duration,
        hold_ms: scenario.hold_ms.clone(),
        quiet_ms: 200..=800,
        targets_max: scenario.targets_max,
        leader_only: failovers.is_some(),
        transfers: scenario.transfers,
    };
    let faults = faults::run(
        &mut cluster,
        &options,
        &mut rng,
        clock,
        || match leader_mode {
            LeaderMode::Fixed => Some(0),
            LeaderMode::Discover => discover_leader(&directory),
        },
    );
    shared.stop.store(true, Ordering::SeqCst);
    let mut records: Vec<Record> = threads
        .into_iter()
        .flat_map(|thread| thread.join().expect("client thread"))
        .collect();

    // Everything healed and committed, then a last read of every key on the leader (part of
    // the history) and on every follower (which must all agree with it).
    cluster.heal();
    let mut reader = Client::new(clients, shared.clone(), rng.next_u64());
    if leader_mode == LeaderMode::Discover {
        reader.discover_leader();
    }
    let leader = reader.leader();
    let commit_id = match cluster.try_wait_until_settled(leader, DEADLINE) {
        Ok(commit_id) => commit_id,
        Err(failure) => {
            let kept = cluster.keep_for_post_mortem();
            panic!(
                "{failure}\n(every node's data and log kept in {}; seed {})",
                kept.display(),
                seed
            );
        }
    };
    let keys: BTreeSet<String> = records.iter().map(|record| record.key.clone()).collect();
    let mut divergent = Vec::new();
    for key in &keys {
        // A leader that cannot vouch for its lease for a moment answers 503, and the
        // leadership may still move once after healing: ask again, whoever leads.
        let until = Instant::now() + DEADLINE;
        let on_leader = loop {
            let record = reader.perform(key.clone(), Op::Get);
            if matches!(record.outcome, Outcome::Read(_)) || Instant::now() > until {
                break record;
            }
            records.push(record);
            reader.discover_leader();
        };
        for node in (0..scenario.nodes).filter(|node| *node != leader) {
            // Every follower has the whole log by now (the leader saw them all healthy) and
            // learns the commit id within a fetch: a 504 is retried within the deadline.
            let until = Instant::now() + DEADLINE;
            let on_follower = loop {
                let op = Op::FollowerGet {
                    node,
                    min_id: commit_id,
                };
                let record = reader.perform(key.clone(), op);
                if matches!(record.outcome, Outcome::Read(_)) || Instant::now() > until {
                    break record;
                }
            };
            if on_follower.outcome != on_leader.outcome {
                divergent.push(format!("{on_leader}\n  {on_follower}"));
            }
            records.push(on_follower);
        }
        records.push(on_leader);
    }

    let verdict = check_linearizable(&records);
    let follower_problems = check_follower_reads(&records);
    let counts = Counts::of(&records);
    let windows = faults::unavailability(&faults, &records);
    println!(
        "{}: seed {seed}, {} nodes, write quorum {}, {clients} clients ({leader_mode:?} leader), {:.1?}",
        scenario.name,
        scenario.nodes,
        scenario.write_quorum,
        started.elapsed()
    );
    println!("  {} operations: {counts}", records.len());
    for kind in &scenario.kinds {
        let of_kind: Vec<usize> = (0..faults.len())
            .filter(|index| faults[*index].kind == *kind)
            .collect();
        let hit = |leader: bool| -> Vec<Duration> {
            of_kind
                .iter()
                .filter(|index| faults[**index].leader_hit == leader)
                .filter_map(|index| windows[*index])
                .collect()
        };
        println!(
            "  {}: {} faults, {} of them hit the leader; first acknowledged write after the \
             fault: leader hit {}; followers only {}",
            kind.name(),
            of_kind.len(),
            of_kind
                .iter()
                .filter(|index| faults[**index].leader_hit)
                .count(),
            describe_durations(&hit(true)),
            describe_durations(&hit(false)),
        );
    }
    for (fault, window) in faults.iter().zip(&windows) {
        let window = window.map_or("none".to_owned(), |window| format!("{window:.1?}"));
        println!("    {fault}; first acknowledged write after it: {window}");
    }
    let transfers: Vec<&faults::TransferRecord> = faults
        .iter()
        .filter_map(|fault| fault.transfer.as_ref())
        .collect();
    let transfers_done = transfers
        .iter()
        .filter(|transfer| transfer.answer == "200")
        .count();
    if scenario.transfers {
        let mut answers: BTreeMap<&str, usize> = BTreeMap::new();
        for transfer in &transfers {
            let status = transfer.answer.split(' ').next().unwrap_or_default();
            *answers.entry(status).or_default() += 1;
        }
        println!(
            "  transfers asked just before a fault: {}, answered {answers:?}",
            transfers.len()
        );
    }
    println!(
        "  checked {} keys, {} operations, in {:.1?}; {} connections through the proxies",
        verdict.keys_checked,
        verdict.operations_checked,
        verdict.elapsed,
        cluster.network.connections_accepted()
    );
    let mut failures = Vec::new();
    if !verdict.violations.is_empty() {
        failures.push(format!(
            "{} keys are not linearizable:\n{}",
            verdict.violations.len(),
            verdict.violations.join("\n")
        ));
    }
    if !follower_problems.is_empty() {
        failures.push(format!("follower reads:\n{}", follower_problems.join("\n")));
    }
    if !divergent.is_empty() {
        failures.push(format!(
            "after healing, followers disagree with the leader:\n{}",
            divergent.join("\n")
        ));
    }
    if failures.is_empty() {
        // The run must have tested something.
        assert!(counts.writes_ok > 0 && counts.reads_ok > 0, "{counts}");
        assert!(
            faults.iter().any(|fault| fault.leader_hit),
            "no fault hit the leader: run longer (KVD_NEMESIS_SECS)"
        );
        if let Some(failovers) = failovers {
            let leader_kills = faults.iter().filter(|fault| fault.leader_hit).count();
            assert_eq!(leader_kills as u64, failovers, "every fault hit the leader");
        }
        assert!(
            !scenario.transfers || transfers_done > 0,
            "no transfer completed: run longer (KVD_NEMESIS_SECS)"
        );
        for kind in &scenario.kinds {
            assert!(
                faults.iter().any(|fault| fault.kind == *kind),
                "no {} fault was injected: run longer (KVD_NEMESIS_SECS)",
                kind.name()
            );
        }
        return;
    }
    let kept = cluster.keep_for_post_mortem();
    let history: String = records.iter().map(|record| format!("{record}\n")).collect();
    let faults_text: String = faults.iter().map(|fault| format!("{fault}\n")).collect();
    let _ = std::fs::write(kept.join("history.txt"), history);
    let _ = std::fs::write(kept.join("faults.txt"), faults_text);
    panic!(
        "{}: seed {seed} (replay with KVD_TEST_SEED={seed}); data, logs, history.txt and \
         faults.txt kept in {}\n{}",
        scenario.name,
        kept.display(),
        failures.join("\n")
    );
}
