// Command sha256sum hashes a buffer over and over with crypto/sha256 for a
// while, profiling its CPU into the file its first argument names: the
// work Go dispatches at run time to SHA-NI or AVX2 code.
package main

import (
	"crypto/sha256"
	"fmt"
	"os"
	"runtime/pprof"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: sha256sum PROFILE DURATION")
		os.Exit(2)
	}
	d, err := time.ParseDuration(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	f, err := os.Create(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buf := make([]byte, 64<<10)
	var sum [sha256.Size]byte
	for start := time.Now(); time.Since(start) < d; {
		sum = sha256.Sum256(buf)
		buf[0] ^= sum[0]
	}
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%x\n", sum)
}
