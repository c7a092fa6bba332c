"""Support shared by tests/ and benchmarks/, importable by both without importing tests/.

* ``testkit.launcher`` — the one launcher for server processes: writes the config, starts the process in its
  own process group with its output in a log file, waits until ``grpc.health.v1`` says SERVING (or fails with
  the log's tail), stops it with SIGTERM then SIGKILL to its group.
* ``testkit.fakes`` — ``FakeEngine``, an engine without a model.
* ``testkit.fake_server`` — bastion's real server over ``FakeEngine`` as a program (``python -m``); benchmarks'
  "security off" server (benchmarks/open_server.py --engine fake) serves it with its pass-through security.

Nothing here imports from tests/; tests/benchmarks/test_no_tests_imports.py checks this package and benchmarks/.
pytest finds this package through ``pythonpath`` in pyproject.toml; a benchmark run as a script puts the
repository root on ``sys.path`` itself.
"""
