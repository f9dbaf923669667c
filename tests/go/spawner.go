// spawner: chains of goroutines, each chain's last goroutine doing one HTTP/1.1 exchange over a
// raw socket, with goroutines that never touch a socket beside them (tests/test_record_go_spawns.py).
// It waits for -start (a file) to exist, so the recorder has attached its uprobes to the binary, then
// spawns a chain of each depth in -depths (the leaf at that many `go` statements below main), logs
// every goroutine it started (its id, its creator's, whether it did socket I/O) as JSON on stdout,
// and exits. Every goroutine stays alive until the end: no g is reused during the run.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

type spawn struct {
	G      uint64 `json:"g"`
	Parent uint64 `json:"parent"`
	IO     bool   `json:"io"`
	Path   string `json:"path,omitempty"`
	Status int    `json:"status,omitempty"`
}

var (
	mu      sync.Mutex
	log     []spawn
	release = make(chan struct{})
	leaves  sync.WaitGroup
	started sync.WaitGroup
	addr    string
)

// goid is the running goroutine's id, from the first line of its stack trace ("goroutine 7 [running]:").
func goid() uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf))
	n, _ := strconv.ParseUint(f[1], 10, 64)
	return n
}

func record(s spawn) {
	mu.Lock()
	log = append(log, s)
	mu.Unlock()
}

func quiet(parent uint64) {
	record(spawn{G: goid(), Parent: parent})
	started.Done()
	<-release
}

// level runs at depth k of a chain of depth d: it starts a quiet goroutine and the next level, or
// at the leaf does the exchange.
func level(parent uint64, k, d int) {
	me := goid()
	if k < d {
		record(spawn{G: me, Parent: parent})
		started.Add(2)
		go quiet(me)
		go level(me, k+1, d)
		started.Done()
		<-release
		return
	}
	path := fmt.Sprintf("/spawn/%d", me)
	status := exchange(path)
	record(spawn{G: me, Parent: parent, IO: true, Path: path, Status: status})
	started.Done()
	leaves.Done()
	<-release
}

func exchange(path string) int {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: spawner\r\nConnection: close\r\n\r\n", path)
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, r)
	f := strings.Fields(line)
	if len(f) < 2 {
		return 0
	}
	n, _ := strconv.Atoi(f[1])
	return n
}

func main() {
	flag.StringVar(&addr, "addr", "", "the HTTP server host:port")
	start := flag.String("start", "", "begin once this file exists")
	depths := flag.String("depths", "1,2,3,4,5,6,7,8,10", "chain depths")
	flag.Parse()
	fmt.Println("listening") // the test's start handshake
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(*start); err == nil {
			break
		}
	}
	me := goid()
	for _, s := range strings.Split(*depths, ",") {
		d, _ := strconv.Atoi(s)
		leaves.Add(1)
		started.Add(2)
		go quiet(me)
		go level(me, 1, d)
	}
	leaves.Wait()
	started.Wait()
	time.Sleep(300 * time.Millisecond) // the recorder reads the last turns while every goroutine still lives
	json.NewEncoder(os.Stdout).Encode(map[string]any{"main": me, "spawns": log})
	close(release)
}
