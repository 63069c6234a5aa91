// Package kvm is the only place in Kindling that knows KVM ioctl numbers and
// kernel structure layouts. Everything above it speaks Go types.
//
// The bottom of the layer is github.com/bobuhiro11/gokvm's kvm package, which
// wraps most ioctls correctly; this package hides it behind System, VM and
// VCPU, and adds what gokvm lacks (XSAVE, FPU, KVM_IRQ_LINE, KVM_ENABLE_CAP,
// KVMCLOCK_CTRL) in the same style. Three gokvm wrappers are replaced here:
//
//   - kvm.Run returns nil on EINTR. When immediate_exit is set, KVM returns
//     -EINTR without writing exit_reason, so a caller of kvm.Run would handle
//     the previous exit a second time. Run here returns ErrInterrupted.
//   - kvm.SetMSRs ignores the count KVM_SET_MSRS returns, so an MSR that KVM
//     refused is silently dropped. SetMSRs here fails and names it.
//   - kvm.SetIdentityMapAddr passes a pointer to a uint32 for a __u64
//     argument, so KVM reads four bytes past it; VM.SetIdentityMapAddr
//     passes a uint64.
//
// This package never interprets guest state; it only moves it across the
// ioctl boundary.
package kvm
