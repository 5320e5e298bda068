"""docker-compose.yml stays valid and safe (no Docker engine runs here; `docker-compose config` needs none).

The resolved file is read with the YAML library docker-compose itself runs on (its own interpreter), so the
checks see exactly what Compose sees: health checks, start order, where secrets go, what is published.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: What .env would hold; each value must reach only the services that use it.
SECRETS = {
    "OPENAI_API_KEY": "sk-compose-check-key",
    "POSTGRES_PASSWORD": "compose-check-password",
    "FLOWER_BASIC_AUTH": "admin:compose-check-flower",
}
#: Services that run until stopped (migrate is one-shot, cli on demand).
LONG_RUNNING = {"redis", "postgres", "worker", "flower", "prometheus"}


def _tool() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (.ci/run installs it)")
        pytest.skip("docker-compose is not installed")
    return tool


def _compose(tool: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # An empty --env-file: a developer's own .env (real secrets) must not stand in for what the test sets.
    with tempfile.NamedTemporaryFile(suffix=".env") as empty:
        command = [tool, "-f", str(ROOT / "docker-compose.yml"), "--env-file", empty.name, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)


def _resolved(tool: str) -> dict[str, Any]:
    """`docker-compose config` with SECRETS set, parsed by docker-compose's own interpreter's YAML."""
    done = _compose(tool, {**_clean_env(), **SECRETS}, "config")
    assert done.returncode == 0, done.stderr
    python = Path(tool).read_text().splitlines()[0].removeprefix("#!").split()
    as_json = subprocess.run(
        [*python, "-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"],
        input=done.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 0, as_json.stderr
    parsed: dict[str, Any] = json.loads(as_json.stdout)
    return parsed


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("OPENAI_")}


def test_compose_file_parses_and_every_secret_is_required() -> None:
    tool = _tool()
    done = _compose(tool, {**_clean_env(), **SECRETS}, "config", "--services")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == LONG_RUNNING | {"migrate", "cli"}
    for name in SECRETS:
        missing = {**_clean_env(), **{k: v for k, v in SECRETS.items() if k != name}}
        done = _compose(tool, missing, "config", "-q")
        assert done.returncode != 0 and name in done.stderr, name


def test_nothing_secret_in_the_files_and_secrets_only_where_used() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "sk-" not in text and "POSTGRES_PASSWORD: pipeline" not in text
    services = _resolved(_tool())["services"]
    users = {
        "OPENAI_API_KEY": {"worker", "cli"},
        "POSTGRES_PASSWORD": {"postgres", "migrate", "worker", "cli"},
        "FLOWER_BASIC_AUTH": {"flower"},
    }
    for name, secret in SECRETS.items():
        holding = {s for s, config in services.items() if secret in json.dumps(config.get("environment", {}))}
        assert holding == users[name], name
        assert all(secret not in json.dumps(config.get("command", "")) for config in services.values())


def test_health_checks_start_order_one_image_and_loopback_ports() -> None:
    services = _resolved(_tool())["services"]
    for name in LONG_RUNNING:
        assert services[name].get("healthcheck", {}).get("test"), name
    for name, config in services.items():
        for dependency, how in config.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "migrate" else "service_healthy"
            assert how["condition"] == expected, (name, dependency)
    built = {name for name, config in services.items() if "build" in config}
    assert built == {"migrate"}
    assert {services[name]["image"] for name in ("migrate", "worker", "cli")} == {"pipeline-bulk:local"}
    for name, config in services.items():
        for port in config.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert set(services) - {name for name, config in services.items() if config.get("ports")} >= {
        "worker",
        "redis",
        "postgres",
    }
    assert any(volume.endswith(":/exports:rw") for volume in services["cli"]["volumes"])


def test_prometheus_scrapes_the_workers_metrics() -> None:
    services = _resolved(_tool())["services"]
    command = " ".join(services["worker"]["command"])
    assert "--metrics-port=9100" in command and "--metrics-host=0.0.0.0" in command
    config = (ROOT / "prometheus.yml").read_text()
    assert "names: [worker]" in config and "port: 9100" in config
    assert any(v.startswith(str(ROOT / "prometheus.yml")) for v in services["prometheus"]["volumes"])
