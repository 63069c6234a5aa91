package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/asm"
	"github.com/kindlingvm/kindling/internal/testguest"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/api"
)

// binDir holds kindling and kindling-vmm built for these tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kindling-cli-test-")
	if err != nil {
		panic(err)
	}
	out, err := exec.Command("go", "build", "-o", dir+"/", "github.com/kindlingvm/kindling/cmd/kindling", "github.com/kindlingvm/kindling/cmd/kindling-vmm").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		panic("build binaries: " + err.Error() + "\n" + string(out))
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func kindling(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "kindling"), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// tinyKernel is a PVH ELF that prints its message and resets the machine.
func tinyKernel(t *testing.T, dir string) string {
	t.Helper()
	elf, err := asm.AssembleELF(`.code32
	mov $0x3f8, %dx
	mov $msg, %esi
1:	lodsb
	test %al, %al
	jz 2f
	out %al, %dx
	jmp 1b
2:	mov $0xfe, %al
	out %al, $0x64
3:	hlt
	jmp 3b
msg:	.asciz "tiny kernel says hi\n"
`+asm.PVHNote, 0x100000)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "tiny.elf")
	if err := os.WriteFile(p, elf, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestVMRunStreamsConsoleAndReportsExit(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("skipping: no /dev/kvm (%v)", err)
	}
	k := tinyKernel(t, t.TempDir())
	stdout, stderr, code := kindling(t, "vm", "run", "--kernel", k, "--mem", "16M")
	if code != 0 || stdout != "tiny kernel says hi\n" || !strings.Contains(stderr, "vm stopped: guest-reset") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestVMRunBadInput(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A bzImage header promising far more protected-mode code than follows.
	hdr := make([]byte, 1024)
	hdr[0x1f1] = 4                                      // setup_sects
	binary.LittleEndian.PutUint32(hdr[0x1f4:], 0x10000) // syssize: 1 MiB in 16-byte units
	binary.LittleEndian.PutUint16(hdr[0x1fe:], 0xaa55)  // boot signature
	copy(hdr[0x202:], "HdrS")                           // header magic
	binary.LittleEndian.PutUint16(hdr[0x206:], 0x020f)  // protocol 2.15
	truncated := write("truncated-bzImage", hdr)
	notKernel := write("notes.txt", []byte("these are not the kernels you are looking for\n"))
	empty := write("empty", nil)
	kernel := tinyKernel(t, dir)
	bigInitrd := filepath.Join(dir, "big.cpio")
	f, err := os.Create(bigInitrd)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.Close()

	for _, tc := range []struct {
		name string
		args []string
		want []string // all must appear in the one line
	}{
		{"missing kernel", []string{"--kernel", filepath.Join(dir, "nope")}, []string{"nope", "no such file"}},
		{"empty kernel", []string{"--kernel", empty}, []string{empty, "empty"}},
		{"truncated kernel", []string{"--kernel", truncated}, []string{truncated, "truncated"}},
		{"not a kernel", []string{"--kernel", notKernel}, []string{notKernel, "not a"}},
		{"initrd larger than memory", []string{"--kernel", kernel, "--initrd", bigInitrd, "--mem", "32M"}, []string{bigInitrd, "does not fit"}},
		{"missing initrd", []string{"--kernel", kernel, "--initrd", filepath.Join(dir, "nope.cpio")}, []string{"nope.cpio", "no such file"}},
		{"memory too small", []string{"--kernel", kernel, "--mem", "1M"}, []string{"memory", "minimum"}},
		{"memory too large", []string{"--kernel", kernel, "--mem", "4096G"}, []string{"maximum"}},
		{"memory not a size", []string{"--kernel", kernel, "--mem", "lots"}, []string{"--mem", `"lots"`}},
		{"no vcpus", []string{"--kernel", kernel, "--vcpus", "0"}, []string{"vcpus 0"}},
		{"no kernel flag", nil, []string{"--kernel is required"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, code := kindling(t, append([]string{"vm", "run"}, tc.args...)...)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			if code == 0 || len(lines) != 1 {
				t.Fatalf("exit %d, stderr:\n%s\nwant a non-zero exit and one line", code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(lines[0], w) {
					t.Errorf("error %q lacks %q", lines[0], w)
				}
			}
		})
	}
}

func TestHelpExplainsItself(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"vm", "run", "--help"}, {"host"}} {
		stdout, stderr, _ := kindling(t, args...)
		if !strings.Contains(stdout+stderr, "usage:") {
			t.Errorf("kindling %v: no usage text:\n%s%s", args, stdout, stderr)
		}
	}
}

