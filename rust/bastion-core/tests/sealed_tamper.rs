//! The tamper corpus: every modification of a sealed directory is refused, naming file and segment.
// Test code: a failed unwrap/expect/panic is the test failing, by design (clippy.toml's allow-*-in-tests
// does not reach helper functions outside #[test] in integration tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sealed_util.rs"]
mod util;

use std::fs;
use std::path::Path;

use bastion_core::sealed::{self, KeyEncryptionKey, SealedDir, SealedReader};
use bastion_core::CoreError;
use util::*;

const D1: &str = "weights-00001.ctxd";
const SEG: usize = 64 << 10;

/// Open with the key and read everything; the first error.
fn load(dir: &Path, kek: &Path) -> Result<(), CoreError> {
    let r = SealedReader::open(dir, kek)?;
    r.verify_all()?;
    for n in r.tensor_names() {
        r.read_tensor(&n)?;
    }
    Ok(())
}

fn integrity_at(e: &CoreError, file: &str, seg: Option<u64>) {
    match e {
        CoreError::Integrity { path, segment, .. } => {
            assert!(path.ends_with(file), "{e}");
            assert_eq!(*segment, seg, "{e}");
        }
        other => panic!("expected Integrity on {file}: {other}"),
    }
}

#[test]
fn header_json_bit_flips_refused() {
    let fx = source();
    let out = seal(&fx, "s");
    let (js, je, _, _) = ctxh_layout(&out);
    let ctxh = out.join("weights.ctxh");
    let good = fs::read(&ctxh).unwrap();
    for off in (0..je)
        .step_by(((je - js) / 97).max(1))
        .chain([0, 8, 12, 19, js, je - 1])
    {
        fs::write(&ctxh, &good).unwrap();
        flip(&ctxh, off);
        assert!(load(&out, &fx.kek).is_err(), "flip at {off} accepted");
        assert!(
            SealedDir::open(&out)
                .and_then(|d| d.verify_ciphertext())
                .is_err()
                || off >= js
        );
    }
}

#[test]
fn ciphertext_tag_and_hash_flips_refused() {
    let fx = source();
    let out = seal(&fx, "s");
    let (_, _, tags, hashes) = ctxh_layout(&out);
    let ctxh = out.join("weights.ctxh");
    let good = fs::read(&ctxh).unwrap();
    // Ciphertext: segment 1 of file 1.
    flip(&out.join(D1), SEG + 123);
    integrity_at(
        &SealedDir::open(&out)
            .unwrap()
            .verify_ciphertext()
            .unwrap_err(),
        D1,
        Some(1),
    );
    integrity_at(&load(&out, &fx.kek).unwrap_err(), D1, Some(1));
    flip(&out.join(D1), SEG + 123);
    load(&out, &fx.kek).unwrap();
    // Tag table: entry 2 (file 1, segment 2). Hashes still match; the AEAD refuses.
    flip(&ctxh, tags + 2 * 16 + 5);
    SealedDir::open(&out).unwrap().verify_ciphertext().unwrap();
    integrity_at(&load(&out, &fx.kek).unwrap_err(), D1, Some(2));
    // Hash table: entry 3 (file 2, segment 0).
    fs::write(&ctxh, &good).unwrap();
    flip(&ctxh, hashes + 3 * 32);
    integrity_at(
        &load(&out, &fx.kek).unwrap_err(),
        "weights-00002.ctxd",
        Some(0),
    );
}

#[test]
fn truncated_extra_missing_refused() {
    let fx = source();
    let out = seal(&fx, "s");
    let data = fs::read(out.join(D1)).unwrap();
    fs::write(out.join(D1), &data[..data.len() - 1]).unwrap();
    integrity_at(
        &load(&out, &fx.kek).unwrap_err(),
        D1,
        Some((data.len() - 1) as u64 / SEG as u64),
    );
    fs::write(out.join(D1), &data[..SEG]).unwrap();
    integrity_at(&SealedDir::open(&out).err().unwrap(), D1, Some(1));
    let mut more = data.clone();
    more.push(0);
    fs::write(out.join(D1), &more).unwrap();
    integrity_at(&load(&out, &fx.kek).unwrap_err(), D1, None);
    fs::remove_file(out.join(D1)).unwrap();
    integrity_at(&load(&out, &fx.kek).unwrap_err(), D1, None);
    // The header itself truncated, or with bytes appended.
    fs::write(out.join(D1), &data).unwrap();
    let ctxh = fs::read(out.join("weights.ctxh")).unwrap();
    for bad in [
        &ctxh[..ctxh.len() - 1],
        &[&ctxh[..], &[0u8][..]].concat()[..],
        &ctxh[..10],
    ] {
        fs::write(out.join("weights.ctxh"), bad).unwrap();
        assert!(matches!(load(&out, &fx.kek), Err(CoreError::Format { .. })));
    }
}

