//! Criterion micro-benchmarks of kv-wal, with an fsync probe in the same process.
//!
//! Three groups per record size measure appends in records per second:
//!
//! - `never`: single appends under `SyncPolicy::Never` (one `write` each, no fsync), and
//!   `never_batch100`: `append_batch` of 100 records per call;
//! - `batch_{1,16,64}_appenders`: group commit, that many threads appending one record at a
//!   time and waiting until it is durable;
//! - `always_1_appender`: one thread, one `write` and one `fdatasync` per append.
//!
//! `wal_recovery_1M_100B` builds a log of one million 100-byte records once (outside the
//! measurement) and measures `Wal::open` alone (it scans only the active segment) and
//! `Wal::open` followed by iterating every record. `fsync_probe` appends 128 bytes to a plain
//! file and `fdatasync`s it, the disk's ceiling for one-at-a-time durable writes, so the
//! figures above can be quoted as ratios against it from one run. For the probe and for
//! `always_1_appender` the per-operation latency percentiles are printed too.
//!
//! `wal_compress_sealed` builds a log of about 16 MiB of kvd-like records (a 16-byte key and a
//! JSON value of about 100 bytes) in 4 MiB segments once, then measures
//! `Wal::compress_sealed` per codec on fresh copies of it (bytes of plain segments per second;
//! the compression ratio is printed), and `wal_read_sealed` iterates every record of the
//! sealed segments, plain and compressed with each codec (original bytes per second).
//!
//! `crc32c` measures the frames' checksum, `kv_wal::frame::crc32c` (the CPU's CRC-32C
//! instruction), against the slice-by-16 table the log used before, per record size.
//!
//! Logs live in fresh temporary directories under `KV_WAL_BENCH_DIR` if set, else under
//! Cargo's per-target temporary directory (on the disk of the target directory). Point it at
//! the disk you care about: a tmpfs makes every fsync free and proves nothing.
//!
//! `cargo bench -p kv-bench --bench wal [-- FILTER]`; `scripts/wal-bench-summary` turns
//! Criterion's estimates into the table and the target ratios of `docs/benchmarks.md`.

#[path = "support/mod.rs"]
mod support;

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, SamplingMode, Throughput};
use hdrhistogram::Histogram;
use kv_wal::{SegmentCodec, SyncPolicy, Wal, WalOptions};
use tempfile::TempDir;

/// The small record of the targets (issue 2): 100 bytes of payload.
const RECORD_SMALL_BYTES: usize = 100;
/// The large record: 4 KiB of payload.
const RECORD_LARGE_BYTES: usize = 4096;
/// Thread counts for group commit.
const BATCH_APPENDER_COUNTS: [usize; 3] = [1, 16, 64];
/// Records per `append_batch` call in `never_batch100`.
const APPEND_BATCH_RECORDS: usize = 100;
/// Records in the log whose recovery is measured.
const RECOVERY_RECORD_COUNT: u64 = 1_000_000;
/// Records per `append_batch` call while building that log.
const RECOVERY_BUILD_BATCH_RECORDS: usize = 1_000;
/// Bytes the fsync probe writes before each `fdatasync` (as `fsync-probe` does).
const FSYNC_PROBE_RECORD_BYTES: usize = 128;

/// Criterion settings: short enough that the whole file runs in a few minutes on 2 cores.
const SAMPLE_COUNT: usize = 10;
const WARM_UP_TIME: Duration = Duration::from_secs(1);
const MEASUREMENT_TIME_CPU_BOUND: Duration = Duration::from_secs(3);
const MEASUREMENT_TIME_DISK_BOUND: Duration = Duration::from_secs(4);

const _: () = assert!(RECOVERY_RECORD_COUNT.is_multiple_of(RECOVERY_BUILD_BATCH_RECORDS as u64));

fn fresh_directory(purpose: &str) -> TempDir {
    support::fresh_directory("KV_WAL_BENCH_DIR", "wal", purpose)
}

/// A payload that is never all zeros.
fn payload(size_bytes: usize) -> Vec<u8> {
    (0..size_bytes)
        .map(|index| b'a' + (index % 26) as u8)
        .collect()
}

