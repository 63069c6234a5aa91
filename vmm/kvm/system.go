package kvm

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// DevicePath is the KVM character device.
const DevicePath = "/dev/kvm"

// StableAPIVersion is the only KVM API version there has ever been (KVM docs,
// "KVM_GET_API_VERSION ... always 12").
const StableAPIVersion = 12

// Capabilities used by Kindling (KVM_CAP_* from include/uapi/linux/kvm.h).
type Cap uintptr

const (
	CapIRQChip          Cap = 0
	CapUserMemory       Cap = 3
	CapSetTSSAddr       Cap = 4
	CapNrVCPUs          Cap = 9
	CapNrMemSlots       Cap = 10
	CapPIT2             Cap = 33
	CapPITState2        Cap = 35
	CapAdjustClock      Cap = 39
	CapVCPUEvents       Cap = 41
	CapDebugRegs        Cap = 50
	CapXSave            Cap = 55
	CapXCRS             Cap = 56
	CapTSCControl       Cap = 60
	CapGetTSCKHz        Cap = 61
	CapMaxVCPUs         Cap = 66
	CapKVMClockCtrl     Cap = 76
	CapReadOnlyMem      Cap = 81
	CapImmediateExit    Cap = 136
	CapGetMSRFeatures   Cap = 153
	CapExceptionPayload Cap = 164
	CapManualDirtyLog2  Cap = 168
	CapXSave2           Cap = 208
)

// Ioctl request numbers gokvm does not define, built with its encoders.
var (
	ioctlIRQLine       = gokvm.IIOW(0x61, 8)
	ioctlGetFPU        = gokvm.IIOR(0x8c, unsafe.Sizeof(FPU{}))
	ioctlSetFPU        = gokvm.IIOW(0x8d, unsafe.Sizeof(FPU{}))
	ioctlGetMSRs       = gokvm.IIOWR(0x88, 8)
	ioctlSetMSRs       = gokvm.IIOW(0x89, 8)
	ioctlEnableCap     = gokvm.IIOW(0xa3, unsafe.Sizeof(enableCap{}))
	ioctlGetXSave      = gokvm.IIOR(0xa4, 4096)
	ioctlSetXSave      = gokvm.IIOW(0xa5, 4096)
	ioctlGetXSave2     = gokvm.IIOR(0xcf, 4096)
	ioctlKVMClockCtrl  = gokvm.IIO(0xad)
	ioctlCheckExt      = gokvm.IIO(0x03)
	ioctlSetIdentMap   = gokvm.IIOW(0x48, 8)
	ioctlRun           = gokvm.IIO(0x80)
	ioctlGetVCPUMmapSz = gokvm.IIO(0x04)
)

// ErrNoKVM means /dev/kvm is missing or unusable.
var ErrNoKVM = errors.New("KVM is not available")

// System is an open /dev/kvm.
type System struct {
	f *os.File
}

// Open opens /dev/kvm and checks the API version.
func Open() (*System, error) {
	f, err := os.OpenFile(DevicePath, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %v (is the kvm module loaded, and may this user open it?)", ErrNoKVM, DevicePath, err)
	}
	s := &System{f: f}
	v, err := s.APIVersion()
	if err != nil {
		f.Close()
		return nil, err
	}
	if v != StableAPIVersion {
		f.Close()
		return nil, fmt.Errorf("%w: KVM API version %d, want %d", ErrNoKVM, v, StableAPIVersion)
	}
	return s, nil
}

// Close releases /dev/kvm. VMs created from it stay valid.
func (s *System) Close() error { return s.f.Close() }

func (s *System) fd() uintptr { return s.f.Fd() }

// APIVersion returns KVM_GET_API_VERSION.
func (s *System) APIVersion() (int, error) {
	v, err := gokvm.GetAPIVersion(s.fd())
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_API_VERSION: %w", err)
	}
	return int(v), nil
}

// CheckExtension returns KVM_CHECK_EXTENSION for cap: 0 when absent, else a
// capability-specific positive value.
func (s *System) CheckExtension(c Cap) int {
	r, err := ioctl(s.fd(), ioctlCheckExt, uintptr(c))
	if err != nil {
		return 0
	}
	return int(r)
}

// VCPUMmapSize is the size of each vCPU's shared kvm_run area.
func (s *System) VCPUMmapSize() (int, error) {
	r, err := ioctl(s.fd(), ioctlGetVCPUMmapSz, 0)
	if err != nil {
		return 0, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	return int(r), nil
}

// maxCPUIDEntries bounds KVM_GET_SUPPORTED_CPUID; KVM's own limit is
// KVM_MAX_CPUID_ENTRIES = 256.
const maxCPUIDEntries = 256

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	c := &gokvm.CPUID{Nent: maxCPUIDEntries, Entries: make([]gokvm.CPUIDEntry2, maxCPUIDEntries)}
	if err := gokvm.GetSupportedCPUID(s.fd(), c); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	return c.Entries[:c.Nent], nil
}

// MSRIndexList returns KVM_GET_MSR_INDEX_LIST: the MSRs a VMM must save and
// restore for this host.
func (s *System) MSRIndexList() ([]uint32, error) {
	l := &gokvm.MSRList{NMSRs: uint32(len(gokvm.MSRList{}.Indicies))}
	if err := gokvm.GetMSRIndexList(s.fd(), l); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	return append([]uint32(nil), l.Indicies[:l.NMSRs]...), nil
}

// MSRFeatureIndexList returns KVM_GET_MSR_FEATURE_INDEX_LIST, or nil when
// the host has no feature MSRs.
func (s *System) MSRFeatureIndexList() ([]uint32, error) {
	if s.CheckExtension(CapGetMSRFeatures) == 0 {
		return nil, nil
	}
	l := &gokvm.MSRList{NMSRs: uint32(len(gokvm.MSRList{}.Indicies))}
	if err := gokvm.GetMSRFeatureIndexList(s.fd(), l); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_FEATURE_INDEX_LIST: %w", err)
	}
	return append([]uint32(nil), l.Indicies[:l.NMSRs]...), nil
}

// CreateVM creates a VM.
func (s *System) CreateVM() (*VM, error) {
	mmapSize, err := s.VCPUMmapSize()
	if err != nil {
		return nil, err
	}
	fd, err := gokvm.CreateVM(s.fd())
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	unix.CloseOnExec(int(fd))
	return &VM{fd: int(fd), runSize: mmapSize}, nil
}

func ioctl(fd, req, arg uintptr) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, req, arg)
	if errno != 0 {
		return r, errno
	}
	return r, nil
}

type enableCap struct {
	Cap   uint32
	Flags uint32
	Args  [4]uint64
	_     [64]byte
}
