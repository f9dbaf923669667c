"""Placement: the namespace or zone each endpoint name lived in, to draw it in that cluster.

One row per endpoint name (named at granularity `by`, as topology names it) with its group:
- group_by="namespace": the pod's or Service's namespace; nodes are `nodes`, addresses outside
  the cluster `internet`, unowned private addresses `unknown`;
- group_by="zone": the zone of the pod's node (a workload whose pods ran in several zones is in
  `several zones`); nodes by their zone; `internet` and `unknown` as above; Services `services`.
"""

from __future__ import annotations

import polars as pl

from ...errors import UsageError
from ..analysis import Analysis
from ..enrich import name_sql, server_name_sql
from .filters import Filters, check_by

GROUP_BYS = ("namespace", "zone")

SQL = """
WITH ends AS (
    SELECT {client} AS name, client_kind AS kind, client_namespace AS namespace, client_zone AS zone FROM {http} WHERE {ns}
    UNION ALL
    SELECT {server}, server_kind, server_namespace, server_zone FROM {http} WHERE {ns}
    UNION ALL
    SELECT {client}, client_kind, client_namespace, client_zone FROM {conns} WHERE {where}
    UNION ALL
    SELECT {server}, server_kind, server_namespace, server_zone FROM {conns} WHERE {where}
)
SELECT name,
       CASE WHEN count(DISTINCT g) = 1 THEN min(g) ELSE {several} END AS "group"
FROM (
    SELECT name, CASE kind WHEN 'external' THEN 'internet' WHEN 'pod' THEN {pod} WHEN 'node' THEN {node}
                           WHEN 'service' THEN {svc} ELSE 'unknown' END AS g
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
        pod, node, svc, several = "namespace", "'nodes'", "namespace", "'several namespaces'"
    else:
        pod, node, svc, several = "coalesce(zone, 'zone?')", "coalesce(zone, 'zone?')", "'services'", "'several zones'"
    sql = SQL.format(client=name_sql("client", by), server=server_name_sql(by), where=f.where("ts", "client_namespace", "server_namespace"),
                     http=a.http_sums(f.time_sql("ts")), conns=a.materialised("enriched_connections"), ns=f.namespace_sql("client_namespace", "server_namespace"),
                     pod=pod, node=node, svc=svc, several=several)
    return a.sql(sql).pl()
