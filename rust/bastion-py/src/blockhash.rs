//! `BlockKeyer`: keyed, typed prefix-cache block keys (`bastion_core::blockhash`) for the EngineCore's
//! block hasher (`bastion.engine.vllm.block_hasher`). Blocks are small, so the GIL stays held.

use bastion_core::blockhash::{self, Adapter, BlockExtras, BlockKey, Partition, KEY_LEN};
use bastion_core::CoreError;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use crate::errors::NativeError;

fn key32(field: &'static str, bytes: &[u8]) -> Result<[u8; KEY_LEN], NativeError> {
    bytes.try_into().map_err(|_| {
        CoreError::InvalidArgument {
            field,
            problem: format!("must be exactly {KEY_LEN} bytes, got {}", bytes.len()),
        }
        .into()
    })
}

fn parent_key(parent: Option<&[u8]>) -> Result<Option<BlockKey>, NativeError> {
    parent.map(|p| key32("parent", p)).transpose()
}

/// Token ids from a buffer of u32 (`array("I", ...)`: read at memory speed, the fast path) or any
/// sequence of ints (one Python int at a time: about 20-30 ns each under the stable ABI).
fn token_ids(py: Python<'_>, tokens: &Bound<'_, PyAny>) -> Result<Vec<u32>, NativeError> {
    let bad = || -> NativeError {
        CoreError::InvalidArgument {
            field: "tokens",
            problem: "must be a sequence of token ids (0 to 2**32-1) or an array('I')".into(),
        }
        .into()
    };
    if let Ok(buf) = PyBuffer::<u32>::get(tokens) {
        return buf.to_vec(py).map_err(|_| bad());
    }
    let ids: PyResult<Vec<u32>> = match tokens.cast::<PyList>() {
        Ok(list) => list.iter().map(|item| item.extract::<u32>()).collect(),
        Err(_) => tokens.extract::<Vec<u32>>(),
    };
    ids.map_err(|_| bad())
}

fn adapter_of(adapter: &Option<(String, String)>) -> Option<Adapter<'_>> {
    adapter.as_ref().map(|(name, path)| Adapter {
        name: name.as_bytes(),
        path: path.as_bytes(),
    })
}

/// Computes block keys under one secret 32-byte key. The key cannot be read back.
#[pyclass(frozen, module = "bastion._native")]
pub(crate) struct BlockKeyer {
    inner: blockhash::BlockKeyer,
}

#[pymethods]
impl BlockKeyer {
    #[new]
    fn new(key: &[u8]) -> Result<Self, NativeError> {
        Ok(Self {
            inner: blockhash::BlockKeyer::new(key32("key", key)?),
        })
    }

    /// Keys of the full blocks of `tokens`, chained from `parent`; the first `public_blocks` are public.
    #[pyo3(signature = (parent, tokens, block_size, public_blocks, tenant_key, adapter=None))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn chain<'py>(
        &self,
        py: Python<'py>,
        parent: Option<&[u8]>,
        tokens: &Bound<'py, PyAny>,
        block_size: usize,
        public_blocks: usize,
        tenant_key: &[u8],
        adapter: Option<(String, String)>,
    ) -> Result<Vec<Bound<'py, PyBytes>>, NativeError> {
        if block_size == 0 {
            return Err(CoreError::InvalidArgument {
                field: "block_size",
                problem: "must be at least 1".into(),
            }
            .into());
        }
        let parent = parent_key(parent)?;
        let tenant = key32("tenant_key", tenant_key)?;
        let tokens = token_ids(py, tokens)?;
        let keys = self.inner.chain(
            parent.as_ref(),
            &tokens,
            block_size,
            public_blocks,
            &tenant,
            adapter_of(&adapter),
        );
        Ok(keys.iter().map(|k| PyBytes::new(py, k)).collect())
    }

    /// The key of one block with every extra field; `tenant_key=None` means the public partition.
    #[pyo3(signature = (parent, tokens, tenant_key, adapter=None, mm=Vec::new(), prompt_embeds=None))]
    #[allow(clippy::too_many_arguments)] // the Python signature
    fn block_key<'py>(
        &self,
        py: Python<'py>,
        parent: Option<&[u8]>,
        tokens: &Bound<'py, PyAny>,
        tenant_key: Option<&[u8]>,
        adapter: Option<(String, String)>,
        mm: Vec<(i64, Vec<u8>)>,
        prompt_embeds: Option<&[u8]>,
    ) -> Result<Bound<'py, PyBytes>, NativeError> {
        let parent = parent_key(parent)?;
        let tokens = token_ids(py, tokens)?;
        let tenant = tenant_key.map(|t| key32("tenant_key", t)).transpose()?;
        let partition = tenant.as_ref().map_or(Partition::Public, Partition::Tenant);
        let extras = BlockExtras {
            mm: mm.iter().map(|(o, id)| (*o, id.as_slice())).collect(),
            prompt_embeds,
        };
        let key = self.inner.block_key(
            parent.as_ref(),
            partition,
            adapter_of(&adapter),
            &extras,
            &tokens,
        );
        Ok(PyBytes::new(py, &key))
    }

    fn __repr__(&self) -> &'static str {
        "BlockKeyer(<key>)"
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BlockKeyer>()
}
