"""The HTTP/2 + HPACK decoder (capture/decode/http2.py) on real traffic: tests/data/h2c.pcap
(tests/data/make_h2_seeds.sh: nginx h2c answered by curl and h2load, a grpcio server answered by
its client). Oracles: tshark's http2 dissector and hpack.Decoder."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict

import hpack
import pytest

from flowtape.capture.decode import http2
from flowtape.capture.decode.http2 import H2Connection, HpackReader, as_dicts
from flowtape.capture.decode.http_pairing import Redaction
from flowtape.capture.decode.stats import DecodeStats

from conftest import require_tool
from pcap_seeds import DATA, segments

PORTS = (8082, 50071)
GRPC_PORT = 50071


def connections() -> dict[tuple, list[tuple[int, bytes, bool]]]:
    """Per connection (client port, server port): its segments (ts, payload, from_client) in order."""
    out: dict[tuple, list] = defaultdict(list)
    for s in segments("h2c"):
        to_server = s.dst_port in PORTS
        out[(s.src_port, s.dst_port) if to_server else (s.dst_port, s.src_port)].append((s.ts_ns, s.payload, to_server))
    return dict(out)


def decode(segs, redaction=None, stats=None, at_start=True, split=None):
    c = H2Connection(stats or DecodeStats(), redaction or Redaction(enabled=False), at_start=at_start)
    rows = []
    for ts, data, fc in segs:
        if split:
            for i in range(0, len(data), split):
                rows += c.feed_tuples(ts, data[i : i + split], fc)
        else:
            rows += c.feed_tuples(ts, data, fc)
    return as_dicts(rows + c.close_tuples(segs[-1][0]))


@pytest.fixture(scope="module")
def tshark_frames():
    """tshark's http2 frames per (client port, server port, from_client), in order: type, stream, length, fields."""
    require_tool(("tshark",), "the oracle of these tests")
    out = subprocess.run(
        ["tshark", "-r", str(DATA / "h2c.pcap"), "-d", "tcp.port==8082,http2", "-d", f"tcp.port=={GRPC_PORT},http2",
         "-Y", "http2", "-T", "json", "--no-duplicate-keys", "-J", "tcp http2"],
        check=True, capture_output=True, text=True).stdout
    frames = defaultdict(list)
    for pkt in json.loads(out):
        layers = pkt["_source"]["layers"]
        sport, dport = int(layers["tcp"]["tcp.srcport"]), int(layers["tcp"]["tcp.dstport"])
        key = (sport, dport, True) if dport in PORTS else (dport, sport, False)
        h2 = layers["http2"]
        for item in (h2 if isinstance(h2, list) else [h2]):
            streams = item["http2.stream"]
            for f in (streams if isinstance(streams, list) else [streams]):
                if "http2.type" not in f:
                    continue  # the magic (preface)
                hs = f.get("http2.header", [])
                hs = hs if isinstance(hs, list) else [hs]
                frames[key].append((int(f["http2.type"]), int(f["http2.streamid"]), int(f["http2.length"]),
                                    [(h["http2.header.name"], h.get("http2.header.value", "")) for h in hs],
                                    bytes.fromhex(f.get("http2.headers", "").replace(":", ""))))
    return frames


def tshark_streams(frames) -> dict[tuple, dict]:
    """Per (client port, stream id): request/response fields and frame bytes, as tshark decoded them."""
    out: dict[tuple, dict] = defaultdict(lambda: {"req": {}, "resp": {}, "request_bytes": 0, "response_bytes": 0})
    for (cport, _sport, fc), fs in frames.items():
        for ftype, sid, length, fields, _ in fs:
            if sid == 0 or ftype not in (http2.DATA, http2.HEADERS, http2.CONTINUATION):
                continue
            s = out[(cport, sid)]
            s["request_bytes" if fc else "response_bytes"] += 9 + length
            for n, v in fields:
                s["req" if fc else "resp"].setdefault(n, v)  # first block's value (grpc-status: the trailers add it)
    return out


