"""The fake engine lives in testkit/fakes.py (benchmarks use it too, and may not import tests/); the tests
keep importing it from here."""

from testkit.fakes import FAKE_DIGEST, FakeEngine

__all__ = ["FAKE_DIGEST", "FakeEngine"]
