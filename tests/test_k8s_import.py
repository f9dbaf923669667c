"""`flowtape import kubectl` on dumps as kubectl prints them, and the `k8s record` command."""

from __future__ import annotations

import json
import threading

import flowtape
from flowtape.writer import TapeWriter

S = 1_000_000_000
W0, W1 = 1_767_225_600 * S, 1_767_225_900 * S  # the tape's window


def tape_without_k8s(path):
    with TapeWriter(path, node="n1") as w:
        w.set_window(W0, W1)
        w.append("tls", [{"ts": W0 + S, "client_ip": "10.1.0.5", "client_port": 40000, "server_ip": "10.96.0.10", "server_port": 443, "version": "TLS 1.3"}])
    return path


def kubectl_list(*items):
    # `kubectl get ... -o json` prints a List with items, indented, with an empty resourceVersion.
    return json.dumps({"apiVersion": "v1", "items": list(items), "kind": "List", "metadata": {"resourceVersion": ""}}, indent=4) + "\n"


POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web-7d4b9c-x2x", "namespace": "shop", "uid": "5f1d6c0e-0000-4000-8000-000000000001", "resourceVersion": "48213",
                 "creationTimestamp": "2025-12-31T23:00:00Z", "labels": {"app": "web", "pod-template-hash": "7d4b9c"},
                 "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-12-31T22:59:00Z", "secret-ish": "do-not-store"},
                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c", "uid": "rs-1", "controller": True, "blockOwnerDeletion": True}]},
    "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "registry.example/web:3", "env": [{"name": "TOKEN", "value": "s3cr3t"}]}]},
    "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}],
               "containerStatuses": [{"name": "app", "containerID": "containerd://abc123", "image": "registry.example/web:3", "ready": True}]},
}
LATE_POD = {**POD, "metadata": {**POD["metadata"], "name": "web-7d4b9c-late", "uid": "5f1d6c0e-0000-4000-8000-000000000002",
                                "creationTimestamp": "2026-01-01T00:02:00Z"}}
RS = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-7d4b9c", "namespace": "shop", "uid": "rs-1",
      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web-frontend", "uid": "d-1", "controller": True}]}}
SVC = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop", "uid": "svc-1", "creationTimestamp": "2025-06-01T00:00:00Z"},
       "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"port": 443, "protocol": "TCP", "targetPort": "https"}], "selector": {"app": "web"}}}
SECRET = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "shop", "uid": "sec-1"}, "data": {"password": "aHVudGVyMg=="}}


def test_import_kubectl_versions_cover_the_tape_window(tmp_path, cli):
    tape_path = tape_without_k8s(tmp_path / "t.tape")
    d1 = tmp_path / "pods.json"
    d1.write_text(kubectl_list(POD, LATE_POD, RS, SECRET))
    d2 = tmp_path / "svc.json"
    d2.write_text(kubectl_list(SVC))
    r = cli("import", "kubectl", d1, d2, "--into", tape_path)
    assert (r.code, r.err) == (0, "")
    assert r.out == f"imported 2 k8s_pods, 1 k8s_services into {tape_path}; skipped 1 Secret\n"

    tape = flowtape.open(tape_path)
    assert tape.problems == []
    got = tape.sql("select name, workload_kind, workload_name, ips, containers, epoch_ns(valid_from), valid_to, observed_at_start, resource_version "
                   "from k8s_pods order by name").fetchall()
    assert got == [
        ("web-7d4b9c-late", "Deployment", "web-frontend", ["10.1.0.5"], [{"name": "app", "image": "registry.example/web:3", "container_id": "abc123"}],
         W0 + 120 * S, None, True, "48213"),  # created inside the window: valid from its creation
        ("web-7d4b9c-x2x", "Deployment", "web-frontend", ["10.1.0.5"], [{"name": "app", "image": "registry.example/web:3", "container_id": "abc123"}],
         W0, None, True, "48213"),
    ]
    assert tape.sql("select name, epoch_ns(valid_from), cluster_ips from k8s_services").fetchall() == [("web", W0, ["10.96.0.10"])]
    # Neither the Secret, annotations nor env values reach the tape.
    blob = b"".join(p.read_bytes() for p in tape_path.rglob("*.parquet"))
    assert b"aHVudGVyMg" not in blob and b"s3cr3t" not in blob and b"do-not-store" not in blob
    assert tape.manifest["window"] == {"start_ns": W0, "end_ns": W1}
    assert tape.manifest["extra"]["kubectl_import"][0]["rows"] == {"k8s_pods": 2, "k8s_services": 1}


