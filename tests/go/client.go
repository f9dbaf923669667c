// An HTTPS client for flowtape's Go TLS tests: GETs each path given, keep-alive, and logs
// every response it got (the truth on the client side).
//
//	client -base https://198.18.1.2:8443 -n 3 -log got.jsonl [-http1] /a /status/404 ...
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	base := flag.String("base", "https://127.0.0.1:8443", "server URL")
	n := flag.Int("n", 1, "rounds over the paths")
	logPath := flag.String("log", "got.jsonl", "one JSON line per response")
	http1 := flag.Bool("http1", false, "HTTP/1.1 only")
	wait := flag.Duration("wait", 0, "sleep this long before the first request (a recorder finds new processes about every second)")
	flag.Parse()
	time.Sleep(*wait)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxIdleConnsPerHost: 1}
	if *http1 {
		tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	} else {
		tr.ForceAttemptHTTP2 = true
	}
	c := &http.Client{Transport: tr}
	out, err := os.Create(*logPath)
	if err != nil {
		log.Fatal(err)
	}
	for i := 0; i < *n; i++ {
		for _, p := range flag.Args() {
			resp, err := c.Get(*base + p)
			if err != nil {
				log.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			b, _ := json.Marshal(map[string]any{"method": "GET", "path": p, "status": resp.StatusCode, "proto": resp.Proto})
			out.Write(append(b, '\n'))
		}
	}
	out.Sync()
}
