package seccomp

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// childEnv runs this test binary as a child that installs the VMM's filter
// and then does what its value names (see child).
const childEnv = "KINDLING_SECCOMP_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := child(mode, os.Getenv("KINDLING_SECCOMP_TEST_DIR")); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(3)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// child installs the VMM filter, then:
//   - "runtime": what a running VMM does besides KVM (threads coming and
//     going, GC, timers, a vsock-style Unix connection out and in,
//     snapshot-style file work, kicks) and checks every thread has the
//     filter; it must survive;
//   - "tsync": a thread that existed before the filter makes a denied
//     call;
//   - "selftest": SelfTest;
//   - "exec": starts a program.
func child(mode, dir string) error {
	// Made before the filter, as the VMM makes its API and vsock
	// listeners before it.
	ln, err := net.Listen("unix", filepath.Join(dir, "l.sock"))
	if err != nil {
		return err
	}
	early := make(chan struct{})
	earlyDone := make(chan error)
	go func() {
		runtime.LockOSThread()
		<-early
		_, _, errno := unix.Syscall(unix.SYS_MOUNT, 0, 0, 0)
		earlyDone <- errno
	}()
	time.Sleep(10 * time.Millisecond) // let it park on its own thread

	if err := InstallVMM(); err != nil {
		return err
	}
	switch mode {
	case "tsync":
		close(early)
		return fmt.Errorf("a denied call on a pre-existing thread returned: %v", <-earlyDone)
	case "selftest":
		return fmt.Errorf("SelfTest returned: %v", SelfTest())
	case "exec":
		return fmt.Errorf("exec returned: %v", exec.Command("/bin/true").Run())
	case "runtime":
		return vmmLike(ln, dir)
	}
	return fmt.Errorf("unknown mode %q", mode)
}

func vmmLike(ln net.Listener, dir string) error {
	// Threads: locked goroutines that end take their thread with them.
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			time.Sleep(5 * time.Millisecond)
			// Kick this thread as a pause kicks a vCPU.
			_ = unix.Tgkill(unix.Getpid(), unix.Gettid(), unix.SIGURG)
		}()
	}
	wg.Wait()
	// Memory: grow the heap, collect, give memory back.
	var keep [][]byte
	for i := 0; i < 64; i++ {
		keep = append(keep, make([]byte, 1<<20))
	}
	keep = nil
	runtime.GC()
	debug.FreeOSMemory()
	select {
	case <-time.After(2 * time.Millisecond):
	}
	// A host connection in, and a guest-initiated one out (as vsock
	// dials <uds>_<port>).
	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		if err == nil && string(b) != "hello" {
			err = fmt.Errorf("read %q", b)
		}
		if err == nil {
			_, err = c.Write([]byte("bye"))
		}
		accepted <- err
	}()
	c, err := net.DialTimeout("unix", ln.Addr().String(), time.Second)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	if _, err := c.Write([]byte("hello")); err != nil {
		return err
	}
	if err := c.(*net.UnixConn).CloseWrite(); err != nil {
		return err
	}
	if b, err := io.ReadAll(c); err != nil || string(b) != "bye" {
		return fmt.Errorf("reply %q %v", b, err)
	}
	c.Close()
	if err := <-accepted; err != nil {
		return err
	}
	ln.Close()
	// Snapshot-style files.
	snap := filepath.Join(dir, "snap", "one")
	if err := os.MkdirAll(snap, 0o755); err != nil {
		return err
	}
	if _, err := filepath.Abs("snap"); err != nil {
		return err
	}
	f, err := os.CreateTemp(snap, "mem.tmp-")
	if err != nil {
		return err
	}
	if err := f.Truncate(1 << 20); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte("page"), 8192); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := f.ReadAt(buf, 8192); err != nil || string(buf) != "page" {
		return fmt.Errorf("read back %q %v", buf, err)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	f.Close()
	if err := os.Rename(f.Name(), filepath.Join(snap, "memory")); err != nil {
		return err
	}
	if _, err := os.ReadDir(snap); err != nil {
		return err
	}
	if _, err := os.ReadFile(filepath.Join(snap, "memory")); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(dir, "snap")); err != nil {
		return err
	}
	// Every thread has the filter.
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, t := range tasks {
		st, err := os.ReadFile(filepath.Join("/proc/self/task", t.Name(), "status"))
		if err != nil {
			return err
		}
		if !bytes.Contains(st, []byte("\nSeccomp:\t2\n")) || !bytes.Contains(st, []byte("\nNoNewPrivs:\t1\n")) {
			return fmt.Errorf("thread %s is not filtered", t.Name())
		}
	}
	return nil
}

func runChild(t *testing.T, mode string) (*os.ProcessState, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "KINDLING_SECCOMP_TEST_DIR="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Dir = t.TempDir()
	_ = cmd.Run()
	return cmd.ProcessState, stderr.String()
}

// The runtime and the VMM's non-KVM work live under the allow-list, on
// every thread.
func TestVMMLikeWorkSurvives(t *testing.T) {
	ps, stderr := runChild(t, "runtime")
	if !ps.Success() {
		t.Fatalf("%s\n%s", Describe(ps), stderr)
	}
}

// A denied call kills the whole process with SIGSYS, whichever thread
// makes it, and Describe names the cause.
func TestDeniedCallKills(t *testing.T) {
	for _, mode := range []string{"tsync", "selftest", "exec"} {
		t.Run(mode, func(t *testing.T) {
			ps, stderr := runChild(t, mode)
			if !Killed(ps) {
				t.Fatalf("%s, want killed by SIGSYS\n%s", Describe(ps), stderr)
			}
			if want := "killed by signal 31 (bad system call): seccomp denied a call"; Describe(ps) != want {
				t.Errorf("Describe: %q, want %q", Describe(ps), want)
			}
			if strings.Contains(stderr, "returned") {
				t.Errorf("the call ran: %s", stderr)
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	ok := exec.Command("/bin/true")
	if err := ok.Run(); err != nil {
		t.Skip(err)
	}
	if d := Describe(ok.ProcessState); d != "exited with status 0" {
		t.Errorf("%q", d)
	}
	if Killed(ok.ProcessState) || Killed(nil) {
		t.Error("Killed of a clean exit")
	}
}
