// Package cpuid decides what CPU a guest sees. It holds the CPU templates
// (the named ones, x86-64-v2/v3/v4, t2 and c3, and custom JSON ones), applies
// one to the CPUID that KVM_GET_SUPPORTED_CPUID reports, normalises the
// result per vCPU (hypervisor bit, APIC IDs and topology, cache sharing,
// XSAVE sizes consistent with what the template hides, no PMU), carries the
// template's MSR modifiers, and picks the smallest template that gives a
// task the instruction-set extensions it needs (package cpuid/isa finds
// those).
//
// It computes tables; it never issues an ioctl itself. The VMM hands the
// result to vmm/kvm.
package cpuid
