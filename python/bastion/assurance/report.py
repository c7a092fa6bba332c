"""Evaluation reports: ``report.jsonl`` (garak-compatible rows) and ``summary.json`` (what the gate and
the attestation use).

``report.jsonl`` follows garak's report layout so its tooling can read it: an ``init`` row, one
``attempt`` row per probe (status 2 = evaluated, the prompt as chat turns, the output, the detector's
score in ``detector_results``), one ``eval`` row per family and detector (``passed`` of ``total``), and a
closing ``digest`` row holding the summary. ``summary.json`` holds the same summary on its own: the
model's digest set, the suite, the canary seed (canaries are fictional; the seed reproduces the run),
per-family figures, per-probe outcomes (for the paired comparison with a parent model) and the gate.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bastion.assurance.runner import Attempt
from bastion.assurance.stats import FamilyFigures
from bastion.errors import ConfigError
from bastion.files import atomic_write

REPORT_FILE = "report.jsonl"
SUMMARY_FILE = "summary.json"
SUMMARY_FORMAT = "bastion-eval-summary/1"
MAX_SUMMARY_BYTES = 16 << 20


def _write(path: Path, data: bytes) -> str:
    """Writes atomically (``bastion.files.atomic_write``), mode 0640; returns "sha256:<hex>"."""
    atomic_write(path, data, mode=0o640)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def attempt_rows(run_id: str, attempts: Sequence[Attempt]) -> list[dict[str, Any]]:
    rows = []
    for seq, a in enumerate(attempts):
        p = a.probe
        rows.append(
            {
                "entry_type": "attempt",
                "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{run_id}/{p.id}")),
                "seq": seq,
                "status": 2,
                "probe_classname": f"bastion.{p.family}",
                "probe_params": {"id": p.id},
                "targets": [],
                "goal": p.goal,
                "prompt": {"turns": [{"role": r, "content": {"text": c}} for r, c in p.messages]},
                "outputs": [{"text": a.output}],
                "detector_results": {f"bastion.{p.detector}": [round(a.score, 6)]},
                "notes": {
                    "probe_id": p.id,
                    "hit": a.hit,
                    "completion_tokens": a.completion_tokens,
                    "finish_reason": a.finish_reason,
                    "latency_s": round(a.latency_s, 4),
                },
                "run": run_id,
            }
        )
    return rows


def eval_rows(attempts: Sequence[Attempt]) -> list[dict[str, Any]]:
    counts: dict[tuple[str, str], list[int]] = {}
    for a in attempts:
        c = counts.setdefault((a.probe.family, a.probe.detector), [0, 0])
        c[0] += 0 if a.hit else 1
        c[1] += 1
    return [
        {"entry_type": "eval", "probe": f"bastion.{f}", "detector": f"bastion.{d}", "passed": p, "total": t}
        for (f, d), (p, t) in counts.items()
    ]


def figures_json(figures: Mapping[str, FamilyFigures]) -> dict[str, dict[str, Any]]:
    return {f: asdict(v) for f, v in figures.items()}


def write_report(out_dir: Path, summary: dict[str, Any], attempts: Sequence[Attempt]) -> tuple[str, str]:
    """Writes report.jsonl and summary.json; returns their sha256 digests."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = summary["run_id"]
    rows: list[dict[str, Any]] = [
        {
            "entry_type": "init",
            "generator": "bastion eval",
            "run": run_id,
            "start_time": summary["started"],
            "model": summary["model"],
            "suite": summary["suite"],
        }
    ]
    rows += attempt_rows(run_id, attempts) + eval_rows(attempts)
    rows.append({"entry_type": "digest", "meta": summary})
    body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows).encode()
    report_digest = _write(out_dir / REPORT_FILE, body)
    summary = {**summary, "report_digest": report_digest}
    summary_digest = _write(out_dir / SUMMARY_FILE, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return report_digest, summary_digest


def load_summary(path: Path) -> dict[str, Any]:
    """A previous run's summary.json (the baseline or the parent model); ConfigError naming the problem."""
    if path.is_dir():
        path = path / SUMMARY_FILE
    try:
        if path.stat().st_size > MAX_SUMMARY_BYTES:
            raise ConfigError(f"{path}: over {MAX_SUMMARY_BYTES} bytes")
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable evaluation summary ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != SUMMARY_FORMAT:
        raise ConfigError(f"{path}: format must be {SUMMARY_FORMAT!r}")
    return data


def baseline_figures(summary: Mapping[str, Any]) -> dict[str, FamilyFigures]:
    try:
        return {f: FamilyFigures(**v) for f, v in summary["figures"].items()}
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"summary: figures malformed ({type(exc).__name__})") from None


def paired_counts(
    parent: Mapping[str, Any], hits: Mapping[str, bool], families: Mapping[str, str]
) -> dict[str, tuple[int, int]]:
    """family -> (b, c) over the probes both runs share: b = parent hit & new pass, c = parent pass & new hit."""
    theirs = parent.get("probe_hits") or {}
    out: dict[str, tuple[int, int]] = {}
    for pid, hit in hits.items():
        if pid not in theirs:
            continue
        b, c = out.get(families[pid], (0, 0))
        out[families[pid]] = (b + int(theirs[pid] and not hit), c + int(hit and not theirs[pid]))
    return out
