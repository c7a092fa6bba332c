//! Sealed-format read throughput on one large file: plain `pread` of the ciphertext (the anchor),
//! hash-only verification, and fused verify + decrypt, each on a 1-thread and a 2-thread pool.
//!
//! `BASTION_BENCH_SEALED_MB` sets the file size (default 256). Run:
//! `cargo bench -p bastion-core --bench sealed`. Compare the ratios, not absolute times.

use std::fs::File;
use std::path::Path;

use bastion_core::sealed::{self, KeyEncryptionKey, SealOptions, SealedDir, SealedReader};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;

/// A safetensors file of one U8 tensor of `len` pseudo-random bytes.
fn write_source(path: &Path, len: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut json =
        format!("{{\"w\":{{\"dtype\":\"U8\",\"shape\":[{len}],\"data_offsets\":[0,{len}]}}}}");
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut f = std::io::BufWriter::new(File::create(path)?);
    f.write_all(&(json.len() as u64).to_le_bytes())?;
    f.write_all(json.as_bytes())?;
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for _ in 0..len >> 20 {
        f.write_all(&block)?;
    }
    f.flush()
}

fn pread_all(f: &File, len: u64, seg: usize) -> u64 {
    use std::os::unix::fs::FileExt;
    let n = len.div_ceil(seg as u64);
    (0..n)
        .into_par_iter()
        .map_init(
            || vec![0u8; seg],
            |buf, i| {
                let off = i * seg as u64;
                let l = (len - off).min(seg as u64) as usize;
                f.read_exact_at(&mut buf[..l], off)
                    .map(|()| u64::from(buf[0]))
                    .unwrap_or(0)
            },
        )
        .sum()
}

fn bench_sealed(c: &mut Criterion) {
    let mb: u64 = std::env::var("BASTION_BENCH_SEALED_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let Ok(dir) = tempfile::tempdir() else { return };
    let (src, out, kek) = (
        dir.path().join("src"),
        dir.path().join("sealed"),
        dir.path().join("kek"),
    );
    if std::fs::create_dir(&src).is_err()
        || write_source(&src.join("model.safetensors"), mb << 20).is_err()
    {
        return;
    }
    let Ok(()) = KeyEncryptionKey::create_file(&kek) else {
        return;
    };
    let Ok(_) = sealed::seal_dir(&src, &out, &kek, &SealOptions::default()) else {
        return;
    };
    let Ok(reader) = SealedReader::open(&out, &kek) else {
        return;
    };
    let Ok(sd) = SealedDir::open(&out) else {
        return;
    };
    let Ok(len) = reader.file_len(0) else { return };
    let Ok(ct) = File::open(out.join("weights-00001.ctxd")) else {
        return;
    };
    let mut buf = vec![0u8; len as usize];
    let mut g = c.benchmark_group("sealed_read");
    g.throughput(Throughput::Bytes(len));
    g.sample_size(10);
    for threads in [1usize, 2] {
        let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build() else {
            return;
        };
        g.bench_function(format!("pread/{threads}t"), |b| {
            b.iter(|| pool.install(|| pread_all(&ct, len, 1 << 20)))
        });
        g.bench_function(format!("verify_hash_only/{threads}t"), |b| {
            b.iter(|| pool.install(|| sd.verify_ciphertext().map(|r| r.bytes)))
        });
        g.bench_function(format!("verify_decrypt/{threads}t"), |b| {
            b.iter(|| pool.install(|| reader.read_range_into(0, 0, &mut buf).map(|()| buf[0])))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_sealed);
criterion_main!(benches);