/// A fresh log in its own directory, removed when dropped (after the log closes).
struct BenchLog {
    wal: Wal,
    _directory: TempDir,
}

impl BenchLog {
    fn open(purpose: &str, sync_policy: SyncPolicy) -> BenchLog {
        let directory = fresh_directory(purpose);
        let options = WalOptions {
            sync_policy,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(directory.path(), options).expect("open the benchmark log");
        BenchLog {
            wal,
            _directory: directory,
        }
    }
}

fn size_label(size_bytes: usize) -> String {
    if size_bytes.is_multiple_of(1024) {
        format!("{}KiB", size_bytes / 1024)
    } else {
        format!("{size_bytes}B")
    }
}

fn bench_append(criterion: &mut Criterion) {
    for size_bytes in [RECORD_SMALL_BYTES, RECORD_LARGE_BYTES] {
        bench_append_records_of(criterion, size_bytes);
    }
}

fn bench_append_records_of(criterion: &mut Criterion, size_bytes: usize) {
    let label = size_label(size_bytes);
    let record = payload(size_bytes);
    let mut group = criterion.benchmark_group(format!("wal_append_{label}"));
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_CPU_BOUND);

    group.throughput(Throughput::Elements(1));
    group.bench_function("never", |bencher| {
        let log = BenchLog::open("never", SyncPolicy::Never);
        bencher.iter(|| log.wal.append(black_box(&record)).expect("append"));
    });

    let batch: Vec<&[u8]> = vec![&record[..]; APPEND_BATCH_RECORDS];
    group.throughput(Throughput::Elements(APPEND_BATCH_RECORDS as u64));
    group.bench_function(format!("never_batch{APPEND_BATCH_RECORDS}"), |bencher| {
        let log = BenchLog::open("never-batch", SyncPolicy::Never);
        bencher.iter(|| log.wal.append_batch(black_box(&batch)).expect("append"));
    });

    group
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(MEASUREMENT_TIME_DISK_BOUND)
        .throughput(Throughput::Elements(1));
    for appender_count in BATCH_APPENDER_COUNTS {
        let name = format!("batch_{appender_count}_appenders");
        let mut fsync_summary = None;
        group.bench_function(&name, |bencher| {
            let log = BenchLog::open("batch", SyncPolicy::Batch);
            bencher.iter_custom(|record_count| {
                append_concurrently(&log.wal, &record, appender_count, record_count)
            });
            let stats = log.wal.stats();
            let fsyncs = stats.fsyncs.max(1) as f64;
            fsync_summary = Some((
                stats.fsync_batch_records_total as f64 / fsyncs,
                stats.fsync_seconds_total * 1e6 / fsyncs,
            ));
        });
        // The disk of a shared machine changes speed; this says which speed the run saw.
        if let Some((records_per_fsync, fsync_mean_us)) = fsync_summary {
            println!(
                "wal_append_{label}/{name}: {records_per_fsync:.1} records per fdatasync, \
                 fdatasync mean {fsync_mean_us:.0} µs"
            );
        }
    }

    let latencies = Mutex::new(new_histogram_ns());
    group.bench_function("always_1_appender", |bencher| {
        let log = BenchLog::open("always", SyncPolicy::Always);
        bencher.iter_custom(|record_count| {
            timed_loop(record_count, &latencies, || {
                log.wal.append(black_box(&record)).expect("append");
            })
        });
    });
    print_latencies(
        &format!("wal_append_{label}/always_1_appender append"),
        &latencies,
    );
    group.finish();
}

/// Appends `record_count` records from `appender_count` threads, each appending one record at
/// a time under the log's policy; returns the time from the start signal until the last one
/// returned. Threads claim records from a shared counter, so all stay busy until the end.
fn append_concurrently(
    wal: &Wal,
    record: &[u8],
    appender_count: usize,
    record_count: u64,
) -> Duration {
    let start = Barrier::new(appender_count + 1);
    let records_claimed = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let appenders: Vec<_> = (0..appender_count)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    while records_claimed.fetch_add(1, Ordering::Relaxed) < record_count {
                        wal.append(record).expect("append");
                    }
                })
            })
            .collect();
        start.wait();
        let started = Instant::now();
        for appender in appenders {
            appender.join().expect("appender thread");
        }
        started.elapsed()
    })
}

