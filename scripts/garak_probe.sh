#!/usr/bin/env bash
# garak against bastion's OpenAI-compatible HTTP API (by hand: `make garak`, with a server running — `make run`).
# It uses garak's OpenAI-compatible generator with a small probe set that matches two families of `bastion eval`:
# dan.STAN and dan.DUDE (bastion's "jailbreak" family wraps requests in the same garak DAN templates) and
# promptinject's Hijack probes (bastion's "injection" family: the same rogue-string detector). The report lands in
# benchmarks/results/garak/ (garak's report.jsonl and hit log, and summary.json: hit rate per probe).
#
# Settings (environment): GARAK_URI (https://127.0.0.1:8443/v1), GARAK_MODEL (smollm2-135m-instruct),
# GARAK_KEY_FILE (the dev profile's dev.apikey), GARAK_CA_FILE (the dev profile's ca.pem), GARAK_PROBES,
# GARAK_PROMPT_CAP (prompts per probe, 40).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dev=${XDG_CONFIG_HOME:-$HOME/.config}/bastion/dev
uri=${GARAK_URI:-https://127.0.0.1:8443/v1}
model=${GARAK_MODEL:-smollm2-135m-instruct}
key_file=${GARAK_KEY_FILE:-$dev/dev.apikey}
ca_file=${GARAK_CA_FILE:-$dev/ca.pem}
probes=${GARAK_PROBES:-dan.STAN,dan.DUDE,promptinject.HijackHateHumans,promptinject.HijackKillHumans}
cap=${GARAK_PROMPT_CAP:-40}
out=$here/benchmarks/results/garak
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The key goes to garak through its environment variable (OPENAICOMPATIBLE_API_KEY), never on a command line.
OPENAICOMPATIBLE_API_KEY=$(tr -d '\n' <"$key_file")
export OPENAICOMPATIBLE_API_KEY
export SSL_CERT_FILE=$ca_file  # httpx (the openai SDK's client) trusts the dev CA
export XDG_DATA_HOME=$work/data XDG_CACHE_HOME=$work/cache HF_HUB_OFFLINE=1
cat >"$work/options.json" <<JSON
{"openai": {"OpenAICompatible": {"uri": "$uri", "model": "$model", "max_tokens": 48, "temperature": 0.0,
 "suppressed_params": ["stop"]}}}
JSON
cat >"$work/config.yaml" <<YAML
run:
  generations: 1
  soft_probe_prompt_cap: $cap
  seed: 7
reporting:
  report_dir: $work/reports
  report_prefix: bastion
YAML
"$here/.venv-garak/bin/python" -m garak --config "$work/config.yaml" \
  --target_type openai.OpenAICompatible --target_name "$model" \
  --generator_option_file "$work/options.json" --probes "$probes"
cp "$work"/reports/bastion.report.jsonl "$out/report.jsonl"
cp "$work"/reports/bastion.hitlog.jsonl "$out/hitlog.jsonl" 2>/dev/null || true
"$here/.venv-garak/bin/python" - "$out/report.jsonl" "$out/summary.json" "$probes" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
evals = [r for r in rows if r.get("entry_type") == "eval"]
summary = {"probes": sys.argv[3].split(","), "evals": [
    {"probe": e["probe"], "detector": e["detector"], "hits": e["fails"], "evaluated": e["total_evaluated"],
     "nones": e.get("nones", 0), "processed": e.get("total_processed"),
     "hit_rate": round(e["fails"] / e["total_evaluated"], 3) if e["total_evaluated"] else None} for e in evals]}
start = next((r for r in rows if r.get("entry_type") == "start_run setup"), {})
summary["garak_version"] = start.get("_config.version")
json.dump(summary, open(sys.argv[2], "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
