"""Writer throughput against bare pyarrow, and bytes per row of a flows-like table.

    .venv/bin/python benchmarks/bench_tape.py [--rows 2000000]

Prints: TapeWriter rows/s, bare `pyarrow.parquet.write_table` rows/s of the same batches
(same compression) measured in the same run, their ratio (target >= 0.8), and the on-disk
bytes per flow row (target <= 25 B/row).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flowtape.schema import FLOWS
from flowtape.writer import TapeWriter

T0 = 1_767_225_600_000_000_000
INTERVAL = 5_000_000_000


def flow_batches(rows: int, batch: int, seed: int = 7) -> list[pa.RecordBatch]:
    """Flows as a kernel map drain would produce them: one batch per 5 s interval, a few hundred
    pods talking to a few dozen services on well-known ports from ephemeral ports."""
    rng = np.random.default_rng(seed)
    pods = np.array([f"10.0.{i // 250}.{i % 250 + 2}" for i in range(400)] + [f"142.250.{i}.{i * 7 % 250}" for i in range(40)])
    macs = np.array([f"02:42:{i >> 8:02x}:{i & 255:02x}:00:{(i * 13) & 255:02x}" for i in range(64)])
    ifaces = np.array(["eth0", "cni0", "veth3a1f", "veth91c2"])
    server_ports = np.array([80, 443, 8080, 5432, 6379, 53, 9090], dtype=np.uint16)
    out = []
    done = 0
    k = 0
    while done < rows:
        n = min(batch, rows - done)
        start = T0 + k * INTERVAL
        ts_start = np.sort(start + rng.integers(0, INTERVAL, n))
        ts_end = np.minimum(ts_start + rng.integers(0, INTERVAL, n), start + INTERVAL - 1)
        proto = rng.choice(np.array([6, 17, 1], dtype=np.uint8), n, p=[0.85, 0.14, 0.01])
        client = rng.integers(0, 400, n)
        server = rng.integers(0, len(pods), n)
        eph = rng.integers(32768, 61000, n).astype(np.uint16)
        sport = server_ports[rng.integers(0, len(server_ports), n)]
        reply = rng.random(n) < 0.5
        src = np.where(reply, pods[server], pods[client])
        dst = np.where(reply, pods[client], pods[server])
        src_port = np.where(reply, sport, eph)
        dst_port = np.where(reply, eph, sport)
        packets = np.maximum(1, rng.lognormal(2.0, 1.5, n)).astype(np.uint64)
        size = rng.choice(np.array([52, 66, 120, 576, 1500]), n)
        nbytes = packets * size.astype(np.uint64)
        iface_i = rng.integers(0, len(ifaces), n)
        is_tcp = proto == 6
        is_icmp = proto == 1
        tcp_flags = np.where(is_tcp, rng.choice(np.array([0x10, 0x18, 0x12, 0x11, 0x19, 0x02]), n), 0).astype(np.uint16)
        l4 = np.where(is_tcp, "tcp", np.where(is_icmp, "icmp", "udp"))
        arrays = {
            "ts_start": pa.array(ts_start, pa.timestamp("ns", tz="UTC")),
            "ts_end": pa.array(ts_end, pa.timestamp("ns", tz="UTC")),
            "iface": pa.array(ifaces[iface_i]),
            "ifindex": pa.array((iface_i + 2).astype(np.uint32)),
            "direction": pa.array(np.where(reply, "ingress", "egress")),
            "src_mac": pa.array(macs[client % 64]),
            "dst_mac": pa.array(macs[server % 64]),
            "src_ip": pa.array(src),
            "dst_ip": pa.array(dst),
            "src_port": pa.array(src_port, pa.uint16(), mask=is_icmp),
            "dst_port": pa.array(dst_port, pa.uint16(), mask=is_icmp),
            "l4": pa.array(l4),
            "ip_proto": pa.array(proto),
            "packets": pa.array(packets),
            "bytes": pa.array(nbytes),
            "tcp_flags": pa.array(tcp_flags, pa.uint16(), mask=~is_tcp),
        }
        out.append(pa.RecordBatch.from_pydict(arrays, schema=FLOWS.arrow_schema))
        done += n
        k += 1
    return out


def run(rows: int, batch: int, repeat: int) -> None:
    batches = flow_batches(rows, batch)
    tmp = Path(tempfile.mkdtemp(prefix="bench-tape-"))
    best_w = best_b = float("inf")
    size = 0
    try:
        for r in range(repeat):
            # bare pyarrow: one table, one write_table call, same codec and level
            t = time.perf_counter()
            pq.write_table(pa.Table.from_batches(batches), tmp / f"bare-{r}.parquet", compression="zstd", compression_level=3)
            best_b = min(best_b, time.perf_counter() - t)
            # TapeWriter: batch by batch as a recorder drains its maps, with validation,
            # temporary part, fsync, rename, sha256 and manifest
            t = time.perf_counter()
            with TapeWriter(tmp / f"w-{r}.tape", node="node-a", rotate_seconds=1e9) as w:
                for b in batches:
                    w.append("flows", b)
            best_w = min(best_w, time.perf_counter() - t)
            size = sum(p.stat().st_size for p in (tmp / f"w-{r}.tape" / "flows").rglob("*.parquet"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"rows                      {rows:,} in batches of {batch:,} (best of {repeat})")
    print(f"bare pyarrow write_table  {rows / best_b:,.0f} rows/s")
    print(f"TapeWriter.append         {rows / best_w:,.0f} rows/s")
    print(f"ratio writer/bare         {best_b / best_w:.2f}   (target >= 0.8)")
    print(f"flows bytes per row       {size / rows:.1f} B   (target <= 25)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=65_536)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    run(a.rows, a.batch, a.repeat)