/// Runs `operation` `count` times, recording each run's latency; returns the total time.
fn timed_loop(
    count: u64,
    latencies: &Mutex<Histogram<u64>>,
    mut operation: impl FnMut(),
) -> Duration {
    let mut histogram = latencies.lock().expect("latency histogram");
    let mut total = Duration::ZERO;
    for _ in 0..count {
        let started = Instant::now();
        operation();
        let elapsed = started.elapsed();
        total += elapsed;
        histogram.saturating_record(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }
    total
}

fn new_histogram_ns() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds")
}

/// Prints percentiles of everything recorded (warm-up included); nothing if the benchmark was
/// filtered out.
fn print_latencies(what: &str, latencies: &Mutex<Histogram<u64>>) {
    let histogram = latencies.lock().expect("latency histogram");
    if histogram.is_empty() {
        return;
    }
    let microseconds = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    println!(
        "{what} latency over {} operations: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        histogram.len(),
        microseconds(0.50),
        microseconds(0.90),
        microseconds(0.99),
        histogram.max() as f64 / 1000.0
    );
}

fn bench_recovery(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("wal_recovery_1M_100B");
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_DISK_BOUND)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(RECOVERY_RECORD_COUNT));
    // Built on first use, so a filter that skips this group skips the build too.
    let built = std::cell::OnceCell::new();
    let directory = || built.get_or_init(build_recovery_log).path().to_owned();

    group.bench_function("open", |bencher| {
        let directory = directory();
        bencher.iter_custom(|count| {
            measure_opens(&directory, count, |wal| {
                black_box(wal.last_id());
            })
        });
    });
    group.bench_function("open_and_replay", |bencher| {
        let directory = directory();
        bencher.iter_custom(|count| {
            measure_opens(&directory, count, |wal| {
                let mut record_count = 0u64;
                let mut payload_bytes = 0usize;
                for record in wal.iter_from(1) {
                    let record = record.expect("readable record");
                    payload_bytes += record.payload().len();
                    record_count += 1;
                }
                assert_eq!(record_count, RECOVERY_RECORD_COUNT);
                black_box(payload_bytes);
            })
        });
    });
    group.finish();
}

/// Opens the log `count` times, running `after_open` on it each time; the time of open and
/// `after_open` is measured, closing the log (and joining its committer thread) is not.
fn measure_opens(directory: &Path, count: u64, mut after_open: impl FnMut(&Wal)) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..count {
        let started = Instant::now();
        let (wal, report) = Wal::open(directory, WalOptions::default()).expect("open");
        after_open(&wal);
        total += started.elapsed();
        assert!(report.is_clean(), "{report}");
        drop(wal);
    }
    total
}

/// Writes `RECOVERY_RECORD_COUNT` 100-byte records with default segments, closes the log and
/// prints what it holds.
fn build_recovery_log() -> TempDir {
    let directory = fresh_directory("recovery");
    let options = WalOptions {
        sync_policy: SyncPolicy::Never,
        ..WalOptions::default()
    };
    let started = Instant::now();
    let (wal, _) = Wal::open(directory.path(), options).expect("open");
    let record = payload(RECORD_SMALL_BYTES);
    let batch: Vec<&[u8]> = vec![&record[..]; RECOVERY_BUILD_BATCH_RECORDS];
    for _ in 0..RECOVERY_RECORD_COUNT / RECOVERY_BUILD_BATCH_RECORDS as u64 {
        wal.append_batch(&batch).expect("append");
    }
    wal.close().expect("close");
    let segments = wal.segments();
    let active_bytes = segments.last().map_or(0, |segment| segment.size_bytes);
    let total_bytes: u64 = segments.iter().map(|segment| segment.size_bytes).sum();
    drop(wal);
    let (_, report) = Wal::open(directory.path(), WalOptions::default()).expect("reopen");
    println!(
        "wal_recovery_1M_100B: built {RECOVERY_RECORD_COUNT} records in {:.2} s: {} segment(s), \
         {total_bytes} bytes, active segment {active_bytes} bytes; open scans {} segment(s)",
        started.elapsed().as_secs_f64(),
        segments.len(),
        report.segments_scanned
    );
    directory
}

