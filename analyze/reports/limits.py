"""What a tape cannot tell: one line for people per thing it has no data for.

A report over a tape recorded on a laptop has no zones and no Kubernetes names; rather than an
empty section or a `? -> ?` row, the terminal and the HTML page say why, in one line (the
reports themselves still return their exact rows: CSV and JSON are unchanged).

    >>> import flowtape
    >>> limits(flowtape.open("fixtures/tiny.tape").analysis)
    {}
"""

from __future__ import annotations

from ..analysis import Analysis

KUBERNETES = "kubernetes"
ZONES = "zones"
REGIONS = "regions"
HTTP = "http"


def limits(a: Analysis) -> dict[str, str]:
    """Keys (KUBERNETES, ZONES, REGIONS, HTTP) of what the tape cannot tell, each with its
    reason (a clause: the terminal and the page put it in their sentence)."""
    t = a.tape
    k8s = sum(t.rows(name) for name in ("k8s_pods", "k8s_nodes", "k8s_services"))
    nodes = t.rows("k8s_nodes")
    out: dict[str, str] = {}
    if not k8s:
        out[KUBERNETES] = ("the tape was recorded without Kubernetes: endpoints are named by process, DNS name, /etc/hosts "
                           "and host (--by process, --by host)")
    zoned, regioned = a.sql("SELECT count(zone), count(region) FROM k8s_nodes").fetchall()[0] if nodes else (0, 0)
    if not zoned:
        out[ZONES] = ("the tape has no Kubernetes nodes, whose labels give zones" if not nodes else
                      "no Kubernetes node in the tape has a zone label (topology.kubernetes.io/zone)")
    if not regioned:
        out[REGIONS] = ("the tape has no Kubernetes nodes, whose labels give regions" if not nodes else
                        "no Kubernetes node in the tape has a region label (topology.kubernetes.io/region)")
    if not t.rows("http"):
        out[HTTP] = "the tape has no HTTP exchanges"
    return out
