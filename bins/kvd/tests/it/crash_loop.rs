//! Crash loops with the real binary: concurrent writers with unique values against one kvd,
//! killed at random moments — by `kill -9`, or by a fail point aborting the process at an
//! exact spot of the WAL's write path — then restarted and checked:
//!
//! - every acknowledged write is there with its value (a deleted key stays deleted);
//! - a write in flight at the crash is either wholly there or wholly absent, and once seen
//!   it stays; no value that was never written appears (every value is unique, and the key
//!   count must match the ledger exactly);
//! - ids never go backwards: each write acknowledged after a restart has an id above
//!   everything recovered, and the recovered log reaches at least the highest acknowledged id;
//! - the WAL recovery report kvd logs is sane: tolerate-torn-tail, no holes or drops, its last
//!   id equals the applied id, its next id follows it.
//!
//! The CI run is [`CYCLES_DEFAULT`] cycles (and at least [`ACKNOWLEDGED_WRITES_MIN_DEFAULT`]
//! acknowledged writes); a long campaign scales it with env variables:
//!
//! ```text
//! KVD_CRASH_CYCLES=5000 KVD_CRASH_WRITES_MIN=1000000 \
//!   cargo test -p kvd --release --test it crash_loop::kill_9 -- --nocapture
//! ```
//!
//! `KVD_TEST_SEED` replays a run's choices (kill moments, ops); thread timing still varies.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kv_wal::failpoint;
use serde_json::Value as Json;

use crate::harness::{base_seed, env_number, Connection, Kvd, TestRng, DEADLINE};

/// Concurrent writers, each on its own keep-alive connection.
const WRITERS: usize = 6;
/// Cycles of a CI run (`KVD_CRASH_CYCLES` overrides).
const CYCLES_DEFAULT: u64 = 60;
/// A long campaign prints how far it got every this many cycles.
const PROGRESS_EVERY_CYCLES: u64 = 250;

/// The run goes on past its cycles until this many writes were acknowledged
/// (`KVD_CRASH_WRITES_MIN` overrides).
const ACKNOWLEDGED_WRITES_MIN_DEFAULT: u64 = 10_000;
/// A `kill -9` comes once this many writes (drawn per cycle) were acknowledged in the cycle.
const ACKNOWLEDGED_BEFORE_KILL_MIN: u64 = 60;
const ACKNOWLEDGED_BEFORE_KILL_MAX: u64 = 340;
/// Every this many cycles (and at the end), every key and value is checked, not only the
/// keys the last cycle touched.
const FULL_CHECK_EVERY_CYCLES: u64 = 10;
/// Small segments, so rolls (and crashes around them) are frequent.
const KVD_ARGS: [&str; 4] = ["--max-segment-size", "4K", "--sync-policy", "batch"];
/// WAL appends (kv-wal counts the controller's log with the data's) a start may make before
/// it serves: the fail point hits below start after them.
const STARTUP_APPENDS_MAX: u64 = 8;
/// Times each WAL fail point reachable from a single node is crashed at.
const CRASHES_PER_FAIL_POINT: usize = 3;
const SIGABRT: i32 = 6;

/// What a writer asked for.
#[derive(Debug, Clone)]
enum Write {
    Set { key: String, value: String },
    Delete { key: String },
}

impl Write {
    fn key(&self) -> &str {
        match self {
            Write::Set { key, .. } | Write::Delete { key } => key,
        }
    }
    /// The key's value once this write is applied.
    fn outcome(&self) -> Option<String> {
        match self {
            Write::Set { value, .. } => Some(value.clone()),
            Write::Delete { .. } => None,
        }
    }
}

/// What a writer thread saw.
enum WriterEvent {
    Acknowledged {
        writer: usize,
        write: Write,
        id: u64,
    },
    /// A status that is neither a success nor a sign of the server dying.
    Unexpected(String),
}