fn bench_fsync_probe(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("fsync_probe");
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_DISK_BOUND)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(1));
    let latencies = Mutex::new(new_histogram_ns());
    let name = format!("write_fdatasync_{FSYNC_PROBE_RECORD_BYTES}B");
    group.bench_function(&name, |bencher| {
        let directory = fresh_directory("fsync-probe");
        let mut file = File::create_new(directory.path().join("probe.log")).expect("probe file");
        let record = payload(FSYNC_PROBE_RECORD_BYTES);
        bencher.iter_custom(|count| {
            timed_loop(count, &latencies, || {
                file.write_all(&record).expect("write");
                file.sync_data().expect("fdatasync");
            })
        });
    });
    print_latencies(&format!("fsync_probe/{name}"), &latencies);
    group.finish();
}

/// Bytes of records in the log whose sealed segments are compressed.
const COMPRESSION_LOG_BYTES: usize = 16 << 20;
/// Its segment size.
const COMPRESSION_SEGMENT_BYTES: u64 = 4 << 20;

/// A kvd-like record: a 16-byte key and a JSON value of about 100 bytes, with varied fields
/// (seeded), so compression sees what a real workload would give it.
fn kvd_record(rng: &mut impl rand::Rng, index: u64) -> Vec<u8> {
    const NAMES: [&str; 8] = [
        "ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances",
    ];
    const CITIES: [&str; 6] = ["Paris", "Lagos", "Osaka", "Lima", "Oslo", "Pune"];
    let key = format!("user:{:011}", index * 7_919 % 100_000_000_000);
    let value = format!(
        "{{\"name\":\"{} {}\",\"age\":{},\"city\":\"{}\",\"score\":{:.3},\"active\":{},\"visits\":{}}}",
        NAMES[rng.gen_range(0..NAMES.len())],
        rng.gen_range(1_000..9_999),
        rng.gen_range(18..90),
        CITIES[rng.gen_range(0..CITIES.len())],
        rng.gen::<f64>() * 1_000.0,
        rng.gen_bool(0.5),
        rng.gen_range(0..100_000)
    );
    let mut record = Vec::with_capacity(key.len() + value.len() + 8);
    record.extend_from_slice(&(key.len() as u32).to_le_bytes());
    record.extend_from_slice(key.as_bytes());
    record.extend_from_slice(&(value.len() as u32).to_le_bytes());
    record.extend_from_slice(value.as_bytes());
    record
}

/// Builds the plain log once: returns its directory and the plain bytes of its sealed segments.
fn build_compression_log() -> (TempDir, u64) {
    use rand::SeedableRng;
    let directory = fresh_directory("compression");
    let options = WalOptions {
        sync_policy: SyncPolicy::Never,
        segment_bytes_max: COMPRESSION_SEGMENT_BYTES,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(directory.path(), options).expect("open");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut written = 0usize;
    let mut index = 0u64;
    while written < COMPRESSION_LOG_BYTES {
        let batch: Vec<Vec<u8>> = (0..1_000)
            .map(|_| {
                index += 1;
                kvd_record(&mut rng, index)
            })
            .collect();
        written += batch.iter().map(Vec::len).sum::<usize>();
        wal.append_batch(&batch).expect("append");
    }
    wal.close().expect("close");
    let segments = wal.segments();
    let sealed_bytes: u64 = segments[..segments.len() - 1]
        .iter()
        .map(|segment| segment.size_bytes)
        .sum();
    let mean_record = written as f64 / index as f64;
    println!(
        "wal_compress_sealed: {index} records of {mean_record:.0} B on average, {} sealed \
         segment(s) of {} MiB, {sealed_bytes} plain bytes sealed",
        segments.len() - 1,
        COMPRESSION_SEGMENT_BYTES >> 20
    );
    (directory, sealed_bytes)
}

/// A copy of a log directory (without its lock file) in a fresh temporary directory.
fn copy_log(from: &Path, purpose: &str) -> TempDir {
    let directory = fresh_directory(purpose);
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        if entry.file_name() != "wal.lock" {
            std::fs::copy(entry.path(), directory.path().join(entry.file_name())).expect("copy");
        }
    }
    directory
}

