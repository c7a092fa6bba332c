"""Everything in bastion that touches vLLM, and nothing else does (import-linter contract ``vllm-home``).

Whoever upgrades vLLM audits this folder, and ``tests/engine/vllm/test_vllm_contract.py`` names every
vLLM internal it relies on, private ones included:

- ``engine``: ``VllmEngine``, the engine seam (``bastion.engine.protocol``) over vLLM's ``AsyncLLM``.
- ``device``: CUDA or vLLM's CPU backend, chosen before vLLM is imported.
- ``preload``: vLLM imported in a thread while the model is verified (a shorter start).
- ``forkserver``: on CPU, the EngineCore forked from a process that imported vLLM meanwhile, with the
  environment a spawned one would have (a shorter start again).
- ``plugin``: the ``vllm.general_plugins`` entry point, run in every vLLM process.
- ``sealed_loader``: the ``bastion`` load format (signature-verified, decrypted weights).
- ``block_hasher``: the EngineCore's keyed, tenant-partitioned prefix-cache block hasher.
- ``scheduler`` and ``kv_pool``: the tenant KV scheduler and the block pool that charges tenants.
- ``figures`` and ``stats_scheduler``: the engine's figures for the metrics, written by the scheduler (vLLM's own
  statistics are off) and read by the server.
- ``offline``: a real vLLM scheduler without a model (tests and isolation_bench).

Importing this package imports no vllm; its modules do.
"""
