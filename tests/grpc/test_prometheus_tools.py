"""Issue 18: the Prometheus side of operations, checked with Prometheus's own tools (Debian ``prometheus`` and
``prometheus-blackbox-exporter``, which ``make test`` installs): ``promtool check metrics`` on the live
exposition, a real Prometheus scraping the TLS metrics listener (with and without a client certificate), and the
blackbox exporter's gRPC prober against the health listener, plain and TLS, as an operator would wire them."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from certs import make_pki
from grpc_harness import collect, make_settings, mtls_with_tls_health, prompt_request, running_server

from fakes import FakeEngine
from testkit.launcher import free_port


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, (
        f"{name} is needed (Debian prometheus / prometheus-blackbox-exporter; `make system-deps` installs them)"
    )
    return path


def _get(url: str, *, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=5, context=context) as r:
        return r.read().decode()


@contextmanager
def _daemon(args: list[str], log: Path, ready_url: str) -> Iterator[None]:
    """A Prometheus-family daemon, stopped on exit; waits until its own web endpoint answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 30
        while True:
            try:
                _get(ready_url)
                break
            except OSError:
                assert proc.poll() is None, f"{args[0]} exited: {log.read_text()[-2000:]}"
                assert time.monotonic() < end, f"{args[0]} did not answer: {log.read_text()[-2000:]}"
                time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_promtool_accepts_the_live_exposition(tmp_path: Path) -> None:
    promtool = _tool("promtool")
    settings = make_settings(metrics_listen="127.0.0.1:0")
    async with running_server([FakeEngine(token_delay=0.001)], settings=settings) as srv:
        await collect(srv.stub.Generate(prompt_request(max_tokens=4)))
        with pytest.raises(grpc.aio.AioRpcError):
            await collect(srv.stub.Generate(prompt_request(), metadata=(("authorization", "Bearer forged"),)))
        text = await asyncio.to_thread(_get, f"http://{srv.telemetry.metrics.http_address}/metrics")
    assert "bastion_auth_refusals_total{" in text and "bastion_time_to_first_token_seconds_bucket{" in text
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    # The lint does bite: the same exposition with a counter misnamed is refused.
    bad = text + "# HELP bastion_bad A counter without its suffix.\n# TYPE bastion_bad counter\nbastion_bad 1\n"
    check = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, text=True, timeout=30)
    assert check.returncode != 0 and "bastion_bad" in check.stdout + check.stderr


