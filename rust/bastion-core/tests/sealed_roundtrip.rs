//! Sealing round trips, rekeying, inspect and source-directory rules.
// Test code: a failed unwrap/expect/panic is the test failing, by design (clippy.toml's allow-*-in-tests
// does not reach helper functions outside #[test] in integration tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "sealed_util.rs"]
mod util;

use std::fs;

use bastion_core::sealed::{
    self, AeadAlg, HashAlg, KeyEncryptionKey, SealOptions, SealedDir, SealedReader,
};
use bastion_core::CoreError;
use util::*;

fn original(fx: &Fixture, source_name: &str) -> Vec<u8> {
    fs::read(fx.src.join(source_name)).unwrap()
}

#[test]
fn every_tensor_round_trips_for_every_algorithm() {
    let fx = source();
    let combos = [
        (AeadAlg::Aes256Gcm, HashAlg::Blake3),
        (AeadAlg::ChaCha20Poly1305, HashAlg::Sha256),
    ];
    for (i, (aead, hash)) in combos.into_iter().enumerate() {
        let out = fx.sealed(&format!("sealed{i}"));
        let opts = SealOptions {
            aead,
            hash,
            segment_size: 64 << 10,
            ..SealOptions::default()
        };
        let rep = sealed::seal_dir(&fx.src, &out, &fx.kek, &opts).unwrap();
        assert_eq!((rep.files, rep.tensors), (2, 7));
        assert_eq!(rep.copied, ["config.json", "tokenizer.json"]);
        let r = SealedReader::open(&out, &fx.kek).unwrap();
        let h = r.sealed_dir().header().clone();
        for name in r.tensor_names() {
            let t = r.tensor_info(&name).unwrap().clone();
            let orig = original(&fx, &h.files[t.file as usize].source_name);
            let [b, e] = t.data_offsets;
            assert_eq!(
                r.read_tensor(&name).unwrap(),
                &orig[b as usize..e as usize],
                "{name}"
            );
        }
        for (fi, f) in h.files.iter().enumerate() {
            let orig = original(&fx, &f.source_name);
            assert_eq!(r.read_range(fi as u32, 0, f.plaintext_len).unwrap(), orig);
            // Ciphertext offset == plaintext offset: the data file is exactly as long.
            assert_eq!(
                fs::metadata(out.join(&f.name)).unwrap().len(),
                orig.len() as u64
            );
            assert_ne!(fs::read(out.join(&f.name)).unwrap(), orig);
        }
        assert_eq!(r.verify_all().unwrap().segments, 5);
        assert_eq!(
            SealedDir::open(&out)
                .unwrap()
                .verify_ciphertext()
                .unwrap()
                .files,
            2
        );
        assert_eq!(
            fs::read(out.join("config.json")).unwrap(),
            br#"{"model_type":"llama"}"#
        );
        assert!(!out.join("model.safetensors.index.json").exists());
        assert!(!out.join(".gitattributes").exists());
    }
}

#[test]
fn rekey_keeps_ciphertext_and_switches_keys() {
    let fx = source();
    let out = seal(&fx, "sealed");
    let new_kek = fx.tmp.path().join("kek2");
    KeyEncryptionKey::create_file(&new_kek).unwrap();
    let data: Vec<_> = ["weights-00001.ctxd", "weights-00002.ctxd"]
        .map(|n| fs::read(out.join(n)).unwrap())
        .into();
    let before = SealedDir::open(&out).unwrap();
    sealed::rekey(&out, &fx.kek, &new_kek).unwrap();
    let after = SealedDir::open(&out).unwrap();
    assert_eq!(before.header_digest(), after.header_digest());
    assert_eq!(before.header().commitment, after.header().commitment);
    assert_ne!(
        before.header().key.wrapped_dek,
        after.header().key.wrapped_dek
    );
    for (n, d) in ["weights-00001.ctxd", "weights-00002.ctxd"]
        .iter()
        .zip(&data)
    {
        assert_eq!(&fs::read(out.join(n)).unwrap(), d);
    }
    let e = SealedReader::open(&out, &fx.kek).err().unwrap();
    assert!(matches!(e, CoreError::Integrity { .. }), "{e}");
    let r = SealedReader::open(&out, &new_kek).unwrap();
    r.verify_all().unwrap();
    // Rekey with the wrong old key is refused and leaves the header alone.
    let ctxh = fs::read(out.join("weights.ctxh")).unwrap();
    assert!(sealed::rekey(&out, &fx.kek, &new_kek).is_err());
    assert_eq!(fs::read(out.join("weights.ctxh")).unwrap(), ctxh);
}

