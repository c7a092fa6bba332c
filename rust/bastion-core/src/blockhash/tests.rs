use super::*;
use proptest::prelude::*;

const K: [u8; 32] = [7; 32];
const A: [u8; 32] = [1; 32];
const B: [u8; 32] = [2; 32];

fn keyer() -> BlockKeyer {
    BlockKeyer::new(K)
}

#[test]
fn tenants_get_different_keys_for_the_same_tokens() {
    let t = [1u32, 2, 3, 4];
    let e = BlockExtras::default();
    let a = keyer().block_key(None, Partition::Tenant(&A), None, &e, &t);
    let b = keyer().block_key(None, Partition::Tenant(&B), None, &e, &t);
    assert_ne!(a, b);
    assert_eq!(
        a,
        keyer().block_key(None, Partition::Tenant(&A), None, &e, &t)
    );
}

#[test]
fn the_server_key_matters() {
    let t = [1u32, 2, 3, 4];
    let e = BlockExtras::default();
    let a = keyer().block_key(None, Partition::Public, None, &e, &t);
    let other = BlockKeyer::new([8; 32]).block_key(None, Partition::Public, None, &e, &t);
    assert_ne!(a, other);
}

#[test]
fn adapter_fields_do_not_alias() {
    let t = [5u32; 4];
    let e = BlockExtras::default();
    let k = keyer();
    let ab = k.block_key(
        None,
        Partition::Public,
        Some(Adapter {
            name: b"ab",
            path: b"c",
        }),
        &e,
        &t,
    );
    let a_bc = k.block_key(
        None,
        Partition::Public,
        Some(Adapter {
            name: b"a",
            path: b"bc",
        }),
        &e,
        &t,
    );
    let none = k.block_key(None, Partition::Public, None, &e, &t);
    assert_ne!(ab, a_bc);
    assert_ne!(ab, none);
}

#[test]
fn an_adapter_named_like_a_tenant_key_is_not_that_tenant() {
    // Untyped extra keys let a LoRA name collide with a salt; typed fields cannot.
    let t = [9u32; 4];
    let e = BlockExtras::default();
    let k = keyer();
    let tenant = k.block_key(None, Partition::Tenant(&A), None, &e, &t);
    let adapter = k.block_key(
        None,
        Partition::Public,
        Some(Adapter {
            name: &A,
            path: b"",
        }),
        &e,
        &t,
    );
    assert_ne!(tenant, adapter);
}

#[test]
fn multimodal_offsets_and_identifiers_matter() {
    let t = [0u32; 8];
    let k = keyer();
    let at = |off: i64, id: &'static [u8]| {
        k.block_key(
            None,
            Partition::Public,
            None,
            &BlockExtras {
                mm: vec![(off, id)],
                prompt_embeds: None,
            },
            &t,
        )
    };
    assert_ne!(at(0, b"img"), at(1, b"img"));
    assert_ne!(at(0, b"img"), at(0, b"img2"));
    let embeds = BlockExtras {
        mm: vec![],
        prompt_embeds: Some(b"img"),
    };
    assert_ne!(
        at(0, b"img"),
        k.block_key(None, Partition::Public, None, &embeds, &t)
    );
}

#[test]
fn chain_matches_block_by_block_and_switches_partition() {
    let k = keyer();
    let tokens: Vec<u32> = (0..37).collect();
    let chain = k.chain(None, &tokens, 8, 2, &A, None);
    assert_eq!(chain.len(), 4); // the partial fifth block is not hashed
    let e = BlockExtras::default();
    let mut prev: Option<BlockKey> = None;
    for (i, block) in tokens.chunks_exact(8).enumerate() {
        let p = if i < 2 {
            Partition::Public
        } else {
            Partition::Tenant(&A)
        };
        let key = k.block_key(prev.as_ref(), p, None, &e, block);
        assert_eq!(chain[i], key);
        prev = Some(key);
    }
    // Public blocks are the same for every tenant; private ones are not.
    let other = k.chain(None, &tokens, 8, 2, &B, None);
    assert_eq!(chain[..2], other[..2]);
    assert_ne!(chain[2], other[2]);
    // Resuming from a parent gives the same keys as hashing at once.
    let tail = k.chain(Some(&chain[1]), &tokens[16..], 8, 0, &A, None);
    assert_eq!(tail[..], chain[2..]);
}

#[test]
fn zero_block_size_hashes_nothing() {
    assert!(keyer().chain(None, &[1, 2, 3], 0, 0, &A, None).is_empty());
}

proptest! {
    #[test]
    fn different_token_blocks_get_different_keys(a in proptest::collection::vec(any::<u32>(), 1..40),
                                                 b in proptest::collection::vec(any::<u32>(), 1..40)) {
        prop_assume!(a != b);
        let e = BlockExtras::default();
        let k = keyer();
        prop_assert_ne!(k.block_key(None, Partition::Public, None, &e, &a),
                        k.block_key(None, Partition::Public, None, &e, &b));
    }

    #[test]
    fn parent_is_bound(p in any::<[u8; 32]>(), q in any::<[u8; 32]>()) {
        prop_assume!(p != q);
        let e = BlockExtras::default();
        let k = keyer();
        prop_assert_ne!(k.block_key(Some(&p), Partition::Public, None, &e, &[1, 2]),
                        k.block_key(Some(&q), Partition::Public, None, &e, &[1, 2]));
    }
}
