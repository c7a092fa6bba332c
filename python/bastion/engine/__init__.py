"""The engine seam and what drives it.

- ``protocol``: the seam the server calls (``Engine``, ``EnginePool``, requests, outputs, stats).
- ``factory``: builds the pool ``bastion serve`` drives.
- ``vllm/``: the only package that imports vllm (the engine, its plugin, loader, scheduler and hasher).

Importing this package imports no vllm.
"""
