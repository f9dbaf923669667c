"""The two sides of one HTTP exchange: a server row and the client row that sent its request.

The nearest-time rule is the OTLP exporter's (analyze.export.spans, HttpSides.materialize): same
client ip:port and server IP (the client row's, a ClusterIP already replaced by the pod it was
paired to), the request the client sent last before the server saw it if the client had no answer
yet then, or else the next one sent within SKEW_NS; the nearer wins. It is written here once, as a
function of two relations, so that the exporter and the traces view pair alike
(tests/test_traces.py checks that both give the same pairs on the fixture tapes).
"""

from __future__ import annotations

SKEW_NS = 1_000_000_000
"""How far apart in time (clock skew between nodes included) the two sides of one exchange may be
seen and still be paired (the exporter's SKEW_NS)."""


def nearest_client_sql(servers: str, clients: str, key: str = "rid", skew_ns: int = SKEW_NS) -> str:
    """SELECT every row of `servers` with `pair_<key>`: the `key` of its exchange's client row in
    `clients` by the nearest-time rule, or NULL.

    Both relations have `t` and `t1` (request and response epoch ns; t1 may be NULL), `client_ip`,
    `client_port`, `server_ip` (for clients: the pod behind the address they connected to) and `key`.
    """
    return f"""
WITH bp AS (
    SELECT s.*, p.t AS p_t, p.t1 AS p_t1, p.{key} AS p_key, n.t AS n_t, n.{key} AS n_key
    FROM {servers} s
    ASOF LEFT JOIN {clients} p ON s.client_ip = p.client_ip AND s.client_port = p.client_port AND s.server_ip = p.server_ip AND s.t >= p.t
    ASOF LEFT JOIN {clients} n ON s.client_ip = n.client_ip AND s.client_port = n.client_port AND s.server_ip = n.server_ip AND s.t <= n.t
),
bq AS (
    -- the request the client sent last before the server saw it, if the client had no answer
    -- yet then; or the next one, if it was sent within the skew allowance; the nearer wins
    SELECT *, p_t IS NOT NULL AND t <= coalesce(p_t1, p_t) + {skew_ns} AS prev_ok, n_t IS NOT NULL AND n_t - t <= {skew_ns} AS next_ok FROM bp
)
SELECT * EXCLUDE (p_t, p_t1, p_key, n_t, n_key, prev_ok, next_ok),
       CASE WHEN prev_ok AND (NOT next_ok OR t - p_t <= n_t - t) THEN p_key WHEN next_ok THEN n_key END AS pair_{key}
FROM bq"""
