//! Writers for the failover tests: threads that PUT distinct keys through whichever node
//! leads, as a client would (following 307s, moving on after an error), and record every
//! acknowledged write, so a test can check that none was lost.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;

use super::cluster::{Cluster, REQUEST_TIMEOUT};
use crate::harness::{request_within, DEADLINE};

/// One acknowledged write: key, value, id.
pub type Acked = (String, u64, u64);

/// Writers running until [`Writers::stop`].
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    threads: Vec<JoinHandle<()>>,
}

/// The address a `Location` (`http://host:port/...`) names.
fn address_of(location: &str) -> Option<SocketAddr> {
    location
        .strip_prefix("http://")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

impl Writers {
    /// Starts `count` writers against the cluster's nodes (`extra_query`, e.g. `?acks=all`, on
    /// every PUT).
    pub fn start(cluster: &Cluster, count: usize, extra_query: &'static str) -> Writers {
        let addresses: Vec<SocketAddr> = cluster.nodes.iter().map(|node| node.address).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let threads = (0..count)
            .map(|writer| {
                let (addresses, stop, acked) = (addresses.clone(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    write_until_stopped(writer, &addresses, &stop, &acked, extra_query)
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            threads,
        }
    }

    /// How many writes were acknowledged so far.
    pub fn acked_count(&self) -> usize {
        self.acked.lock().expect("lock").len()
    }

    /// Waits until `more` further writes were acknowledged.
    pub fn wait_for_more(&self, more: usize) {
        let target = self.acked_count() + more;
        let started = Instant::now();
        while self.acked_count() < target {
            assert!(
                started.elapsed() < DEADLINE,
                "only {} of {target} writes acknowledged within {DEADLINE:?}",
                self.acked_count()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the writers; every acknowledged write.
    pub fn stop(self) -> Vec<Acked> {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            thread.join().expect("writer");
        }
        let acked = self.acked.lock().expect("lock").clone();
        acked
    }
}

fn write_until_stopped(
    writer: usize,
    addresses: &[SocketAddr],
    stop: &AtomicBool,
    acked: &Mutex<Vec<Acked>>,
    extra_query: &str,
) {
    let mut target = addresses[0];
    let mut index = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let key = format!("w{writer}-{index}");
        let body = json!({ "value": index }).to_string();
        let answer = request_within(
            target,
            "PUT",
            &format!("/key/{key}{extra_query}"),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
            REQUEST_TIMEOUT,
        );
        match answer {
            Ok(answer) if answer.status == 200 => {
                let id = answer.json()["id"].as_u64().expect("id");
                acked.lock().expect("lock").push((key, index, id));
                index += 1;
            }
            Ok(answer) if answer.status == 307 => {
                if let Some(next) = answer.header("location").and_then(address_of) {
                    target = next;
                }
            }
            _ => {
                // 503 (an election, a hand-over), or no answer: try the next node after a
                // moment. The key is not reused: its outcome may be unknown.
                index += 1;
                let at = addresses.iter().position(|address| *address == target);
                target = addresses[at.map_or(0, |at| (at + 1) % addresses.len())];
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Checks that node `index` holds every write of `acked` (once it applied the highest id).
pub fn assert_holds_all(cluster: &Cluster, index: usize, acked: &[Acked], context: &str) {
    let highest = acked.iter().map(|(_, _, id)| *id).max().unwrap_or(0);
    assert_eq!(
        cluster.read_after(index, "_", highest),
        None,
        "{context}: node {index} applied id {highest}"
    );
    for (key, value, id) in acked {
        assert_eq!(
            cluster.read(index, key),
            Some(json!(value)),
            "{context}: acknowledged {key} (id {id}) missing on node {index}"
        );
    }
}
