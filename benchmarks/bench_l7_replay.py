"""The L7 recorder's user-space cost per HTTP request, replayed: stable where live runs are noisy.

Live overhead figures (bench_l7.py) swing by 30% on a shared 2-CPU machine. This benchmark
records once, live, what the recorder's user-space side receives — the connection events and
the raw L7 ring-buffer records of h2load's fixed-rate keep-alive load against nginx across
namespaces — and then replays those exact inputs through the recorder's own code (the same
Recorder methods, ConnectionTracker, L7Decoder and TapeWriter) several times, timing with
process CPU time. It prints µs per request, split into:
  - decode: ring record -> HTTP exchange (header unpack, TCP ordering, HTTP parse, pairing);
  - rows:   exchange -> rows joined to their endpoints -> Arrow -> the writer's buffers;
  - close:  the writer's final Parquet encoding.
The replay is checked: it must write the same http rows as the live recorder did (two per
request: client and server are both local). Use it to compare versions of the decoder:
the issue's budget is 10 µs per request in all.

The baseline, replayed in the same run: the same inputs through the pure-Python HTTP decoder
(what the recorder does where capture/decode/_http1.c was not built).

Run as root:  .venv/bin/python benchmarks/bench_l7_replay.py [--tls] [--seconds 4] [--rate 10000] [--repeat 3]
              .venv/bin/python benchmarks/bench_l7_replay.py --inputs saved.pkl   (replay only; no root)
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from flowtape.capture.live import recorder as recorder_module  # noqa: E402
from flowtape.capture.live.connections import CLOSE, ESTABLISHED, EV_STATE, ConnectionTracker  # noqa: E402
from flowtape.capture.decode.http_pairing import Redaction, decoder_in_use  # noqa: E402
from flowtape.capture.live.l7 import L7Decoder  # noqa: E402
from flowtape.capture.live.recorder import Recorder, RecordOptions  # noqa: E402
from flowtape.writer import TapeWriter  # noqa: E402

EVERY_NS = int(recorder_module.L7_ROWS_EVERY_S * 1e9)


def capture(tls: bool, seconds: int, rate: int) -> dict:
    """Record live and keep the recorder's inputs, in arrival order."""
    from netlab import Lab, make_cert, start_nginx_l7

    log: list[tuple[str, object]] = []
    attached = threading.Event()

    class Capturing(Recorder):
        def _start_probes(self, start_wall):  # type: ignore[override]
            super()._start_probes(start_wall)
            attached.set()  # the load starts once the programs are attached (compiling takes long on a loaded host)

        def _on_conn_event(self, ev):  # type: ignore[override]
            log.append(("c", dict(ev)))
            super()._on_conn_event(ev)

        def _on_l7_batch(self, raws):  # type: ignore[override]
            log.append(("b", list(raws)))
            super()._on_l7_batch(raws)

    with Lab() as lab, tempfile.TemporaryDirectory(prefix="flowtape-replay-") as tmp:
        www = lab.www({"f100": b"b" * 100})
        srv, cli = lab.add_host("srv"), lab.add_host("cli")
        master, _ = start_nginx_l7(srv, www, tls=make_cert(lab.workdir, ["bench.lab.test"]))
        url = f"{'https' if tls else 'http'}://{srv.ip}/f100"
        out: dict[str, str] = {}

        def load() -> None:
            attached.wait(120)  # the kernel follows a flow from its first request: connections must open after the attach
            time.sleep(0.5)
            argv = ["h2load", "--h1", "-t1", "-c16", f"--rps={rate / 16:g}", "-D", str(seconds), url]
            out["text"] = cli.run(argv, timeout=seconds + 60).stdout.decode()

        th = threading.Thread(target=load)
        th.start()
        rec = Capturing(RecordOptions(out=Path(tmp) / "live.tape", probes=("connections", "l7"), interfaces=[lab.bridge],
                                      duration=seconds + 5.0), status=open(os.devnull, "w"))
        summary = rec.run()
        th.join()
        master.terminate()
        master.wait()
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out.get("text", ""))
    if not done:
        raise SystemExit(f"h2load printed no result:\n{out.get('text')}")
    return {"log": log, "offset": rec._offset, "requests": int(done.group(2)), "live_http_rows": summary.rows.get("http", 0)}


def batched(log: list) -> list:
    """Inputs saved before the recorder read the ring in batches ("l": one record each): runs of
    records between connection events become batches of at most 512 (a 20 ms read at 25k
    records/s)."""
    out: list = []
    for kind, x in log:
        if kind == "l":
            if out and out[-1][0] == "b" and len(out[-1][1]) < 512:
                out[-1][1].append(x)
            else:
                out.append(("b", [x]))
        else:
            out.append((kind, x))
    return out


