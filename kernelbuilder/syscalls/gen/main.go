// Command gen re-derives kernelbuilder/syscalls/table_gen.go from a kernel
// source tree: go run ./kernelbuilder/syscalls/gen [-src DIR] [-o FILE];
// without -src it unpacks the installed linux-source (cached) and reads that.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/kernelbuilder/syscalls"
)

func main() {
	src := flag.String("src", "", "unpacked kernel source `dir`")
	out := flag.String("o", "kernelbuilder/syscalls/table_gen.go", "output `file`")
	printSource := flag.Bool("print-source", false, "unpack the installed kernel source (cached) and print its directory")
	flag.Parse()
	if *printSource || *src == "" {
		dir, err := kernelbuilder.SourceTree(context.Background(), kernelbuilder.BuildOptions{Progress: os.Stderr})
		if err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
		if *printSource {
			fmt.Println(dir)
			return
		}
		*src = dir
	}
	if *src == "" {
		fmt.Fprintln(os.Stderr, "gen: -src is required (an unpacked linux-source tree)")
		os.Exit(2)
	}
	t, err := syscalls.Derive(*src)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, t.GoSource(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
