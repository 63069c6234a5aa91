// Package testhost is what tests that need KVM ask of the host: the host
// check's report, skipping only where there is no KVM at all.
package testhost

import (
	"os"
	"testing"

	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

// RequireKVM runs 'kindling host check'. It skips the test, saying why,
// only where /dev/kvm does not exist; a /dev/kvm that exists but does not
// work fails it.
func RequireKVM(t testing.TB) *hostcheck.Report {
	t.Helper()
	report, err := hostcheck.Run()
	if err != nil {
		t.Fatal(err)
	}
	if !report.KVM.OK {
		if _, statErr := os.Stat("/dev/kvm"); statErr == nil {
			t.Fatalf("/dev/kvm exists but: %s", report.KVM.Detail)
		}
		t.Skipf("skipping: no KVM (%s)", report.KVM.Detail)
	}
	return report
}
