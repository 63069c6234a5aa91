// Command cpuhog burns CPU in a few distinct functions on several
// goroutines, for the profiler's tests. It imports little, so that the
// tests' `go build -pgo`, which rebuilds every dependency, stays quick.
//
//	cpuhog [-d duration] [-n rounds] [-fork]
//
// With -n each worker does a fixed number of rounds (the overhead
// benchmark); otherwise they run for -d (default 1s). -fork also runs a
// copy of itself as a child process.
package main

import (
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// sink keeps the results live so the compiler cannot drop the work.
var sink atomic.Uint64

func main() {
	d, n, fork := time.Second, 0, false
	for i := 1; i < len(os.Args); i++ {
		switch os.Args[i] {
		case "-d":
			i++
			var err error
			if d, err = time.ParseDuration(os.Args[i]); err != nil {
				panic(err)
			}
		case "-n":
			i++
			n = atoi(os.Args[i])
		case "-fork":
			fork = true
		default:
			panic("usage: cpuhog [-d duration] [-n rounds] [-fork]")
		}
	}
	if fork {
		child, err := os.StartProcess(os.Args[0], []string{os.Args[0], "-d", d.String()},
			&os.ProcAttr{Files: []*os.File{nil, os.Stdout, os.Stderr}})
		if err != nil {
			panic(err)
		}
		defer child.Wait()
	}

	deadline := time.Now().Add(d)
	more := func(round int) bool {
		if n > 0 {
			return round < n
		}
		return round%8 != 0 || time.Now().Before(deadline)
	}
	var wg sync.WaitGroup
	for _, work := range []func(int) uint64{spin, mixWorker, tableHash} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var acc uint64
			for round := 0; more(round); round++ {
				acc += work(round)
			}
			sink.Add(acc)
		}()
	}
	wg.Wait()
	os.Stdout.WriteString(itoa(sink.Load()) + "\n")
}

// spin is a frameless leaf: a tight integer loop with no calls and no
// stack frame, the case where the kernel's frame-pointer walk alone would
// lose its caller.
//
//go:noinline
func spin(seed int) uint64 {
	x := uint64(seed) | 1
	for i := 0; i < 1<<17; i++ {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
	}
	return x
}

// mixWorker calls a method whose loop inlines a small helper.
//
//go:noinline
func mixWorker(seed int) uint64 {
	var m mixer
	m.buf[0] = byte(seed)
	return m.mix()
}

type mixer struct {
	buf [4096]byte
}

// mix runs a hash over the buffer; step is inlined into it.
//
//go:noinline
func (m *mixer) mix() uint64 {
	h := uint64(14695981039346656037)
	for r := 0; r < 8; r++ {
		for _, b := range m.buf {
			h = step(h, b)
		}
		m.buf[r] = byte(h)
	}
	return h
}

func step(h uint64, b byte) uint64 {
	h ^= uint64(b)
	h *= 1099511628211
	h ^= h >> 29
	h += h << 11
	h ^= h >> 31
	h *= 0x9e3779b97f4a7c15
	return h
}

// tableHash is a leaf with a stack frame (its table), so the frame
// pointer leads to its caller once its prologue has run.
//
//go:noinline
func tableHash(seed int) uint64 {
	var table [256]uint64
	x := uint64(seed) + 1
	for i := range table {
		x = x*6364136223846793005 + 1442695040888963407
		table[i] = x
	}
	h := uint64(0)
	for i := 0; i < 1<<16; i++ {
		h = (h << 5) ^ (h >> 59) ^ table[byte(h)^byte(i)]
	}
	return h
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			panic("not a number: " + s)
		}
		n = n*10 + int(c-'0')
	}
	return n
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		if v /= 10; v == 0 {
			return string(b[i:])
		}
	}
}
