"""The Kubernetes manifests in deploy/ (deploy/README.md).

Every document is validated against the Kubernetes API schemas that `kubernetes-validate`
ships (no network, no cluster), strictly: a field the API does not know is an error. Then
what the deployment promises is checked by reading the YAML: three replicas of the service
behind gRPC health probes, a disruption budget, resources, a termination grace longer than
the drain, least-privilege pods, one pinned image, the migration Job as the owner role and
the pods as the runtime one, secrets only as placeholders, the stub's spool on a claim with
its test controls off, and network policies that let only the service reach the stub.
"""

from __future__ import annotations

import base64
import dataclasses
import posixpath
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pydantic
import pytest

# types-PyYAML may or may not be installed: typed with it, Any without.
import yaml  # type: ignore[import-untyped, unused-ignore]
from delivery.v1 import delivery_service_pb2
from mta.v1 import mta_service_pb2

from delivery_service.config import Settings as DeliverySettings
from grpc_common.settings import ServerSettings
from mta_stub.config import Settings as StubSettings
from tools.processes import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"

# Copies of the tests without deploy/ (mutmut's) have nothing to check here.
pytestmark = pytest.mark.skipif(not DEPLOY.is_dir(), reason="no deploy/ beside the tests")

# The oldest Kubernetes the manifests are written for (unhealthyPodEvictionPolicy is GA
# from 1.31) and the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")

NAMESPACE = "campaign-delivery"
SERVICE = "delivery-service"
STUB = "mta-stub"
SERVICE_HEALTH_NAME = delivery_service_pb2.DESCRIPTOR.services_by_name["DeliveryService"].full_name
STUB_HEALTH_NAME = mta_service_pb2.DESCRIPTOR.services_by_name["MtaService"].full_name

# On SIGTERM, after the calls' grace, the service gives the feedback being applied up to
# this long to be committed and acknowledged (delivery_service/server.py, App.close).
FEEDBACK_DRAIN_SECONDS = 5.0

# What a Secret in deploy/ may hold: placeholders, never a credential.
PLACEHOLDER = "REPLACE-ME"

