package hostnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPoolSlots(t *testing.T) {
	p, err := newPool(netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	if p.prefix != DefaultPool || p.slots() != 16384 {
		t.Fatalf("default pool %v with %d slots", p.prefix, p.slots())
	}
	for _, c := range []struct {
		slot       int
		host, sbox string
	}{
		{0, "10.200.0.1/30", "10.200.0.2/30"},
		{1, "10.200.0.5/30", "10.200.0.6/30"},
		{64, "10.200.1.1/30", "10.200.1.2/30"},
		{16383, "10.200.255.253/30", "10.200.255.254/30"},
	} {
		h, s := p.link(c.slot)
		if h.String() != c.host || s.String() != c.sbox {
			t.Errorf("slot %d: %v %v, want %s %s", c.slot, h, s, c.host, c.sbox)
		}
	}
	// Every slot's /30 is distinct and inside the pool.
	seen := map[netip.Prefix]bool{}
	for s := 0; s < p.slots(); s++ {
		h, sb := p.link(s)
		if !p.prefix.Contains(h.Addr()) || !p.prefix.Contains(sb.Addr()) || h.Masked() != sb.Masked() || seen[h.Masked()] {
			t.Fatalf("slot %d: %v %v", s, h, sb)
		}
		seen[h.Masked()] = true
	}
}

func TestPoolRefused(t *testing.T) {
	for in, want := range map[string]string{
		"fd00::/64":     "IPv4",
		"10.200.0.1/16": "network address",
		"10.0.0.0/31":   "between /8",
		"10.0.0.0/7":    "between /8",
		"172.16.0.0/12": "overlaps the guests'",
		"172.16.0.0/30": "overlaps the guests'",
	} {
		_, err := newPool(netip.MustParsePrefix(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
	if p, err := newPool(netip.MustParsePrefix("100.64.0.0/30")); err != nil || p.slots() != 1 {
		t.Errorf("a one-slot pool: %v %v", p, err)
	}
}

func TestVethNames(t *testing.T) {
	for _, s := range []int{0, 1, 9, 10, 16383, 1<<22 - 1} {
		name := vethName(s)
		if len(name) > 15 {
			t.Errorf("%d: %q is longer than IFNAMSIZ-1", s, name)
		}
		if got, ok := parseVethName(name); !ok || got != s {
			t.Errorf("%q: %d %v", name, got, ok)
		}
	}
	for _, bad := range []string{"kl", "kl01", "klx", "kl-1", "kl+1", "eth0", "kl1a", "KL1", "kl99999999999999999999"} {
		if _, ok := parseVethName(bad); ok {
			t.Errorf("%q parsed as a sandbox veth", bad)
		}
	}
}

func TestParsePolicy(t *testing.T) {
	for in, want := range map[string]Policy{"": None, "none": None, "egress": Egress} {
		if got, err := ParsePolicy(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := ParsePolicy("ingress"); err == nil || !strings.Contains(err.Error(), `"none" or "egress"`) {
		t.Errorf("ingress: %v", err)
	}
}
