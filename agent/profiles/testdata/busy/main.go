// Command busy does one kind of work over and over for a while, profiling
// its CPU with runtime/pprof into the file it is given:
//
//	busy sha256sum|indexbyte|spin PROFILE DURATION
//
// sha256sum hashes with crypto/sha256 (which Go dispatches at run time to
// SHA-NI or AVX2 code), indexbyte searches with bytes.IndexByte
// (internal/bytealg's AVX2 code), spin runs an integer loop no CPU-feature
// dispatch touches.
package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"runtime/pprof"
	"time"
)

func main() {
	work := map[string]func(time.Duration) string{"sha256sum": sha256sum, "indexbyte": indexbyte, "spin": spin}
	if len(os.Args) != 4 || work[os.Args[1]] == nil {
		fmt.Fprintln(os.Stderr, "usage: busy sha256sum|indexbyte|spin PROFILE DURATION")
		os.Exit(2)
	}
	d, err := time.ParseDuration(os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	f, err := os.Create(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	out := work[os.Args[1]](d)
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(out)
}

func sha256sum(d time.Duration) string {
	buf := make([]byte, 64<<10)
	var sum [sha256.Size]byte
	for start := time.Now(); time.Since(start) < d; {
		sum = sha256.Sum256(buf)
		buf[0] ^= sum[0]
	}
	return fmt.Sprintf("%x", sum)
}

func indexbyte(d time.Duration) string {
	buf := make([]byte, 1<<20)
	found := 0
	for start := time.Now(); time.Since(start) < d; {
		buf[len(buf)-1-found%64] = '\n'
		found += bytes.IndexByte(buf, '\n')
		buf[len(buf)-1-found%64] = 0
	}
	return fmt.Sprint(found)
}

func spin(d time.Duration) string {
	x := uint64(88172645463325252)
	for start := time.Now(); time.Since(start) < d; {
		for range 1 << 20 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
		}
	}
	return fmt.Sprint(x)
}
