//! Conditional writes, transactions and idempotent requests against real `kvd` processes:
//! concurrent read-modify-write with `If-Match` loses no increment; concurrent transfers keep
//! the sum of the accounts on the leader and on every follower — at every revision — across a
//! `kill -9` of the leader; a PUT retried with the same request id across a `kill -9` applies
//! once; a retry after a 503 gets the final outcome. Every loop is bounded by a count and by
//! [`DEADLINE`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{base_seed, request, Answer, Kvd, TestRng, DEADLINE};
use crate::replication::{signal, Cluster};

/// One request to `address`; `None` when the node could not be reached or the connection broke
/// (a killed leader): the outcome is unknown.
fn call(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<Answer> {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    request(address, method, path, &all, body.map(str::as_bytes)).ok()
}

/// [`call`] until the node answers (it may be restarting), within [`DEADLINE`].
fn call_until_answered(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Answer {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(answer) = call(address, method, path, &[], body) {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "{method} {path}: no answer in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_if_match_increments_end_with_the_exact_count() {
    const CLIENTS: u64 = 8;
    const INCREMENTS: u64 = 25;
    const ATTEMPTS_MAX: u64 = 2_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let kvd = Kvd::start(&dir.path().join("leader"), &[], &[]);
    let address = kvd.address;
    let created = call(
        address,
        "PUT",
        "/key/counter",
        &[("If-None-Match", "*")],
        Some(r#"{"value": 0}"#),
    )
    .expect("answer");
    assert_eq!(created.status, 200);
    let conflicts = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let conflicts = conflicts.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + DEADLINE;
                let mut attempts = 0;
                for _ in 0..INCREMENTS {
                    loop {
                        attempts += 1;
                        assert!(
                            attempts <= ATTEMPTS_MAX && Instant::now() < deadline,
                            "too many conflicts"
                        );
                        let read = call(address, "GET", "/key/counter", &[], None).expect("read");
                        let etag = read.header("etag").expect("an ETag").to_owned();
                        let value = read.json()["value"].as_u64().expect("a number");
                        let body = json!({ "value": value + 1 }).to_string();
                        let written = call(
                            address,
                            "PUT",
                            "/key/counter",
                            &[("If-Match", &etag)],
                            Some(&body),
                        )
                        .expect("write");
                        match written.status {
                            200 => break,
                            412 => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("unexpected {other}: {:?}", written.json()),
                        }
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().expect("client");
    }
    let (status, counter) = kvd.json("GET", "/key/counter", None);
    assert_eq!(status, 200);
    assert_eq!(counter["value"], json!(CLIENTS * INCREMENTS), "{counter}");
    assert_eq!(
        counter["version"],
        json!(CLIENTS * INCREMENTS + 1),
        "one write per increment"
    );
    println!(
        "{} increments, {} conflicts answered 412",
        CLIENTS * INCREMENTS,
        conflicts.load(Ordering::Relaxed)
    );
}

const ACCOUNTS: u64 = 5;
const BALANCE: i64 = 100;

fn account(index: u64) -> String {
    format!("acct-{index}")
}

/// Moves a random amount between two random accounts with one transaction conditional on
/// both accounts' mod_revisions; retries a failed compare. Returns whether a transfer
/// certainly applied (`false`: the leader went away and the outcome is unknown).
/// Moves `*address` to the node a 307 names (the controller moved the leadership); whether
/// `answer` was one.
fn followed_redirect(address: &mut SocketAddr, answer: &Answer) -> bool {
    let target = answer
        .header("location")
        .filter(|_| answer.status == 307)
        .and_then(|location| location.strip_prefix("http://"))
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.parse().ok());
    if let Some(target) = target {
        *address = target;
    }
    target.is_some()
}

fn transfer(address: &mut SocketAddr, rng: &mut TestRng) -> Option<bool> {
    let from = rng.in_range(0..=ACCOUNTS - 1);
    let to = (from + rng.in_range(1..=ACCOUNTS - 1)) % ACCOUNTS;
    let amount = rng.in_range(1..=20) as i64;
    let read = json!({"success": [{"get": {"key": account(from)}}, {"get": {"key": account(to)}}]});
    let answer = call(*address, "POST", "/txn", &[], Some(&read.to_string()))?;
    if followed_redirect(address, &answer) || answer.status != 200 {
        return None;
    }
    let read = answer.json();
    let get = |index: usize| read["responses"][index]["get"].clone();
    let (source, target) = (get(0), get(1));
    let value = |cell: &Value| cell["value"].as_i64().expect("a balance");
    let transfer = json!({
        "compare": [
            {"key": account(from), "target": "mod_revision", "result": "=", "mod_revision": source["mod_revision"]},
            {"key": account(to), "target": "mod_revision", "result": "=", "mod_revision": target["mod_revision"]}
        ],
        "success": [
            {"put": {"key": account(from), "value": value(&source) - amount}},
            {"put": {"key": account(to), "value": value(&target) + amount}}
        ]
    });
    let answer = call(*address, "POST", "/txn", &[], Some(&transfer.to_string()))?;
    if followed_redirect(address, &answer) {
        return None;
    }
    match answer.status {
        200 => Some(answer.json()["succeeded"] == json!(true)),
        // The leader is shutting down or just restarted: unknown, try again.
        503 => None,
        other => panic!("transfer answered {other}: {:?}", answer.json()),
    }
}

/// The sum of the accounts read at one revision: one read-only transaction on the leader.
fn sum_at_one_revision(address: SocketAddr) -> Option<(u64, i64)> {
    let read = json!({"success": [{"range": {"prefix": "acct-", "limit": 100}}]});
    let answer = call(address, "POST", "/txn", &[], Some(&read.to_string()))?;
    if answer.status != 200 {
        return None;
    }
    let body = answer.json();
    let cells = body["responses"][0]["range"]["kvs"]
        .as_array()
        .expect("kvs")
        .clone();
    assert_eq!(cells.len() as u64, ACCOUNTS, "{body}");
    let sum = cells
        .iter()
        .map(|cell| cell["value"].as_i64().expect("balance"))
        .sum();
    Some((body["revision"].as_u64().expect("revision"), sum))
}

/// Every account's balances by revision, from history (which every node computes from its own
/// log); checks that at each revision where any account changed, the balances add up.
fn assert_sum_at_every_revision(kvd: &Kvd, node: &str) -> usize {
    let mut histories = Vec::new();
    for index in 0..ACCOUNTS {
        let (status, history) = kvd.json(
            "GET",
            &format!("/key/{}/history?limit=1000", account(index)),
            None,
        );
        assert_eq!(status, 200, "{node}: {history}");
        assert_eq!(
            history["compacted"],
            json!(false),
            "{node}: the whole history is kept"
        );
        let versions: Vec<(u64, i64)> = history["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|entry| {
                (
                    entry["mod_revision"].as_u64().expect("revision"),
                    entry["value"].as_i64().expect("balance"),
                )
            })
            .collect();
        histories.push(versions);
    }
    let mut revisions: Vec<u64> = histories
        .iter()
        .flatten()
        .map(|(revision, _)| *revision)
        .collect();
    revisions.sort_unstable();
    revisions.dedup();
    let created = histories
        .iter()
        .map(|versions| versions[0].0)
        .max()
        .expect("accounts");
    for &revision in revisions.iter().filter(|&&revision| revision >= created) {
        let sum: i64 = histories
            .iter()
            .map(|versions| {
                versions
                    .iter()
                    .take_while(|(written_at, _)| *written_at <= revision)
                    .last()
                    .expect("created by then")
                    .1
            })
            .sum();
        assert_eq!(
            sum,
            ACCOUNTS as i64 * BALANCE,
            "{node}: the accounts at revision {revision}"
        );
    }
    revisions.len()
}

#[test]
fn transfers_keep_the_sum_on_the_leader_and_every_follower_across_kill_9() {
    const CLIENTS: u64 = 4;
    const TRANSFERS_PER_CLIENT: u64 = 40;
    let seed = base_seed("transfers_keep_the_sum");
    let mut cluster = Cluster::start(&[], &[], 2);
    let address = cluster.leader.address;
    let create: Vec<Value> = (0..ACCOUNTS)
        .map(|index| json!({"put": {"key": account(index), "value": BALANCE}}))
        .collect();
    let created = call_until_answered(
        address,
        "POST",
        "/txn",
        Some(&json!({"success": create}).to_string()),
    );
    assert_eq!(created.status, 200);

    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = TestRng::new(seed.wrapping_add(client));
                // The leader's address, moved by 307s if the controller elects another.
                let mut address = address;
                let deadline = Instant::now() + 3 * DEADLINE;
                let mut succeeded = 0;
                while succeeded < TRANSFERS_PER_CLIENT && !stop.load(Ordering::Relaxed) {
                    assert!(
                        Instant::now() < deadline,
                        "client {client}: transfers not done in time"
                    );
                    match transfer(&mut address, &mut rng) {
                        Some(true) => {
                            succeeded += 1;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(false) => {}
                        None => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        })
        .collect();
    // A checker reads the accounts at one revision while the transfers run.
    let checker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut checks = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some((revision, sum)) = sum_at_one_revision(address) {
                    assert_eq!(
                        sum,
                        ACCOUNTS as i64 * BALANCE,
                        "the leader at revision {revision}"
                    );
                    checks += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            checks
        })
    };

    // Kill the leader mid-way, restart it on its port; the clients carry on.
    let wait_for = |count: u64| {
        let deadline = Instant::now() + 2 * DEADLINE;
        while done.load(Ordering::Relaxed) < count {
            assert!(
                Instant::now() < deadline,
                "transfers stalled at {}",
                done.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(CLIENTS * TRANSFERS_PER_CLIENT / 3);
    cluster.leader.kill_9();
    cluster.restart_leader();
    for client in clients {
        client.join().expect("client");
    }
    stop.store(true, Ordering::Relaxed);
    let checks = checker.join().expect("checker");

    // Quiescent: every node, once it has applied the leader's last entry, adds up — now and at
    // every revision in its history.
    let (_, health) = cluster.leader.json("GET", "/health", None);
    let last_id = health["applied_id"].as_u64().expect("applied id");
    let nodes = [
        ("leader", &cluster.leader),
        ("follower-1", cluster.follower(1)),
        ("follower-2", cluster.follower(2)),
    ];
    for (name, kvd) in nodes {
        let mut sum = 0;
        for index in 0..ACCOUNTS {
            let path = format!("/key/{}?min_id={last_id}&wait_ms=20000", account(index));
            let (status, cell) = kvd.json("GET", &path, None);
            assert_eq!(status, 200, "{name}: {cell}");
            sum += cell["value"].as_i64().expect("balance");
        }
        assert_eq!(sum, ACCOUNTS as i64 * BALANCE, "{name} after the run");
        let revisions = assert_sum_at_every_revision(kvd, name);
        println!("{name}: the sum holds at all {revisions} revisions that changed an account");
    }
    assert!(checks > 0, "the checker read the leader at least once");
    println!(
        "{} transfers, {checks} atomic reads on the leader",
        done.load(Ordering::Relaxed)
    );
}

/// Starts `kvd leader` again on `data_dir`, listening on the same address.
fn restart_on(data_dir: &std::path::Path, address: SocketAddr) -> Kvd {
    let (listen, path) = (address.to_string(), data_dir.to_str().expect("UTF-8"));
    Kvd::spawn(
        data_dir,
        &["leader", "--listen", &listen, "--data-dir", path],
        &[],
    )
}

#[test]
fn a_put_retried_with_the_same_request_id_across_a_leader_kill_9_applies_once() {
    const REQUESTS: u64 = 120;
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("leader");
    let mut kvd = Kvd::start(&data_dir, &[], &[]);
    let address = kvd.address;
    let path = |index: u64| format!("/key/k{index}?client_id=writer&request_id=put-{index}");
    let body = |index: u64| json!({ "value": index }).to_string();

    // Writers send their requests one after the other until the leader dies under them (it is
    // killed once a third are answered): some requests are answered, some were applied without
    // an answer, some never reached it. After the restart every request is sent again until
    // it is answered.
    const WRITERS: u64 = 4;
    let answers: Arc<std::sync::Mutex<Vec<Option<Value>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; REQUESTS as usize]));
    let answered = Arc::new(AtomicU64::new(0));
    // The second half waits for the kill, so some requests always come after it (on a fast
    // machine every write could otherwise be answered before the kill lands).
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (answers, answered) = (answers.clone(), answered.clone());
            let killed = killed.clone();
            std::thread::spawn(move || {
                for index in (writer..REQUESTS).step_by(WRITERS as usize) {
                    while index >= REQUESTS / 2 && !killed.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let Some(answer) = call(address, "PUT", &path(index), &[], Some(&body(index)))
                    else {
                        return;
                    };
                    if answer.status == 200 {
                        answers.lock().expect("answers")[index as usize] = Some(answer.json());
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    while answered.load(Ordering::Relaxed) < REQUESTS / 3 {
        assert!(Instant::now() < deadline, "writes not answered in time");
        std::thread::sleep(Duration::from_millis(1));
    }
    // A snapshot in between carries the remembered requests too.
    let _ = call(address, "POST", "/compaction/run", &[], None);
    kvd.kill_9();
    killed.store(true, Ordering::Release);
    for writer in writers {
        writer.join().expect("writer");
    }
    let mut kvd = restart_on(&data_dir, address);
    let mut replayed = 0;
    for index in 0..REQUESTS {
        let retry = call_until_answered(address, "PUT", &path(index), Some(&body(index)));
        assert_eq!(retry.status, 200, "request {index}: {:?}", retry.json());
        let retried = retry.json();
        replayed += usize::from(retry.header("idempotent-replayed").is_some());
        let first = answers.lock().expect("answers")[index as usize].clone();
        if let Some(first) = first {
            assert_eq!(retried, first, "request {index}: the first answer again");
            assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        }
        let (status, cell) = kvd.json("GET", &format!("/key/k{index}"), None);
        assert_eq!(status, 200);
        assert_eq!(
            (cell["value"].clone(), cell["version"].clone()),
            (json!(index), json!(1)),
            "request {index} applied once"
        );
        assert_eq!(
            cell["mod_revision"], retried["id"],
            "request {index}: one entry"
        );
        let (_, status) = kvd.json(
            "GET",
            &format!("/request_status?client_id=writer&request_id=put-{index}"),
            None,
        );
        assert_eq!(status["processed"], json!(true));
        assert_eq!(status["id"], retried["id"]);
    }
    let answered = answered.load(Ordering::Relaxed);
    println!("{answered} of {REQUESTS} answered before the kill, {replayed} applied before it");
    assert!(answered < REQUESTS, "the kill came before the last write");
    // And once more after a clean restart (the table rebuilt from snapshot and log).
    kvd.terminate();
    let kvd = restart_on(&data_dir, address);
    let retry = call_until_answered(address, "PUT", &path(0), Some(&body(0)));
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    let (_, cell) = kvd.json("GET", "/key/k0", None);
    assert_eq!(cell["version"], json!(1));
}

#[test]
fn a_retry_after_a_503_gets_the_final_outcome() {
    let mut cluster = Cluster::start(&["--write-quorum", "2", "--acks-timeout-ms", "300"], &[], 1);
    let address = cluster.leader.address;
    let path = "/key/k?client_id=c&request_id=r";
    // Once the follower fetches, writes commit (a write before that times out: 503).
    let deadline = Instant::now() + DEADLINE;
    while call_until_answered(address, "PUT", "/key/warm", Some(r#"{"value": 1}"#)).status != 200 {
        assert!(Instant::now() < deadline, "the follower never acknowledged");
    }
    signal(cluster.follower(1), "STOP");
    let first = call_until_answered(address, "PUT", path, Some(r#"{"value": 1}"#));
    assert_eq!(first.status, 503, "{:?}", first.json());
    let id = first.json()["id"].clone();
    // Still not committed: the retry waits, then says so again with the same id.
    let again = call_until_answered(address, "PUT", path, Some(r#"{"value": 1}"#));
    assert_eq!(
        (again.status, again.json()["id"].clone()),
        (503, id.clone())
    );
    signal(cluster.follower(1), "CONT");
    let deadline = Instant::now() + DEADLINE;
    let settled = loop {
        let answer = call_until_answered(address, "PUT", path, Some(r#"{"value": 1}"#));
        if answer.status == 200 {
            break answer;
        }
        assert_eq!(answer.status, 503, "{:?}", answer.json());
        assert!(Instant::now() < deadline, "the write never committed");
    };
    assert_eq!(settled.json()["id"], id, "the first entry's outcome");
    assert_eq!(settled.header("idempotent-replayed"), Some("true"));
    let (_, cell) = cluster.leader.json("GET", "/key/k", None);
    assert_eq!(cell["version"], json!(1), "applied once");
    cluster.leader.kill_9();
}
