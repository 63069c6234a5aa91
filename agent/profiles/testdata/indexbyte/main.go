// Command indexbyte searches a large buffer with bytes.IndexByte over and
// over for a while, profiling its CPU into the file its first argument
// names: the work internal/bytealg dispatches at run time to AVX2 code.
package main

import (
	"bytes"
	"fmt"
	"os"
	"runtime/pprof"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: indexbyte PROFILE DURATION")
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
	buf := make([]byte, 1<<20)
	found := 0
	for start := time.Now(); time.Since(start) < d; {
		buf[len(buf)-1-found%64] = '\n'
		found += bytes.IndexByte(buf, '\n')
		buf[len(buf)-1-found%64] = 0
	}
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(found)
}
