package vmm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/vmm/devices/virtio/netdev"
	"github.com/kindlingvm/kindling/vmm/memory"
)

// Config describes one microVM. It is the JSON that `kindling-vmm --config`
// reads, so field names are part of the VMM's API.
type Config struct {
	// Kernel is a bzImage or an ELF vmlinux with a PVH note. Empty means a
	// bare VM whose memory and vCPUs the caller sets up (tests, probes).
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`
	// MemoryMiB is guest RAM in MiB.
	MemoryMiB uint64 `json:"memory_mib"`
	VCPUs     int    `json:"vcpus"`
	Disks     []Disk `json:"disks,omitempty"`
	// Vsock, when set, gives the guest a virtio-vsock device.
	Vsock *Vsock `json:"vsock,omitempty"`
	// Net gives the guest a virtio-net device per entry, in order.
	Net []NetIface `json:"network_interfaces,omitempty"`
	// Console is where the serial console goes: "stdout" (the default),
	// "none", or a file path.
	Console string `json:"console,omitempty"`
	// CPUTemplate is the CPU the guest sees: a built-in template's name
	// or a template object. Unset passes the host's supported CPUID
	// through, normalised. Snapshots keep it, so a restore sees the same.
	CPUTemplate *cpuid.Template `json:"cpu_template,omitempty"`
}

// Disk is a virtio-blk device backed by a host file.
type Disk struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// Vsock is a virtio-vsock device whose host side is Unix sockets:
// host processes connect to Path and write "CONNECT <port>\n"; guest
// connections to the host's port P go to Path_P.
type Vsock struct {
	GuestCID uint64 `json:"guest_cid"`
	Path     string `json:"uds_path"`
}

// NetIface is a virtio-net device backed by a host tap. The tap must exist
// already, persistent and owned by the VMM's uid, in the VMM's network
// namespace (kindlingd makes it, in the VM's): the VMM only attaches to it.
type NetIface struct {
	Tap string `json:"tap"`
	// GuestMAC is the guest's address, such as "06:00:ac:10:00:02". Empty
	// gives interface i 06:00:ac:10:i:02 (netdev.DefaultMAC).
	GuestMAC string `json:"guest_mac,omitempty"`
}

// MAC is the guest's address on n, the interface at index i of a config.
func (n NetIface) MAC(i int) (net.HardwareAddr, error) {
	if n.GuestMAC == "" {
		return netdev.DefaultMAC(i), nil
	}
	mac, err := net.ParseMAC(n.GuestMAC)
	if err != nil {
		return nil, fmt.Errorf("guest_mac %q: want six hex bytes such as 06:00:ac:10:00:02", n.GuestMAC)
	}
	if err := netdev.CheckMAC(mac); err != nil {
		return nil, fmt.Errorf("guest_mac %q: %w", n.GuestMAC, err)
	}
	return mac, nil
}

// ParseNetIface parses the command-line form of a network interface,
// TAP or TAP,mac=MAC.
func ParseNetIface(s string) (NetIface, error) {
	tap, opt, hasOpt := strings.Cut(s, ",")
	n := NetIface{Tap: tap}
	if hasOpt {
		mac, ok := strings.CutPrefix(opt, "mac=")
		if !ok || mac == "" {
			return NetIface{}, fmt.Errorf("net %q: want TAP or TAP,mac=MAC, e.g. tap0,mac=06:00:ac:10:00:02", s)
		}
		n.GuestMAC = mac
	}
	if err := netdev.CheckTapName(n.Tap); err != nil {
		return NetIface{}, fmt.Errorf("net %q: %w", s, err)
	}
	if _, err := n.MAC(0); err != nil {
		return NetIface{}, fmt.Errorf("net %q: %w", s, err)
	}
	return n, nil
}

// ParseVsock parses the command-line form CID:PATH.
func ParseVsock(s string) (*Vsock, error) {
	cid, path, ok := strings.Cut(s, ":")
	n, err := strconv.ParseUint(cid, 10, 32)
	if !ok || err != nil || path == "" {
		return nil, fmt.Errorf("vsock %q: want GUEST_CID:SOCKET_PATH, e.g. 3:/run/vm1.vsock", s)
	}
	return &Vsock{GuestCID: n, Path: path}, nil
}

// ParseDisk parses the command-line form of a disk, FILE or FILE:ro.
func ParseDisk(s string) Disk {
	path, ro := strings.CutSuffix(s, ":ro")
	return Disk{Path: path, ReadOnly: ro}
}

// Limits on a VM's shape.
const (
	// MaxVCPUs is bounded by the MP table's 8-bit APIC IDs (one is the
	// IOAPIC's) and comfortably by KVM's own KVM_CAP_MAX_VCPUS.
	MaxVCPUs = 254
	// MaxDisks bounds virtio-mmio slots: each takes one IOAPIC pin from 5
	// to 23 after the legacy devices.
	MaxDisks = 16
)

// Validate checks a config before anything is allocated.
func (c *Config) Validate() error {
	if c.VCPUs < 1 || c.VCPUs > MaxVCPUs {
		return fmt.Errorf("vcpus %d out of range 1..%d", c.VCPUs, MaxVCPUs)
	}
	if c.MemoryMiB > memory.MaxSize>>20 {
		return fmt.Errorf("memory %d MiB out of range %d..%d MiB", c.MemoryMiB, memory.MinSize>>20, memory.MaxSize>>20)
	}
	if err := memory.CheckSize(c.MemoryMiB << 20); err != nil {
		return err
	}
	if len(c.Disks) > MaxDisks {
		return fmt.Errorf("%d disks, at most %d", len(c.Disks), MaxDisks)
	}
	if n := c.virtioDevices(); n > virtioMaxDevice {
		return fmt.Errorf("%d virtio devices (disks, network interfaces and vsock), at most %d: each takes one of the IOAPIC's pins %d to %d",
			n, virtioMaxDevice, virtioFirstIRQ, virtioLastIRQ)
	}
	if err := c.validateNet(); err != nil {
		return err
	}
	if c.Vsock != nil && (c.Vsock.GuestCID < 3 || c.Vsock.GuestCID > 0xffffffff || c.Vsock.Path == "") {
		return fmt.Errorf("vsock: guest_cid %d and uds_path %q: want a CID from 3 to 4294967295 and a socket path", c.Vsock.GuestCID, c.Vsock.Path)
	}
	if c.CPUTemplate != nil {
		if err := c.CPUTemplate.Validate(); err != nil {
			return err
		}
	}
	if c.Kernel == "" && (c.Initrd != "" || c.Cmdline != "") {
		return fmt.Errorf("initrd or cmdline given without a kernel")
	}
	return nil
}

// virtioDevices counts the config's virtio-mmio devices.
func (c *Config) virtioDevices() int {
	n := len(c.Disks) + len(c.Net)
	if c.Vsock != nil {
		n++
	}
	return n
}

// validateNet checks each network interface and that no two share a tap
// (the second could not attach) or a MAC.
func (c *Config) validateNet() error {
	taps := map[string]int{}
	var macs []net.HardwareAddr
	for i, n := range c.Net {
		if err := netdev.CheckTapName(n.Tap); err != nil {
			return fmt.Errorf("network interface %d: %w", i, err)
		}
		if j, ok := taps[n.Tap]; ok {
			return fmt.Errorf("network interfaces %d and %d both use tap %s: each needs its own", j, i, n.Tap)
		}
		taps[n.Tap] = i
		mac, err := n.MAC(i)
		if err != nil {
			return fmt.Errorf("network interface %d: %w", i, err)
		}
		for j, m := range macs {
			if bytes.Equal(m, mac) {
				return fmt.Errorf("network interfaces %d and %d both have MAC %v", j, i, mac)
			}
		}
		macs = append(macs, mac)
	}
	return nil
}

// LoadConfig reads a JSON config file, refusing unknown fields so a typo is
// an error rather than a silently ignored setting.
func LoadConfig(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// ParseSize parses a memory size such as "256M", "1G", "512" (MiB) or
// "65536K" into MiB.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := uint64(1)
	div := uint64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult, div, t = 1, 1024, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		t = t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "T"):
		mult, t = 1<<20, t[:len(t)-1]
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("memory size %q: want a positive number with an optional K, M, G or T suffix (M is the default)", s)
	}
	if n > (memory.MaxSize>>20)*div/mult {
		return 0, fmt.Errorf("memory size %q is above the maximum of %d GiB", s, memory.MaxSize>>30)
	}
	if (n*mult)%div != 0 {
		return 0, fmt.Errorf("memory size %q is not a whole number of MiB", s)
	}
	return n * mult / div, nil
}
