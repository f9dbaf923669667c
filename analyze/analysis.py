"""The analysis state of one open tape, owned in one place.

A tape does not change while it is open, so its enrichment views are created once and each
shared sum (analyze.sums) is computed once per time filter. `tape.analysis` is made on first use
and handed to every report: a report says what it computes, never how the views get set up.

    >>> import flowtape
    >>> a = flowtape.open("fixtures/tiny.tape").analysis
    >>> a.sql(f"SELECT sum(n) FROM {a.http_sums()}").fetchall()
    [(6,)]
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Callable

import duckdb

from . import sums
from .engines import Engine, make_engine
from .enrich import DEFAULT_LABELS, create_views, cut_keyed_sql

if TYPE_CHECKING:
    from ..reader import Tape
    from .api import Reports

ENRICHED = ("http", "connections", "flows", "dns")

HTTP_KEYED_ENDPOINTS = [("client", "client_ip"), ("server", "server_ip")]
"""The endpoints of http_keyed()'s rows: `__k0` keys client_ip, `__k1` server_ip."""


class Analysis:
    """Enrichment views and shared sums of one open tape (see the module docstring)."""

    def __init__(self, tape: "Tape", labels: tuple[str, ...] = DEFAULT_LABELS, engine: Engine | None = None) -> None:
        self.tape = tape
        self.con = tape.con
        self.labels = labels
        # where the per-row passes of the shared sums run (analyze.engines): the tape says which
        # (flowtape.open(path, engine="spark")); checked before any work, so a missing Java is one line
        self.engine = engine or make_engine(getattr(tape, "engine", "duckdb"), tape, getattr(tape, "spark_master", None))
        hosts = {node: (info or {}).get("host") or {} for node, info in (tape.manifest.get("nodes") or {}).items()}
        create_views(self.con, labels, hosts)
        self._made: set[str] = set()
        self._report: "Reports | None" = None

    @property
    def window(self) -> tuple[int | None, int | None]:
        return self.tape.window

    def sql(self, query: str, params: Any = None) -> duckdb.DuckDBPyRelation:
        return self.tape.sql(query, params)

    @property
    def report(self) -> "Reports":
        if self._report is None:
            from .api import Reports

            self._report = Reports(self)
        return self._report

    def enriched(self, name: str) -> duckdb.DuckDBPyRelation:
        from ..errors import TapeError

        if name not in ENRICHED:
            raise TapeError(f"no enriched view of {name!r} (enriched: {', '.join(ENRICHED)})")
        return self.con.table(f"enriched_{name}")

    def _once(self, kind: str, key: str, build: Callable[[str], None]) -> str:
        """The name of a temporary table or view `build(name)` creates, built on first use."""
        name = f"ft_{kind}_sums_" + hashlib.sha1(key.encode()).hexdigest()[:12]
        if name not in self._made:
            build(name)
            self._made.add(name)
        return name

    def cached(self, kind: str, key: str, build: Callable[[str], None]) -> str:
        """The name of a temporary table `build(name)` creates once per open tape and `key`
        (the traces view's stitching: analyze.reports.traces)."""
        return self._once(kind, key, build)

    def http_keyed(self) -> str:
        """A view of the exchange rows of enriched_http, unnamed: each with `__t` (epoch ns of
        `ts`) and the cut key of its client and server IP (HTTP_KEYED_ENDPOINTS, enrich.cut_keyed_sql).
        For readers that carry a key per endpoint and name each distinct (ip, key) once with
        enrich.key_names_sql (the exporter): naming every row costs ~3 us per row, this ~0.1."""
        def build(name: str) -> None:
            self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {cut_keyed_sql('ft_http_x', 'ts', HTTP_KEYED_ENDPOINTS)}")
        return self._once("keyed", "http", build)

    def http_sums(self, time_filter: str = "true") -> str:
        """See sums.build_http_sums; `time_filter` is a condition on the request's `ts`."""
        return self._once("http", time_filter, lambda name: sums.build_http_sums(self.con, name, time_filter, self.engine))

    def flow_sums(self, time_filter: str = "true") -> str:
        """See sums.build_flow_sums; `time_filter` is a condition on `ts_start`."""
        return self._once("flow", time_filter, lambda name: sums.build_flow_sums(self.con, name, time_filter, self.window, self.engine))

    def flow_seen(self, time_filter: str = "true") -> str:
        """See sums.build_flow_seen."""
        flows = self.flow_sums(time_filter)
        return self._once("seen", time_filter, lambda name: sums.build_flow_seen(self.con, name, flows, time_filter, self.window, self.engine))

    def materialised(self, view: str) -> str:
        """The rows of `view` (one of sums.MATERIALISABLE) in a table shared by every report."""
        if view not in sums.MATERIALISABLE:
            raise ValueError(f"not a view to materialise: {view!r}")
        source = self.materialised("ft_dns_x") if view == "enriched_dns" else view
        return self._once("rows", view, lambda name: sums.build_materialised(self.con, name, view, source))
