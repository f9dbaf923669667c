"""`tape.report`: every report as a method of the tape, for notebooks.

    >>> import flowtape
    >>> tape = flowtape.open("fixtures/tiny.tape")
    >>> tape.report.topology(by="workload").select("client", "server", "requests").row(0)
    ('shop/frontend', 'shop/api', 4)
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import polars as pl

from .reports.prices import Prices
from .reports import dns as dns_r
from .reports import latency as lat_r
from .reports import timeseries as ts_r
from .reports import topology as topo_r
from .reports import traces as traces_r
from .reports import traffic as traffic_r
from .reports.filters import Filters, parse_time

if TYPE_CHECKING:
    from .analysis import Analysis

Time = str | dt.datetime | None


def _filters(since: Time, until: Time, namespace: str | None) -> Filters:
    def t(v: Time, flag: str) -> dt.datetime | None:
        return parse_time(v, flag) if isinstance(v, str) else v

    return Filters(t(since, "since"), t(until, "until"), namespace)


class Reports:
    """The reports of one tape; each returns a Polars DataFrame."""

    def __init__(self, analysis: "Analysis"):
        self._a = analysis

    def topology(self, by: str = "workload", since: Time = None, until: Time = None, namespace: str | None = None, top: int | None = None) -> pl.DataFrame:
        """Edges: connections, bytes each way, requests, 5xx, p50/p95/p99 ms (from a latency
        histogram: within 1 % of the exact percentile, see analyze.sketch)."""
        return topo_r.topology(self._a, by, _filters(since, until, namespace), top)

    def http_latency(self, by: str = "workload", routes: bool = False, since: Time = None, until: Time = None, namespace: str | None = None) -> pl.DataFrame:
        """HTTP time to first response byte per edge (and per method and route); percentiles within
        1 % of exact (analyze.sketch), max_ms exact."""
        return lat_r.http_latency(self._a, by, routes, _filters(since, until, namespace))

    def dns_latency(self, since: Time = None, until: Time = None, namespace: str | None = None) -> pl.DataFrame:
        return lat_r.dns_latency(self._a, _filters(since, until, namespace))

    def tcp_latency(self, by: str = "workload", since: Time = None, until: Time = None, namespace: str | None = None) -> pl.DataFrame:
        return lat_r.tcp_latency(self._a, by, _filters(since, until, namespace))

    def talkers(self, by: str = "workload", top: int = 20, since: Time = None, until: Time = None, namespace: str | None = None) -> pl.DataFrame:
        return traffic_r.talkers(self._a, by, top, _filters(since, until, namespace))

    def zone_pairs(self, level: str = "zone", prices: Prices | None = None, since: Time = None, until: Time = None, namespace: str | None = None) -> pl.DataFrame:
        return traffic_r.zone_pairs(self._a, level, prices, _filters(since, until, namespace))

    def egress(self, by: str = "workload", prices: Prices | None = None, since: Time = None, until: Time = None, namespace: str | None = None) -> pl.DataFrame:
        return traffic_r.egress(self._a, by, prices, _filters(since, until, namespace))

    def dns_failures(self, by: str = "workload", since: Time = None, until: Time = None, namespace: str | None = None, search_path: bool = True) -> pl.DataFrame:
        return dns_r.dns_failures(self._a, by, _filters(since, until, namespace), search_path)

    def slow_lookups(self, threshold_ms: float = 100.0, since: Time = None, until: Time = None, namespace: str | None = None) -> pl.DataFrame:
        return dns_r.slow_lookups(self._a, threshold_ms, _filters(since, until, namespace))

    def latency_over_time(self, by: str = "workload", bucket_s: int | None = None, top: int = 5, edges: list[tuple[str, str]] | None = None,
                          since: Time = None, until: Time = None, namespace: str | None = None) -> pl.DataFrame:
        """HTTP p50/p95/p99 per edge and time bucket (1 s for tapes under a minute, 10 s up to 30 min, else 1 min) for
        the `top` busiest edges, or for the (client, server) pairs in `edges`."""
        return ts_r.latency_over_time(self._a, by, bucket_s, top, edges, _filters(since, until, namespace))

    def traces(self, by: str = "workload", since: Time = None, until: Time = None, namespace: str | None = None,
               trace_id: str | None = None, slowest: int | None = None) -> pl.DataFrame:
        """Request journeys: one row per span (each side of each HTTP exchange), linked into causal
        trees (trace_id, span_id, parent_span_id, source of the link; analyze.reports.traces)."""
        return traces_r.traces(self._a, by, _filters(since, until, namespace), trace_id, slowest)

    def critical_path(self, spans: pl.DataFrame) -> list[str]:
        """The span ids of the critical path of one trace's spans (as `traces()` gives them), root first."""
        return traces_r.critical_path(spans)

    def slowest_step(self, spans: pl.DataFrame, path: list[str]) -> tuple[str, float] | None:
        """The span of a critical path with the most time of its own, and that time (ms)."""
        return traces_r.slowest_step(spans, path)
