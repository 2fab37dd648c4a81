//! Criterion benchmarks of kv-store snapshots: each codec (none, lz4, zstd) on realistic
//! snapshot data, and whole snapshot files written and read back.
//!
//! The data is the map issue 7's targets speak of: 1,000,000 keys of 16 bytes with 100-byte
//! values, in two flavours —
//!
//! - `json`: compact JSON objects of 100 bytes (ids, names, e-mail addresses, numbers, a few
//!   words of text), what most kvd users PUT;
//! - `random`: 100 random bytes (raw values), the incompressible worst case.
//!
//! Groups:
//!
//! - `snapshot_codec_{json,random}/{codec}/{compress,decompress}`: one codec on the raw cell
//!   blocks of a snapshot (the `SNAPSHOT_BLOCK_BYTES` blocks `write_snapshot` compresses), in
//!   bytes of raw cells per second. The compression ratio over the whole data set is printed
//!   before the group.
//! - `snapshot_view_1M`: `Store::snapshot_view` of a store holding the map: the time the map's
//!   read lock is held while a snapshot starts (writers wait that long).
//! - `snapshot_file_{json,random}/{codec}/{write,read}`: `snapshot::write_snapshot` of the
//!   view (encode, compress, write, fsync, rename, directory fsync) and `snapshot::read_snapshot`
//!   of the file (read, check every CRC, decompress, rebuild the map: what a restart does before
//!   replaying the WAL tail). The file size is printed after the group.
//!
//! Files live in fresh temporary directories under `KV_SNAPSHOT_BENCH_DIR` if set, else under
//! Cargo's per-target temporary directory (on the disk of the target directory): not a tmpfs,
//! or the fsyncs of `write` cost nothing.
//!
//! `cargo bench -p kv-bench --bench snapshot [-- FILTER]`; `scripts/bench-snapshots` runs it
//! and turns Criterion's estimates into the table of `docs/benchmarks.md`.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, SamplingMode, Throughput};
use kv_store::snapshot::{self, SnapshotView, SNAPSHOT_BLOCK_BYTES};
use kv_store::{Codec, Op, Store, StoreOptions, Value};
use kv_wal::fs::StdFs;
use kv_wal::{SyncPolicy, WalOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

/// Keys in the map (issue 7: "1M keys").
const KEY_COUNT: u64 = 1_000_000;
/// Every key is this long (`key-000000000042`).
const KEY_BYTES: usize = 16;
/// Every value is this long.
const VALUE_BYTES: usize = 100;
/// Raw bytes compressed or decompressed per iteration of the codec group: 64 blocks.
const CODEC_SAMPLE_BLOCK_COUNT: usize = 64;
/// Seed of the data, so every run measures the same bytes.
const DATA_SEED: u64 = 0x6b76_642d_736e_6170;
const CODECS: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd];
/// Ops submitted between two `apply_through` calls while the map is built.
const BUILD_APPLY_EVERY: u64 = 10_000;

const SAMPLE_COUNT: usize = 10;
const WARM_UP_TIME: Duration = Duration::from_secs(1);
const MEASUREMENT_TIME_CODEC: Duration = Duration::from_secs(3);
const MEASUREMENT_TIME_FILE: Duration = Duration::from_secs(10);

/// The kinds of value the data sets hold.
#[derive(Debug, Clone, Copy)]
enum ValueFlavour {
    Json,
    Random,
}

impl ValueFlavour {
    fn name(self) -> &'static str {
        match self {
            ValueFlavour::Json => "json",
            ValueFlavour::Random => "random",
        }
    }
}

/// Words for the free text of JSON values (lowercase English, as in descriptions and notes).
const WORDS: [&str; 32] = [
    "the",
    "order",
    "was",
    "shipped",
    "to",
    "customer",
    "on",
    "time",
    "and",
    "delivered",
    "payment",
    "pending",
    "review",
    "account",
    "updated",
    "with",
    "new",
    "address",
    "for",
    "billing",
    "request",
    "from",
    "user",
    "mobile",
    "app",
    "session",
    "expired",
    "after",
    "login",
    "retry",
    "success",
    "status",
];
const CITIES: [&str; 8] = [
    "Berlin", "Lisbon", "Osaka", "Toronto", "Nairobi", "Lima", "Oslo", "Austin",
];

/// Key `index`: `key-` and the index zero-padded to [`KEY_BYTES`].
fn key(index: u64) -> Vec<u8> {
    let key = format!("key-{index:0width$}", width = KEY_BYTES - 4);
    debug_assert_eq!(key.len(), KEY_BYTES);
    key.into_bytes()
}

