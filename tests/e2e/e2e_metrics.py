"""Reads the server's Prometheus endpoint."""

from __future__ import annotations

import re
import urllib.request


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m:
            key = m.group(1) + (m.group(2) or "")
            values[key] = float(m.group(3))
    return values


def gauge(url: str, name: str) -> float:
    vals = scrape(url)
    hits = [v for k, v in vals.items() if k == name or k.startswith(name + "{")]
    assert hits, f"metric {name} not exported; have {sorted(vals)[:20]}"
    return sum(hits)
