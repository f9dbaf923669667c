"""A real S3 HTTP API on loopback (moto's server) and a TCP proxy in front of it that can cut
the network: what the object-storage tests upload to, fail against and read back from.

The proxy is the "network": `proxy.down()` refuses new connections and resets open ones (as a
node losing its route does to the recorder), `proxy.cut_after(n)` lets n more bytes through
towards the store and then resets the connection (a part cut mid-upload), `proxy.up()` heals it.
The moto server itself keeps its buckets across all that (its state lives in this process).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import urllib.request
from contextlib import contextmanager
from typing import Iterator

from moto.server import ThreadedMotoServer


class Proxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._up = True
        self._budget: int | None = None  # bytes still allowed upstream before a cut
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def down(self) -> None:
        with self._lock:
            self._up = False
            conns, self._conns = self._conns, []
        for c in conns:
            _reset(c)

    def up(self) -> None:
        with self._lock:
            self._up, self._budget = True, None

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._budget = n

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                if not self._up:
                    _reset(client)
                    continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns += [client, server]
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    with self._lock:
                        if not self._up:
                            break
                        if self._budget is not None:
                            if len(data) > self._budget:
                                data = data[: self._budget]
                                self._budget = 0
                                self._up = False  # the network is gone from here on
                                self.cuts += 1
                            else:
                                self._budget -= len(data)
                    if data:
                        dst.sendall(data)
                    with self._lock:
                        if not self._up:
                            break
                else:
                    dst.sendall(data)
        except OSError:
            pass
        _reset(src)
        _reset(dst)


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, not FIN
        s.close()
    except OSError:
        pass


class S3Lab:
    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request drowns the test output
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.direct = f"http://{host}:{port}"
        self.proxy = Proxy((host, port))

    def env(self) -> dict[str, str]:
        """The environment a user sets for an S3-compatible store (here: through the proxy)."""
        return {"AWS_ENDPOINT_URL": self.proxy.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        """A client straight to the store (not through the proxy): the tests' ground truth."""
        import boto3

        return boto3.client("s3", endpoint_url=self.direct, aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1")

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        s3 = self.client()
        out = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out

    @contextmanager
    def auth_enforced(self) -> Iterator[None]:
        """moto checks every request's credentials against its IAM users while inside (none exist:
        any key is unknown)."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")

    def _post(self, path: str, body: bytes) -> dict:
        # text/plain: with urllib's default form type the body is parsed as a form and moto reads nothing
        req = urllib.request.Request(self.direct + path, data=body, method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proxy.sock.close()
        self.server.stop()
