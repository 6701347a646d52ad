// Command pause sleeps until it is told to stop. It is the sandbox image of
// the local cluster (the usual pause image cannot be pulled here) and the
// program of its demo workloads.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if len(os.Args) > 1 {
		fmt.Println(os.Args[1])
	}
	<-sig
}
