"""The committed generated protobuf code must match what proto/ generates now."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run([str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True, env=env)
    generated = sorted(p.relative_to(tmp_path) for p in (tmp_path / "bastion" / "v1").glob("*.py*"))
    assert generated, "protoc generated nothing"
    for rel in generated:
        committed = ROOT / "python" / rel
        assert committed.is_file(), f"{rel} is generated but not committed"
        assert committed.read_text() == (tmp_path / rel).read_text(), f"{rel} drifted: run `make proto`"
    # The descriptor set clients use instead of reflection (grpcurl -protoset, buf curl --schema).
    protoset = Path("bastion") / "v1" / "bastion_v1.binpb"
    assert (ROOT / "python" / protoset).read_bytes() == (tmp_path / protoset).read_bytes(), "run `make proto`"
    committed_all = sorted(
        p.relative_to(ROOT / "python") for p in (ROOT / "python" / "bastion" / "v1").glob("*_pb2*.py*")
    )
    assert committed_all == generated, "committed generated files differ from the protos' outputs"
