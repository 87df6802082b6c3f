"""docker-compose.yml is valid: `docker compose config` resolves it, without a docker engine."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tools.processes import REPO_ROOT


def _compose() -> list[str]:
    """The compose command: the docker plugin, else the standalone docker-compose."""
    if shutil.which("docker") is not None:
        plugin = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if plugin.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose") is not None:
        return ["docker-compose"]
    pytest.skip("neither the docker compose plugin nor docker-compose is installed")


def _config(*args: str) -> str:
    result = subprocess.run(
        [*_compose(), "-f", "docker-compose.yml", "config", *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    return result.stdout


def test_compose_file_is_valid() -> None:
    assert sorted(_config("--services").split()) == ["delivery-service", "mta-stub", "postgres"]
    resolved = _config()
    assert "pg_isready" in resolved
    assert "condition: service_healthy" in resolved
    assert "MTA_ADDRESS: mta-stub:50052" in resolved
    assert "DATABASE_URL: postgresql://delivery:delivery@postgres:5432/delivery" in resolved
