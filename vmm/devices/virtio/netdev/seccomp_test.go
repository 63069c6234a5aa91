package netdev

import (
	"bytes"
	"os"
	"os/exec"
	"testing"

	"github.com/kindlingvm/kindling/vmm/seccomp"
)

// seccompChildEnv makes TestUnderVMMSeccompFilter, run again in a child
// process, do the traffic under the filter instead of starting a child.
const seccompChildEnv = "KINDLING_NETDEV_SECCOMP_CHILD"

// The device's work once the VMM's filter is in place (the VMM installs
// it after the devices are made and before the first KVM_RUN) stays inside
// the allow-list: receiving through the poller, transmitting with writev,
// interrupts, and Close. A call outside it kills the child with SIGSYS.
func TestUnderVMMSeccompFilter(t *testing.T) {
	if os.Getenv(seccompChildEnv) == "1" {
		// As the VMM: the tap attached before the filter.
		g := newGuest(t, newNetns(t))
		if err := seccomp.InstallVMM(); err != nil {
			t.Fatal(err)
		}
		g.postLinux(8)
		hostMAC := g.arp()
		g.ping(hostMAC, 1, 1472, true)
		g.dev.Pause()
		g.dev.Resume()
		if err := g.dev.Close(); err != nil {
			t.Fatal(err)
		}
		return
	}
	newNetns(t) // skips where the child could not run
	cmd := exec.Command(os.Args[0], "-test.run=^TestUnderVMMSeccompFilter$", "-test.v")
	cmd.Env = append(os.Environ(), seccompChildEnv+"=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if seccomp.Killed(cmd.ProcessState) {
		t.Fatalf("the filter killed the device's process: %s\n%s", seccomp.Describe(cmd.ProcessState), out.String())
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out.String())
	}
	if !bytes.Contains(out.Bytes(), []byte("--- PASS: TestUnderVMMSeccompFilter")) {
		t.Fatalf("the child did not run the test:\n%s", out.String())
	}
}
