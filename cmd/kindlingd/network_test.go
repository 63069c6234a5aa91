package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/hostnet"
)

// hostVeths lists kindlingd's veths (kl<slot>) in this namespace.
func hostVeths(t *testing.T) []string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if regexp.MustCompile(`^kl[0-9]+$`).MatchString(l.Attrs().Name) {
			out = append(out, l.Attrs().Name+"("+l.Attrs().Alias+")")
		}
	}
	return out
}

// keepHostNet puts back, when the test ends, what the first egress
// sandbox changes in this (the real) network namespace: ip_forward and
// kindlingd's nftables table.
func keepHostNet(t *testing.T) {
	t.Helper()
	const fwd = "/proc/sys/net/ipv4/ip_forward"
	was, err := os.ReadFile(fwd)
	if err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	hadTable := false
	if tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4); err == nil {
		for _, tb := range tables {
			hadTable = hadTable || tb.Name == hostnet.TableName
		}
	}
	t.Cleanup(func() {
		os.WriteFile(fwd, was, 0)
		if !hadTable {
			c.DelTable(&nftables.Table{Name: hostnet.TableName, Family: nftables.TableFamilyIPv4})
			c.Flush()
		}
	})
}

// TestNetworkPolicies (process backend): a function without a network
// policy sees loopback only and has no route out; one with
// NETWORK_EGRESS has eth0 with its own address and a default route; its
// veth and namespace go when the instance does.
func TestNetworkPolicies(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	keepHostNet(t)
	d := startDaemon(t, "--backend", "process")
	register(t, d, "closed")
	register(t, d, "open", func(s *api.FunctionSpec) { s.Network = api.NetworkPolicy_NETWORK_EGRESS })
	closed := mustInvoke(t, d, &api.InvokeRequest{Function: "closed", Payload: []byte(`{"op":"net"}`)})
	if closed.State != api.InvocationState_SUCCEEDED || !strings.Contains(string(closed.Response), "lo=127.0.0.1/8") ||
		strings.Contains(string(closed.Response), "eth0") || !strings.Contains(string(closed.Response), "route=none") {
		t.Fatalf("no network policy: %s", closed.Response)
	}
	open := mustInvoke(t, d, &api.InvokeRequest{Function: "open", Payload: []byte(`{"op":"net"}`)})
	if open.State != api.InvocationState_SUCCEEDED || !regexp.MustCompile(`eth0=10\.200\.\d+\.\d+/30`).Match(open.Response) ||
		!strings.Contains(string(open.Response), "route=ok") {
		t.Fatalf("egress: %s", open.Response)
	}
	t.Logf("egress sandbox: %s", open.Response)
	var mine string
	for _, v := range hostVeths(t) {
		if strings.Contains(v, open.InstanceId) {
			mine = v
		}
	}
	if mine == "" {
		t.Fatalf("no host veth aliased for %s: %v", open.InstanceId, hostVeths(t))
	}
	if _, err := d.API.DeleteFunction(context.Background(), &api.DeleteFunctionRequest{Name: "open"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the egress sandbox's veth and directory (and namespace file) to go", func() bool {
		for _, v := range hostVeths(t) {
			if strings.Contains(v, open.InstanceId) {
				return false
			}
		}
		_, err := os.Stat(filepath.Join(d.StateDir, "sandboxes", open.InstanceId))
		return os.IsNotExist(err)
	})
}

// TestEchoGuestWithEgress (microVM backend): an egress function's jailed
// VMM gets its own namespace holding tap0, attaches its virtio-net device
// to it, and keeps serving through restores (every namespace has the
// same tap and addressing); the network goes with the VM.
func TestEchoGuestWithEgress(t *testing.T) {
	img, sha := echoImage(t)
	keepHostNet(t)
	d := startDaemon(t, "--backend", "microvm", "--standby-restores", "0")
	ctx := context.Background()
	_, err := d.API.RegisterFunction(ctx, &api.RegisterFunctionRequest{Function: &api.FunctionSpec{Name: "echo", MemoryMib: 64, TimeoutMs: 10_000,
		Network: api.NetworkPolicy_NETWORK_EGRESS, Image: &api.ImageRef{Path: img, ManifestSha256: sha}}})
	if err != nil {
		t.Fatal(err)
	}
	cold := mustInvoke(t, d, &api.InvokeRequest{Function: "echo", Tenant: "a", Payload: []byte(`{"text":"a"}`)})
	restored := mustInvoke(t, d, &api.InvokeRequest{Function: "echo", Tenant: "b", Payload: []byte(`{"text":"b"}`)})
	if cold.State != api.InvocationState_SUCCEEDED || restored.State != api.InvocationState_SUCCEEDED || restored.Start != api.StartKind_RESTORE {
		t.Fatalf("cold %v, restored %v", cold, restored)
	}
	for _, id := range []string{cold.InstanceId, restored.InstanceId} {
		ns, err := netns.GetFromPath(filepath.Join(d.StateDir, "sandboxes", id, hostnet.NetNSName))
		if err != nil {
			t.Fatalf("%s: its namespace: %v", id, err)
		}
		h, err := netlink.NewHandleAt(ns)
		if err != nil {
			t.Fatal(err)
		}
		tap, err := h.LinkByName(hostnet.TapName)
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		// A tap's carrier is on while a process has it attached: the VMM.
		if tap.Attrs().OperState != netlink.OperUp {
			t.Errorf("%s: tap0 is %v, want up (attached by the VMM)", id, tap.Attrs().OperState)
		}
		h.Close()
		ns.Close()
	}
	if _, err := d.API.DeleteFunction(ctx, &api.DeleteFunctionRequest{Name: "echo"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the VMs' networks to go", func() bool {
		for _, v := range hostVeths(t) {
			if strings.Contains(v, cold.InstanceId) || strings.Contains(v, restored.InstanceId) {
				return false
			}
		}
		return true
	})
}