/// A compact JSON object of exactly [`VALUE_BYTES`] bytes.
fn json_value(rng: &mut StdRng, index: u64) -> Vec<u8> {
    let mut text = format!(
        "{{\"id\":{index},\"user\":\"u{:06}\",\"age\":{},\"city\":\"{}\",\"score\":{:.2},\"active\":{},\"note\":\"",
        rng.gen_range(0..1_000_000),
        rng.gen_range(18..90),
        CITIES[rng.gen_range(0..CITIES.len())],
        rng.gen_range(0.0..1000.0),
        rng.gen_bool(0.5),
    );
    let closing = "\"}";
    while text.len() + closing.len() < VALUE_BYTES {
        let word = WORDS[rng.gen_range(0..WORDS.len())];
        text.push_str(word);
        text.push(' ');
    }
    text.truncate(VALUE_BYTES - closing.len());
    text.push_str(closing);
    debug_assert_eq!(text.len(), VALUE_BYTES);
    text.into_bytes()
}

fn value(rng: &mut StdRng, flavour: ValueFlavour, index: u64) -> Value {
    match flavour {
        ValueFlavour::Json => Value::json(json_value(rng, index)),
        ValueFlavour::Random => {
            let mut bytes = vec![0u8; VALUE_BYTES];
            rng.fill(&mut bytes[..]);
            Value::raw(bytes)
        }
    }
}

/// One data set: a store holding the map (WAL under `SyncPolicy::Never`), a view of it, and
/// the raw cell blocks a snapshot of it compresses.
struct DataSet {
    flavour: ValueFlavour,
    store: Store,
    view: SnapshotView,
    blocks: Vec<Vec<u8>>,
    raw_bytes: u64,
    directory: TempDir,
}

impl DataSet {
    fn build(flavour: ValueFlavour) -> DataSet {
        let started = Instant::now();
        let directory = fresh_directory(flavour.name());
        let options = StoreOptions {
            wal: WalOptions {
                sync_policy: SyncPolicy::Never,
                ..WalOptions::default()
            },
            snapshot_dir: Some(directory.path().join("snapshots")),
            ..StoreOptions::default()
        };
        let (store, _) = Store::open(directory.path().join("wal"), options).expect("open store");
        // Keys go in shuffled, as a real load would scatter them over the heap.
        let mut rng = StdRng::seed_from_u64(DATA_SEED);
        let mut order: Vec<u64> = (0..KEY_COUNT).collect();
        order.shuffle(&mut rng);
        let mut last_id = 0;
        for (position, &index) in order.iter().enumerate() {
            let op = Op::Set {
                key: key(index),
                value: value(&mut rng, flavour, index),
            };
            last_id = store.submit(op).expect("submit").id;
            if (position as u64 + 1).is_multiple_of(BUILD_APPLY_EVERY) {
                store.apply_through(last_id);
            }
        }
        store.apply_through(last_id);
        assert_eq!(store.key_count() as u64, KEY_COUNT);
        let view = store.snapshot_view();
        let blocks = raw_blocks(&view);
        let raw_bytes = blocks.iter().map(|block| block.len() as u64).sum();
        println!(
            "snapshot data {}: {KEY_COUNT} keys of {KEY_BYTES} B, values of {VALUE_BYTES} B, \
             {raw_bytes} bytes of cells in {} blocks, built in {:.1} s",
            flavour.name(),
            blocks.len(),
            started.elapsed().as_secs_f64()
        );
        DataSet {
            flavour,
            store,
            view,
            blocks,
            raw_bytes,
            directory,
        }
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.directory.path().join("bench-snapshots")
    }
}

/// The raw (uncompressed) data blocks `write_snapshot` would compress for `view`, in the
/// snapshot format: `(cell_len:u32 cell)*`, `cell = key_len:u32 key kind:u8 value`, cut at
/// [`SNAPSHOT_BLOCK_BYTES`].
fn raw_blocks(view: &SnapshotView) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    let mut raw = Vec::with_capacity(SNAPSHOT_BLOCK_BYTES + 4096);
    for entry in view.entries() {
        let key = entry.key();
        let value = entry.value_bytes();
        let cell_len = 4 + key.len() + 1 + value.len();
        raw.extend_from_slice(&(cell_len as u32).to_le_bytes());
        raw.extend_from_slice(&(key.len() as u32).to_le_bytes());
        raw.extend_from_slice(key);
        raw.push(entry.value_kind().to_byte());
        raw.extend_from_slice(value);
        if raw.len() >= SNAPSHOT_BLOCK_BYTES {
            blocks.push(std::mem::replace(
                &mut raw,
                Vec::with_capacity(SNAPSHOT_BLOCK_BYTES + 4096),
            ));
        }
    }
    if !raw.is_empty() {
        blocks.push(raw);
    }
    blocks
}