def test_import_kubectl_malformed_dumps_write_nothing(tmp_path, cli):
    tape_path = tape_without_k8s(tmp_path / "t.tape")
    before = {p: p.read_bytes() for p in tape_path.rglob("*") if p.is_file()}
    good = tmp_path / "good.json"
    good.write_text(kubectl_list(POD))
    cases = {
        "truncated.json": (kubectl_list(POD)[:200], "not JSON (line "),
        "table.txt": ("NAME   READY   STATUS\nweb    1/1     Running\n", "not JSON (line 1 column 1: Expecting value)"),
        "status.json": (json.dumps({"kind": "Status", "status": "Failure", "message": "forbidden"}), "expected `kubectl get ... -o json` output (kind List with items), got kind 'Status'"),
        "nouid.json": (kubectl_list({**POD, "metadata": {**POD["metadata"], "uid": None}}), "item 0 (Pod web-7d4b9c-x2x) has no metadata.uid"),
        "array.json": ("[]", "expected a JSON object (a List with items), got list"),
    }
    for name, (text, message) in cases.items():
        bad = tmp_path / name
        bad.write_text(text)
        r = cli("import", "kubectl", good, bad, "--into", tape_path)
        assert r.code == 3, name
        assert r.out == ""
        assert r.err.count("\n") == 1 and r.err.startswith(f"flowtape: error: {bad}: "), r.err
        assert message in r.err, r.err
    after = {p: p.read_bytes() for p in tape_path.rglob("*") if p.is_file()}
    assert after == before  # nothing written, manifest untouched

    r = cli("import", "kubectl", good, "--into", tmp_path / "missing.tape")
    assert r.code == 3 and r.err.count("\n") == 1


def test_k8s_record_command_and_config_errors(tmp_path, cli):
    from kube_lab import KubeLab

    from flowtape.capture.k8s.cli import record

    lab = KubeLab()
    try:
        lab.create("pods", {"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"podIP": "10.1.0.1"}}, W0)
        kubeconfig = lab.kubeconfig(tmp_path / "kubeconfig")
        r = cli("k8s", "record", "-o", tmp_path / "a.tape", "--duration", "200ms", "--kubeconfig", kubeconfig, "--node", "rec-1")
        assert r.code == 0, r.err
        assert r.out.startswith("recorded 1 k8s rows (")
        tape = flowtape.open(tmp_path / "a.tape")
        assert tape.sql("select name, epoch_ns(valid_from), valid_to, observed_at_start, node from k8s_pods").fetchall() == [("p", W0, None, True, "rec-1")]
        assert tape.manifest["complete"] and tape.manifest["probes"]["k8s"]["api"] == lab.configuration.host
        # The library call used by `flowtape record` stops on an event as well.
        stop = threading.Event()
        stop.set()
        assert record(tmp_path / "b.tape", None, kubeconfig, "lab", False, "rec-1", stop=stop)["open_versions"] == 1
    finally:
        lab.close()

    r = cli("k8s", "record", "-o", tmp_path / "c.tape", "--duration", "1s", "--kubeconfig", kubeconfig)  # server gone now
    assert r.code == 3 and r.err.count("\n") == 1 and "Kubernetes API unreachable (connection:" in r.err
    assert not (tmp_path / "c.tape").exists()  # no empty tape left behind

    bad = tmp_path / "bad-kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    r = cli("k8s", "record", "-o", tmp_path / "d.tape", "--kubeconfig", bad)
    assert r.code == 3 and r.err.count("\n") == 1 and r.err.startswith(f"flowtape: error: {bad}: ")
    r = cli("k8s", "record", "-o", tmp_path / "d.tape", "--kubeconfig", tmp_path / "nope")
    assert r.err == f"flowtape: error: {tmp_path / 'nope'}: no kubeconfig there; pass --kubeconfig, --in-cluster or --no-k8s\n"
    r = cli("k8s", "record", "-o", tmp_path / "d.tape", "--kubeconfig", kubeconfig, "--context", "prod")
    assert r.code == 3 and r.err.count("\n") == 1 and "prod" in r.err
    r = cli("k8s", "record", "-o", tmp_path / "d.tape", "--kubeconfig", kubeconfig, "--duration", "soon")
    assert r.code == 2 and "--duration 'soon'" in r.err
    assert not (tmp_path / "d.tape").exists()
