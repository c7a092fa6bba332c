"""Clients nobody on the project wrote, against the live server's HTTP API (issue 17): vLLM's serving
benchmark (a short run), lm-evaluation-harness's ``local-completions`` on a small generate task and a small
loglikelihood task (echo with the prompt's log-probabilities), and PyRIT's OpenAI chat target with a scorer.
Each runs in a process of its own, as its users run it, with the API key in the environment variable it
reads. (garak needs ``openai<3``: its own venv, run by hand — ``make garak``.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import LiveServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CLIENTS = Path(__file__).resolve().parent / "clients"


def _tokenizer_dir() -> Path:
    """The default model's plain directory (its tokenizer files; the server serves the sealed copy)."""
    from bastion.config import load_settings
    from bastion.models.default import ensure_default_model

    return ensure_default_model(load_settings(None).cache_dir).path


@dataclass
class ClientRun:
    """One client's process: its exit status and output, and its work directory."""

    proc: subprocess.Popen[str]
    out: Path
    stdout: str = ""
    stderr: str = ""

    def check(self) -> str:
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}\n{self.stdout[-3000:]}\n{self.stderr[-4000:]}"
        return self.stdout


def _start(args: list[str], env: dict[str, str], out: Path, cwd: Path = ROOT) -> ClientRun:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return ClientRun(proc, out)


@pytest.fixture(scope="module")
def clients(live_server: LiveServer, model_name: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientRun]:
    """The three clients, started together (each is mostly one process importing its library; the server
    batches their requests), each with a tenant key of its own in the variable it reads."""
    base = tmp_path_factory.mktemp("clients")
    tokenizer = str(_tokenizer_dir())
    lm_eval_args = ",".join(
        [
            f"model={model_name}",
            f"base_url={live_server.http_url}/v1/completions",
            "tokenizer_backend=huggingface",
            f"tokenizer={tokenizer}",
            "tokenized_requests=False",
            "num_concurrent=1",
            "max_retries=1",
        ]
    )
    runs = {
        "vllm_bench": _start(
            [
                str(ROOT / "benchmarks/vllm_bench_serve.py"),
                "--backend", "openai",
                "--base-url", live_server.http_url,
                "--endpoint", "/v1/completions",
                "--model", model_name,
                "--tokenizer", tokenizer,
                "--dataset-name", "random",
                "--random-input-len", "32",
                "--random-output-len", "8",
                "--num-prompts", "8",
                "--max-concurrency", "4",
                "--ready-check-timeout-sec", "0",
                "--save-result", "--save-detailed", "--result-dir", str(base / "bench"), "--result-filename", "bench.json",
            ],
            {"OPENAI_API_KEY": live_server.identity.keys["bob"]},
            base / "bench",
        ),
        "lm_eval": _start(
            [
                "-m", "lm_eval",
                "--model", "local-completions",
                "--model_args", lm_eval_args,
                "--tasks", "bastion_capitals_gen,bastion_capitals_mc",
                "--include_path", ".",
                "--log_samples",
                "--output_path", str(base / "lm_eval"),
            ],
            {"OPENAI_API_KEY": live_server.identity.keys["carol"], "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
            base / "lm_eval",
            cwd=CLIENTS / "lm_eval_tasks",
        ),
        "pyrit": _start(
            [str(CLIENTS / "pyrit_probe.py"), live_server.http_url, model_name],
            {"OPENAI_CHAT_KEY": live_server.identity.keys["frank"]},
            base / "pyrit",
        ),
    }  # fmt: skip
    for run in runs.values():
        try:
            run.stdout, run.stderr = run.proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            run.proc.kill()
            run.stdout, run.stderr = run.proc.communicate()
    return runs


def test_vllm_bench_serve_runs_against_the_http_api(clients: dict[str, ClientRun]) -> None:
    run = clients["vllm_bench"]
    run.check()
    result = json.loads((run.out / "bench.json").read_text())
    assert result["completed"] == 8 and result["failed"] == 0, result.get("errors")
    assert result["total_output_tokens"] > 0 and result["mean_ttft_ms"] > 0


def test_lm_eval_local_completions_generates_and_scores_loglikelihoods(clients: dict[str, ClientRun]) -> None:
    run = clients["lm_eval"]
    run.check()
    (results_file,) = run.out.rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    gen, mc = results["bastion_capitals_gen"], results["bastion_capitals_mc"]
    # Four questions each: the generate task's answers were read back, and the loglikelihood task ranks the
    # right choice first from the prompt log-probabilities the server returned (a broken echo: chance, 1/3).
    assert gen["sample_len"] == 4 and gen["exact_match,strip"] >= 0.5, gen
    assert mc["sample_len"] == 4 and mc["acc,none"] >= 0.75, mc


def test_pyrit_sends_prompts_through_its_openai_chat_target_and_scores_them(clients: dict[str, ClientRun]) -> None:
    out = clients["pyrit"].check()
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["prompt"] for r in rows] == [
        "What is the capital of France?",
        "Name the capital city of France in one word.",
        "Which city is the capital of Germany?",
    ]
    assert all(r["answer"] for r in rows)  # every prompt was answered through the target
    assert all(r["score"] is ("Paris" in r["answer"]) for r in rows)  # and scored on what came back
    assert rows[0]["score"] is True and rows[0]["outcome"] == "success"  # the model knows this one