/// What the test knows must be true.
#[derive(Default)]
struct Ledger {
    /// Every key that must exist, with its value.
    expected: BTreeMap<String, String>,
    /// Writes in flight when the server died: either applied or not, decided after restart.
    in_flight: Vec<Write>,
    /// Keys written since the last check.
    touched: BTreeSet<String>,
    acknowledged_id_max: u64,
    acknowledged_writes: u64,
    in_flight_survived: u64,
    in_flight_lost: u64,
    torn_tails_cut: u64,
    full_checks: u64,
    keys_checked: u64,
}

/// The parts of kvd's "WAL recovered" log line the checks need.
#[derive(Debug)]
struct RecoveryLine {
    last_id: Option<u64>,
    next_id: u64,
    torn_tail_cut: bool,
    text: String,
}

/// How a cycle ends.
#[derive(Debug, Clone, Copy)]
enum Crash {
    /// `kill -9` after this many acknowledged writes.
    Kill9 { acknowledged_before: u64 },
    /// `KVD_FAILPOINTS=point=abort@hit`: the process aborts by itself.
    FailPoint { point: &'static str, hit: u64 },
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_write() {
    let seed = base_seed("kill_9_at_random_moments_loses_no_acknowledged_write");
    let cycles_min = env_number("KVD_CRASH_CYCLES", CYCLES_DEFAULT);
    let writes_min = env_number("KVD_CRASH_WRITES_MIN", ACKNOWLEDGED_WRITES_MIN_DEFAULT);
    let mut rng = TestRng::new(seed);
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let mut ledger = Ledger::default();
    let started = Instant::now();
    let mut cycle = 0;
    while cycle < cycles_min || ledger.acknowledged_writes < writes_min {
        let acknowledged_before =
            rng.in_range(ACKNOWLEDGED_BEFORE_KILL_MIN..=ACKNOWLEDGED_BEFORE_KILL_MAX);
        let crash = Crash::Kill9 {
            acknowledged_before,
        };
        run_cycle(&data_dir, cycle, seed, crash, &mut ledger);
        cycle += 1;
        if cycle % PROGRESS_EVERY_CYCLES == 0 {
            // Long campaigns: how far they got, even if stopped before the end.
            println!(
                "seed {seed}: {cycle} cycles, {} acknowledged writes, {} full checks, no failure \
                 so far, {:.1?}",
                ledger.acknowledged_writes,
                ledger.full_checks,
                started.elapsed()
            );
        }
    }
    let final_check = start_kvd(&data_dir, &[]).expect("kvd starts");
    check_after_restart(&final_check, &mut ledger, true, "final");
    println!(
        "seed {seed}: {cycle} kill -9 cycles, {} acknowledged writes, {} in-flight writes \
         survived / {} lost, {} torn tails cut at recovery, {} full checks, {} key checks, {:.1?}",
        ledger.acknowledged_writes,
        ledger.in_flight_survived,
        ledger.in_flight_lost,
        ledger.torn_tails_cut,
        ledger.full_checks,
        ledger.keys_checked,
        started.elapsed()
    );
    // The kills must have caught writes in flight, or they tested only quiet moments.
    assert!(
        ledger.in_flight_survived + ledger.in_flight_lost > 0,
        "no kill caught a write in flight"
    );
}

#[test]
fn crashes_at_each_wal_fail_point_lose_no_acknowledged_write() {
    let seed = base_seed("crashes_at_each_wal_fail_point_lose_no_acknowledged_write");
    let mut rng = TestRng::new(seed);
    // Truncation has no HTTP trigger on a single node; kv-wal's own fail point tests crash it.
    let points = [
        failpoint::WAL_BEFORE_APPEND,
        failpoint::WAL_AFTER_WRITE_BEFORE_FSYNC,
        failpoint::WAL_AFTER_FSYNC_BEFORE_ACK,
        failpoint::WAL_ROLL_BEFORE_DIR_FSYNC,
    ];
    let mut crashes: Vec<Crash> = Vec::new();
    for point in points {
        for _ in 0..CRASHES_PER_FAIL_POINT {
            // About 40 writes fill a 4 KiB segment: a roll comes every few dozen writes.
            let hit = if point == failpoint::WAL_ROLL_BEFORE_DIR_FSYNC {
                rng.in_range(1..=4)
            } else {
                // Past the appends a start makes itself (the controller's Raft entries of a
                // re-election and the leader's no-op: a few), so the crash comes while writing.
                rng.in_range(STARTUP_APPENDS_MAX + 1..=200)
            };
            crashes.push(Crash::FailPoint { point, hit });
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let mut ledger = Ledger::default();
    let mut hits_by_point: BTreeMap<&str, usize> = BTreeMap::new();
    for (cycle, crash) in crashes.into_iter().enumerate() {
        run_cycle(&data_dir, cycle as u64, seed, crash, &mut ledger);
        if let Crash::FailPoint { point, .. } = crash {
            *hits_by_point.entry(point).or_default() += 1;
        }
    }
    let final_check = start_kvd(&data_dir, &[]).expect("kvd starts");
    check_after_restart(&final_check, &mut ledger, true, "final");
    println!(
        "seed {seed}: aborts by fail point {hits_by_point:?}; {} acknowledged writes, {} \
         in-flight writes survived / {} lost, {} torn tails cut",
        ledger.acknowledged_writes,
        ledger.in_flight_survived,
        ledger.in_flight_lost,
        ledger.torn_tails_cut
    );
    for point in points {
        assert_eq!(
            hits_by_point.get(point).copied(),
            Some(CRASHES_PER_FAIL_POINT),
            "{point}"
        );
    }
}

/// `kvd leader` on `data_dir` with [`KVD_ARGS`], always on the same port (chosen at the first
/// start, kept beside the data directory): a node that comes back at another address tells the
/// controller, whose log appends would count as hits of the fail points meant for the writes.
fn start_kvd(data_dir: &Path, env: &[(&str, &str)]) -> Result<Kvd, (ExitStatus, String)> {
    let port_file = data_dir.with_extension("port");
    let port = match std::fs::read_to_string(&port_file) {
        Ok(text) => text.trim().parse().expect("a port"),
        Err(_) => {
            let port = crate::harness::free_port();
            std::fs::write(&port_file, port.to_string()).expect("write the port file");
            port
        }
    };
    let listen = format!("127.0.0.1:{port}");
    let path = data_dir.to_str().expect("UTF-8 path");
    let mut args = vec!["leader", "--listen", &listen, "--data-dir", path];
    args.extend_from_slice(&KVD_ARGS);
    Kvd::try_spawn(data_dir, &args, env)
}

/// One cycle: start kvd (on whatever the last crash left), check it, write until it dies.
fn run_cycle(data_dir: &Path, cycle: u64, seed: u64, crash: Crash, ledger: &mut Ledger) {
    let context = format!("seed {seed}, cycle {cycle}, {crash:?}");
    let spec = match crash {
        Crash::FailPoint { point, hit } => format!("{point}=abort@{hit}"),
        Crash::Kill9 { .. } => String::new(),
    };
    let mut kvd = match start_kvd(data_dir, &[("KVD_FAILPOINTS", &spec)]) {
        Ok(kvd) => kvd,
        Err((status, stderr)) => {
            // The fail point's hit came during the start: a crash there is one too (a roll
            // interrupted at its last step leaves the old segment last and full, and the
            // start's own entry — the leader's no-op — rolls again). The next start checks.
            let Crash::FailPoint { point, hit } = crash else {
                panic!("{context}: kvd did not start ({status:?})\n{stderr}");
            };
            let announcement = format!("fail point {point}: abort at hit {hit}");
            assert!(
                status.signal() == Some(SIGABRT) && stderr.contains(&announcement),
                "{context}: kvd did not start ({status:?})\n{stderr}"
            );
            println!("{context}: aborted at the fail point while starting");
            return;
        }
    };
    let full = cycle % FULL_CHECK_EVERY_CYCLES == FULL_CHECK_EVERY_CYCLES - 1;
    let recovered_id = check_after_restart(&kvd, ledger, full, &context);

    let (sender, events) = mpsc::channel();
    let writers: Vec<JoinHandle<Option<Write>>> = (0..WRITERS)
        .map(|writer| {
            let sender = sender.clone();
            let address = kvd.address;
            let writer_seed = seed ^ (cycle << 8) ^ writer as u64;
            std::thread::spawn(move || {
                write_until_the_server_dies(address, writer, cycle, writer_seed, sender)
            })
        })
        .collect();
    drop(sender);
    let mut tally = CycleTally {
        recovered_id,
        acknowledged: 0,
        last_id_by_writer: [0; WRITERS],
    };
    match crash {
        Crash::Kill9 {
            acknowledged_before,
        } => {
            while tally.acknowledged < acknowledged_before {
                let event = events
                    .recv_timeout(DEADLINE)
                    .unwrap_or_else(|_| panic!("{context}: no write acknowledged in time"));
                tally.record(event, ledger, &context, &kvd);
            }
            kvd.kill_9();
        }
        Crash::FailPoint { point, hit } => {
            // The writers stop once the server is gone, which closes the channel.
            while let Ok(event) = events.recv_timeout(DEADLINE) {
                tally.record(event, ledger, &context, &kvd);
            }
            let status = kvd.wait_for_exit();
            let stderr = kvd.stderr();
            assert_eq!(
                status.signal(),
                Some(SIGABRT),
                "{context}: kvd should abort at the fail point ({status:?})\n{stderr}"
            );
            let announcement = format!("fail point {point}: abort at hit {hit}");
            assert!(stderr.contains(&announcement), "{context}: {stderr}");
        }
    }
    for writer in writers {
        if let Some(write) = writer.join().expect("writer thread") {
            ledger.touched.insert(write.key().to_owned());
            ledger.in_flight.push(write);
        }
    }
    for event in events.try_iter() {
        tally.record(event, ledger, &context, &kvd);
    }
}

/// What one cycle's writers were acknowledged.
struct CycleTally {
    /// The last id the log recovered at the cycle's start.
    recovered_id: u64,
    acknowledged: u64,
    last_id_by_writer: [u64; WRITERS],
}

impl CycleTally {
    fn record(&mut self, event: WriterEvent, ledger: &mut Ledger, context: &str, kvd: &Kvd) {
        let (writer, write, id) = match event {
            WriterEvent::Unexpected(what) => {
                panic!("{context}: {what}\nkvd stderr:\n{}", kvd.stderr())
            }
            WriterEvent::Acknowledged { writer, write, id } => (writer, write, id),
        };
        assert!(
            id > self.recovered_id,
            "{context}: id {id} acknowledged, but the log recovered up to {}",
            self.recovered_id
        );
        assert!(
            id > self.last_id_by_writer[writer],
            "{context}: writer {writer} got id {id} after {}",
            self.last_id_by_writer[writer]
        );
        self.last_id_by_writer[writer] = id;
        self.acknowledged += 1;
        ledger.acknowledged_id_max = ledger.acknowledged_id_max.max(id);
        ledger.acknowledged_writes += 1;
        ledger.touched.insert(write.key().to_owned());
        match write.outcome() {
            Some(value) => ledger.expected.insert(write.key().to_owned(), value),
            None => ledger.expected.remove(write.key()),
        };
    }
}

/// A writer: PUTs (and some DELETEs) one at a time on a keep-alive connection until the server
/// dies. Returns the write in flight at that moment, if any.
fn write_until_the_server_dies(
    address: std::net::SocketAddr,
    writer: usize,
    cycle: u64,
    seed: u64,
    events: mpsc::Sender<WriterEvent>,
) -> Option<Write> {
    let mut rng = TestRng::new(seed);
    let Ok(mut connection) = Connection::open(address) else {
        return None;
    };
    // Keys this writer set in this cycle and has not deleted: candidates for a DELETE.
    let mut live_keys: Vec<String> = Vec::new();
    for sequence in 0u64.. {
        let roll = rng.in_range(0..=99);
        let value = format!(
            "c{cycle}-w{writer}-s{sequence}-{:08x}",
            rng.next_u64() as u32
        );
        let write = if roll < 10 && !live_keys.is_empty() {
            let index = rng.in_range(0..=live_keys.len() as u64 - 1) as usize;
            Write::Delete {
                key: live_keys.swap_remove(index),
            }
        } else if roll < 30 {
            Write::Set {
                key: format!("hot-w{writer}"),
                value,
            }
        } else {
            Write::Set {
                key: format!("c{cycle}-w{writer}-s{sequence}"),
                value,
            }
        };
        let path = format!("/key/{}", write.key());
        let answer = match &write {
            Write::Set { value, .. } => {
                let body = serde_json::json!({ "value": value }).to_string();
                connection.send("PUT", &path, Some(&body))
            }
            Write::Delete { .. } => connection.send("DELETE", &path, None),
        };
        match answer {
            Ok(answer) if answer.status == 200 => {
                let id = answer.json()["id"]
                    .as_u64()
                    .expect("id in a write's answer");
                if let Write::Set { key, .. } = &write {
                    if !key.starts_with("hot-") {
                        live_keys.push(key.clone());
                    }
                }
                let event = WriterEvent::Acknowledged { writer, write, id };
                if events.send(event).is_err() {
                    return None;
                }
            }
            Ok(answer) => {
                let what = format!(
                    "writer {writer}: {} {path} answered {}: {}",
                    if matches!(write, Write::Set { .. }) {
                        "PUT"
                    } else {
                        "DELETE"
                    },
                    answer.status,
                    String::from_utf8_lossy(&answer.body)
                );
                let _ = events.send(WriterEvent::Unexpected(what));
                return None;
            }
            // The server died with this write in flight.
            Err(_) => return Some(write),
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Checks a freshly started kvd against the ledger; resolves the writes that were in flight
/// at the crash. Returns the last id the log recovered.
fn check_after_restart(kvd: &Kvd, ledger: &mut Ledger, full: bool, context: &str) -> u64 {
    let stderr = kvd.stderr();
    let recovery = parse_recovery_line(&stderr)
        .unwrap_or_else(|| panic!("{context}: no WAL recovery line in kvd's log:\n{stderr}"));
    let recovered_id = recovery.last_id.unwrap_or(0);
    assert_eq!(
        recovery.next_id,
        recovered_id + 1,
        "{context}: {}",
        recovery.text
    );
    assert!(
        recovered_id >= ledger.acknowledged_id_max,
        "{context}: acknowledged up to id {}, recovered up to {recovered_id}: {}",
        ledger.acknowledged_id_max,
        recovery.text
    );
    if recovery.torn_tail_cut {
        ledger.torn_tails_cut += 1;
    }

    let mut connection = Connection::open(kvd.address).expect("connect");
    let mut get = |key: &str| -> Option<String> {
        // A 503 is kvd's "retry" (its lease lapsed: seen once under load 14, when the node's
        // own controller was starved of CPU); anything else but 200 and 404 is a failure.
        let deadline = Instant::now() + Duration::from_secs(20);
        let answer = loop {
            let answer = connection
                .send("GET", &format!("/key/{key}"), None)
                .expect("GET");
            if answer.status != 503 || Instant::now() > deadline {
                break answer;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match answer.status {
            404 => None,
            200 => {
                let body = answer.json();
                assert_eq!(body["key"], Json::from(key), "{context}");
                Some(body["value"].as_str().expect("string value").to_owned())
            }
            status => panic!("{context}: GET {key} answered {status}"),
        }
    };
    // In-flight writes: wholly there or wholly absent. From now on, what is there must stay.
    for write in std::mem::take(&mut ledger.in_flight) {
        let key = write.key();
        let before = ledger.expected.get(key).cloned();
        let actual = get(key);
        let after = write.outcome();
        assert!(
            actual == before || actual == after,
            "{context}: in-flight {write:?} left {key} = {actual:?} (before {before:?})"
        );
        if actual == before && before != after {
            ledger.in_flight_lost += 1;
        } else {
            ledger.in_flight_survived += 1;
        }
        match actual {
            Some(value) => ledger.expected.insert(key.to_owned(), value),
            None => ledger.expected.remove(key),
        };
    }
    let keys_to_check: Vec<String> = if full {
        ledger.full_checks += 1;
        let listed = list_all_keys(kvd);
        let expected_keys: Vec<&String> = ledger.expected.keys().collect();
        assert!(
            listed.iter().eq(expected_keys.iter().copied()),
            "{context}: the key set differs from the ledger ({} listed, {} expected)",
            listed.len(),
            expected_keys.len()
        );
        listed
    } else {
        std::mem::take(&mut ledger.touched).into_iter().collect()
    };
    for key in &keys_to_check {
        let expected = ledger.expected.get(key).cloned();
        assert_eq!(get(key), expected, "{context}: key {key}");
    }
    ledger.keys_checked += keys_to_check.len() as u64;
    ledger.touched.clear();

    let health = connection.send("GET", "/health", None).expect("health");
    assert_eq!(health.status, 200, "{context}");
    let health = health.json();
    assert_eq!(health["status"], "ok", "{context}: {health}");
    // Every recovered record is applied, and nothing after it but the restarted leader's
    // first entry of its new epoch (its no-op).
    assert_eq!(
        health["applied_id"], health["last_id"],
        "{context}: every record is applied: {health} / {}",
        recovery.text
    );
    let applied_id = health["applied_id"].as_u64().unwrap_or(0);
    assert!(
        (recovered_id..=recovered_id + 1).contains(&applied_id),
        "{context}: recovered up to {recovered_id}, applied {applied_id}: {health} / {}",
        recovery.text
    );
    assert_eq!(
        health["keys"].as_u64(),
        Some(ledger.expected.len() as u64),
        "{context}: kvd holds keys the ledger does not know (or lost some): {health}"
    );
    recovered_id
}

/// Every key, through `GET /keys` pages.
fn list_all_keys(kvd: &Kvd) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    loop {
        let path = match keys.last() {
            Some(after) => format!("/keys?limit=10000&after={after}"),
            None => "/keys?limit=10000".to_owned(),
        };
        let (status, body) = kvd.json("GET", &path, None);
        assert_eq!(status, 200, "{path}: {body}");
        let page: Vec<String> = body["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|key| key.as_str().expect("string key").to_owned())
            .collect();
        if page.is_empty() {
            return keys;
        }
        keys.extend(page);
    }
}

/// Finds kvd's `WAL recovered … report=…` line, e.g. `report=mode tolerate-torn-tail: 3
/// segment(s), 1 scanned, 40 record(s), ids Some(1)..=Some(40), next id 41; cut a torn tail …`.
fn parse_recovery_line(stderr: &str) -> Option<RecoveryLine> {
    let line = stderr.lines().find(|line| line.contains("WAL recovered"))?;
    let text = line.split_once("report=")?.1.to_owned();
    assert!(
        text.starts_with("mode tolerate-torn-tail:"),
        "recovery in an unexpected mode: {text}"
    );
    assert!(
        !text.contains("skipped ids") && !text.contains("dropped everything"),
        "a crash must only ever leave a torn tail: {text}"
    );
    let ids = text.split_once(", ids ")?.1;
    let last = ids.split_once("..=")?.1.split(',').next()?;
    let last_id = match last {
        "None" => None,
        some => Some(
            some.strip_prefix("Some(")?
                .strip_suffix(')')?
                .parse()
                .ok()?,
        ),
    };
    let next_id = text
        .split_once(", next id ")?
        .1
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(RecoveryLine {
        last_id,
        next_id,
        torn_tail_cut: text.contains("cut a torn tail"),
        text,
    })
}
