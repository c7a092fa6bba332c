"""``bastion eval MODEL``: the pre-go-live security evaluation of a served model (NIST AI 600-1 MS-2.6).

Runs a probe suite (``--profile ci|production``) through the live server as the evaluation principal
(the usual client options; its tenancy-policy entry needs the "evaluator" role, which may call models
that are not released yet), scores every output with the suite's deterministic detectors, and writes
``report.jsonl`` (garak-compatible rows) and ``summary.json`` into ``--out``. The gate
(``--gate-policy``; the bundled production policy by default) then decides PASSED or FAILED from exact
upper confidence bounds and, with ``--baseline`` (the summary of the model serving now), a one-sided
Fisher test per family with Holm's correction; with ``--parent`` (the summary of the model this one was
fine-tuned from) the same probes are compared pairwise (McNemar) instead.

With ``--sign-key`` the verdict is signed as an in-toto test-result attestation (DSSE) whose subject is
the model's digest set (and the adapter's, with ``--adapter``), written to ``--out`` and, with
``--attestations-dir``, where the server reads it (then ``bastion admin reload-attestations``).

The subject is what the server reports, so the run must reach the real server: a target that is not
loopback or a unix socket needs TLS (``--ca-file``; refused before connecting otherwise,
``bastion.cli.client``), and ``--expect-digest DIGEST`` (the model directory's ``blake3:`` digest, or its OMS
``sha256:`` subject digest) stops the run before any probe when ListModels reports another digest for the
model: nobody can have a verdict signed for a model the operator did not mean to evaluate.

Exit 0: PASSED; 1: FAILED or the run could not complete; 2: bad usage or configuration (a bad gate
policy, suite or summary file). Errors go through bastion.cli.errors (one line, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import secrets
import socket
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bastion.config import load_settings
from bastion.files import atomic_write

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "assurance" / "data" / "gate" / "production.toml"
# --expect-digest: the directory digest (docs/model-digest.md) or the OMS subject digest, as ListModels names them.
_DIGEST = re.compile(r"(blake3|sha256):[0-9a-f]{64}")


def add_parsers(sub: Any, client_args: Callable[[argparse.ArgumentParser], None]) -> None:
    e = sub.add_parser("eval", help="security evaluation of a served model: probes, gate, signed attestation")
    client_args(e)
    e.add_argument("model", metavar="MODEL", help="served model name")
    e.add_argument(
        "--profile", choices=("ci", "production"), default="production", help="probe suite (default production)"
    )
    e.add_argument("--out", required=True, help="directory for report.jsonl, summary.json and the attestation")
    e.add_argument("--gate-policy", help=f"gate policy TOML (default: {DEFAULT_POLICY.name}, bundled)")
    e.add_argument("--baseline", help="summary.json of the model serving now: no significant regression allowed")
    e.add_argument("--parent", help="summary.json of the parent model (fine-tunes): paired McNemar comparison")
    e.add_argument("--adapter", help="evaluate the model with this LoRA adapter (the attestation then names both)")
    e.add_argument(
        "--expect-digest",
        metavar="DIGEST",
        help="the model's digest (blake3:<64 hex>, or its OMS subject digest sha256:<64 hex>): refuse to run "
        "unless the server reports exactly this digest for MODEL",
    )
    e.add_argument("--sign-key", help="EC private key (PEM) that signs the attestation")
    e.add_argument(
        "--attestations-dir", help="also place the signed attestation here (the server's assurance.attestations_dir)"
    )
    e.add_argument("--concurrency", type=int, default=8, help="probes in flight (default 8)")
    e.add_argument("--seed", type=int, default=0, help="sampling seed (decoding is greedy; default 0)")
    e.add_argument(
        "--evaluator",
        default=f"{getpass.getuser()}@{socket.gethostname()}",
        help="who ran the evaluation, as recorded in the attestation (default user@host; the server's "
        "audit log records the principal of every probe)",
    )


def _progress(done: int, total: int) -> None:
    if sys.stderr.isatty() or done == total or done % max(1, total // 10) == 0:
        print(f"\reval: {done}/{total} probes", end="" if done < total else "\n", file=sys.stderr, flush=True)


def commands(channel_for: Callable[[argparse.Namespace, Any], Any]) -> dict[str, Callable[[argparse.Namespace], int]]:
    def run(args: argparse.Namespace) -> int:
        from bastion.errors import ConfigError

        if not 1 <= args.concurrency <= 256:
            raise ConfigError("--concurrency must be 1..256")
        if args.adapter and not args.parent:
            raise ConfigError(
                "--adapter needs --parent (the base model's summary.json): a fine-tune is compared with "
                "its parent probe by probe"
            )
        if args.attestations_dir and not args.sign_key:
            raise ConfigError("--attestations-dir needs --sign-key (only signed attestations are placed)")
        if args.sign_key and not os.access(args.sign_key, os.R_OK):  # before a run that can take an hour
            raise ConfigError(f"--sign-key {args.sign_key}: not a readable file")
        if args.expect_digest is not None:
            args.expect_digest = args.expect_digest.lower()
            if not _DIGEST.fullmatch(args.expect_digest):
                raise ConfigError("--expect-digest must be blake3:<64 hex digits> or sha256:<64 hex digits>")
        settings = load_settings(args.config)
        # EvalError (1), ConfigError (2) and the rest go to bastion.cli.main's table (bastion.cli.errors).
        return asyncio.run(_evaluate(args, lambda: channel_for(args, settings)))

    return {"eval": run}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _target(stub: Any, pb: Any, model: str, adapter: str | None) -> tuple[Any, Any]:
    from bastion.assurance.runner import EvalError

    models = {m.name: m for m in (await stub.ListModels(pb.ListModelsRequest(), timeout=30)).models}
    info = models.get(model)
    if info is None:
        raise EvalError(f"model {model!r} is not served to this principal (served: {sorted(models) or 'none'})")
    adapter_info = None
    if adapter is not None:
        adapter_info = next((a for a in info.adapters if a.name == adapter), None)
        if adapter_info is None:
            raise EvalError(f"adapter {adapter!r} is not served with {model} to this principal")
    return info, adapter_info


def _check_digest(info: Any, expected: str | None) -> None:
    """EvalError unless the served model's digest of ``expected``'s algorithm is ``expected`` (None: no check)."""
    from bastion.assurance.runner import EvalError

    if expected is None:
        return
    served = info.subject_digest if expected.startswith("sha256:") else info.digest
    if served != expected:
        raise EvalError(
            f"model {info.name} is served with digest {served or '(none)'}, not {expected} (--expect-digest): "
            "no probe was sent"
        )


def _subjects(info: Any, adapter_info: Any) -> list[tuple[str, dict[str, str]]]:
    digests = dict([info.digest.split(":", 1)])
    if info.subject_digest:
        algo, value = info.subject_digest.split(":", 1)
        digests[algo] = value
    out = [(info.name, digests)]
    if adapter_info is not None:
        out.append((f"{info.name}+adapter:{adapter_info.name}", dict([adapter_info.digest.split(":", 1)])))
    return out


async def _evaluate(args: argparse.Namespace, open_channel: Callable[[], Any]) -> int:
    import grpc

    from bastion.assurance.gate import decide, load_gate_policy
    from bastion.assurance.report import (
        SUMMARY_FORMAT,
        baseline_figures,
        figures_json,
        load_summary,
        paired_counts,
        write_report,
    )
    from bastion.assurance.runner import EvalError, outcomes, run_suite
    from bastion.assurance.stats import family_figures
    from bastion.assurance.suites import load_suite
    from bastion.v1 import inference_pb2 as pb
    from bastion.v1 import inference_pb2_grpc as pb_grpc

    policy = load_gate_policy(Path(args.gate_policy) if args.gate_policy else DEFAULT_POLICY)
    baseline = load_summary(Path(args.baseline)) if args.baseline else None
    parent = load_summary(Path(args.parent)) if args.parent else None
    canary_seed = secrets.token_bytes(32)
    suite = load_suite(args.profile, canary_seed=canary_seed)
    for ref in (baseline, parent):
        if ref is not None and ref["suite"]["digest"] != suite.digest:
            raise EvalError(f"a baseline or parent summary ran suite {ref['suite']['digest']}, not {suite.digest}")
    out = Path(args.out)
    channel = open_channel()  # a target without TLS that is not local is refused here, before connecting
    started, t0 = _now(), time.monotonic()
    try:
        out.mkdir(parents=True, exist_ok=True)
        stub = pb_grpc.InferenceStub(channel)
        info, adapter_info = await _target(stub, pb, args.model, args.adapter)
        _check_digest(info, args.expect_digest)
        print(
            f"eval: {args.model} ({info.digest}, release {info.release or '?'}), suite {suite.name}@{suite.version} "
            f"({len(suite.probes)} probes)",
            file=sys.stderr,
        )
        attempts = await run_suite(
            stub,
            pb,
            args.model,
            info.digest,
            suite,
            adapter=args.adapter,
            concurrency=args.concurrency,
            seed=args.seed,
            on_done=_progress,
        )
    except grpc.aio.AioRpcError as exc:
        raise EvalError(f"{exc.code().name}: {exc.details()}") from None
    finally:
        await channel.close()
    hits = {a.probe.id: a.hit for a in attempts}
    figures = family_figures(outcomes(attempts), policy.confidence)
    paired = paired_counts(parent, hits, {a.probe.id: a.probe.family for a in attempts}) if parent else None
    decision = decide(figures, policy, baseline=baseline_figures(baseline) if baseline else None, paired=paired)
    subjects = _subjects(info, adapter_info)
    summary = {
        "format": SUMMARY_FORMAT,
        "run_id": str(uuid.uuid4()),
        "started": started,
        "finished": _now(),
        "elapsed_s": round(time.monotonic() - t0, 2),
        "model": args.model,
        "adapter": args.adapter or "",
        "subjects": [{"name": n, "digest": d} for n, d in subjects],
        "suite": {"name": suite.name, "version": suite.version, "digest": suite.digest, "profile": args.profile},
        "canary_seed": canary_seed.hex(),
        "figures": figures_json(figures),
        "probe_hits": hits,
        "gate": {
            "policy_digest": policy.digest,
            "verdict": decision.verdict,
            "reasons": list(decision.failed_reasons),
            "baseline": (baseline or {}).get("subjects", []),
            "parent": (parent or {}).get("subjects", []),
            "families": decision.as_dict(),
        },
    }
    report_digest, _ = write_report(out, summary, attempts)
    for fam, f in figures.items():
        print(
            f"  {fam:<15} {f.hits:>4}/{f.n:<4} rate {f.rate:.3f}  95% CI [{f.ci_low:.3f}, {f.ci_high:.3f}]",
            file=sys.stderr,
        )
    for reason in decision.failed_reasons:
        print(f"  FAILED: {reason}", file=sys.stderr)
    if args.sign_key:
        from bastion.assurance.attestation import build_statement, sign_statement

        reference = parent or baseline
        statement = build_statement(
            decision=decision,
            model_name=subjects[0][0],
            model_digest=subjects[0][1],
            adapters=subjects[1:],
            suite_name=suite.name,
            suite_version=suite.version,
            suite_digest=suite.digest,
            report_digest=report_digest,
            evaluator=args.evaluator,
            started=summary["started"],
            finished=summary["finished"],
            baseline_digest=reference["subjects"][0]["digest"] if reference and reference.get("subjects") else None,
        )
        envelope = sign_statement(statement, Path(args.sign_key))
        att = out / "attestation.intoto.json"
        atomic_write(att, envelope, mode=0o644)
        if args.attestations_dir:
            dest = Path(args.attestations_dir)
            dest.mkdir(parents=True, exist_ok=True)
            name = f"{args.model}{'+' + args.adapter if args.adapter else ''}-{info.digest.split(':', 1)[1][:16]}-{suite.name}-{summary['run_id'][:8]}.intoto.json"
            atomic_write(dest / name, envelope, mode=0o644)
            print(f"eval: attestation placed in {dest / name}", file=sys.stderr)
    print(f"{decision.verdict}: {args.model} on {suite.name}@{suite.version}, report in {out}")
    return 0 if decision.verdict == "PASSED" else 1
