package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/internal/testhost"
	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/rootfs"
)

func TestInvokeBadInput(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.json")
	os.WriteFile(big, make([]byte, 7<<20), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"invoke"}, "--image is required"},
		{[]string{"invoke", "--image", dir}, "kindling image build"},
		{[]string{"invoke", "--image", dir, "--payload", "@" + big}, "exceeds"},
		{[]string{"invoke", "--image", dir, "--payload", "@" + filepath.Join(dir, "nope")}, "no such file"},
	} {
		_, errOut, code := kindling(t, c.args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%.60v: exit %d, stderr %q; want 2 and %q", c.args, code, errOut, c.want)
		}
	}
}

// TestInvokeEndToEnd builds an image for a real aws-lambda-go handler
// (its kernel from the analysis, kindling-init as /init), boots it and
// invokes it through vsock. It needs a host where guest user space runs;
// elsewhere kindling invoke must refuse at once, saying why.
func TestInvokeEndToEnd(t *testing.T) {
	r := testhost.RequireKVM(t)
	if !r.UserSpaceRuns() {
		_, errOut, code := kindling(t, "invoke", "--image", t.TempDir())
		if code != 2 {
			t.Fatalf("invoke without an image: exit %d %s", code, errOut)
		}
		dir := t.TempDir()
		writeFakeImage(t, dir)
		_, errOut, code = kindling(t, "invoke", "--image", dir)
		if code == 0 || !strings.Contains(errOut, "cannot run a guest's user space") {
			t.Fatalf("on a host without guest user space: exit %d, %q", code, errOut)
		}
		t.Skipf("skipping the boot and invoke: guest user space cannot run here (%s); checked that invoke refuses and says why", r.UserSyscalls.Detail)
	}
	if os.Getenv("KINDLING_LINUX_TEST") == "" {
		t.Skip("skipping: set KINDLING_LINUX_TEST=1 to build the image's kernel and boot it")
	}
	dir := t.TempDir()
	task, err := testtasks.Build(dir, testtasks.GoLambda)
	if err != nil {
		t.Fatal(err)
	}
	initBin := filepath.Join(dir, "kindling-init")
	if out, err := exec.Command("go", "build", "-o", initBin, "github.com/kindlingvm/kindling/cmd/kindling-init").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	img := filepath.Join(dir, "img")
	if _, errOut, code := kindling(t, "image", "build", "--task", task, "--init", initBin, "-o", img); code != 0 {
		t.Fatalf("image build: %s", errOut)
	}
	out, errOut, code := kindling(t, "invoke", "--image", img, "--payload", `{"op":"echo","text":"from a microVM"}`)
	if code != 0 || !strings.Contains(out, "from a microVM") {
		t.Fatalf("invoke: exit %d\n%s\n%s", code, out, errOut)
	}
	t.Log(errOut)
}

// writeFakeImage writes an image whose manifest checks out, for the
// refusal path (it is never booted, so its kernel is not one).
func writeFakeImage(t *testing.T, dir string) {
	t.Helper()
	bin, err := testtasks.Build(t.TempDir(), testtasks.GoHello)
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	os.WriteFile(kernel, []byte("never booted"), 0o644)
	if _, err := rootfs.BuildImage(rootfs.ImageSpec{Init: bin, Task: bin, Kernel: kernel}, dir); err != nil {
		t.Fatal(err)
	}
}
