package vmm

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	kcpuid "github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/vmm/kvm"
)

// Each built-in template this host offers is set on every vCPU and reads
// back with KVM_GET_CPUID2 as set; one it does not offer is refused when
// the VM is created, naming what is missing.
func TestCPUTemplateSetAndReadBack(t *testing.T) {
	requireKVM(t)
	host, err := kcpuid.Supported()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range append([]string{kcpuid.HostName}, kcpuid.BuiltinNames()...) {
		tmpl, _ := kcpuid.Builtin(name)
		_, offerErr := tmpl.Apply(host)
		m, err := New(Config{MemoryMiB: 4, VCPUs: 2, CPUTemplate: tmpl}, Options{})
		if offerErr != nil {
			var ue *kcpuid.UnavailableError
			if !errors.As(err, &ue) || err.Error() != offerErr.Error() {
				t.Errorf("%s: host lacks it (%v), New says %v", name, offerErr, err)
			}
			if err == nil {
				m.Close()
			}
			t.Logf("%s: refused as expected: %v", name, err)
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for i, v := range m.vcpus {
			got, err := v.GetCPUID()
			if err != nil {
				t.Fatal(err)
			}
			checkReadBack(t, name, i, got, v.cpuid)
			want := kcpuid.Normalize(mustApply(t, tmpl, host), i, 2)
			if !reflect.DeepEqual(kcpuid.FromKVM(v.cpuid), want) {
				t.Errorf("%s vcpu %d: set CPUID is not the normalised template", name, i)
			}
		}
		t.Logf("%s: %d entries per vCPU set and read back; features: %s", name, len(m.vcpus[0].cpuid),
			strings.Join(kcpuid.FromKVM(m.vcpus[0].cpuid).Features(), " "))
		m.Close()
	}
}

func mustApply(t *testing.T, tmpl *kcpuid.Template, host kcpuid.Table) kcpuid.Table {
	t.Helper()
	out, err := tmpl.Apply(host)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pvmHostLeaves are the leaves a PVM host's KVM_GET_CPUID2 answers from
// the host CPU rather than from what was set (seen on the AMD EPYC PVM
// build hosts, 2026-11-23): the feature leaves and XSAVE. The guest sees
// the host's CPUID there too (HOST.md).
var pvmHostLeaves = map[uint32]bool{0x1: true, 0x7: true, 0xd: true}

// checkReadBack compares KVM_GET_CPUID2 with what was set: exactly, or on
// a PVM host exactly but for pvmHostLeaves.
func checkReadBack(t *testing.T, name string, vcpu int, got, set []kvm.CPUIDEntry) {
	t.Helper()
	if len(got) != len(set) {
		t.Errorf("%s vcpu %d: KVM_GET_CPUID2 has %d entries, %d were set", name, vcpu, len(got), len(set))
		return
	}
	pvm := HostKind() == "pvm"
	var fromHost []string
	for _, s := range set {
		var g *kvm.CPUIDEntry
		for i := range got {
			if got[i].Function == s.Function && got[i].Index == s.Index {
				g = &got[i]
			}
		}
		switch {
		case g == nil:
			t.Errorf("%s vcpu %d: leaf %#x.%d set, not read back", name, vcpu, s.Function, s.Index)
		case *g == s:
		case pvm && pvmHostLeaves[s.Function]:
			fromHost = append(fromHost, fmt.Sprintf("%#x.%d", s.Function, s.Index))
		default:
			t.Errorf("%s vcpu %d: leaf %#x.%d set %+v, read back %+v", name, vcpu, s.Function, s.Index, s, *g)
		}
	}
	if len(fromHost) > 0 {
		t.Logf("%s vcpu %d: PVM host: leaves %s read back as the host's; every other leaf as set", name, vcpu, strings.Join(fromHost, " "))
	}
}

// A template's MSR modifiers land on every vCPU after the VMM's own boot
// values; one naming an MSR the host's KVM does not offer is refused with
// the MSR's name.
func TestCPUTemplateMSRModifiers(t *testing.T) {
	requireKVM(t)
	// Fast strings (IA32_MISC_ENABLE bit 0): setupVCPU sets it, the
	// template clears it.
	clearFast := strings.Repeat("x", 63) + "0"
	tmpl := &kcpuid.Template{Name: "no-fast-strings", MSRs: []kcpuid.MSRModifier{{Index: msrMiscEnable, Bitmap: clearFast}}}
	m, err := New(Config{MemoryMiB: 4, VCPUs: 2, CPUTemplate: tmpl}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range m.vcpus {
		got, err := v.GetMSRs([]uint32{msrMiscEnable})
		if err != nil {
			t.Fatal(err)
		}
		if got[0].Value&miscEnableFastStr != 0 {
			t.Fatalf("vcpu %d: IA32_MISC_ENABLE %#x still has fast strings", v.ID, got[0].Value)
		}
	}
	m.Close()

	sys, err := kvm.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Close()
	index, _ := sys.MSRIndexList()
	feats, _ := sys.MSRFeatureIndexList()
	offered := false
	for _, i := range append(index, feats...) {
		offered = offered || i == 0x10a
	}
	arch := &kcpuid.Template{Name: "arch", MSRs: []kcpuid.MSRModifier{{Index: 0x10a, Bitmap: strings.Repeat("x", 64)}}}
	m, err = New(Config{MemoryMiB: 4, VCPUs: 1, CPUTemplate: arch}, Options{})
	switch {
	case offered && err != nil:
		t.Fatalf("IA32_ARCH_CAPABILITIES is offered, yet: %v", err)
	case !offered && (err == nil || !strings.Contains(err.Error(), "IA32_ARCH_CAPABILITIES (0x10a)")):
		t.Fatalf("IA32_ARCH_CAPABILITIES is not offered here; error %v", err)
	}
	t.Logf("IA32_ARCH_CAPABILITIES offered: %v; %v", offered, err)
	if err == nil {
		m.Close()
	}
}

// A snapshot of a VM on c3 restores on c3: the restored VM's config names
// it, and each vCPU holds the same CPUID as before.
func TestCPUTemplateSurvivesSnapshot(t *testing.T) {
	requireKVM(t)
	c3, _ := kcpuid.Builtin(kcpuid.NameC3)
	m, err := New(Config{MemoryMiB: 8, VCPUs: 1, CPUTemplate: c3, Console: "none"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	snap := runAndSnapshot(t, m, t.TempDir())
	m.Stop()
	r, err := Restore(snap, RestoreOverrides{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.cfg.CPUTemplate == nil || r.cfg.CPUTemplate.Name != kcpuid.NameC3 {
		t.Fatalf("restored template %+v", r.cfg.CPUTemplate)
	}
	if !reflect.DeepEqual(r.vcpus[0].cpuid, m.vcpus[0].cpuid) {
		t.Fatal("restored vCPU CPUID differs from the snapshot's")
	}
}