def test_rows_equal_tshark_for_every_stream(tshark_frames):
    want = tshark_streams(tshark_frames)
    got = {}
    for (cport, sport), segs in connections().items():
        for r in decode(segs):
            got[(cport, r["stream_id"])] = r
    assert set(got) == set(want) and len(got) == 29  # 4 curl, 20 h2load, 5 gRPC streams
    for key, w in want.items():
        r = got[key]
        assert (r["method"], r["path"], r["host"]) == (w["req"][":method"], w["req"][":path"], w["req"][":authority"]), key
        assert r["status"] == (int(w["resp"][":status"]) if ":status" in w["resp"] else None), key
        assert r["user_agent"] == w["req"].get("user-agent"), key
        assert r["request_bytes"] == w["request_bytes"], key
        if r["response_bytes"] is not None:  # (null for a stream whose response did not end in the capture)
            assert r["response_bytes"] == w["response_bytes"], key
        gs = w["resp"].get("grpc-status")
        assert r["grpc_status"] == (int(gs) if gs is not None else None), key
        assert r["headers_partial"] is False and r["http_version"] == "HTTP/2"


def test_grpc_calls_have_service_method_status_and_message():
    rows = {r["grpc_method"]: r for segs in connections().values() for r in decode(segs) if r["grpc_service"]}
    assert set(rows) == {"Unary", "Missing", "Down", "Slow", "Stream"}
    assert {r["grpc_service"] for r in rows.values()} == {"flowtape.test.Echo"}
    assert (rows["Unary"]["grpc_status"], rows["Unary"]["status"]) == (0, 200)
    assert (rows["Missing"]["grpc_status"], rows["Missing"]["grpc_message"]) == (5, "no such key: k1")
    assert (rows["Down"]["grpc_status"], rows["Down"]["grpc_message"], rows["Down"]["status"]) == (14, "backend down", 200)
    assert rows["Stream"]["grpc_status"] == 0 and rows["Stream"]["path"] == "/flowtape.test.Echo/Stream"
    # the client's deadline passed: it reset the stream (CANCEL); in this capture the server sent no trailers
    assert (rows["Slow"]["stream_error"], rows["Slow"]["grpc_status"]) == ("CANCEL", None)


def test_every_header_block_equals_hpack_decoder(tshark_frames):
    """Our partial-table HPACK reader gives hpack.Decoder's header lists on complete connections."""
    blocks = 0
    for key, fs in tshark_frames.items():
        ours, ref = HpackReader(), hpack.Decoder()
        for ftype, sid, length, fields, block in fs:
            if ftype != http2.HEADERS:
                continue
            got, unknown = ours.decode(block, every_value=True)
            assert not unknown
            assert [(n, v) for n, v in got] == [(n.decode("latin-1"), v.decode("latin-1")) for n, v in ref.decode(block, raw=True)]
            assert [(n, v) for n, v in got] == fields  # and tshark's
            blocks += 1
    assert blocks == 57


def test_byte_at_a_time_gives_the_same_rows():
    for segs in connections().values():
        strip = lambda rows: [{k: v for k, v in r.items() if k not in ("ts_request", "ts_response", "latency_ns")} for r in rows]  # noqa: E731
        assert strip(decode(segs, split=1)) == strip(decode(segs))


def test_redaction_as_http1():
    segs = next(s for s in connections().values() if decode(s)[0]["user_agent"] == "seed-agent/2")
    (row,) = decode(segs, redaction=Redaction())
    assert row["path"] == "/index.html?user=&token=" and row["user_agent"] == "seed-agent/2"
    (row,) = decode(segs, redaction=Redaction.from_settings(allow_list=["host"]))
    assert row["user_agent"] is None and row["host"] == "127.0.0.1:8082"


def grpc_segments():
    return next(s for (c, p), s in connections().items() if p == GRPC_PORT)


def test_joined_mid_connection_never_invents_a_header():
    """Start after the first two calls: HPACK tables are unknown; what decodes equals the truth."""
    segs = grpc_segments()
    full = {r["stream_id"]: r for r in decode(segs)}
    first = next(i for i, (_, d, fc) in enumerate(segs) if fc and b"/flowtape.test.Echo/Down" in d)
    stats = DecodeStats()
    late = sorted(decode(segs[first:], stats=stats, at_start=False), key=lambda r: r["stream_id"])
    assert [r["stream_id"] for r in late] == [5, 7, 9]
    for r in late:
        truth = full[r["stream_id"]]
        for col, v in r.items():
            assert v is None or v == truth[col] or col == "headers_partial", (col, v, truth[col])
        assert r["method"] == "POST" and r["request_bytes"] == truth["request_bytes"]  # :method POST is in the static table
    down = late[0]
    # the first Down call sent its path as a new literal under the static name :path: decodable. Its
    # grpc-status 14 is a literal too, but under the name "grpc-status" inserted by an earlier call:
    # a value without a known name is not attributed to any column
    assert down["path"] == "/flowtape.test.Echo/Down" and down["status"] == 200 and down["grpc_status"] is None
    # user-agent was inserted into the dynamic table by an earlier call: unknown, so null and marked
    assert down["user_agent"] is None and down["headers_partial"] is True
    assert stats["http2_mid_connection"] == 1 and stats["http2_headers_partial"] == sum(r["headers_partial"] for r in late)


