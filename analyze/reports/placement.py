"""Placement: the namespace or zone each endpoint name lived in, to draw it in that cluster.

One row per endpoint name (named at granularity `by`, as topology names it) with its group:
- group_by="namespace": the pod's or Service's namespace; nodes are `nodes`, addresses outside
  the cluster `internet`; outside Kubernetes, a process or an address on a recorded host is in
  `host:<host>`; other private addresses `unknown`;
- group_by="zone": the zone of the pod's node (a workload whose pods ran in several zones is in
  `several zones`); nodes by their zone; `internet` and `unknown` as above; Services `services`.
"""

from __future__ import annotations

import polars as pl

from ...errors import UsageError
from ..analysis import Analysis
from ..enrich import machine_sql, name_sql, server_name_sql
from .filters import Filters, check_by

GROUP_BYS = ("namespace", "zone")

SQL = """
WITH ends AS (
    SELECT {client} AS name, client_kind AS kind, client_namespace AS namespace, client_zone AS zone, {client_machine} AS machine FROM {http} WHERE {ns}
    UNION ALL
    SELECT {server}, server_kind, server_namespace, server_zone, {server_machine} FROM {http} WHERE {ns}
    UNION ALL
    SELECT {client}, client_kind, client_namespace, client_zone, {client_machine} FROM {conns} WHERE {where}
    UNION ALL
    SELECT {server}, server_kind, server_namespace, server_zone, {server_machine} FROM {conns} WHERE {where}
)
SELECT name,
       CASE WHEN count(DISTINCT g) = 1 THEN min(g) ELSE {several} END AS "group"
FROM (
    SELECT name, CASE kind WHEN 'external' THEN 'internet' WHEN 'pod' THEN {pod} WHEN 'node' THEN {node}
                           WHEN 'service' THEN {svc} ELSE CASE WHEN machine IS NOT NULL THEN {host} ELSE 'unknown' END END AS g
    FROM ends
)
GROUP BY name ORDER BY name
"""


def endpoint_groups(a: Analysis, by: str = "workload", group_by: str = "namespace", filters: Filters | None = None) -> pl.DataFrame:
    """Columns name, group: where each endpoint (named at granularity `by`) was placed."""
    check_by(by)
    if group_by not in GROUP_BYS:
        raise UsageError(f"--group-by must be one of {', '.join(GROUP_BYS)}, not {group_by!r}")
    f = filters or Filters()
    if group_by == "namespace":
        pod, node, svc, host, several = "namespace", "'nodes'", "namespace", "'host:' || machine", "'several namespaces'"
    else:
        pod, node, svc, host, several = "coalesce(zone, 'zone?')", "coalesce(zone, 'zone?')", "'services'", "'zone?'", "'several zones'"
    sql = SQL.format(client=name_sql("client", by), server=server_name_sql(by), where=f.where("ts", "client_namespace", "server_namespace"),
                     http=a.http_sums(f.time_sql("ts")), conns=a.materialised("enriched_connections"), ns=f.namespace_sql("client_namespace", "server_namespace"),
                     pod=pod, node=node, svc=svc, host=host, several=several, client_machine=machine_sql("client"), server_machine=machine_sql("server"))
    return a.sql(sql).pl()