/// Swap segments `a` and `b` of file 1, optionally with their tag and hash entries.
fn swap(out: &Path, a: usize, b: usize, tables: bool) {
    let mut d = fs::read(out.join(D1)).unwrap();
    let (x, y) = d.split_at_mut(b * SEG);
    x[a * SEG..(a + 1) * SEG].swap_with_slice(&mut y[..SEG]);
    fs::write(out.join(D1), d).unwrap();
    if tables {
        let (_, _, tags, hashes) = ctxh_layout(out);
        let mut c = fs::read(out.join("weights.ctxh")).unwrap();
        for (base, w) in [(tags, 16), (hashes, 32)] {
            let (x, y) = c.split_at_mut(base + b * w);
            x[base + a * w..base + (a + 1) * w].swap_with_slice(&mut y[..w]);
        }
        fs::write(out.join("weights.ctxh"), c).unwrap();
    }
}

#[test]
fn swapped_segments_refused() {
    let fx = source();
    let out = seal(&fx, "s");
    swap(&out, 0, 1, false);
    integrity_at(&load(&out, &fx.kek).unwrap_err(), D1, Some(0));
    swap(&out, 0, 1, false);
    load(&out, &fx.kek).unwrap();
    // Swapping the table entries too passes the hash check but not the AEAD (index in nonce+AAD).
    swap(&out, 0, 1, true);
    SealedDir::open(&out).unwrap().verify_ciphertext().unwrap();
    integrity_at(&load(&out, &fx.kek).unwrap_err(), D1, Some(0));
}

#[test]
fn splices_from_another_model_refused() {
    let fx = source();
    let a = seal(&fx, "a");
    let b = seal(&fx, "b");
    // Same source, same KEK, different DEK and salt: ciphertexts differ.
    assert_ne!(fs::read(a.join(D1)).unwrap(), fs::read(b.join(D1)).unwrap());
    let (_, _, ta, ha) = ctxh_layout(&a);
    let (_, _, tb, hb) = ctxh_layout(&b);
    // One segment with its tag and hash entry.
    let mut da = fs::read(a.join(D1)).unwrap();
    let db = fs::read(b.join(D1)).unwrap();
    da[SEG..2 * SEG].copy_from_slice(&db[SEG..2 * SEG]);
    fs::write(a.join(D1), &da).unwrap();
    integrity_at(&load(&a, &fx.kek).unwrap_err(), D1, Some(1));
    let mut ca = fs::read(a.join("weights.ctxh")).unwrap();
    let cb = fs::read(b.join("weights.ctxh")).unwrap();
    ca[ta + 16..ta + 32].copy_from_slice(&cb[tb + 16..tb + 32]);
    ca[ha + 32..ha + 64].copy_from_slice(&cb[hb + 32..hb + 64]);
    fs::write(a.join("weights.ctxh"), &ca).unwrap();
    SealedDir::open(&a).unwrap().verify_ciphertext().unwrap();
    integrity_at(&load(&a, &fx.kek).unwrap_err(), D1, Some(1));
    // A whole data file with all its table entries.
    let a2 = seal(&fx, "a2");
    fs::copy(b.join(D1), a2.join(D1)).unwrap();
    let mut c2 = fs::read(a2.join("weights.ctxh")).unwrap();
    let (_, _, t2, h2) = ctxh_layout(&a2);
    c2[t2..t2 + 3 * 16].copy_from_slice(&cb[tb..tb + 3 * 16]);
    c2[h2..h2 + 3 * 32].copy_from_slice(&cb[hb..hb + 3 * 32]);
    fs::write(a2.join("weights.ctxh"), &c2).unwrap();
    integrity_at(&load(&a2, &fx.kek).unwrap_err(), D1, Some(0));
    // The other model's whole weights.ctxh on this model's data: hashes refuse.
    let a3 = seal(&fx, "a3");
    fs::copy(b.join("weights.ctxh"), a3.join("weights.ctxh")).unwrap();
    integrity_at(
        &SealedDir::open(&a3)
            .unwrap()
            .verify_ciphertext()
            .unwrap_err(),
        D1,
        Some(0),
    );
}

