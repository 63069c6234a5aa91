package vmm

import (
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
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error with %q", tc.cfg, err, tc.want)
		}
	}
	if err := (&Config{MemoryMiB: 64, VCPUs: 2}).Validate(); err != nil {
		t.Fatal(err)
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
