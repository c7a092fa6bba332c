//! Directory-digest throughput: one rayon thread vs the whole pool, on one large file.
//!
//! `BASTION_BENCH_MB` sets the file size (default 64). Run: `cargo bench -p bastion-core`.

use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_digest(c: &mut Criterion) {
    let mb: u64 = std::env::var("BASTION_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let Ok(dir) = tempfile::tempdir() else { return };
    let Ok(mut f) = std::fs::File::create(dir.path().join("model.safetensors")) else {
        return;
    };
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for _ in 0..mb {
        if f.write_all(&block).is_err() {
            return;
        }
    }
    drop(f);
    let mut g = c.benchmark_group("digest_dir");
    g.throughput(Throughput::Bytes(mb << 20));
    g.sample_size(10);
    let pools = [("1-thread", 1), ("all-threads", 0)];
    for (name, threads) in pools {
        let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build() else {
            return;
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                pool.install(|| bastion_core::digest::digest_dir(dir.path()).map(|d| d.digest))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_digest);
criterion_main!(benches);
