"""The informer recorder against a real list/watch API server (kmock) through the official client.

Every test drives the watcher with a manual clock: each step sets 'now', makes a change through
the API, and waits until the watcher has applied it, so the intervals asserted are exact.
"""

from __future__ import annotations

import duckdb
import pytest

import flowtape
from flowtape.capture.k8s.watcher import KubeConfig, KubeWatcher, Timing
from flowtape.writer import TapeWriter

from kube_lab import KubeLab, ManualClock

S = 1_000_000_000
C0 = 1_767_225_000 * S  # creationTimestamp of the objects that exist before recording
T0 = 1_767_225_600 * S  # recording starts
T = [T0 + i * 7 * S + i for i in range(10)]  # T[1..]: steps (odd ns on purpose)

FAST = Timing(connect_timeout=2, list_timeout=5, watch_seconds=300, watch_idle=60, backoff_min=0.01, backoff_max=0.05)


@pytest.fixture
def lab():
    lab = KubeLab()
    yield lab
    lab.close()


def pod(name, ip, node, labels, owner=None, phase="Running", host_network=False):
    meta = {"name": name, "namespace": "shop", "labels": labels}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "uid": "u-" + owner[1], "controller": True}]
    return {
        "metadata": meta,
        "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "app", "image": "registry.example/app:1.2"}]},
        "status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}],
                   "containerStatuses": [{"name": "app", "containerID": f"containerd://{name}-cid"}]},
    }