fn fresh_directory(purpose: &str) -> TempDir {
    support::fresh_directory("KV_SNAPSHOT_BENCH_DIR", "snapshot", purpose)
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn bench_codecs(criterion: &mut Criterion, data: &DataSet) {
    let name = data.flavour.name();
    for codec in CODECS {
        let started = Instant::now();
        let stored_bytes: u64 = data
            .blocks
            .iter()
            .map(|block| codec.compress(block).len() as u64)
            .sum();
        println!(
            "snapshot_codec_{name}/{codec}: ratio {:.2} ({:.1} MB of cells -> {:.1} MB), \
             whole data set compressed in {:.2} s",
            data.raw_bytes as f64 / stored_bytes as f64,
            megabytes(data.raw_bytes),
            megabytes(stored_bytes),
            started.elapsed().as_secs_f64()
        );
    }
    let sample = &data.blocks[..CODEC_SAMPLE_BLOCK_COUNT.min(data.blocks.len())];
    let sample_bytes: u64 = sample.iter().map(|block| block.len() as u64).sum();
    let mut group = criterion.benchmark_group(format!("snapshot_codec_{name}"));
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_CODEC)
        .throughput(Throughput::Bytes(sample_bytes));
    for codec in CODECS {
        group.bench_function(format!("{codec}/compress"), |bencher| {
            bencher.iter(|| {
                for block in sample {
                    black_box(codec.compress(black_box(block)));
                }
            });
        });
        let compressed: Vec<(Vec<u8>, usize)> = sample
            .iter()
            .map(|block| (codec.compress(block), block.len()))
            .collect();
        group.bench_function(format!("{codec}/decompress"), |bencher| {
            bencher.iter(|| {
                for (stored, raw_len) in &compressed {
                    black_box(
                        codec
                            .decompress(black_box(stored), *raw_len)
                            .expect("decompress"),
                    );
                }
            });
        });
    }
    group.finish();
}

fn bench_view(criterion: &mut Criterion, data: &DataSet) {
    let mut group = criterion.benchmark_group("snapshot_view_1M");
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_CODEC)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(KEY_COUNT));
    group.bench_function(data.flavour.name(), |bencher| {
        bencher.iter_with_large_drop(|| data.store.snapshot_view());
    });
    group.finish();
}

fn bench_files(criterion: &mut Criterion, data: &DataSet) {
    let name = data.flavour.name();
    let dir = data.snapshot_dir();
    let mut sizes = Vec::new();
    let mut group = criterion.benchmark_group(format!("snapshot_file_{name}"));
    group
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP_TIME)
        .measurement_time(MEASUREMENT_TIME_FILE)
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Bytes(data.raw_bytes));
    for codec in CODECS {
        // Written once outside the measurement, so `read` has a file even when `write` is
        // filtered out; each `write` replaces it (same applied id, same name).
        let info =
            snapshot::write_snapshot(&StdFs, &data.view, &dir, codec).expect("write snapshot");
        sizes.push((codec, info.size_bytes));
        group.bench_function(format!("{codec}/write"), |bencher| {
            bencher.iter(|| {
                snapshot::write_snapshot(&StdFs, black_box(&data.view), &dir, codec)
                    .expect("write snapshot")
            });
        });
        group.bench_function(format!("{codec}/read"), |bencher| {
            bencher.iter_with_large_drop(|| {
                let loaded = snapshot::read_snapshot(&StdFs, &info.path).expect("read snapshot");
                assert_eq!(loaded.applied_id, data.view.applied_id);
                loaded
            });
        });
        std::fs::remove_file(&info.path).expect("remove the snapshot");
    }
    group.finish();
    for (codec, size_bytes) in sizes {
        println!(
            "snapshot_file_{name}/{codec}: file of {:.1} MB for {:.1} MB of cells",
            megabytes(size_bytes),
            megabytes(data.raw_bytes)
        );
    }
}

/// What `criterion_main!` would generate, with each data set built once (it takes seconds) and
/// shared by the groups that measure it.
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    for flavour in [ValueFlavour::Json, ValueFlavour::Random] {
        let data = DataSet::build(flavour);
        bench_codecs(&mut criterion, &data);
        if matches!(flavour, ValueFlavour::Json) {
            bench_view(&mut criterion, &data);
        }
        bench_files(&mut criterion, &data);
        data.store.close().expect("close store");
    }
    criterion.final_summary();
}
