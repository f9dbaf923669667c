// A Go service for flowtape's request-journey tests: serves HTTP/1.1 and, for every request,
// calls each downstream URL given through one shared keep-alive http.Client (so a call often
// reuses a connection another request's goroutine dialed): the first from the handler's own
// goroutine, each further one from a goroutine the handler starts and waits for. A call's URL is
// the downstream URL followed by the request's path (so every exchange of a chain has its own
// path). It propagates no trace context. Logs every request it handled and the calls it made,
// with each call's local port (the truth).
//
//	chainsvc -addr 198.18.0.5:8000 -log served.jsonl http://198.18.0.6:8001/stock https://198.18.0.7:8443/price
//	chainsvc -addr 198.18.0.7:8443 -cert c.pem -key k.pem -log served.jsonl
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"sync"
	"time"
)

type call struct {
	URL    string `json:"url"`
	Port   int    `json:"port"`
	Status int    `json:"status"`
	Error  string `json:"error,omitempty"`
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8000", "listen address")
	logPath := flag.String("log", "served.jsonl", "one JSON line per request handled")
	cert := flag.String("cert", "", "serve HTTPS (HTTP/1.1) with this certificate")
	key := flag.String("key", "", "and this key")
	flag.Parse()
	urls := flag.Args()
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxIdleConnsPerHost: 8,
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}} // HTTP/1.1 over TLS too
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	out, err := os.Create(*logPath)
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex

	do := func(url string) call {
		c := call{URL: url}
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			c.Port = info.Conn.LocalAddr().(*net.TCPAddr).Port
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "GET", url, nil)
		resp, err := client.Do(req)
		if err != nil {
			c.Error = err.Error()
			return c
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		c.Status = resp.StatusCode
		return c
	}

	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		calls := make([]call, len(urls))
		var wg sync.WaitGroup
		for i, u := range urls {
			if i == 0 {
				calls[0] = do(u + r.URL.Path)
				continue
			}
			wg.Add(1)
			go func(i int, u string) {
				defer wg.Done()
				calls[i] = do(u)
			}(i, u+r.URL.Path)
		}
		wg.Wait()
		time.Sleep(time.Duration(2+rand.Intn(10)) * time.Millisecond) // the handler's own work
		w.Header().Set("Content-Length", "3")
		w.Write([]byte("ok\n"))
		_, port, _ := net.SplitHostPort(r.RemoteAddr)
		var p int
		fmt.Sscan(port, &p)
		b, _ := json.Marshal(map[string]any{"client_port": p, "path": r.URL.Path, "calls": calls})
		mu.Lock()
		out.Write(append(b, '\n'))
		mu.Unlock()
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("listening")
	if *cert != "" {
		srv := &http.Server{TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){}} // HTTP/1.1 only
		log.Fatal(srv.ServeTLS(ln, *cert, *key))
	}
	log.Fatal(http.Serve(ln, nil))
}