// xorshiftVM is an in-process VM running the CPL 3 xorshift guest on n
// vCPUs, not yet started.
func xorshiftVM(t *testing.T, console io.Writer, n int) *vmm.Machine {
	t.Helper()
	m, err := vmm.New(vmm.Config{MemoryMiB: 8, VCPUs: n}, vmm.Options{Console: console})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := testguest.LoadXorshift(m.Memory()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		if err := testguest.StartUser64(m.VCPU(i), m.Memory(), i, n, testguest.Rounds); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// serveAPI serves m's control API on a socket in dir, as kindling-vmm does.
func serveAPI(t *testing.T, m *vmm.Machine, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "api.sock")
	l, err := api.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	go api.Serve(m, l, slog.New(slog.NewTextHandler(io.Discard, nil)), api.DefaultLinger)
	return sock
}

// A snapshot taken mid-computation restores in a new kindling-vmm process
// (kindling vm restore) and prints the same results as an uninterrupted
// run; the snapshot itself is cut through the VMM's API (kindling vm
// snapshot).
func TestSnapshotRestoresInANewProcess(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("skipping: no /dev/kvm (%v)", err)
	}
	// Uninterrupted reference, in process.
	var want bytes.Buffer
	ref := xorshiftVM(t, &want, 2)
	start := time.Now()
	ref.Start()
	if r := ref.Wait(); r.Kind != vmm.ExitGuestReset {
		t.Fatalf("reference run: %v", r)
	}
	took := time.Since(start)

	// Interrupted run in process, snapshotted through its API socket with
	// the CLI, as an operator would.
	m := xorshiftVM(t, io.Discard, 2)
	dir := t.TempDir()
	sock := serveAPI(t, m, dir)
	m.Start()
	time.Sleep(took / 3)
	snap := filepath.Join(dir, "snap")
	out, stderr, code := kindling(t, "vm", "snapshot", "--api-sock", sock, "--dir", snap)
	if code != 0 {
		t.Fatalf("vm snapshot: exit %d: %s", code, stderr)
	}
	if v, _ := m.Memory().ReadU64(testguest.ResultAddr); v != 0 {
		t.Skipf("the guest finished before the snapshot (reference run took %v)", took)
	}
	t.Logf("%s", strings.TrimSpace(out))
	m.Stop()

	stdout, stderr, code := kindling(t, "vm", "restore", "--from", snap)
	if code != 0 || stdout != want.String() || !strings.Contains(stderr, "guest-reset") {
		t.Fatalf("restore: exit %d, stdout %q (uninterrupted run printed %q), stderr %q", code, stdout, want.String(), stderr)
	}
	if _, stderr, code := kindling(t, "vm", "restore", "--from", filepath.Join(dir, "nope")); code == 0 || !strings.Contains(stderr, "nope") {
		t.Fatalf("restore of a missing snapshot: exit %d, %q", code, stderr)
	}
}

// The LAPIC timer armed at the snapshot (often with a tick pending) keeps
// firing in the restored process: the guest counts on to its target and
// prints. A lost timer would leave it halted until --timeout.
func TestSnapshotWithTimerRestoresInANewProcess(t *testing.T) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("skipping: no /dev/kvm (%v)", err)
	}
	m, err := vmm.New(vmm.Config{MemoryMiB: 8, VCPUs: 1}, vmm.Options{Console: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := testguest.StartTicks(m.VCPU(0), m.Memory()); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := serveAPI(t, m, dir)
	m.Start()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
		if n, _ := m.Memory().ReadU32(testguest.TickAddr); n >= testguest.TickTarget/3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the guest is not ticking")
		}
	}
	snap := filepath.Join(dir, "snap")
	if _, stderr, code := kindling(t, "vm", "snapshot", "--api-sock", sock, "--dir", snap); code != 0 {
		t.Fatalf("vm snapshot: exit %d: %s", code, stderr)
	}
	at, _ := m.Memory().ReadU32(testguest.TickAddr)
	m.Stop()
	if at >= testguest.TickTarget {
		t.Skip("the guest finished before the snapshot")
	}
	stdout, stderr, code := kindling(t, "vm", "restore", "--from", snap, "--timeout", "30s")
	if code != 0 || stdout != "ticked\n" || !strings.Contains(stderr, "guest-reset") {
		t.Fatalf("restore at tick %d: exit %d, stdout %q, stderr %q", at, code, stdout, stderr)
	}
}
