"""A gRPC client nobody on the project wrote (issue 18): ``buf curl`` (PyPI ``buf-bin``, in the dev lock) with
the committed descriptor set instead of reflection — a streaming Generate with an API key, and a refusal
without one."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from grpc_harness import running_server

from fakes import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / ".venv" / "bin" / "buf"
PROTOSET = ROOT / "python" / "bastion" / "v1" / "bastion_v1.binpb"


async def _curl(address: str, method: str, body: dict[str, object], key: str | None) -> tuple[int, str, str]:
    args = [
        str(BUF),
        "curl",
        "--schema",
        str(PROTOSET),
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--data",
        json.dumps(body),
    ]
    if key is not None:
        args += ["--header", f"authorization: Bearer {key}"]
    args.append(f"http://{address}/bastion.v1.Inference/{method}")
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_buf_curl_streams_generate_and_is_refused_without_a_key() -> None:
    body = {"model": "fake-model", "prompt": "hello", "sampling": {"maxTokens": 3}}
    async with running_server([FakeEngine()]) as srv:
        ok = await _curl(srv.address, "Generate", body, srv.identity.keys["alice"])
        refused = await _curl(srv.address, "Generate", body, None)
    code, out, err = ok
    assert code == 0, err
    # buf curl prints each streamed message as a JSON object: the deltas, then the final one with usage.
    messages = [json.loads(m) for m in out.replace("}\n{", "}\x00{").split("\x00") if m.strip()]
    assert "".join(m.get("text", "") for m in messages) == "w0 w1 w2 "
    assert messages[-1]["finishReason"] == "FINISH_REASON_LENGTH" and messages[-1]["usage"]["completionTokens"] == 3
    code, out, err = refused
    assert code != 0 and out == ""
    assert "unauthenticated" in err.lower() and "authentication required" in err