def test_bytes_not_captured_inside_a_data_frame_change_nothing():
    segs = next(s for s in connections().values() if sum(len(d) for _, d, fc in s if not fc) > 40000)  # /big.html
    full = decode(segs)
    big = max(range(len(segs)), key=lambda i: len(segs[i][1]))
    stats = DecodeStats()
    c = H2Connection(stats, Redaction(enabled=False))
    rows = []
    for i, (t, d, f) in enumerate(segs):
        if i != big:
            rows += c.feed_tuples(t, d, f)
            continue
        rows += c.feed_tuples(t, d[:200], f)
        left = c.dirs[f].remaining  # bytes of the DATA frame being read
        assert c.dirs[f].ftype == http2.DATA and left > 1000
        rows += c.feed_tuples(t, b"", f, left - 10)  # as a capture prefix gives: length without the bytes
        rows += c.feed_tuples(t, d[200 + left - 10 :], f)
    rows += c.close_tuples(segs[-1][0])
    assert as_dicts(rows) == full and stats["http2_desync"] == 0


def test_gap_over_a_frame_header_is_counted_and_later_rows_are_not_invented():
    segs = grpc_segments()
    full = {r["stream_id"]: r for r in decode(segs)}
    stats = DecodeStats()
    c = H2Connection(stats, Redaction(enabled=False))
    rows = []
    hidden = next(i for i, (_, d, fc) in enumerate(segs) if fc and b"/flowtape.test.Echo/Missing" in d)
    for i, (t, d, f) in enumerate(segs):
        rows += c.feed_tuples(t, b"" if i == hidden else d, f, len(d))
    rows = as_dicts(rows + c.close_tuples(segs[-1][0]))
    assert stats["http2_desync"] == 1
    assert 3 not in {r["stream_id"] for r in rows}  # the hidden request: no row (its response is an orphan or late)
    for r in rows:
        truth = full[r["stream_id"]]
        for col, v in r.items():
            assert v is None or v == truth[col] or col in ("headers_partial", "request_bytes"), (r["stream_id"], col, v)


def test_hpack_partial_table_recovers_entries_inserted_after_the_loss():
    enc = hpack.Encoder()
    blocks = [enc.encode([(":method", "GET"), (":path", f"/p{i}"), ("user-agent", f"ua{i}"), ("x-id", f"v{i}")]) for i in range(3)]
    blocks.append(enc.encode([(":method", "GET"), (":path", "/p0"), ("user-agent", "ua2"), ("x-id", "v2")]))
    r = HpackReader(complete=False)
    r.decode(blocks[2])  # the reader joins at block 2: its insertions are known from here on
    fields, unknown = r.decode(blocks[3])
    assert fields[0] == (":method", "GET") and fields[2] == ("user-agent", "ua2")  # static name, inserted after the join
    assert unknown and fields[1] == (None, None)  # /p0 was inserted before the reader joined
    assert fields[3] == (None, "v2")  # inserted after the join under a name that indexed an entry from before it


def test_table_size_update_to_zero_makes_the_table_known_again():
    enc = hpack.Encoder()
    enc.encode([("x-a", "1")])
    enc.header_table_size = 0
    enc.encode([("x-b", "2")])
    enc.header_table_size = 4096
    block = enc.encode([("x-c", "3")])
    r = HpackReader(complete=False)
    r.decode(b"\x20" + block)  # a size update to 0 empties the table: everything after is known
    assert r.complete


# --- through the recorder's L7Decoder (synthetic ring-buffer records, no kernel) ------------------

