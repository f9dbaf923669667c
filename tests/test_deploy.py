"""The Kubernetes manifests (deploy/k8s, kustomize): built with `kubectl kustomize`, every object
loaded into the `kubernetes` client's models (a field the models do not know is a typo), applied
to kmock's API server and read back; the DaemonSet's command line is one `flowtape record`
accepts; the RBAC is exactly the one docs/k8s.md documents."""

from __future__ import annotations

import json
import re
import subprocess

import kmock
import kubernetes
import pytest
import typer.main
import yaml

from conftest import ROOT, require_tool
from flowtape.cli import app
from kube_lab import KubeLab

OVERLAYS = ["base", "incident"]
MODELS = {
    "Namespace": ("", "v1", "namespaces", False, "V1Namespace"),
    "ServiceAccount": ("", "v1", "serviceaccounts", True, "V1ServiceAccount"),
    "ConfigMap": ("", "v1", "configmaps", True, "V1ConfigMap"),
    "ClusterRole": ("rbac.authorization.k8s.io", "v1", "clusterroles", False, "V1ClusterRole"),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", False, "V1ClusterRoleBinding"),
    "DaemonSet": ("apps", "v1", "daemonsets", True, "V1DaemonSet"),
}
# the capabilities the recorder runs with (measured: tests/test_image.py runs the image with exactly these)
CAPABILITIES = ["BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]


def build(overlay: str) -> list[dict]:
    # kubectl is not in Debian 12's archive, so setup-host.sh cannot install it; machines of this
    # kind come with it (DESIGN.md), so under CI its absence fails rather than skips
    kubectl = require_tool(("kubectl",), "it builds the kustomize layout: kubectl kustomize",
                           installed_by="not in Debian 12's archive: machines of this kind come with it")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / overlay)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _strip_nulls(x):
    if isinstance(x, dict):
        return {k: _strip_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_strip_nulls(v) for v in x]
    return x


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_fits_the_client_models(overlay):
    api = kubernetes.client.ApiClient()
    docs = build(overlay)
    assert sorted(d["kind"] for d in docs) == sorted(MODELS)
    for doc in docs:
        model = api.deserialize(json.dumps(doc), MODELS[doc["kind"]][4], "application/json")
        back = _strip_nulls(api.sanitize_for_serialization(model))
        assert back == doc, f"{doc['kind']} {doc['metadata']['name']}: a field the API does not know (typo?)"


def daemonset(overlay: str) -> dict:
    return next(d for d in build(overlay) if d["kind"] == "DaemonSet")


def record_flags() -> set[str]:
    cmd = typer.main.get_command(app).commands["record"]
    return {o for p in cmd.params for o in p.opts}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_daemonset_command_line_is_one_flowtape_record_accepts(overlay):
    c = daemonset(overlay)["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][0] == "record"
    flags = record_flags()
    for arg in c["args"][1:]:
        assert arg.split("=", 1)[0] in flags, f"{overlay}: flowtape record has no {arg}"
    env = {e["name"]: e for e in c["env"]}
    for ref in re.findall(r"\$\((\w+)\)", " ".join(c["args"])):  # every $(VAR) is defined, or the kubelet leaves it verbatim
        assert ref in env or ref == "UPLOAD_URL", f"{overlay}: $({ref}) is not defined"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "--node=$(NODE_NAME)" in c["args"] and "--resume" in c["args"]
    if overlay == "incident":
        assert "--duration=$(DURATION)" in c["args"] and env["FLOWTAPE_ONCE"]["value"].endswith("$(NODE_NAME).done")


def test_daemonset_privileges_and_mounts():
    spec = daemonset("base")["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["hostPID"] is True and spec["serviceAccountName"] == "flowtape"
    c = spec["containers"][0]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": CAPABILITIES}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for path in ("/sys/fs/bpf", "/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/cgroup", "/lib/modules", "/usr/src", "/var/lib/flowtape"):
        assert host[mounts[path]["name"]] == path
    for ro in ("/sys/fs/cgroup", "/lib/modules", "/usr/src"):  # read-only unless written
        assert mounts[ro]["readOnly"] is True
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "400Mi"}, "limits": {"memory": "1Gi"}}


def test_rbac_is_the_documented_one():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in build("base")}
    block = re.search(r"## Minimal RBAC\n\n```yaml\n(.*?)```", (ROOT / "docs" / "k8s.md").read_text(), re.S).group(1)
    documented = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(block)}
    for key, doc in documented.items():
        got = docs[key]
        for field in ("rules", "roleRef", "subjects"):
            assert got.get(field) == doc.get(field), f"{key} {field}"
    verbs = {v for r in docs[("ClusterRole", "flowtape-k8s-reader")]["rules"] for v in r["verbs"]}
    assert verbs == {"get", "list", "watch"}
    assert not any("secrets" in r["resources"] or "configmaps" in r["resources"] for r in docs[("ClusterRole", "flowtape-k8s-reader")]["rules"])


@pytest.fixture
def lab():
    lab = KubeLab()
    for group, version, plural, namespaced, _ in MODELS.values():
        kind = next(k for k, v in MODELS.items() if v[2] == plural)
        lab.kmock.resources[kmock.resource(group, version, plural)] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, verbs={"get", "list", "watch", "create", "patch", "delete"})
    yield lab
    lab.close()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_apply_to_an_api_server_and_read_back(lab, overlay):
    for doc in build(overlay):
        if doc["kind"] == "Namespace":
            continue  # kmock reads /api/v1/namespaces as a namespace prefix, not a resource; loaded into its model above
        group, version, plural, namespaced, _ = MODELS[doc["kind"]]
        base = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        path = f"{base}/namespaces/{doc['metadata']['namespace']}/{plural}" if namespaced else f"{base}/{plural}"
        lab._call("POST", path, doc)
    apps = kubernetes.client.AppsV1Api(lab.api)
    ds = apps.read_namespaced_daemon_set("flowtape", "flowtape")
    pod = ds.spec.template.spec
    assert pod.host_network and pod.host_pid and pod.service_account_name == "flowtape"
    assert pod.containers[0].security_context.capabilities.add == CAPABILITIES
    assert [t.operator for t in pod.tolerations] == ["Exists"]
    rbac = kubernetes.client.RbacAuthorizationV1Api(lab.api)
    role = rbac.read_cluster_role("flowtape-k8s-reader")
    assert sorted(r for rule in role.rules for r in rule.resources) == ["endpointslices", "jobs", "nodes", "pods", "replicasets", "services"]
    binding = rbac.read_cluster_role_binding("flowtape-k8s-reader")
    assert [(s.kind, s.name, s.namespace) for s in binding.subjects] == [("ServiceAccount", "flowtape", "flowtape")]
    core = kubernetes.client.CoreV1Api(lab.api)
    assert core.read_namespaced_config_map("flowtape-upload", "flowtape").data["UPLOAD_URL"].startswith("s3://")
    assert core.read_namespaced_service_account("flowtape", "flowtape").metadata.name == "flowtape"