Doc = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Manifest:
    path: Path
    doc: Doc

    @property
    def kind(self) -> str:
        return str(self.doc["kind"])

    @property
    def name(self) -> str:
        return str(self.doc["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.relative_to(DEPLOY)}:{self.kind}/{self.name}"


def _manifests() -> list[Manifest]:
    if not DEPLOY.is_dir():
        return []
    files = sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")
    return [
        Manifest(path, doc)
        for path in files
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc is not None
    ]


MANIFESTS = _manifests()


def _of_kind(kind: str) -> list[Doc]:
    return [m.doc for m in MANIFESTS if m.kind == kind]


def _one(kind: str, name: str) -> Doc:
    found = [doc for doc in _of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/, found {len(found)}"
    return found[0]


def _workloads() -> Iterator[tuple[str, Doc]]:
    """Every object with a pod template, with its pod spec."""
    for kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        for doc in _of_kind(kind):
            yield f"{kind}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def _containers(pod: Doc) -> list[Doc]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _program(container: Doc) -> str:
    """Which of the image's programs a container runs: the module after `-m`."""
    command = [*container.get("command", []), *container.get("args", [])]
    return command[command.index("-m") + 1]


@dataclasses.dataclass(frozen=True)
class FromSecret:
    secret: str
    key: str


def _environment(container: Doc) -> dict[str, str | FromSecret]:
    """The container's environment variables, ConfigMaps resolved; Secrets named."""
    env: dict[str, str | FromSecret] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, "settings come from ConfigMaps, secrets one by one"
        env.update(_one("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = FromSecret(ref["name"], ref["key"])
    return env


def _matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects these labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _deployment(name: str) -> tuple[Doc, Doc, Doc]:
    """A Deployment, its pod spec and its one container."""
    deployment = _one("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return deployment, pod, container


def _pod_labels(name: str) -> dict[str, str]:
    labels: dict[str, str] = _one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
    return labels


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def _quantity(value: str | int | float) -> float:
    match = _QUANTITY.match(str(value))
    assert match, f"not a quantity this test reads: {value!r}"
    return float(match[1]) * _FACTORS[match[2]]


# The schemas --------------------------------------------------------------------------


def test_deploy_holds_the_expected_objects() -> None:
    kinds = {m.kind for m in MANIFESTS}
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Job",
        "PersistentVolumeClaim",
        "NetworkPolicy",
    } <= kinds
    names = [(m.kind, m.name) for m in MANIFESTS]
    assert len(names) == len(set(names)), "an object is defined twice"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=str)
def test_valid_against_the_kubernetes_schemas(manifest: Manifest, version: str) -> None:
    try:
        kubernetes_validate.validate(manifest.doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(step) for step in exc.path)
        message = f"{manifest} against Kubernetes {version}: {exc.message} at {where}"
        pytest.fail(message, pytrace=False)


def test_the_validator_refuses_an_unknown_field() -> None:
    """Strict really is strict: a misspelled field is an error, not ignored."""
    deployment = _one("Deployment", SERVICE)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_and_no_secret() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    files = {p.relative_to(DEPLOY).as_posix() for p in (DEPLOY / "manifests").glob("*.yaml")}
    assert listed == files
    # Applying the manifests must never replace real credentials with placeholders.
    applied = [m for m in MANIFESTS if m.path.relative_to(DEPLOY).as_posix() in listed]
    assert not [str(m) for m in applied if m.kind == "Secret"]


def test_kustomize_renders_the_manifests() -> None:
    """`kubectl apply -k deploy/` sees what the files hold (kustomize runs offline)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(result.stdout)}
    expected = {(m.kind, m.name) for m in MANIFESTS if m.path.parent.name == "manifests"}
    assert rendered == expected


# What the deployment promises -----------------------------------------------------------


def test_everything_is_in_one_restricted_namespace() -> None:
    (namespace,) = _of_kind("Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    elsewhere = [
        str(m)
        for m in MANIFESTS
        if m.kind != "Namespace" and m.doc["metadata"].get("namespace") != NAMESPACE
    ]
    assert not elsewhere


def test_three_replicas_rolled_one_at_a_time() -> None:
    deployment, _, _ = _deployment(SERVICE)
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}


@pytest.mark.parametrize(
    ("name", "health_name", "health_port_setting"),
    [
        (SERVICE, SERVICE_HEALTH_NAME, "DELIVERY_HEALTH_PORT"),
        (STUB, STUB_HEALTH_NAME, "MTA_HEALTH_PORT"),
    ],
)
def test_probes_ask_the_grpc_health_service(
    name: str, health_name: str, health_port_setting: str
) -> None:
    _, _, container = _deployment(name)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    health_port = int(str(_environment(container)[health_port_setting]))
    assert ports["health"] == health_port
    probes = {kind: container[kind] for kind in container if kind.endswith("Probe")}
    assert {"readinessProbe", "livenessProbe"} <= set(probes)
    for kind, probe in probes.items():
        assert set(probe) & {"grpc", "exec", "httpGet", "tcpSocket"} == {"grpc"}, kind
        # The kubelet's gRPC probe speaks plaintext: the health-only port, not the TLS one.
        assert probe["grpc"]["port"] == health_port, kind
    assert probes["readinessProbe"]["grpc"]["service"] == health_name
    assert probes["livenessProbe"]["grpc"].get("service", "") == ""


def test_termination_grace_outlasts_the_drain() -> None:
    _, pod, container = _deployment(SERVICE)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop > 0, "endpoints are removed before SIGTERM"
    env = _environment(container)
    grace = float(
        str(env.get("SHUTDOWN_GRACE_SECONDS", DeliverySettings.model_fields["grace"].default))
    )
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace + FEEDBACK_DRAIN_SECONDS

    _, stub_pod, stub = _deployment(STUB)
    stub_grace = float(
        str(_environment(stub).get("MTA_GRACE_SECONDS", StubSettings.model_fields["grace"].default))
    )
    assert stub_pod["terminationGracePeriodSeconds"] > stub_grace


def test_a_disruption_budget_keeps_two_replicas() -> None:
    deployment, _, _ = _deployment(SERVICE)
    labels = _pod_labels(SERVICE)
    budgets = [
        b for b in _of_kind("PodDisruptionBudget") if _matches(b["spec"]["selector"], labels)
    ]
    assert len(budgets) == 1
    spec = budgets[0]["spec"]
    replicas = deployment["spec"]["replicas"]
    if "maxUnavailable" in spec:
        assert spec["maxUnavailable"] == 1
    else:
        assert 1 <= spec["minAvailable"] <= replicas - 1


def test_replicas_are_spread_over_nodes() -> None:
    _, pod, _ = _deployment(SERVICE)
    labels = _pod_labels(SERVICE)
    spread = [
        c
        for c in pod.get("topologySpreadConstraints", [])
        if c["topologyKey"] == "kubernetes.io/hostname"
        and c["whenUnsatisfiable"] == "DoNotSchedule"
        and _matches(c["labelSelector"], labels)
    ]
    assert spread and spread[0]["maxSkew"] == 1


@pytest.mark.parametrize("workload", [w for w, _ in _workloads()])
def test_every_container_has_requests_and_limits(workload: str) -> None:
    pod = dict(_workloads())[workload]
    for container in _containers(pod):
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request = _quantity(resources["requests"][resource])
            limit = _quantity(resources["limits"][resource])
            assert 0 < request <= limit, (container["name"], resource)
    if workload == f"Deployment/{SERVICE}":
        (container,) = pod["containers"]
        # It runs at 60-130 MB resident under load.
        assert _quantity(container["resources"]["limits"]["memory"]) >= 256 * 2**20


@pytest.mark.parametrize("workload", [w for w, _ in _workloads()])
def test_pods_run_with_least_privilege(workload: str) -> None:
    pod = dict(_workloads())[workload]
    assert pod["automountServiceAccountToken"] is False
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context.get("runAsUser", 1) != 0
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    for container in _containers(pod):
        own = container["securityContext"]
        assert own["allowPrivilegeEscalation"] is False, container["name"]
        assert own["readOnlyRootFilesystem"] is True, container["name"]
        assert own["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "add" not in own["capabilities"], container["name"]


def test_one_image_pinned_to_the_project_version() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = pyproject["project"]["version"]
    for workload, pod in _workloads():
        for container in _containers(pod):
            assert container["image"] == f"campaign-delivery:{version}", workload
            assert container["imagePullPolicy"] == "IfNotPresent", workload
    # A Job's pod template cannot change: a new version is a new Job.
    (job,) = _of_kind("Job")
    assert job["metadata"]["name"].endswith("v" + version.replace(".", "-"))


def test_migrations_run_as_the_owner_and_the_service_as_the_runtime_role() -> None:
    (job,) = _of_kind("Job")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    assert migrate["command"] == ["python", "-m", "delivery_service", "migrate"]
    owner = _environment(migrate)["DATABASE_URL"]
    _, _, service = _deployment(SERVICE)
    env = _environment(service)
    runtime = env["DATABASE_URL"]
    assert isinstance(owner, FromSecret) and isinstance(runtime, FromSecret)
    assert owner.secret != runtime.secret
    # The runtime role may not change the schema: the service must not try at start.
    assert pydantic.TypeAdapter(bool).validate_python(env["DATABASE_MIGRATE"]) is False


@pytest.mark.parametrize("workload", [w for w, _ in _workloads()])
def test_settings_are_the_programs_own(workload: str) -> None:
    """Every variable a container gets is a setting of the program it runs (or one the
    programs are about to declare), so that a misspelled name cannot go unnoticed."""
    pod = dict(_workloads())[workload]
    for container in _containers(pod):
        program = _program(container)
        env = set(_environment(container))
        if container.get("command", [])[-1:] == ["migrate"]:
            assert env == {"DATABASE_URL"}
            continue
        declared = {
            "delivery_service": DeliverySettings.variables(),
            "mta_stub": StubSettings.variables(),
        }[program]
        unknown = env - set(declared)
        assert not unknown, f"{workload}: not settings of {program}: {sorted(unknown)}"


@pytest.mark.parametrize(
    ("name", "settings"), [(SERVICE, DeliverySettings), (STUB, StubSettings)], ids=[SERVICE, STUB]
)
def test_the_programs_accept_these_settings(name: str, settings: type[ServerSettings]) -> None:
    """The settings together pass the program's own checks (TLS files that go together,
    no plaintext beyond loopback), as they would at the pod's start."""
    _, _, container = _deployment(name)
    given = {
        variable: value if isinstance(value, str) else f"{value.secret}/{value.key}"
        for variable, value in _environment(container).items()
    }
    # Validated as given, without the environment of the test run.
    settings.model_validate(given)


def _secret_values(secret: Doc) -> Iterator[tuple[str, str]]:
    yield from secret.get("stringData", {}).items()
    for key, value in secret.get("data", {}).items():
        yield key, base64.b64decode(value).decode("utf-8", "replace")


_CREDENTIAL_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")
_SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|DATABASE_URL|PRIVATE")


def test_no_secret_in_clear() -> None:
    for secret in _of_kind("Secret"):
        for key, value in _secret_values(secret):
            assert PLACEHOLDER in value, f"Secret {secret['metadata']['name']}: {key}"
    for config in _of_kind("ConfigMap"):
        for key, value in config.get("data", {}).items():
            assert not _CREDENTIAL_IN_URL.search(value), f"ConfigMap: {key}"
            assert "PRIVATE KEY" not in value, f"ConfigMap: {key}"
            assert not _SECRET_NAME.search(key), f"ConfigMap: {key} belongs in a Secret"
    for workload, pod in _workloads():
        for container in _containers(pod):
            for name, given in _environment(container).items():
                if _SECRET_NAME.search(name):
                    assert isinstance(given, FromSecret), f"{workload}: {name} in clear"


@pytest.mark.parametrize("workload", [w for w, _ in _workloads()])
def test_secrets_and_files_are_mounted_where_the_settings_point(workload: str) -> None:
    """Every Secret a pod uses is described (with its keys) in secrets.example.yaml, and
    every file a setting names is in a mounted volume: a key of its Secret, or on its claim."""
    pod = dict(_workloads())[workload]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    secrets = {s["metadata"]["name"]: s for s in _of_kind("Secret")}

    def keys(name: str) -> set[str]:
        assert name in secrets, f"{workload}: Secret {name} is not in secrets.example.yaml"
        secret = secrets[name]
        return {*secret.get("stringData", {}), *secret.get("data", {})}

    for volume in volumes.values():
        if "secret" in volume:
            keys(volume["secret"]["secretName"])
    for container in _containers(pod):
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
        for name, value in _environment(container).items():
            if isinstance(value, FromSecret):
                assert value.key in keys(value.secret), f"{workload}: {name}"
                continue
            if not value.startswith("/"):
                continue
            folder, file = posixpath.split(value)
            assert folder in mounts, f"{workload}: {name}={value} is in no mounted volume"
            volume = mounts[folder]
            if "secret" in volume:
                assert file in keys(volume["secret"]["secretName"]), f"{workload}: {name}"
            else:
                assert "persistentVolumeClaim" in volume, f"{workload}: {name}"


def test_tls_material_comes_from_tls_secrets_and_a_ca_bundle() -> None:
    secrets = {s["metadata"]["name"]: s for s in _of_kind("Secret")}
    for name in (SERVICE, STUB):
        _, pod, _ = _deployment(name)
        mounted = [secrets[v["secret"]["secretName"]] for v in pod["volumes"] if "secret" in v]
        assert [s["type"] for s in mounted].count("kubernetes.io/tls") == 1, name
        assert any("ca.crt" in dict(_secret_values(s)) for s in mounted), name


def test_the_stub_keeps_its_spool_on_a_claim_and_its_test_controls_off() -> None:
    deployment, pod, container = _deployment(STUB)
    assert deployment["spec"]["replicas"] == 1
    # SQLite wants one writer: the old pod is gone before the new one opens the file.
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    env = _environment(container)
    spool = str(env["MTA_SPOOL"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == posixpath.dirname(spool)]
    claim = _one(
        "PersistentVolumeClaim", volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    )
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    controls = env.get("MTA_TEST_CONTROLS", "false")
    assert pydantic.TypeAdapter(bool).validate_python(controls) is False


def test_services_reach_the_pods_ports() -> None:
    for service in _of_kind("Service"):
        spec = service["spec"]
        workloads = [
            d
            for d in _of_kind("Deployment")
            if _matches(
                {"matchLabels": spec["selector"]}, d["spec"]["template"]["metadata"]["labels"]
            )
        ]
        assert len(workloads) == 1, service["metadata"]["name"]
        (container,) = workloads[0]["spec"]["template"]["spec"]["containers"]
        named = {p["name"] for p in container["ports"]}
        for port in spec["ports"]:
            assert port["targetPort"] in named, (service["metadata"]["name"], port)
    grpc = _one("Service", SERVICE)
    assert grpc["spec"]["type"] == "ClusterIP"
    assert any(p["targetPort"] == "grpc" for p in grpc["spec"]["ports"])


# NetworkPolicies ----------------------------------------------------------------------


def _policies_for(labels: Mapping[str, str], direction: str) -> list[Doc]:
    return [
        p["spec"]
        for p in _of_kind("NetworkPolicy")
        if _matches(p["spec"]["podSelector"], labels) and direction in p["spec"]["policyTypes"]
    ]


def _opens(entry: Mapping[str, Any], port: int) -> bool:
    """Whether a rule's port entry covers `port` (a named port is taken to: stricter)."""
    given = entry.get("port")
    if not isinstance(given, int):
        return True
    return given <= port <= entry.get("endPort", given)


def _rules(labels: Mapping[str, str], direction: str, port: int) -> list[Doc]:
    """The rules that open `port` (or every port) to or from the pods of these labels."""
    key = "ingress" if direction == "Ingress" else "egress"
    return [
        rule
        for spec in _policies_for(labels, direction)
        for rule in spec.get(key, [])
        if "ports" not in rule or any(_opens(entry, port) for entry in rule["ports"])
    ]


def _grpc_port(name: str) -> int:
    _, _, container = _deployment(name)
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == "grpc"]
    return int(port)


def test_everything_is_denied_unless_allowed() -> None:
    deny = [
        p["spec"]
        for p in _of_kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny


def test_only_the_service_reaches_the_stub() -> None:
    stub = _pod_labels(STUB)
    service = _pod_labels(SERVICE)
    rules = _rules(stub, "Ingress", _grpc_port(STUB))
    assert rules
    for rule in rules:
        assert rule.get("from"), "open to everyone"
        for peer in rule["from"]:
            assert set(peer) == {"podSelector"}, peer
            assert peer["podSelector"] != {} and _matches(peer["podSelector"], service), peer
    assert _rules(service, "Egress", _grpc_port(STUB))


def test_the_service_is_open_to_the_namespace_and_reaches_the_database() -> None:
    service = _pod_labels(SERVICE)
    assert any(
        {"podSelector": {}} in rule.get("from", [])
        for rule in _rules(service, "Ingress", _grpc_port(SERVICE))
    )
    (job,) = _of_kind("Job")
    for labels in (service, job["spec"]["template"]["metadata"]["labels"]):
        assert _rules(labels, "Egress", 5432), labels
