// Package testtasks builds the small task binaries the kernel builder's
// analysis, its tests and its benchmarks are checked on: Go programs from
// this module and C programs compiled with the system's gcc.
package testtasks

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

//go:embed csrc/static_write.c
var staticWrite []byte

//go:embed csrc/nostdlib.c
var noStdlib []byte

//go:embed csrc/sockets.c
var sockets []byte

//go:embed csrc/isa_vector.c
var isaVector []byte

//go:embed csrc/isa_avx512.c
var isaAVX512 []byte

//go:embed csrc/isa_dispatch.c
var isaDispatch []byte

// Task names.
const (
	GoHello     = "go-hello"      // writes to stdout
	GoHTTP      = "go-http"       // serves HTTP
	GoEpoll     = "go-epoll"      // epoll, timerfd, eventfd via x/sys/unix
	CStatic     = "c-static"      // static glibc, write and _exit
	CNoStdlib   = "c-nostdlib"    // no libc: raw write and exit
	CSockets    = "c-sockets"     // dynamic glibc with TCP and Unix sockets
	GoHelloBare = "go-hello-bare" // GoHello stripped (-s -w)
	GoLambda    = "go-lambda"     // an aws-lambda-go handler (echo, error, panic, sleep, exit, big)
	GoSnapStart = "go-snapstart"  // a custom runtime with SnapStart hooks
	GoCPU       = "go-cpu"        // a CPU-bound handler: JSON, regexp, compression

	// Instruction-set analysis tasks.
	GoHTTPV3  = "go-http-v3" // GoHTTP built with GOAMD64=v3
	CAVX2     = "c-avx2"     // a vectorised loop in main, -O3 -mavx2
	CAVX512   = "c-avx512"   // AVX-512F intrinsics in main, -mavx512f
	CDispatch = "c-dispatch" // AVX2 only behind __builtin_cpu_supports
	CLevelV3  = "c-level-v3" // -march=x86-64-v3 -mneeded: an ISA-level note
)

// Build compiles task name into dir and returns the binary's path.
func Build(dir, name string) (string, error) {
	out := filepath.Join(dir, name)
	var cmd *exec.Cmd
	goAMD64 := "v1" // never the caller's environment's
	goBuild := func(pkg string, ldflags string) *exec.Cmd {
		c := exec.Command("go", "build", "-trimpath", "-ldflags="+ldflags, "-o", out, "github.com/kindlingvm/kindling/internal/testtasks/"+pkg)
		c.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOAMD64="+goAMD64)
		return c
	}
	cc := func(src []byte, file string, flags ...string) (*exec.Cmd, error) {
		p := filepath.Join(dir, file)
		if err := os.WriteFile(p, src, 0o644); err != nil {
			return nil, err
		}
		return exec.Command("gcc", append(append([]string{"-O2", "-o", out}, flags...), p)...), nil
	}
	var err error
	switch name {
	case GoHello:
		cmd = goBuild("gohello", "")
	case GoHelloBare:
		cmd = goBuild("gohello", "-s -w")
	case GoHTTP:
		cmd = goBuild("gohttp", "")
	case GoEpoll:
		cmd = goBuild("goepoll", "")
	case GoLambda:
		cmd = goBuild("golambda", "")
	case GoSnapStart:
		cmd = goBuild("gosnapstart", "")
	case GoCPU:
		cmd = goBuild("gocpu", "")
	case CStatic:
		cmd, err = cc(staticWrite, "static_write.c", "-static")
	case CNoStdlib:
		cmd, err = cc(noStdlib, "nostdlib.c", "-static", "-nostdlib", "-fno-stack-protector", "-fcf-protection=none")
	case CSockets:
		cmd, err = cc(sockets, "sockets.c")
	case GoHTTPV3:
		goAMD64 = "v3"
		cmd = goBuild("gohttp", "")
	case CAVX2:
		cmd, err = cc(isaVector, "isa_vector.c", "-O3", "-mavx2")
	case CAVX512:
		cmd, err = cc(isaAVX512, "isa_avx512.c", "-mavx512f")
	case CDispatch:
		cmd, err = cc(isaDispatch, "isa_dispatch.c", "-O3")
	case CLevelV3:
		cmd, err = cc(isaVector, "isa_vector.c", "-O3", "-march=x86-64-v3", "-mneeded")
	default:
		return "", fmt.Errorf("testtasks: unknown task %q", name)
	}
	if err != nil {
		return "", err
	}
	if o, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build %s: %v\n%s", name, err, o)
	}
	return out, nil
}