def _records(segs, cport, sport, mss=1448):
    """struct l7_event records as bpf/l7.c sends them for a followed flow: one per wire segment
    (the lab's veths have no segmentation offload), the first 2048 bytes of each."""
    from flowtape.capture.live.l7 import HTTP, c_header_class

    event = c_header_class()
    cli, srv = bytes([198, 18, 0, 2]) + bytes(12), bytes([198, 18, 0, 1]) + bytes(12)
    seq = {True: 1000, False: 50000}
    out = []
    for ts, data, fc in segs:
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            ev = event()
            src, dst, sp, dp = (cli, srv, cport, sport) if fc else (srv, cli, sport, cport)
            ev.ts_ns, ev.kind, ev.family, ev.seq, ev.from_client = ts, HTTP, 4, seq[fc], int(fc)
            ev.saddr[:], ev.daddr[:], ev.sport, ev.dport = list(src), list(dst), sp, dp
            ev.length, ev.cap_len = len(chunk), min(len(chunk), 2048)
            ev.data[: ev.cap_len] = list(chunk[:2048])
            seq[fc] += len(chunk)
            out.append(bytes(ev))
    return out


def test_l7_decoder_routes_h2c_flows_to_the_http2_decoder_one_row_per_local_side():
    from flowtape.capture.live.l7 import Endpoint, L7Decoder

    dec = L7Decoder("n", 0, redaction=Redaction(enabled=False))
    want = []
    for (cport, sport), segs in connections().items():
        t0 = segs[0][0] - 1000
        dec.add_endpoint(Endpoint(cport, "client", t0, "198.18.0.2", cport, "198.18.0.1", sport, 100, "cli", cport))
        dec.add_endpoint(Endpoint(sport * 100000 + cport, "server", t0, "198.18.0.1", sport, "198.18.0.2", cport, 200, "srv", sport * 100000 + cport))
        dec.feed_batch(_records(segs, cport, sport))
        want += [(cport, r["stream_id"], r["method"], r["path"], r["status"], r["grpc_status"], r["request_bytes"], r["response_bytes"]) for r in decode(segs)]
    rows = list(dec.take_rows(final=True)["http"])
    got = sorted((r["client_port"], r["stream_id"], r["method"], r["path"], r["status"], r["grpc_status"], r["request_bytes"], r["response_bytes"], r["side"]) for r in rows)
    assert got == sorted([(*w, side) for w in want for side in ("client", "server")])
    assert {r["http_version"] for r in rows} == {"HTTP/2"} and not any(r["tls"] for r in rows)
    assert dec.stats["http2_connections"] == len(connections()) and dec.stats["http2_desync"] == 0
    assert sum(dec.stats.lost_counters().values()) == 0
    table = dec.take_rows(final=True)["http"].to_arrow()  # (empty now) the Arrow path with HTTP/2 columns
    assert "grpc_status" in table.schema.names


def test_l7_decoder_ssl_plaintext_h2_rows_are_tls_rows():
    from flowtape.capture.live.l7 import SSL_READ, SSL_WRITE, Endpoint, L7Decoder, c_header_class

    event = c_header_class()
    segs = grpc_segments()  # the same bytes, as a TLS client's SSL_write/SSL_read calls would return them
    dec = L7Decoder("n", 0, redaction=Redaction(enabled=False))
    sk = 0xFFFF0000AA
    dec.add_endpoint(Endpoint(sk, "client", segs[0][0] - 1000, "198.18.0.2", 41000, "198.18.0.1", 443, 7, "cli", 9))
    for ts, data, fc in segs:
        for i in range(0, len(data), 2048):  # bpf/l7.c sends an h2 stream's calls in 2 KiB records
            chunk = data[i : i + 2048]
            ev = event()
            ev.ts_ns, ev.skaddr, ev.ssl, ev.pid, ev.kind = ts, sk, 0x5000, 7, SSL_WRITE if fc else SSL_READ
            ev.length = ev.cap_len = len(chunk)
            ev.comm = b"cli"
            ev.data[: len(chunk)] = list(chunk)
            dec.feed(bytes(ev))
    rows = list(dec.take_rows(final=True)["http"])
    assert sorted((r["grpc_method"], r["grpc_status"], r["side"], r["tls"]) for r in rows) == sorted(
        (r["grpc_method"], r["grpc_status"], "client", True) for r in decode(segs))