#[test]
fn inspect_has_no_secrets() {
    let fx = source();
    let out = seal(&fx, "sealed");
    let j: serde_json::Value = serde_json::from_str(&sealed::inspect(&out).unwrap()).unwrap();
    assert!(j["key"].get("wrapped_dek").is_none());
    assert_eq!(j["aead"], "aes-256-gcm");
    assert_eq!(j["total_segments"], 5);
    assert_eq!(
        j["key"]["context"]["bastion.header_digest"],
        j["header_digest"]
    );
}

#[test]
fn source_rules() {
    let fx = source();
    fs::write(fx.src.join("pytorch_model.bin"), b"\x80\x04pickle").unwrap();
    let e = sealed::seal_dir(&fx.src, &fx.sealed("a"), &fx.kek, &opts_small()).unwrap_err();
    assert!(matches!(e, CoreError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("pickle"));
    fs::remove_file(fx.src.join("pytorch_model.bin")).unwrap();
    fs::write(fx.src.join("run.py"), b"import os").unwrap();
    assert!(matches!(
        sealed::seal_dir(&fx.src, &fx.sealed("b"), &fx.kek, &opts_small()),
        Err(CoreError::Refused { .. })
    ));
    fs::remove_file(fx.src.join("run.py")).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(fx.src.join("config.json"), fx.src.join("link.json")).unwrap();
        let e = sealed::seal_dir(&fx.src, &fx.sealed("c"), &fx.kek, &opts_small()).unwrap_err();
        assert!(matches!(e, CoreError::Symlink { .. }), "{e}");
        fs::remove_file(fx.src.join("link.json")).unwrap();
    }
    // Nothing was published (and no staging directory left behind).
    let left: Vec<_> = fs::read_dir(fx.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    // out must not exist.
    let out = seal(&fx, "d");
    assert!(matches!(
        sealed::seal_dir(&fx.src, &out, &fx.kek, &opts_small()),
        Err(CoreError::InvalidArgument { .. })
    ));
    // Bad segment sizes.
    for s in [1000, 32 << 10, 128 << 20] {
        let o = SealOptions {
            segment_size: s,
            ..SealOptions::default()
        };
        assert!(sealed::seal_dir(&fx.src, &fx.sealed("e"), &fx.kek, &o).is_err());
    }
}

#[cfg(unix)]
#[test]
fn kek_file_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let fx = source();
    assert_eq!(
        fs::metadata(&fx.kek).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        KeyEncryptionKey::create_file(&fx.kek).is_err(),
        "never overwrites"
    );
    let out = seal(&fx, "sealed");
    for (mode, ok) in [
        (0o644, false),
        (0o640, false),
        (0o604, false),
        (0o400, true),
        (0o600, true),
    ] {
        fs::set_permissions(&fx.kek, fs::Permissions::from_mode(mode)).unwrap();
        let r = SealedReader::open(&out, &fx.kek);
        assert_eq!(r.is_ok(), ok, "mode {mode:o}");
        if !ok {
            assert!(matches!(r.err().unwrap(), CoreError::KeyFile { .. }));
        }
    }
    let short = fx.tmp.path().join("short");
    fs::write(&short, [0u8; 31]).unwrap();
    fs::set_permissions(&short, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(
        KeyEncryptionKey::from_file(&short),
        Err(CoreError::KeyFile { .. })
    ));
}
