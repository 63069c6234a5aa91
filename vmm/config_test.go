package vmm

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  string
	}{
		{in: "256", want: 256}, {in: "256M", want: 256}, {in: "256MiB", want: 256}, {in: "2G", want: 2048},
		{in: "65536K", want: 64}, {in: "1t", want: 1 << 20},
		{in: "1000K", err: "whole number of MiB"}, {in: "lots", err: `"lots"`}, {in: "0", err: "positive"},
		{in: "2T", err: "maximum"}, {in: "-1G", err: "positive"},
	} {
		got, err := ParseSize(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %d, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %d, %v; want %d MiB", tc.in, got, err, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MemoryMiB: 1, VCPUs: 1}, "minimum"},
		{Config{MemoryMiB: 2 << 20, VCPUs: 1}, "out of range"},
		{Config{MemoryMiB: 64, VCPUs: 0}, "vcpus 0"},
		{Config{MemoryMiB: 64, VCPUs: 255}, "vcpus 255"},
		{Config{MemoryMiB: 64, VCPUs: 1, Initrd: "x"}, "without a kernel"},
		{Config{MemoryMiB: 64, VCPUs: 1, Disks: make([]Disk, MaxDisks+1)}, "disks"},
		{Config{MemoryMiB: 64, VCPUs: 1, Vsock: &Vsock{GuestCID: 2, Path: "/x"}}, "guest_cid 2"},
		{Config{MemoryMiB: 64, VCPUs: 1, Vsock: &Vsock{GuestCID: 3}}, "socket path"},
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{}}}, "network interface 0: tap: no interface name"},
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{Tap: "a-very-long-tap-name"}}}, "name longer than 15 bytes"},
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{Tap: "tap 0"}}}, "white space"},
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{Tap: "tap0"}, {Tap: "tap0"}}}, "network interfaces 0 and 1 both use tap tap0"},
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{Tap: "tap0", GuestMAC: "06:00:zz:10:00:02"}}}, `guest_mac "06:00:zz:10:00:02": want six hex bytes`},
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{Tap: "tap0", GuestMAC: "07:00:ac:10:00:02"}}}, "multicast"},
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{Tap: "tap0", GuestMAC: "00:00:00:00:00:00"}}}, "not an address"},
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{Tap: "tap0", GuestMAC: "00:00:00:00:fe:80:00:00"}}}, "want 6 bytes"},
		// The second interface's default MAC is the first one's chosen one.
		{Config{MemoryMiB: 64, VCPUs: 1, Net: []NetIface{{Tap: "tap0", GuestMAC: "06:00:ac:10:01:02"}, {Tap: "tap1"}}},
			"network interfaces 0 and 1 both have MAC 06:00:ac:10:01:02"},
		// Disks, vsock and network interfaces share the 19 virtio slots.
		{Config{MemoryMiB: 64, VCPUs: 1, Disks: make([]Disk, MaxDisks), Vsock: &Vsock{GuestCID: 3, Path: "/x"},
			Net: []NetIface{{Tap: "t0"}, {Tap: "t1"}, {Tap: "t2"}}}, "20 virtio devices (disks, network interfaces and vsock), at most 19"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
	if err := (&Config{MemoryMiB: 64, VCPUs: 2}).Validate(); err != nil {
		t.Fatal(err)
	}
	full := Config{MemoryMiB: 64, VCPUs: 1, Disks: make([]Disk, MaxDisks), Vsock: &Vsock{GuestCID: 3, Path: "/x"},
		Net: []NetIface{{Tap: "tap0"}, {Tap: "tap1", GuestMAC: "02:00:00:00:00:01"}}}
	if err := full.Validate(); err != nil {
		t.Fatalf("19 virtio devices: %v", err)
	}
}

func TestParseNetIface(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want NetIface
	}{
		{"tap0", NetIface{Tap: "tap0"}},
		{"vm1-eth0,mac=06:00:ac:10:00:05", NetIface{Tap: "vm1-eth0", GuestMAC: "06:00:ac:10:00:05"}},
	} {
		if got, err := ParseNetIface(tc.in); err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "no interface name"},
		{",mac=06:00:ac:10:00:05", "no interface name"},
		{"tap0,", "want TAP or TAP,mac=MAC"},
		{"tap0,mac=", "want TAP or TAP,mac=MAC"},
		{"tap0,ip=1.2.3.4", "want TAP or TAP,mac=MAC"},
		{"tap0,mac=06:00:ac", "want six hex bytes"},
		{"tap0,mac=ff:ff:ff:ff:ff:ff", "multicast"},
		{"0123456789abcdef", "longer than 15 bytes"},
	} {
		if got, err := ParseNetIface(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %+v, %v; want an error with %q", tc.in, got, err, tc.want)
		}
	}
}

func TestNetIfaceMAC(t *testing.T) {
	for _, tc := range []struct {
		n    NetIface
		i    int
		want string
	}{
		{NetIface{Tap: "tap0"}, 0, "06:00:ac:10:00:02"},
		{NetIface{Tap: "tap3"}, 3, "06:00:ac:10:03:02"},
		{NetIface{Tap: "tap0", GuestMAC: "06:00:AC:10:00:09"}, 0, "06:00:ac:10:00:09"},
	} {
		if mac, err := tc.n.MAC(tc.i); err != nil || mac.String() != tc.want {
			t.Errorf("%+v at %d: %v, %v; want %s", tc.n, tc.i, mac, err, tc.want)
		}
	}
}

// The JSON names are the VMM's API: network_interfaces, tap, guest_mac.
func TestLoadConfigNetworkInterfaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vm.json")
	os.WriteFile(p, []byte(`{"memory_mib": 64, "vcpus": 1,
		"network_interfaces": [{"tap": "tap0"}, {"tap": "tap1", "guest_mac": "06:00:ac:10:01:09"}]}`), 0o644)
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []NetIface{{Tap: "tap0"}, {Tap: "tap1", GuestMAC: "06:00:ac:10:01:09"}}; len(c.Net) != 2 || c.Net[0] != want[0] || c.Net[1] != want[1] {
		t.Fatalf("network_interfaces %+v, want %+v", c.Net, want)
	}
	os.WriteFile(p, []byte(`{"memory_mib": 64, "vcpus": 1, "network_interfaces": [{"tap": "tap0", "host_dev_name": "x"}]}`), 0o644)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "host_dev_name") {
		t.Fatalf("unknown field: %v", err)
	}
	os.WriteFile(p, []byte(`{"memory_mib": 64, "vcpus": 1, "network_interfaces": [{"tap": "tap0"}, {"tap": "tap0"}]}`), 0o644)
	if _, err := LoadConfig(p); err == nil || !strings.Contains(err.Error(), "both use tap tap0") {
		t.Fatalf("two interfaces on one tap: %v", err)
	}
}

func TestParseDisk(t *testing.T) {
	if d := ParseDisk("/a/disk.img:ro"); d.Path != "/a/disk.img" || !d.ReadOnly {
		t.Fatalf("%+v", d)
	}
	if d := ParseDisk("/a/disk.img"); d.Path != "/a/disk.img" || d.ReadOnly {
		t.Fatalf("%+v", d)
	}
}

func TestParseVsock(t *testing.T) {
	v, err := ParseVsock("3:/run/a.sock")
	if err != nil || v.GuestCID != 3 || v.Path != "/run/a.sock" {
		t.Fatalf("%+v %v", v, err)
	}
	for _, bad := range []string{"", "3", "x:/a", "3:", "99999999999:/a"} {
		if _, err := ParseVsock(bad); err == nil || !strings.Contains(err.Error(), "GUEST_CID:SOCKET_PATH") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}