def replay(inputs: dict) -> dict:
    """One replay through the recorder's code; CPU seconds per part."""
    log, offset = inputs["log"], inputs["offset"]
    clock = [0]
    # The recorder reads the monotonic clock to decide which rows are ready: replay in event time.
    recorder_module.time = types.SimpleNamespace(clock_gettime_ns=lambda _c: clock[0], CLOCK_MONOTONIC=time.CLOCK_MONOTONIC,
                                                 monotonic=time.monotonic)
    closes = [x for k, x in log if k == "c" and x["kind"] == EV_STATE and x["newstate"] == CLOSE and x.get("ts_established_ns")]

    def open_endpoints() -> list[dict]:  # what the kernel's socket map held at that time
        now = clock[0]
        return [{**x, "newstate": ESTABLISHED, "ts_ns": x["ts_established_ns"], "has_stats": 0}
                for x in closes if x["ts_established_ns"] <= now < x["ts_ns"]]

    cpu = time.process_time
    try:
        with tempfile.TemporaryDirectory(prefix="flowtape-replay-") as tmp:
            rec = Recorder(RecordOptions(out=Path(tmp) / "replay.tape"))
            w = rec.writer = TapeWriter(Path(tmp) / "replay.tape", node="replay")
            rec.tracker = ConnectionTracker("replay", lambda t: t + offset)
            rec.l7dec = L7Decoder("replay", offset, redaction=Redaction.from_settings(False, None))
            rec.l7dec.live_source = open_endpoints
            recorder_module.tune_gc()  # as Recorder._start_probes does
            on_conn, on_l7 = rec._on_conn_event, rec._on_l7_batch
            decode = rows = 0.0
            next_rows = None
            t0 = cpu()
            for kind, x in log:
                if kind == "c":
                    on_conn(dict(x))  # type: ignore[arg-type]
                else:
                    on_l7(x)
                now = rec.l7dec.last_ts
                next_rows = now + EVERY_NS if next_rows is None else next_rows
                if now >= next_rows:  # as the live loop: rows handed over every L7_ROWS_EVERY_S
                    clock[0] = now
                    t1 = cpu()
                    decode += t1 - t0
                    conns = rec.tracker.take_rows(clock[0])
                    if conns:
                        w.append("connections", conns)
                    rec._l7_rows()
                    t0 = cpu()
                    rows += t0 - t1
                    next_rows = now + EVERY_NS
            decode += cpu() - t0
            t0 = cpu()
            clock[0] += 10**11
            conns = rec.tracker.take_rows(clock[0], final=True)
            if conns:
                w.append("connections", conns)
            rec._l7_rows(final=True)
            t1 = cpu()
            w.close()
            return {"decode": decode, "rows": rows + t1 - t0, "close": cpu() - t1, "http_rows": rec.summary.rows.get("http", 0)}
    finally:
        recorder_module.time = time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tls", action="store_true", help="HTTPS (plaintext from the OpenSSL uprobes) instead of plain HTTP")
    ap.add_argument("--seconds", type=int, default=4, help="length of the live load")
    ap.add_argument("--rate", type=int, default=10_000, help="offered requests/s of the live load")
    ap.add_argument("--repeat", type=int, default=3, help="replays; the fastest is reported")
    ap.add_argument("--inputs", type=Path, help="replay inputs saved by --save (no capture, no root)")
    ap.add_argument("--save", type=Path, help="also save the captured inputs here")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the same-run baseline: the replay with the pure-Python HTTP decoder (FLOWTAPE_HTTP_DECODER=python)")
    args = ap.parse_args()
    if args.inputs:
        with args.inputs.open("rb") as f:
            inputs = pickle.load(f)
        inputs["log"] = batched(inputs["log"])
    else:
        if os.geteuid() != 0:
            print("bench_l7_replay: capturing needs root (or pass --inputs)", file=sys.stderr)
            return 2
        inputs = capture(args.tls, args.seconds, args.rate)
        if args.save:
            with args.save.open("wb") as f:
                pickle.dump(inputs, f)
    n = inputs["requests"]
    events = sum(len(x) for k, x in inputs["log"] if k == "b")
    print(f"replayed {n} requests ({events} L7 records, {sum(1 for k, _ in inputs['log'] if k == 'c')} connection events), best of {args.repeat}:")
    totals, ok = {}, True
    decoders = ("c", "python") if args.baseline and decoder_in_use() == "c" else (decoder_in_use().split()[0],)
    for decoder in decoders:
        # alternate nothing: each decoder's runs back to back, fastest kept (CPU time, not wall)
        if decoder == "python":
            os.environ["FLOWTAPE_HTTP_DECODER"] = "python"
        runs = [replay(inputs) for _ in range(args.repeat)]
        os.environ.pop("FLOWTAPE_HTTP_DECODER", None)
        best = min(runs, key=lambda r: r["decode"] + r["rows"] + r["close"])
        us = {k: 1e6 * best[k] / n for k in ("decode", "rows", "close")}
        totals[decoder] = sum(us.values())
        print(f"   {decoder + ' decoder':16s} decode {us['decode']:6.2f} us/request   rows {us['rows']:6.2f}   close {us['close']:6.2f}   "
              f"total {totals[decoder]:6.2f} us/request (budget 10)")
        good = best["http_rows"] == inputs["live_http_rows"]
        ok = ok and good
        print(f"   {'':16s} http rows: replay {best['http_rows']}, live {inputs['live_http_rows']}, 2 x requests {2 * n}" + ("" if good else "  MISMATCH"))
    if len(totals) == 2:
        print(f"   compiled / Python decoder, same run: {totals['c'] / totals['python']:.3f}")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