fn compressing(codec: Option<SegmentCodec>) -> WalOptions {
    WalOptions {
        segment_bytes_max: COMPRESSION_SEGMENT_BYTES,
        compress_sealed_segments: codec,
        ..WalOptions::default()
    }
}

fn bench_sealed_compression(criterion: &mut Criterion) {
    let (plain, sealed_bytes) = build_compression_log();
    let codecs = [SegmentCodec::Lz4, SegmentCodec::Zstd];
    let mut group = criterion.benchmark_group("wal_compress_sealed");
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_CPU_BOUND)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes(sealed_bytes));
    for codec in codecs {
        let ratio = Mutex::new(0.0);
        group.bench_function(codec.to_string(), |bencher| {
            bencher.iter_custom(|count| {
                let mut total = Duration::ZERO;
                for _ in 0..count {
                    let copy = copy_log(plain.path(), "compress");
                    let (wal, _) = Wal::open(copy.path(), compressing(Some(codec))).expect("open");
                    let started = Instant::now();
                    let report = wal.compress_sealed().expect("compress");
                    total += started.elapsed();
                    assert_eq!(report.bytes_before, sealed_bytes);
                    *ratio.lock().expect("ratio") = report.ratio();
                }
                total
            })
        });
        println!(
            "wal_compress_sealed/{codec}: ratio {:.2} (plain bytes / compressed bytes)",
            ratio.lock().expect("ratio")
        );
    }
    group.finish();

    // Read back: plain, and a copy compressed with each codec.
    let mut logs = vec![("plain".to_owned(), copy_log(plain.path(), "read-plain"))];
    for codec in codecs {
        let copy = copy_log(plain.path(), "read-compressed");
        let (wal, _) = Wal::open(copy.path(), compressing(Some(codec))).expect("open");
        wal.compress_sealed().expect("compress");
        drop(wal);
        logs.push((codec.to_string(), copy));
    }
    let mut group = criterion.benchmark_group("wal_read_sealed");
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_CPU_BOUND)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes(sealed_bytes));
    for (label, directory) in &logs {
        let (wal, _) = Wal::open(directory.path(), compressing(None)).expect("open");
        let sealed_last_id = wal.segments().iter().rev().nth(1).and_then(|s| s.last_id);
        let sealed_last_id = sealed_last_id.expect("sealed segments");
        group.bench_function(label.as_str(), |bencher| {
            bencher.iter(|| {
                let mut payload_bytes = 0usize;
                for record in wal.iter_from(1) {
                    let record = record.expect("readable record");
                    payload_bytes += record.payload().len();
                    if record.id == sealed_last_id {
                        break;
                    }
                }
                black_box(payload_bytes)
            })
        });
    }
    group.finish();
}

/// The sizes the record checksum is measured at: a small kvd record, a page, and the 64 KiB
/// and 1 MiB values of `docs/benchmarks.md`'s "How cost grows".
const CRC_SIZES: [usize; 4] = [150, 4096, 64 << 10, 1 << 20];

/// The CRC-32C of every frame (`kv_wal::frame::crc32c`, the CPU's CRC instruction) against the
/// slice-by-16 table kv-wal used before (the `crc` crate), in bytes per second.
fn bench_crc32c(criterion: &mut Criterion) {
    const TABLE: crc::Crc<u32, crc::Table<16>> =
        crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
    let mut group = criterion.benchmark_group("crc32c");
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_CPU_BOUND);
    for size in CRC_SIZES {
        let bytes = payload(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(format!("frame_crc32c_{size}B"), |bencher| {
            bencher.iter(|| kv_wal::frame::crc32c(black_box(&bytes)))
        });
        group.bench_function(format!("table16_{size}B"), |bencher| {
            bencher.iter(|| TABLE.checksum(black_box(&bytes)))
        });
    }
    group.finish();
}

/// What `criterion_main!` would generate, without its undocumented public function: the
/// probe first, so the disk's figure sits next to the appends it bounds.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_fsync_probe(&mut criterion);
    bench_append(&mut criterion);
    bench_recovery(&mut criterion);
    bench_sealed_compression(&mut criterion);
    bench_crc32c(&mut criterion);
    criterion.final_summary();
}
