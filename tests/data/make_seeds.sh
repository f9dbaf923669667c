#!/bin/bash
# Regenerates the real-traffic seed captures used by tests/test_decode_*.py (run as root).
# Everything runs on 127.0.0.1: dnsmasq answered by dig, nginx answered by curl, openssl
# s_server answered by openssl s_client and curl. tcpdump writes one small pcap per protocol.
set -euo pipefail
OUT=$(cd "$(dirname "$0")" && pwd)
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; sleep 0.3; rm -rf "$W"' EXIT


# --- DNS: A, AAAA, a CNAME chain, NXDOMAIN, MX, TXT; UDP and TCP (two queries on one connection)
dnsmasq --no-daemon --port=5353 --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts \
  --local=/test/ --local-ttl=300 --host-record=api.test,198.18.0.10 --host-record=v6.test,2001:db8::1 \
  --host-record=target.test,198.18.0.11 --cname=www.test,mid.test --cname=mid.test,target.test \
  --mx-host=test,mail.test,10 --txt-record=txt.test,"hello world" --log-facility=/dev/null &
sleep 1
tcpdump -i lo -n -Z root -U --immediate-mode -s 0 -w "$OUT/dns.pcap" port 5353 2>/dev/null & TD=$!
sleep 1
dig @127.0.0.1 -p 5353 +retry=0 api.test A >/dev/null
dig @127.0.0.1 -p 5353 +retry=0 v6.test AAAA >/dev/null
dig @127.0.0.1 -p 5353 +retry=0 WWW.Test A >/dev/null
dig @127.0.0.1 -p 5353 +retry=0 nope.test A >/dev/null
dig @127.0.0.1 -p 5353 +retry=0 test MX >/dev/null
dig @127.0.0.1 -p 5353 +retry=0 txt.test TXT >/dev/null
dig @127.0.0.1 -p 5353 +tcp +keepopen www.test A api.test A >/dev/null
sleep 0.5; kill -TERM $TD; wait $TD 2>/dev/null || true

# --- HTTP/1.1: keep-alive, HEAD, 204, 304, 404, chunked (gzip), 100-continue, query string
mkdir -p "$W/www" "$W/tmp"
python3 -c "print('flowtape seed page ' * 60)" > "$W/www/index.html"
cat > "$W/nginx.conf" <<CONF
daemon off; user root; pid $W/nginx.pid; error_log $W/error.log; worker_processes 1;
events { worker_connections 64; }
http {
  access_log off; client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp;
  uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server {
    listen 127.0.0.1:8080; root $W/www; default_type text/html;
    location = /empty { return 204; }
    location = /upload { return 200 "stored\n"; }
    location = /gz { gzip on; gzip_min_length 1; gzip_types text/plain; default_type text/plain; alias $W/www/index.html; }
  }
  server {
    listen 127.0.0.1:8443 ssl; ssl_certificate $W/cert.pem; ssl_certificate_key $W/key.pem;
    root $W/www;
  }
}
CONF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=x.test \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
nginx -c "$W/nginx.conf" & NG=$!
sleep 1
tcpdump -i lo -n -Z root -U --immediate-mode -s 0 -w "$OUT/http.pcap" tcp port 8080 2>/dev/null & TD=$!
sleep 1
# keep-alive: GET, GET (404), HEAD on one connection (curl reuses it across --next)
curl -s -o /dev/null -o /dev/null -A seed-agent/1 -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \
  'http://127.0.0.1:8080/index.html?user=alice&token=s3cret' 'http://127.0.0.1:8080/missing' \
  --next -s -o /dev/null -I 'http://127.0.0.1:8080/index.html'
# pipelining: three requests in one send, nginx answers them in order
python3 - <<'PY'
import socket
s = socket.create_connection(("127.0.0.1", 8080))
s.sendall(b"".join(b"GET /%s HTTP/1.1\r\nHost: pipe.test\r\n\r\n" % p for p in (b"empty", b"missing", b"index.html")) )
got = b""
while got.count(b"HTTP/1.1 ") < 3 or not got.endswith(b"\n"):
    got += s.recv(65536)
s.close()
PY
curl -s -o /dev/null http://127.0.0.1:8080/empty
curl -s -o /dev/null -z "$W/www/index.html" http://127.0.0.1:8080/index.html
curl -s -o /dev/null -H 'Accept-Encoding: gzip' http://127.0.0.1:8080/gz
head -c 3000 /dev/zero | tr '\0' 'x' > "$W/body"
curl -s -o /dev/null -H 'Expect: 100-continue' --data-binary @"$W/body" http://127.0.0.1:8080/upload
sleep 0.5; kill -TERM $TD; wait $TD 2>/dev/null || true

# --- TLS ClientHellos: openssl 1.3 with SNI+ALPN, 1.2 only, no SNI; curl (h2, http/1.1)
tcpdump -i lo -n -Z root -U --immediate-mode -s 0 -w "$OUT/tls.pcap" tcp port 8443 2>/dev/null & TD=$!
sleep 1
openssl s_client -connect 127.0.0.1:8443 -servername x.test -alpn h2,http/1.1 </dev/null >/dev/null 2>&1 || true
openssl s_client -connect 127.0.0.1:8443 -servername legacy.test -tls1_2 </dev/null >/dev/null 2>&1 || true
openssl s_client -connect 127.0.0.1:8443 -noservername </dev/null >/dev/null 2>&1 || true
curl -sk -o /dev/null --resolve curl.test:8443:127.0.0.1 https://curl.test:8443/index.html
sleep 0.5; kill -TERM $TD; wait $TD 2>/dev/null || true
kill $NG
ls -l "$OUT"/*.pcap
