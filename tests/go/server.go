// An HTTPS server for flowtape's Go TLS tests: it logs every request it served (the truth).
//
//	server -addr 198.18.1.2:8443 -cert c.pem -key k.pem -log served.jsonl [-http1]
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8443", "listen address")
	cert := flag.String("cert", "", "certificate PEM")
	key := flag.String("key", "", "key PEM")
	logPath := flag.String("log", "served.jsonl", "one JSON line per request served")
	http1 := flag.Bool("http1", false, "serve HTTP/1.1 only (no h2 in ALPN)")
	flag.Parse()

	out, err := os.Create(*logPath)
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	logReq := func(r *http.Request, status int) {
		mu.Lock()
		defer mu.Unlock()
		b, _ := json.Marshal(map[string]any{"method": r.Method, "path": r.URL.Path, "status": status, "proto": r.Proto})
		out.Write(append(b, '\n'))
		out.Sync()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// /status/404 answers 404; /bytes/N answers N bytes; anything else 200 "ok"
		status, body := 200, "ok\n"
		if strings.HasPrefix(r.URL.Path, "/status/") {
			status, _ = strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
			body = fmt.Sprintf("status %d\n", status)
		} else if strings.HasPrefix(r.URL.Path, "/bytes/") {
			n, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/bytes/"))
			body = strings.Repeat("x", n)
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(status)
		w.Write([]byte(body))
		logReq(r, status)
	})
	srv := &http.Server{Addr: *addr, Handler: mux}
	if *http1 {
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}
	fmt.Println("listening")
	log.Fatal(srv.ListenAndServeTLS(*cert, *key))
}
