"""TapeWriter: rotation, manifest, permissions, rejection of rows that do not fit."""

from __future__ import annotations

import json
import stat

import pyarrow.parquet as pq
import pytest

import flowtape
from flowtape.errors import SchemaError, UsageError
from flowtape.writer import TapeWriter, sha256_file

T0 = 1_767_225_600_000_000_000


def flow(i: int) -> dict:
    return {"ts_start": T0 + i, "ts_end": T0 + i + 5, "src_ip": "198.18.0.1", "dst_ip": "198.18.0.2", "src_port": 40000 + i % 1000, "dst_port": 80, "l4": "tcp", "ip_proto": 6, "packets": 2, "bytes": 120, "tcp_flags": 18}


def test_rotation_by_size_and_manifest_lists_every_part(tmp_path):
    path = tmp_path / "t.tape"
    with TapeWriter(path, node="n1", row_group_rows=1000, rotate_bytes=1) as w:
        for k in range(7):
            w.append("flows", [flow(k * 1000 + i) for i in range(1000)])
    m = json.loads((path / "manifest.json").read_text())
    parts = sorted(p for p in m["files"] if p.startswith("flows/"))
    assert parts == [f"flows/node=n1/part-{i:06d}.parquet" for i in range(1, 8)]
    assert m["tables"]["flows"] == {"rows": 7000, "parts": 7}
    for rel in parts:
        entry = m["files"][rel]
        assert entry["sha256"] == sha256_file(path / rel)
        assert entry["bytes"] == (path / rel).stat().st_size
        assert entry["rows"] == pq.read_metadata(path / rel).num_rows == 1000
    assert m["complete"] is True
    assert m["window"] == {"start_ns": T0, "end_ns": T0 + 6999}


def test_rotation_by_time_rewrites_manifest(tmp_path):
    path = tmp_path / "t.tape"
    w = TapeWriter(path, node="n1", rotate_seconds=10)
    w.append("flows", [flow(1)])
    assert json.loads((path / "manifest.json").read_text())["files"] == {}  # still in the open part
    opened = min(p.opened for p in w._parts.values())
    assert w.maybe_rotate(now=opened + 9.9) is False
    assert w.maybe_rotate(now=opened + 10.0) is True
    m = json.loads((path / "manifest.json").read_text())
    assert list(m["files"]) == ["flows/node=n1/part-000001.parquet"] and m["complete"] is False
    w.append("flows", [flow(2)])
    w.close()
    m = json.loads((path / "manifest.json").read_text())
    assert len(m["files"]) == 2 and m["tables"]["flows"]["rows"] == 2


def test_files_are_private(tmp_path):
    path = tmp_path / "t.tape"
    with TapeWriter(path, node="n1") as w:
        w.append("flows", [flow(1)])
    for p in [path, *path.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), p


def test_partitions_per_node_and_counters(tmp_path):
    path = tmp_path / "t.tape"
    with TapeWriter(path, node="n1") as w:
        w.append("flows", [flow(1), flow(2)])
        w.append("flows", [flow(3)], node="n2")
        w.set_lost("ringbuf_drops", 7)
        w.add_lost("malformed_dns", 2, node="n2")
        w.add_lost("malformed_dns", 3, node="n2")
        w.add_gap("k8s", T0, T0 + 10, "watch broken: connection reset")
    tape = flowtape.open(path)
    assert tape.nodes == ["n1", "n2"]
    assert tape.sql("select node, count(*) from flows group by node order by node").fetchall() == [("n1", 2), ("n2", 1)]
    assert tape.manifest["lost"] == {"n1": {"ringbuf_drops": 7}, "n2": {"malformed_dns": 5}}
    assert tape.manifest["gaps"][0]["reason"] == "watch broken: connection reset"


def test_append_mode_continues_numbering(tmp_path):
    path = tmp_path / "t.tape"
    with TapeWriter(path, node="n1") as w:
        w.append("flows", [flow(1)])
    with TapeWriter(path, node="n1", append=True) as w:
        w.append("flows", [flow(2)])
    tape = flowtape.open(path)
    assert sorted(p.rel for p in tape.parts) == ["flows/node=n1/part-000001.parquet", "flows/node=n1/part-000002.parquet"]
    assert tape.rows("flows") == 2 and tape.problems == []


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "t.tape"
    TapeWriter(path, node="n1").close()
    with pytest.raises(UsageError, match="already exists"):
        TapeWriter(path, node="n1")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"packets": -1}, "table 'flows', column 'packets': does not fit uint64"),
        ({"src_port": 70000}, "table 'flows', column 'src_port': does not fit uint16"),
        ({"src_ip": None}, "table 'flows', column 'src_ip': is required but 1 row"),
        ({"bogus": 1}, "table 'flows', column 'bogus': not a column of this table"),
        ({"ts_start": "yesterday"}, "table 'flows', column 'ts_start': does not fit timestamp"),
        ({"node": "other"}, "table 'flows', column 'node': rows for node"),
    ],
)
def test_rejects_rows_that_do_not_fit(tmp_path, change, message):
    w = TapeWriter(tmp_path / "t.tape", node="n1")
    with pytest.raises(SchemaError) as e:
        w.append("flows", [flow(1), {**flow(2), **change}])
    assert str(e.value).startswith(message)
    w.close()
    assert flowtape.open(tmp_path / "t.tape").rows("flows") == 0  # nothing of the bad batch was written


