//! Keyed, typed prefix-cache block keys (SC-4 tenant isolation; see docs/isolation.md).
//!
//! Two keyed BLAKE3 steps. First the partition's key: `P = BLAKE3-keyed(K, "public")` for an
//! operator-declared public prefix, `P = BLAKE3-keyed(K, "tenant" || tenant key)` otherwise, where `K` is
//! the server's block-hashing key. Then each block key is `BLAKE3-keyed(P, fields)`, the fields encoded
//! as `tag (1 byte) || length (u32 LE) || bytes`, always in this order:
//!
//! | tag | field                                                   |
//! |-----|---------------------------------------------------------|
//! | 1   | parent block key (empty for the first block)            |
//! | 3   | adapter name, 4: adapter path (both absent without an adapter) |
//! | 5   | one multimodal item: offset (i64 LE) then its identifier (repeated, in order) |
//! | 6   | prompt-embeddings digest                                 |
//! | 7   | token ids, u32 LE each                                   |
//!
//! Every field is tagged and length-prefixed, so no two different inputs share an encoding (no aliasing
//! between salt, adapter and multimodal keys, unlike an untyped tuple); the partition is in the key of
//! every block, not only the first; and without `K` nobody can compute or predict a block key. Keying the
//! partition instead of hashing it as a field keeps a 16-token block to two BLAKE3 compressions.

#[cfg(test)]
mod tests;

/// Length of a block key and of the hashing key, in bytes.
pub const KEY_LEN: usize = 32;

const PUBLIC: &[u8] = b"bastion.kv.partition.public.v1";
const TENANT: &[u8] = b"bastion.kv.partition.tenant.v1";

/// A block key.
pub type BlockKey = [u8; KEY_LEN];

/// Which partition a block belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition<'a> {
    /// An operator-declared public prefix, shared by every tenant.
    Public,
    /// One tenant's private blocks, keyed by its (server-derived) tenant key.
    Tenant(&'a [u8; KEY_LEN]),
}

/// A LoRA adapter's identity: both name and path, so re-pointing a name cannot reuse old blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adapter<'a> {
    /// Adapter name as the engine knows it.
    pub name: &'a [u8],
    /// Where its weights came from.
    pub path: &'a [u8],
}

/// Per-block extra keys besides partition and adapter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockExtras<'a> {
    /// Multimodal items in the block: (offset relative to the block start, identifier).
    pub mm: Vec<(i64, &'a [u8])>,
    /// Digest of the block's prompt embeddings, if the prompt came as embeddings.
    pub prompt_embeds: Option<&'a [u8]>,
}

/// Computes block keys with one secret key (derived by the server from its partition secret).
#[derive(Clone)]
pub struct BlockKeyer {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for BlockKeyer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockKeyer(<key>)")
    }
}

fn header(buf: &mut Vec<u8>, tag: u8, len: usize) {
    buf.push(tag);
    // Fields are bounded far below 4 GiB (a block's tokens, a 32-byte key, names); saturate regardless.
    buf.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
}

fn field(buf: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    header(buf, tag, bytes.len());
    buf.extend_from_slice(bytes);
}

/// The key of one partition, under which its block keys are computed.
#[derive(Clone)]
pub struct PartitionKey([u8; KEY_LEN]);

impl BlockKeyer {
    /// A keyer for `key`.
    pub fn new(key: [u8; KEY_LEN]) -> Self {
        Self { key }
    }

    /// The key under which `partition`'s blocks are keyed.
    pub fn partition_key(&self, partition: Partition<'_>) -> PartitionKey {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        match partition {
            Partition::Public => h.update(PUBLIC),
            Partition::Tenant(k) => h.update(TENANT).update(k),
        };
        PartitionKey(*h.finalize().as_bytes())
    }

    /// The key of one full block.
    pub fn block_key(
        &self,
        parent: Option<&BlockKey>,
        partition: Partition<'_>,
        adapter: Option<Adapter<'_>>,
        extras: &BlockExtras<'_>,
        tokens: &[u32],
    ) -> BlockKey {
        Self::key_block(
            &mut Vec::new(),
            &self.partition_key(partition),
            parent,
            adapter,
            extras,
            tokens,
        )
    }

    /// Encodes the block's fields into `buf` (cleared first) and hashes them under the partition key.
    fn key_block(
        buf: &mut Vec<u8>,
        pk: &PartitionKey,
        parent: Option<&BlockKey>,
        adapter: Option<Adapter<'_>>,
        extras: &BlockExtras<'_>,
        tokens: &[u32],
    ) -> BlockKey {
        buf.clear();
        field(buf, 1, parent.map_or(&[][..], |p| &p[..]));
        if let Some(a) = adapter {
            field(buf, 3, a.name);
            field(buf, 4, a.path);
        }
        for (offset, ident) in &extras.mm {
            header(buf, 5, 8 + ident.len());
            buf.extend_from_slice(&offset.to_le_bytes());
            buf.extend_from_slice(ident);
        }
        if let Some(e) = extras.prompt_embeds {
            field(buf, 6, e);
        }
        header(buf, 7, tokens.len() * 4);
        for t in tokens {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        *blake3::keyed_hash(&pk.0, buf).as_bytes()
    }

    /// Keys of consecutive full blocks of `tokens` (a trailing partial block is ignored), chained from
    /// `parent`. The first `public_blocks` of them are in the public partition, the rest in `tenant`'s.
    /// No multimodal or embedding extras (the caller uses [`Self::block_key`] per block for those).
    pub fn chain(
        &self,
        parent: Option<&BlockKey>,
        tokens: &[u32],
        block_size: usize,
        public_blocks: usize,
        tenant: &[u8; KEY_LEN],
        adapter: Option<Adapter<'_>>,
    ) -> Vec<BlockKey> {
        if block_size == 0 {
            return Vec::new();
        }
        let none = BlockExtras::default();
        let n = tokens.len() / block_size;
        let public = (public_blocks > 0).then(|| self.partition_key(Partition::Public));
        let private = (public_blocks < n).then(|| self.partition_key(Partition::Tenant(tenant)));
        let mut out: Vec<BlockKey> = Vec::with_capacity(n);
        let mut buf = Vec::with_capacity(64 + 4 * block_size);
        let mut prev = parent.copied();
        for (i, block) in tokens.chunks_exact(block_size).enumerate() {
            let pk = if i < public_blocks {
                public.as_ref()
            } else {
                private.as_ref()
            };
            let Some(pk) = pk else { break }; // unreachable: each is computed when some block needs it
            let k = Self::key_block(&mut buf, pk, prev.as_ref(), adapter, &none, block);
            out.push(k);
            prev = Some(k);
        }
        out
    }
}
