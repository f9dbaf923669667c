"""A real gRPC server and client (grpcio, generic handlers, bytes in and out: no code generation).

The server writes one JSON line per call it handled to its log: {"method": "/pkg.Service/Method",
"code": "OK" | "NOT_FOUND" | ...}. That log is the ground truth for the recorder's gRPC rows, as
nginx's access log is for HTTP/1.

    python tests/grpc_peer.py serve ADDR:PORT LOGFILE        # runs until killed; prints "ready"
    python tests/grpc_peer.py call ADDR:PORT [ROUNDS]         # every method ROUNDS times on one channel
    python tests/grpc_peer.py hold ADDR:PORT SECONDS          # one channel, a Unary call every 0.1 s

Methods (service flowtape.test.Echo): Unary (OK, echoes), Missing (NOT_FOUND), Down (UNAVAILABLE),
Slow (sleeps past the client's 100 ms deadline: DEADLINE_EXCEEDED), Stream (server streaming, three
messages, OK). Insecure channels: the h2c path (grpcio carries its own TLS library, not libssl, so
the OpenSSL uprobes never see its plaintext).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "flowtape.test.Echo"
METHODS = ("Unary", "Missing", "Down", "Slow", "Stream")
EXPECTED = {"Unary": "OK", "Missing": "NOT_FOUND", "Down": "UNAVAILABLE", "Slow": "DEADLINE_EXCEEDED", "Stream": "OK"}
SLOW_S, DEADLINE_S = 0.5, 0.1


def serve(addr: str, log_path: str) -> None:
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)

    def record(method: str, code: grpc.StatusCode) -> None:
        with lock:
            log.write(json.dumps({"method": f"/{SERVICE}/{method}", "code": code.name, "ts": time.time()}) + "\n")

    def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        record("Unary", grpc.StatusCode.OK)
        return b"echo:" + req

    def missing(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        record("Missing", grpc.StatusCode.NOT_FOUND)
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such key: k1")

    def down(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        record("Down", grpc.StatusCode.UNAVAILABLE)
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "backend down")

    def slow(req: bytes, ctx: grpc.ServicerContext) -> bytes:
        time.sleep(SLOW_S)  # the client's deadline passes first: gRPC ends the call DEADLINE_EXCEEDED
        record("Slow", grpc.StatusCode.DEADLINE_EXCEEDED if ctx.time_remaining() <= 0 else grpc.StatusCode.OK)
        return b"late"

    def stream(req: bytes, ctx: grpc.ServicerContext):
        for i in range(3):
            yield b"part%d" % i
        record("Stream", grpc.StatusCode.OK)

    ident = lambda b: b  # noqa: E731  (bytes in, bytes out)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "Missing": grpc.unary_unary_rpc_method_handler(missing, ident, ident),
        "Down": grpc.unary_unary_rpc_method_handler(down, ident, ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call_all(channel: grpc.Channel, method: str) -> str:
    """One call of `method`; returns the status code name the client saw."""
    path = f"/{SERVICE}/{method}"
    try:
        if method == "Stream":
            list(channel.unary_stream(path)(b"s", timeout=5))
        else:
            channel.unary_unary(path)(b"ping", timeout=DEADLINE_S if method == "Slow" else 5)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def main(argv: list[str]) -> int:
    cmd, addr = argv[0], argv[1]
    if cmd == "serve":
        serve(addr, argv[2])
        return 0
    with grpc.insecure_channel(addr) as ch:
        if cmd == "call":
            rounds = int(argv[2]) if len(argv) > 2 else 1
            seen = [(m, call_all(ch, m)) for _ in range(rounds) for m in METHODS]
            print(json.dumps(seen))
            time.sleep(SLOW_S)  # let the server finish the Slow calls before the channel closes
            return 0 if all(EXPECTED[m] == c for m, c in seen) else 1
        if cmd == "hold":
            end = time.time() + float(argv[2])
            n = 0
            while time.time() < end:
                call_all(ch, "Unary")
                n += 1
                time.sleep(0.1)
            print(n, flush=True)
            return 0
    print(f"unknown command {cmd!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