def seed(lab):
    """A small cluster as it was before recording: 2 nodes, a Deployment's pod, a Service and its slice."""
    for name, zone, ip in (("n1", "eu-1a", "198.18.0.11"), ("n2", "eu-1b", "198.18.0.12")):
        lab.create("nodes", {"metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone, "topology.kubernetes.io/region": "eu-1"}},
                             "spec": {"podCIDRs": [f"10.{name[1]}.0.0/24"]},
                             "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}}, C0)
    lab.create("replicasets", {"metadata": {"name": "web-abc", "namespace": "shop", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-web", "controller": True}]}}, C0)
    lab.create("pods", pod("web-abc-1", "10.1.0.5", "n1", {"app": "web", "pod-template-hash": "abc"}, ("ReplicaSet", "web-abc")), C0)
    lab.create("services", {"metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
                            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                                     "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}}, C0)
    lab.create("endpointslices", {"metadata": {"name": "web-xyz", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
                                  "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                                  "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": True}, "nodeName": "n1",
                                                 "zone": "eu-1a", "targetRef": {"kind": "Pod", "name": "web-abc-1", "namespace": "shop"}}]}, C0)


def start(lab, path, clock):
    clock.set(T0)
    writer = TapeWriter(path, node="rec-1")
    kw = KubeWatcher(writer, KubeConfig(lab.configuration, "lab"), clock=clock, timing=FAST)
    kw.start()
    assert kw.wait_for(lambda w: all(lab.watches(p) for p in ("pods", "endpointslices", "jobs"))), "watches never started"
    return writer, kw


def finish(writer, kw, clock, at):
    clock.set(at)
    kw.stop()
    writer.close()


def open_pod(kw, name):
    return [r for r in kw.store.open_rows("k8s_pods") if r["name"] == name]


def rows(tape, sql):
    return tape.sql(sql).fetchall()


def versions(tape, table, cols):
    q = f"select {cols}, epoch_ns(valid_from), epoch_ns(valid_to), observed_at_start, deleted from {table} order by valid_from, name"
    return tape.sql(q).fetchall()


def raw_count(tape, table):
    return duckdb.connect().execute(f"select count(*) from read_parquet({tape.files(table)!r})").fetchall()[0][0]


def test_pod_lifecycle_versions_and_ip_reuse(lab, tmp_path):
    seed(lab)
    clock = ManualClock(T0)
    writer, kw = start(lab, tmp_path / "t.tape", clock)

    clock.set(T[1])  # relabelled
    lab.patch("pods", "shop", "web-abc-1", {"metadata": {"labels": {"version": "2"}}})
    assert kw.wait_for(lambda w: ("version", "2") in open_pod(w, "web-abc-1")[0]["labels"])

    clock.set(T[2])  # deleted: its replacement is scheduled on n2 (a new pod, a new IP)
    lab.delete("pods", "shop", "web-abc-1")
    assert kw.wait_for(lambda w: not open_pod(w, "web-abc-1"))
    clock.set(T[3])
    lab.create("pods", pod("web-abc-2", "10.2.0.7", "n2", {"app": "web", "pod-template-hash": "abc"}, ("ReplicaSet", "web-abc")), T[3])
    assert kw.wait_for(lambda w: open_pod(w, "web-abc-2"))

    clock.set(T[4])  # a CronJob's pod gets the freed IP 10.1.0.5
    lab.create("jobs", {"metadata": {"name": "nightly-2901", "namespace": "shop", "ownerReferences": [
        {"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": "u-nightly", "controller": True}]}}, T[4])
    assert kw.wait_for(lambda w: w.owners.known("Job", "shop", "nightly-2901"))
    lab.create("pods", pod("nightly-2901-q", "10.1.0.5", "n1", {"job": "nightly"}, ("Job", "nightly-2901"), phase="Pending"), T[4])
    assert kw.wait_for(lambda w: open_pod(w, "nightly-2901-q"))
    finish(writer, kw, clock, T[5])

    tape = flowtape.open(tmp_path / "t.tape")
    assert tape.problems == []
    got = versions(tape, "k8s_pods", "name, node_name, ips, labels, workload_kind, workload_name, phase")
    web = {"app": "web", "pod-template-hash": "abc"}
    assert got == [
        ("web-abc-1", "n1", ["10.1.0.5"], web, "Deployment", "web", "Running", C0, T[1], True, False),
        ("web-abc-1", "n1", ["10.1.0.5"], {**web, "version": "2"}, "Deployment", "web", "Running", T[1], T[2], False, True),
        ("web-abc-2", "n2", ["10.2.0.7"], web, "Deployment", "web", "Running", T[3], None, False, False),
        ("nightly-2901-q", "n1", ["10.1.0.5"], {"job": "nightly"}, "CronJob", "nightly", "Pending", T[4], None, False, False),
    ]
    # Open + closing row for each closed version, one row for each still open: 2+2+1+1.
    assert raw_count(tape, "k8s_pods") == 6
    # The containers, the owner and the resourceVersion of each version are kept.
    assert rows(tape, "select containers, owner_kind, owner_name, resource_version from k8s_pods where name = 'web-abc-2'") == [
        ([{"name": "app", "image": "registry.example/app:1.2", "container_id": "web-abc-2-cid"}], "ReplicaSet", "web-abc", "1008")  # 6 seeded, 1 relabel, 1 delete, then this create
    ]
    # The time-aware join analysis relies on: who had 10.1.0.5 at a given moment.
    who = "select name from k8s_pods where list_contains(ips, '10.1.0.5') and epoch_ns(valid_from) <= ? and (valid_to is null or epoch_ns(valid_to) > ?)"
    assert [tape.sql(who, params=[t, t]).fetchall() for t in (T0, T[1] + 1, T[3], T[4], T[5])] == [
        [("web-abc-1",)], [("web-abc-1",)], [], [("nightly-2901-q",)], [("nightly-2901-q",)]]

    assert versions(tape, "k8s_nodes", "name, zone, region, internal_ips, pod_cidrs") == [
        ("n1", "eu-1a", "eu-1", ["198.18.0.11"], ["10.1.0.0/24"], C0, None, True, False),
        ("n2", "eu-1b", "eu-1", ["198.18.0.12"], ["10.2.0.0/24"], C0, None, True, False),
    ]
    assert versions(tape, "k8s_services", "name, type, cluster_ips, ports") == [
        ("web", "ClusterIP", ["10.96.0.10"], [{"name": "http", "protocol": "TCP", "port": 80, "target_port": "8080", "node_port": None}], C0, None, True, False),
    ]
    assert rows(tape, "select service, slice, ip, port, protocol, pod, node_name, zone, ready, epoch_ns(valid_from), valid_to from k8s_endpoints") == [
        ("web", "web-xyz", "10.1.0.5", 8080, "TCP", "web-abc-1", "n1", "eu-1a", True, C0, None),
    ]
    m = tape.manifest
    assert m["gaps"] == []
    assert m["settings"]["k8s"]["resources"] == ["replicasets", "jobs", "nodes", "services", "endpointslices", "pods"]
    # Watches asked for bookmarks and resumed from the list's resourceVersion.
    assert all(r.params.get("allowWatchBookmarks") == "true" for r in lab.watches("pods"))


def informer(kw, plural):
    return next(i for i in kw.informers if i.res.plural == plural)


def test_410_gone_mid_watch_relists_and_records_the_gap(lab, tmp_path):
    seed(lab)
    clock = ManualClock(T0)
    writer, kw = start(lab, tmp_path / "t.tape", clock)
    lists_before = len([r for r in lab.kmock._requests if r.action is not None and r.action.value == "LIST" and r.resource.plural == "pods"])

    clock.set(T[1])
    refused = lab.fail("list", "pods", status=503, times=None)  # the relist cannot get through at first
    lab.gone("pods")  # ERROR 410 in the live stream
    assert kw.wait_for(lambda w: w.open_gaps == ["k8s/pods"] and informer(w, "pods").stats.errors >= 1)
    # While blind: web-abc-1 is deleted and another pod appears; no watch sees it.
    lab.delete("pods", "shop", "web-abc-1")
    lab.create("pods", pod("web-abc-3", "10.1.0.9", "n2", {"app": "web", "pod-template-hash": "abc"}, ("ReplicaSet", "web-abc")), T[1])

    clock.set(T[2])
    lab.clear(refused)
    assert kw.wait_for(lambda w: not w.open_gaps and open_pod(w, "web-abc-3"))
    finish(writer, kw, clock, T[3])

    tape = flowtape.open(tmp_path / "t.tape")
    assert versions(tape, "k8s_pods", "name") == [
        ("web-abc-1", C0, T[2], True, True),  # gone from the relist: closed when we learnt it
        ("web-abc-3", T[2], None, False, False),  # seen first by the relist
    ]
    assert [(g["source"], g["start_ns"], g["end_ns"], g["reason"].split(":")[0]) for g in tape.manifest["gaps"]] == [
        ("k8s/pods", T[1], T[2], "410 Gone")]
    st = tape.manifest["extra"]["k8s"]["resources"]["pods"]
    assert st["relists_410"] == 1 and st["lists"] == 2
    lists = [r for r in lab.kmock._requests if r.action is not None and r.action.value == "LIST" and r.resource.plural == "pods"]
    assert len(lists) - lists_before >= 2  # refused at least once, then the relist


def test_dropped_connection_resumes_from_last_resource_version(lab, tmp_path):
    seed(lab)
    clock = ManualClock(T0)
    writer, kw = start(lab, tmp_path / "t.tape", clock)
    lab.bookmark("pods", "5000")
    assert kw.wait_for(lambda w: informer(w, "pods").rv == "5000")

    clock.set(T[1])
    refused = lab.fail("watch", "pods", status=503, times=None)
    assert lab.drop("pods") == 1
    assert kw.wait_for(lambda w: w.open_gaps == ["k8s/pods"] and informer(w, "pods").stats.errors >= 2)
    lab.patch("pods", "shop", "web-abc-1", {"metadata": {"labels": {"version": "3"}}})  # while blind

    clock.set(T[2])
    lab.clear(refused)
    assert kw.wait_for(lambda w: not w.open_gaps and ("version", "3") in open_pod(w, "web-abc-1")[0]["labels"])
    finish(writer, kw, clock, T[3])

    tape = flowtape.open(tmp_path / "t.tape")
    assert versions(tape, "k8s_pods", "name, labels['version']") == [
        ("web-abc-1", None, C0, T[2], True, False),
        ("web-abc-1", "3", T[2], None, False, False),  # learnt when the watch came back
    ]
    gaps = tape.manifest["gaps"]
    assert [(g["source"], g["start_ns"], g["end_ns"]) for g in gaps] == [("k8s/pods", T[1], T[2])]
    assert gaps[0]["reason"].startswith("watch broken (connection)")
    st = tape.manifest["extra"]["k8s"]["resources"]["pods"]
    assert (st["lists"], st["relists_410"], st["bookmarks"]) == (1, 0, 1)  # resumed, not relisted
    # The watch that came back resumed from the bookmark's resourceVersion.
    assert lab.watches("pods")[-1].params["resourceVersion"] == "5000"


def test_slow_api_times_out_backs_off_and_recovers(lab, tmp_path):
    seed(lab)
    clock = ManualClock(T0)
    lab.fail("list", "nodes", delay=0.2)  # slow but within the timeout: no gap
    writer = TapeWriter(tmp_path / "t.tape", node="rec-1")
    timing = Timing(connect_timeout=2, list_timeout=0.5, watch_seconds=300, watch_idle=60, backoff_min=0.01, backoff_max=0.05)
    kw = KubeWatcher(writer, KubeConfig(lab.configuration, "lab"), clock=clock, timing=timing)
    kw.start()
    assert kw.wait_for(lambda w: lab.watches("pods"))

    clock.set(T[1])
    lab.fail("list", "pods", delay=1.5)  # the relist hangs longer than the read timeout
    refused = lab.fail("list", "pods", status=503, times=None)
    lab.gone("pods")
    assert kw.wait_for(lambda w: informer(w, "pods").stats.timeouts == 1 and informer(w, "pods").stats.errors >= 1)
    clock.set(T[2])
    lab.clear(refused)
    assert kw.wait_for(lambda w: not w.open_gaps)
    finish(writer, kw, clock, T[3])

    tape = flowtape.open(tmp_path / "t.tape")
    assert [(g["source"], g["start_ns"], g["end_ns"]) for g in tape.manifest["gaps"]] == [("k8s/pods", T[1], T[2])]
    assert versions(tape, "k8s_nodes", "name") == [("n1", C0, None, True, False), ("n2", C0, None, True, False)]
    assert versions(tape, "k8s_pods", "name") == [("web-abc-1", C0, None, True, False)]  # nothing changed: no new version
    st = tape.manifest["extra"]["k8s"]["resources"]["pods"]
    assert st["timeouts"] == 1 and st["relists_410"] == 1


def test_unreachable_cluster_at_start_is_one_line_error(tmp_path):
    import kubernetes

    from flowtape.capture.k8s.watcher import KubeError

    cfg = kubernetes.client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard port: nothing listens
    writer = TapeWriter(tmp_path / "t.tape", node="rec-1")
    kw = KubeWatcher(writer, KubeConfig(cfg, "test"), timing=FAST)
    with pytest.raises(KubeError) as e:
        kw.start()
    assert "\n" not in e.value.message
    assert e.value.message.startswith("http://127.0.0.1:9: Kubernetes API unreachable (connection:")
    assert e.value.exit_code == 3
