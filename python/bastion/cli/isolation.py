"""``bastion audit-isolation``: the prompt-cache isolation self-audit (``bastion.isolation.self_audit``)
against a live server, as two principals of different tenants.

The principal given with the usual client options is the victim (and, for the within-tenant run, also the
probe); ``--other-*`` names a principal of another tenant, the probe of the across-tenant run. Prints a
one-line verdict, writes the full report (every sample) as JSON with ``--out``. Exit 0: isolated and the
audit had power; 1: a leak, or no power (inconclusive).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bastion.config import load_settings


def add_parsers(sub: Any, client_args: Callable[[argparse.ArgumentParser], None]) -> None:
    a = sub.add_parser(
        "audit-isolation",
        help="self-audit prompt-cache isolation: time-to-first-token KS test within and across tenants",
    )
    client_args(a)
    a.add_argument("--other-api-key-file", help="API key of a principal in another tenant (the cross-tenant probe)")
    a.add_argument("--other-token-file", help="JWT of a principal in another tenant")
    a.add_argument("--other-client-cert", help="client certificate of a principal in another tenant (mutual TLS)")
    a.add_argument("--other-client-key", help="its key")
    a.add_argument("--model", help="served model name (default: the first listed)")
    a.add_argument("--samples", type=int, default=50, help="hit and miss samples per run (default 50)")
    a.add_argument("--prompt-words", type=int, default=300, help="words per prompt (about one token each; default 300)")
    a.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    a.add_argument("--seed", type=int, help="random seed for the prompts")
    a.add_argument("--out", help="write the JSON report here")


def commands(channel_for: Callable[[argparse.Namespace, Any], Any]) -> dict[str, Callable[[argparse.Namespace], int]]:
    def run(args: argparse.Namespace) -> int:
        from bastion.errors import ConfigError

        if not (args.other_api_key_file or args.other_token_file or args.other_client_cert):
            raise ConfigError(
                "audit-isolation needs a principal of another tenant (--other-api-key-file, "
                "--other-token-file or --other-client-cert/--other-client-key)"
            )
        if not 2 <= args.samples <= 10_000 or not 8 <= args.prompt_words <= 20_000 or not 0 < args.alpha < 1:
            raise ConfigError("--samples must be 2..10000, --prompt-words 8..20000, --alpha in (0, 1)")
        settings = load_settings(args.config)
        other = argparse.Namespace(
            **{
                **vars(args),
                "api_key_file": args.other_api_key_file,
                "token_file": args.other_token_file,
                "client_cert": args.other_client_cert or args.client_cert,
                "client_key": args.other_client_key or args.client_key,
            }
        )
        # grpc.aio channels belong to the event loop they are made in: make them inside it.
        return asyncio.run(_audit(args, lambda: channel_for(args, settings), lambda: channel_for(other, settings)))

    return {"audit-isolation": run}


async def _audit(args: argparse.Namespace, open_mine: Callable[[], Any], open_theirs: Callable[[], Any]) -> int:
    import grpc

    from bastion.cli import errors as cli_errors
    from bastion.isolation.self_audit import grpc_sender, needs_confirmation, run_audit, verdict
    from bastion.v1 import inference_pb2 as pb
    from bastion.v1 import inference_pb2_grpc as pb_grpc

    mine, theirs = open_mine(), open_theirs()
    try:
        victim_stub, other_stub = pb_grpc.InferenceStub(mine), pb_grpc.InferenceStub(theirs)
        model = args.model or (await victim_stub.ListModels(pb.ListModelsRequest(), timeout=10)).models[0].name
        victim, probe = grpc_sender(victim_stub, model, pb), grpc_sender(other_stub, model, pb)

        def progress(name: str) -> Callable[[int], None]:
            return lambda i: print(f"\r{name}: {i}/{args.samples}", end="", file=sys.stderr, flush=True)

        common = dict(samples=args.samples, prompt_words=args.prompt_words, alpha=args.alpha, seed=args.seed)
        within = await run_audit("within-tenant", victim, victim, on_sample=progress("within-tenant"), **common)
        print(file=sys.stderr)
        across = await run_audit("across-tenants", victim, probe, on_sample=progress("across-tenants"), **common)
        print(file=sys.stderr)
        confirm = None
        if needs_confirmation(across):  # a timing difference alone may be chance: a second audit, fresh prompts
            name = "across-tenants-confirmation"
            confirm = await run_audit(name, victim, probe, on_sample=progress(name), **common)
            print(file=sys.stderr)
    except grpc.aio.AioRpcError as exc:
        print(file=sys.stderr)  # ends the progress line
        return cli_errors.report(exc)
    finally:
        await mine.close()
        await theirs.close()
    passed, line = verdict(within, across, confirm)
    report = {
        "model": model,
        "passed": passed,
        "verdict": line,
        "within_tenant": within.summary(),
        "across_tenants": across.summary(),
        "across_tenants_confirmation": confirm.summary() if confirm is not None else None,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    for r in (within, across) + ((confirm,) if confirm is not None else ()):
        s = r.summary()
        print(
            f"{s['name']}: p={s['p_value']:.3g} KS={s['ks_statistic']} AUC={s['auc']} "
            f"median TTFT hit {s['median_ttft_hit_ms']} ms / miss {s['median_ttft_miss_ms']} ms, "
            f"cached tokens in hits up to {s['max_cached_prompt_tokens_hit']}"
        )
    print(line)
    return 0 if passed else 1