/// Rewrite the header through the decoder (canonical, so only the semantic change differs).
fn edit_header(dir: &Path, f: impl FnOnce(&mut sealed::Container)) {
    let bytes = fs::read(dir.join("weights.ctxh")).unwrap();
    let mut c = sealed::decode_container(dir, &bytes).unwrap();
    f(&mut c);
    fs::write(dir.join("weights.ctxh"), c.encode().unwrap()).unwrap();
}

type Edit<'a> = Box<dyn Fn(&mut sealed::Container) + 'a>;

#[test]
fn semantic_header_edits_refused() {
    let fx = source();
    let other = seal(&fx, "other");
    let oc =
        sealed::decode_container(&other, &fs::read(other.join("weights.ctxh")).unwrap()).unwrap();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "rename tensor",
            Box::new(|c| {
                let t = c.header.tensors.remove("scalar").unwrap();
                c.header.tensors.insert("scalar2".into(), t);
            }),
        ),
        (
            "origin added",
            Box::new(|c| c.header.origin = Some(Default::default())),
        ),
        (
            "commitment",
            Box::new(|c| c.header.commitment = oc.header.commitment.clone()),
        ),
        (
            "key block from another model",
            Box::new(|c| c.header.key = oc.header.key.clone()),
        ),
        (
            "digest in context forged",
            Box::new(|c| {
                let d = oc.header.key.context["bastion.header_digest"].clone();
                c.header
                    .key
                    .context
                    .insert("bastion.header_digest".into(), d);
            }),
        ),
        (
            "context entry added",
            Box::new(|c| {
                c.header.key.context.insert("model".into(), "x".into());
            }),
        ),
        (
            "key id",
            Box::new(|c| c.header.key.key_id = "kek:forged".into()),
        ),
        (
            "provider",
            Box::new(|c| c.header.key.provider = "kms".into()),
        ),
        ("salt", Box::new(|c| c.header.salt = oc.header.salt.clone())),
    ];
    for (what, f) in cases {
        let s = seal(&fx, "s");
        edit_header(&s, f);
        match load(&s, &fx.kek) {
            Err(CoreError::Integrity { .. }) => {}
            Err(CoreError::InvalidArgument { field: "kek", .. }) if what == "provider" => {}
            other => panic!("{what}: {:?}", other.err().map(|e| e.to_string())),
        }
        fs::remove_dir_all(&s).unwrap();
    }
}

#[test]
fn wrong_kek_refused() {
    let fx = source();
    let out = seal(&fx, "s");
    let k2 = fx.tmp.path().join("k2");
    KeyEncryptionKey::create_file(&k2).unwrap();
    let e = load(&out, &k2).unwrap_err();
    integrity_at(&e, "weights.ctxh", None);
    assert!(e.to_string().contains("unwrap"), "{e}");
}

#[test]
fn the_first_bad_segment_is_named_whatever_the_thread_timing() {
    // Every segment of the first data file damaged: the whole-directory checks run segments in parallel, and each
    // thread meets a bad one at once; the report is still the first bad segment in file order, every time.
    let fx = source();
    let out = seal(&fx, "all-bad");
    let len = fs::read(out.join(D1)).unwrap().len();
    assert!(len > 2 * SEG, "the fixture needs several segments");
    for off in (0..len).step_by(SEG) {
        flip(&out.join(D1), off + 7);
    }
    // More threads than segments' worth of cores, so that later segments are checked beside the first.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(16)
        .build()
        .unwrap();
    pool.install(|| {
        for _ in 0..300 {
            let dir = SealedDir::open(&out).unwrap();
            integrity_at(&dir.verify_ciphertext().unwrap_err(), D1, Some(0));
            let reader = SealedReader::open(&out, &fx.kek).unwrap();
            integrity_at(&reader.verify_all().unwrap_err(), D1, Some(0));
        }
    });
}
