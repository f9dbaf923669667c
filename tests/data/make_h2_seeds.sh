#!/bin/bash
# Regenerates tests/data/h2c.pcap, the real HTTP/2 cleartext traffic tests/test_decode_http2.py
# decodes (run as root, from the repository with .venv set up). Everything runs on 127.0.0.1:
#   port 8082: nginx with `listen ... http2` (h2c, prior knowledge) answered by
#              curl --http2-prior-knowledge (one connection each: GET with a query, 404, POST with a body, a 40 KB page)
#              and h2load (2 connections, 5 concurrent streams each);
#   port 50071: a grpcio server (tests/grpc_peer.py) answered by its client: OK, NOT_FOUND,
#              UNAVAILABLE, DEADLINE_EXCEEDED (client deadline) and a server-streaming call.
set -euo pipefail
OUT=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$OUT/../.." && pwd)
PY="$REPO/.venv/bin/python"
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$W"' EXIT

mkdir -p "$W/www" "$W/tmp"
python3 -c "print('flowtape h2 seed page ' * 30)" > "$W/www/index.html"
python3 -c "print('x' * 40000)" > "$W/www/big.html"
cat > "$W/nginx.conf" <<CONF
daemon off; user root; pid $W/nginx.pid; error_log $W/error.log; worker_processes 1;
events { worker_connections 64; }
http {
  access_log off; client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp;
  uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server {
    listen 127.0.0.1:8082 http2; root $W/www; default_type text/html;
    location = /upload { return 201 "stored\n"; }
  }
}
CONF
nginx -c "$W/nginx.conf" & NG=$!
"$PY" "$REPO/tests/grpc_peer.py" serve 127.0.0.1:50071 "$W/grpc.log" > "$W/grpc.out" & GS=$!
sleep 1.5
tcpdump -i lo -n -Z root -U --immediate-mode -s 0 -w "$OUT/h2c.pcap" tcp port 8082 or tcp port 50071 2>/dev/null & TD=$!
sleep 1
curl -s -o /dev/null --http2-prior-knowledge -A seed-agent/2 'http://127.0.0.1:8082/index.html?user=alice&token=s3cret'
curl -s -o /dev/null --http2-prior-knowledge http://127.0.0.1:8082/missing
curl -s -o /dev/null --http2-prior-knowledge --data-binary 'name=flowtape' http://127.0.0.1:8082/upload || true  # nginx may reset the stream (NO_ERROR) after answering before the body: curl exits 92
curl -s -o /dev/null --http2-prior-knowledge http://127.0.0.1:8082/big.html
h2load -n 20 -c 2 -m 5 http://127.0.0.1:8082/index.html >/dev/null
"$PY" "$REPO/tests/grpc_peer.py" call 127.0.0.1:50071 1 >/dev/null
sleep 0.5; kill -TERM $TD; wait $TD 2>/dev/null || true
kill $NG $GS
ls -l "$OUT/h2c.pcap"
