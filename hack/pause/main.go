// Command pause sleeps until it is told to stop. It is the sandbox image of
// the local cluster (the usual pause image cannot be pulled here) and the
// program of its demo workloads. With $READ_DIR, it first reads every file
// under that directory and prints how many files and bytes it read (a pod
// reading what an image volume mounts).
package main

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	if len(os.Args) > 1 {
		fmt.Println(os.Args[1])
	}
	if dir := os.Getenv("READ_DIR"); dir != "" {
		files, bytes, err := readAll(dir)
		fmt.Printf("read %d files, %d bytes under %s (error: %v)\n", files, bytes, dir, err)
	}
	<-sig
}

func readAll(dir string) (files int, bytes int64, err error) {
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.Copy(io.Discard, f)
		files, bytes = files+1, bytes+n
		return err
	})
	return files, bytes, err
}