def _prom_query(port: int, query: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    reply = json.loads(_get(url))
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


async def test_a_real_prometheus_scrapes_the_tls_metrics_listener(tmp_path: Path) -> None:
    """Two scrape jobs against one TLS metrics listener that asks for client certificates: the one presenting a
    certificate the CA signed scrapes bastion's series (``up`` 1); the one without gets nothing (``up`` 0)."""
    prometheus = _tool("prometheus")
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    tls = {"cert_file": str(pki["server_cert"]), "key_file": str(pki["server_key"]), "client_ca_file": str(pki["ca"])}
    settings = make_settings(extra={"observability": {"metrics_listen": "127.0.0.1:0", "metrics_tls": tls}})
    async with running_server([FakeEngine(token_delay=0.001)], settings=settings) as srv:
        await collect(srv.stub.Generate(prompt_request(max_tokens=4)))
        target = srv.telemetry.metrics.http_address
        ca = pki["ca"]
        config = tmp_path / "prometheus.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "bastion",
                            "scheme": "https",
                            "tls_config": {
                                "ca_file": str(ca),
                                "cert_file": str(pki["client_cert"]),
                                "key_file": str(pki["client_key"]),
                            },
                            "static_configs": [{"targets": [target]}],
                        },
                        {
                            "job_name": "no-client-certificate",
                            "scheme": "https",
                            "tls_config": {"ca_file": str(ca)},
                            "static_configs": [{"targets": [target]}],
                        },
                    ],
                }
            )
        )
        port = free_port()
        args = [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with _daemon(args, tmp_path / "prometheus.log", f"http://127.0.0.1:{port}/-/ready"):
            end = time.monotonic() + 30
            while True:
                up = {r["metric"]["job"]: r["value"][1] for r in await asyncio.to_thread(_prom_query, port, "up")}
                scraped = await asyncio.to_thread(_prom_query, port, "bastion_time_to_first_token_seconds_count")
                if len(up) == 2 and scraped:
                    break
                assert time.monotonic() < end, f"no scrape within 30 s: up={up}"
                await asyncio.sleep(0.5)
    assert up == {"bastion": "1", "no-client-certificate": "0"}, up
    assert {r["metric"]["job"] for r in scraped} == {"bastion"}
    assert float(scraped[0]["value"][1]) >= 1


def _probe(port: int, module: str, target: str) -> dict[str, str]:
    text = _get(f"http://127.0.0.1:{port}/probe?" + urllib.parse.urlencode({"module": module, "target": target}))
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


@contextmanager
def _blackbox(tmp_path: Path, ca: Path) -> Iterator[int]:
    exporter = _tool("prometheus-blackbox-exporter")
    modules = {
        f"{name}_{service}": {
            "prober": "grpc",
            "timeout": "5s",
            "grpc": {"service": service, "preferred_ip_protocol": "ip4", **extra},
        }
        for service in ("liveness", "readiness")
        for name, extra in (
            ("plain", {}),
            ("tls", {"tls": True, "tls_config": {"ca_file": str(ca)}}),
            ("tls_wrong_ca", {"tls": True, "tls_config": {"ca_file": str(tmp_path / "other" / "ca.pem")}}),
        )
    }
    config = tmp_path / "blackbox.yml"
    config.write_text(json.dumps({"modules": modules}))
    port = free_port()
    args = [exporter, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    with _daemon(args, tmp_path / "blackbox.log", f"http://127.0.0.1:{port}/metrics"):
        yield port


async def test_the_blackbox_exporter_probes_liveness_and_readiness(tmp_path: Path) -> None:
    """The blackbox exporter's gRPC prober (``grpc.health.v1``): on a plain loopback health listener during an
    engine start (alive, not ready) and after; on a TLS health listener where the main listener requires client
    certificates (the prober presents none, as a kubelet); a prober that does not trust the server's CA fails."""
    (tmp_path / "pki").mkdir()
    (tmp_path / "other").mkdir()
    pki = make_pki(tmp_path / "pki")
    make_pki(tmp_path / "other", ca_name="other-ca")
    with _blackbox(tmp_path, pki["ca"]) as port:

        async def probe(module: str, target: str) -> dict[str, str]:
            return await asyncio.to_thread(_probe, port, module, target)

        engine = FakeEngine(ready=False)
        settings = make_settings(health={"listen": "127.0.0.1:0"})
        async with running_server([engine], settings=settings, wait_ready=False) as srv:
            assert srv.health_address is not None
            starting = {s: await probe(f"plain_{s}", srv.health_address) for s in ("liveness", "readiness")}
            engine.set_ready()
            await srv.wait_health(1, service="readiness")
            ready = await probe("plain_readiness", srv.health_address)
        assert starting["liveness"]["probe_success"] == "1"
        assert starting["readiness"]["probe_success"] == "0"
        assert starting["readiness"]['probe_grpc_healthcheck_response{serving_status="NOT_SERVING"}'] == "1"
        assert ready["probe_success"] == "1"
        assert ready['probe_grpc_healthcheck_response{serving_status="SERVING"}'] == "1"

        settings = mtls_with_tls_health(pki)
        # The harness's own channel has no client certificate for the main listener: readiness is awaited through
        # the prober itself.
        async with running_server([FakeEngine()], settings=settings, wait_ready=False) as srv:
            assert srv.health_address is not None
            end = time.monotonic() + 15
            while (await probe("tls_readiness", srv.health_address))["probe_success"] != "1":
                assert time.monotonic() < end, "the TLS readiness probe never succeeded"
                await asyncio.sleep(0.2)
            results = {m: await probe(m, srv.health_address) for m in ("tls_liveness", "tls_readiness")}
            wrong_ca = await probe("tls_wrong_ca_readiness", srv.health_address)
            plain = await probe("plain_readiness", srv.health_address)
    for module, result in results.items():
        assert result["probe_success"] == "1", (module, result)
        assert result["probe_ssl_earliest_cert_expiry"] != "0", (module, result)
    assert wrong_ca["probe_success"] == "0" and plain["probe_success"] == "0"
