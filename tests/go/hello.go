// A Go program without crypto/tls: the recorder must skip it with a counted note.
package main

import (
	"fmt"
	"time"
)

func main() {
	fmt.Println("hello")
	time.Sleep(60 * time.Second)
}
