"""`flowtape record` runs the Kubernetes watcher beside the probes (kmock API on loopback).

- with --kubeconfig pointing at a kmock cluster: the tape has the probes' tables and k8s_pods rows;
- with --no-k8s (even with $KUBECONFIG set): no Kubernetes rows;
- a bad --kubeconfig: one line on stderr and a non-zero exit, before anything is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flowtape
from ebpf_support import ebpf_host, require_ebpf  # noqa: F401  (fixture)
from flowtape.errors import Exit
from kube_lab import KubeLab

FLOWTAPE = str(Path(sys.executable).with_name("flowtape"))


@pytest.fixture
def cluster(tmp_path):
    lab = KubeLab()
    now = time.time_ns()
    lab.create("nodes", {"metadata": {"name": "n1"}, "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"}]}}, now)
    for i in range(3):
        lab.create("pods", {"metadata": {"name": f"web-{i}", "namespace": "shop", "labels": {"app": "web"}},
                            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "app:1"}]},
                            "status": {"phase": "Running", "podIP": f"10.1.0.{i + 5}", "podIPs": [{"ip": f"10.1.0.{i + 5}"}]}}, now)
    yield lab, lab.kubeconfig(tmp_path / "kubeconfig")
    lab.close()


def record(tape: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [FLOWTAPE, "record", "-o", str(tape), "--interfaces", "lo", "--probes", "connections,l7", "--duration", "3", "--node", "n1", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, env={**os.environ, **(env or {})})


@pytest.mark.ebpf
@pytest.mark.slow
def test_record_with_probes_writes_k8s_pods(ebpf_host, cluster, tmp_path):  # noqa: F811
    _lab, kubeconfig = cluster
    p = record(tmp_path / "a.tape", "--kubeconfig", str(kubeconfig))
    assert p.returncode == 0, p.stderr
    assert "probes: connections, l7, k8s" in p.stderr
    tape = flowtape.open(str(tmp_path / "a.tape"))
    pods = tape.sql("select namespace, name from k8s_pods order by name").pl().to_dicts()
    assert pods == [{"namespace": "shop", "name": f"web-{i}"} for i in range(3)]
    m = json.loads((tmp_path / "a.tape" / "manifest.json").read_text())
    assert {"connections", "l7", "k8s"} <= set(m["probes"]) and m["complete"]


@pytest.mark.ebpf
@pytest.mark.slow
def test_no_k8s_writes_no_kubernetes_rows(ebpf_host, cluster, tmp_path):  # noqa: F811
    _lab, kubeconfig = cluster
    p = record(tmp_path / "b.tape", "--no-k8s", env={"KUBECONFIG": str(kubeconfig)})
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "b.tape" / "manifest.json").read_text())
    assert "k8s" not in m["probes"]
    assert not any(t.startswith("k8s_") and v.get("rows") for t, v in m["tables"].items())


def test_bad_kubeconfig_is_one_line_and_a_non_zero_exit(tmp_path):
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text("this: is: not: yaml: [")
    p = subprocess.run([FLOWTAPE, "record", "-o", str(tmp_path / "c.tape"), "--kubeconfig", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowtape: error: ") and str(bad) in lines[0], p.stderr
    assert not (tmp_path / "c.tape").exists()
    p = subprocess.run([FLOWTAPE, "record", "-o", str(tmp_path / "d.tape"), "--kubeconfig", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert p.returncode == Exit.BAD_INPUT and p.stderr.count("\n") == 1 and "no kubeconfig there" in p.stderr
