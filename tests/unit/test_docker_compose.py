"""docker-compose.yml could face a network: read as YAML (no docker engine needed), it
holds no password, connects as least-privilege roles, publishes only the delivery
service and on 127.0.0.1 by default, serves TLS from mounted files, restarts, keeps the
stub's spool on a volume, pins its images, and leaves the stub's test controls off.
`docker compose config` checks it too where docker compose is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from delivery_service.config import Settings as ServiceSettings
from mta_stub.config import Settings as StubSettings
from tools.processes import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
SERVERS = ("delivery-service", "mta-stub")
ONE_SHOTS = ("secrets", "migrate")
# ${NAME:-default} as compose reads it, the default taken.
_DEFAULT = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment as a mapping"
    return {str(k): str(v) for k, v in env.items()}


def defaulted(text: str) -> str:
    return _DEFAULT.sub(lambda m: m.group(1), text)


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each volume's target: (source, options)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *options = defaulted(volume).split(":")
        out[target] = (source, ":".join(options))
    return out


def test_the_services(compose: dict[str, Any]) -> None:
    assert sorted(services(compose)) == sorted(("postgres", *ONE_SHOTS, *SERVERS))


def test_no_password_is_in_the_file(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    assert "delivery:delivery@" not in text
    for name, service in services(compose).items():
        for key, value in environment(service).items():
            if "PASSWORD" in key:
                assert key.endswith("_FILE"), f"{name}: {key} holds a password"
            if value.startswith("postgresql://"):
                assert urlsplit(value).password is None, f"{name}: {key} holds a password"
    postgres = environment(services(compose)["postgres"])
    assert postgres["POSTGRES_PASSWORD_FILE"].startswith("/run/secrets/")


def test_the_services_connect_as_least_privilege_roles(compose: dict[str, Any]) -> None:
    found = services(compose)
    service, migrate = environment(found["delivery-service"]), environment(found["migrate"])
    assert urlsplit(service["DATABASE_URL"]).username == "delivery_app"
    assert urlsplit(migrate["DATABASE_URL"]).username == "delivery_owner"
    assert service["DATABASE_MIGRATE"] == "false"
    # Each reads its own password file only.
    assert service["PGPASSFILE"].startswith("/run/secrets/runtime/")
    assert migrate["PGPASSFILE"].startswith("/run/secrets/owner/")
    assert "/run/secrets/owner" not in mounts(found["delivery-service"])
    assert "/run/secrets/db" not in mounts(found["delivery-service"])
    depends = found["delivery-service"]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    # The roles are made by the init script (tried on a real PostgreSQL in
    # tests/security/test_least_privilege.py): the runtime one with DML only.
    assert mounts(found["postgres"])["/docker-entrypoint-initdb.d"] == ("./docker/initdb", "ro")


def test_only_the_delivery_service_is_published_and_on_loopback(compose: dict[str, Any]) -> None:
    published = {name: s["ports"] for name, s in services(compose).items() if "ports" in s}
    assert list(published) == ["delivery-service"]
    (port,) = published["delivery-service"]
    assert defaulted(port) == "127.0.0.1:50051:50051"
    assert port.startswith("${DELIVERY_PUBLISH:-"), "configurable"


def test_both_servers_serve_tls_from_mounted_files(compose: dict[str, Any]) -> None:
    found = services(compose)
    stub, service = environment(found["mta-stub"]), environment(found["delivery-service"])
    wanted = {
        "mta-stub": [stub[k] for k in ("MTA_TLS_CERT", "MTA_TLS_KEY", "MTA_TLS_CLIENT_CA")],
        "delivery-service": [
            service[k]
            for k in (
                *("DELIVERY_TLS_CERT", "DELIVERY_TLS_KEY"),
                *("MTA_CA", "MTA_CLIENT_CERT", "MTA_CLIENT_KEY"),
            )
        ],
    }
    for name, files in wanted.items():
        mounted = mounts(found[name])
        for path in files:
            source, options = mounted[path]
            assert source.startswith("./tls/") and options == "ro", (name, path)
        assert "--insecure" not in found[name]["command"]
        assert "INSECURE" not in " ".join(environment(found[name]))
    assert service["MTA_ADDRESS"] == "mta-stub:50052"


def test_restart_policies(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        expected = "no" if name in ONE_SHOTS else "unless-stopped"
        assert service["restart"] == expected, name


def test_the_stub_spools_to_a_volume_with_its_test_controls_off(compose: dict[str, Any]) -> None:
    stub = services(compose)["mta-stub"]
    env = environment(stub)
    spool = env["MTA_SPOOL"]
    (target,) = [t for t in mounts(stub) if spool.startswith(t + "/")]
    assert mounts(stub)[target][0] in compose["volumes"]
    assert env.get("MTA_TEST_CONTROLS", "false") == "false"
    assert "--test-controls" not in stub["command"]


def pinned(image: str) -> bool:
    return re.search(r":\d+(\.\d+)+", image) is not None


def test_images_are_pinned_by_version(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        assert pinned(service["image"]), f"{name}: {service['image']} is not pinned"


def test_the_image_is_built_on_a_pinned_base() -> None:
    dockerfile = REPO_ROOT / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("no Dockerfile here (make mutate runs tests/unit in a copy without it)")
    bases = re.findall(r"^FROM (\S+)", dockerfile.read_text(encoding="utf-8"), re.MULTILINE)
    assert bases and all(pinned(base) for base in bases), bases


def test_every_variable_is_a_setting_of_its_server(compose: dict[str, Any]) -> None:
    known = {
        "delivery-service": {*ServiceSettings.variables(), "PGPASSFILE"},
        "migrate": {"DATABASE_URL", "PGPASSFILE"},
        "mta-stub": set(StubSettings.variables()),
    }
    for name, variables in known.items():
        unknown = set(environment(services(compose)[name])) - variables
        assert not unknown, f"{name}: {sorted(unknown)} are no settings"


def test_every_server_is_health_checked(compose: dict[str, Any]) -> None:
    for name in (*SERVERS, "postgres"):
        assert "healthcheck" in services(compose)[name], name


def _compose_command() -> list[str]:
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


def test_compose_resolves_the_file() -> None:
    result = subprocess.run(
        [*_compose_command(), "-f", "docker-compose.yml", "config", "--services"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"compose config failed:\n{result.stderr}"
    assert sorted(result.stdout.split()) == sorted(("postgres", *ONE_SHOTS, *SERVERS))