def test_unknown_table_and_bad_node(tmp_path):
    w = TapeWriter(tmp_path / "t.tape", node="n1")
    with pytest.raises(KeyError, match="unknown table 'flow'"):
        w.append("flow", [])
    with pytest.raises(UsageError, match="invalid node name"):
        w.append("flows", [flow(1)], node="../etc")


def test_other_tools_read_the_tape_as_is(tmp_path):
    """The layout is plain Hive partitioning: DuckDB reads it without flowtape."""
    import duckdb

    path = tmp_path / "t.tape"
    with TapeWriter(path, node="n1") as w:
        w.append("flows", [flow(1), flow(2)])
        w.append("flows", [flow(3)], node="n2")
    got = duckdb.sql(f"select node, count(*), sum(bytes) from read_parquet('{path}/flows/*/*.parquet', hive_partitioning = true) group by node order by node").fetchall()
    assert got == [("n1", 2, 240), ("n2", 1, 120)]


def test_time_columns_are_delta_encoded_and_parts_written_before_still_read(tmp_path):
    """Issue 24's encodings: times DELTA_BINARY_PACKED, every other leaf (a list's too) dictionary-encoded;
    a part rewritten with the settings of before (dictionary everywhere) reads the same rows beside it."""
    path = tmp_path / "t.tape"
    with TapeWriter(path, node="n1", row_group_rows=500, rotate_bytes=1) as w:
        w.append("flows", [flow(i) for i in range(500)])
        w.append("flows", [flow(500 + i) for i in range(500)])
        w.append("tls", [{"ts": T0 + i, "client_ip": "198.18.0.1", "client_port": 40000 + i, "server_ip": "198.18.0.2", "server_port": 443,
                          "sni": "a.test", "version": "TLS 1.3", "alpn": ["h2", "http/1.1"]} for i in range(50)])
    parts = sorted((path / "flows" / "node=n1").glob("part-*.parquet"))
    assert len(parts) == 2
    meta = pq.read_metadata(parts[0]).row_group(0)
    enc = {meta.column(i).path_in_schema: set(meta.column(i).encodings) for i in range(meta.num_columns)}
    assert "DELTA_BINARY_PACKED" in enc["ts_start"] and "DELTA_BINARY_PACKED" in enc["ts_end"]
    assert not any("DICTIONARY" in e for e in enc["ts_start"])
    assert "RLE_DICTIONARY" in enc["src_ip"] and "RLE_DICTIONARY" in enc["dst_port"]
    tls = pq.read_metadata(next((path / "tls" / "node=n1").glob("part-*.parquet"))).row_group(0)
    tls_enc = {tls.column(i).path_in_schema: set(tls.column(i).encodings) for i in range(tls.num_columns)}
    assert "RLE_DICTIONARY" in tls_enc["alpn.list.element"] and "DELTA_BINARY_PACKED" in tls_enc["ts"]

    before = flowtape.open(str(path)).sql("select * from flows order by ts_start").fetchall()
    old = pq.read_table(parts[0])  # the first part again, as the TapeWriter wrote it before issue 24
    pq.write_table(old, parts[0], compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)
    assert not any("DELTA" in e for e in pq.read_metadata(parts[0]).row_group(0).column(0).encodings)
    m = json.loads((path / "manifest.json").read_text())  # keep the manifest's checksums true to the rewritten part
    rel = f"flows/node=n1/{parts[0].name}"
    m["files"][rel].update(sha256=sha256_file(parts[0]), bytes=parts[0].stat().st_size)
    (path / "manifest.json").write_text(json.dumps(m))
    tape = flowtape.open(str(path))
    assert not [p for p in tape.problems if p.severity == "error"]
    assert tape.sql("select * from flows order by ts_start").fetchall() == before
    assert tape.lazy("flows").collect().height == 1000
