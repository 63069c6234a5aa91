package guestnet

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestCmdlineArgRoundTrip(t *testing.T) {
	dns := []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("2606:4700:4700::1111")}
	c := Default(dns...)
	arg := c.CmdlineArg()
	if want := "kindling.net=172.16.0.2/30,gw=172.16.0.1,dns=1.1.1.1,dns=2606:4700:4700::1111"; arg != want {
		t.Fatalf("CmdlineArg: %q, want %q", arg, want)
	}
	got, err := ParseCmdline("console=ttyS0 " + arg + " quiet")
	if err != nil {
		t.Fatal(err)
	}
	if got.Addr != c.Addr || got.Gateway != c.Gateway || len(got.DNS) != 2 || got.DNS[0] != dns[0] || got.DNS[1] != dns[1] {
		t.Errorf("parsed %+v, want %+v", got, c)
	}
	if none := Default(); none.CmdlineArg() != "kindling.net=172.16.0.2/30,gw=172.16.0.1" {
		t.Errorf("no DNS: %q", none.CmdlineArg())
	}
}

func TestParseCmdline(t *testing.T) {
	for _, c := range []struct {
		cmdline string
		want    string // "" for success; else a substring of the error
	}{
		{"kindling.net=172.16.0.2/30,gw=172.16.0.1", ""},
		{"kindling.net=10.0.0.5/24,gw=10.0.0.1,dns=10.0.0.53", ""},
		{"kindling.net=bad kindling.net=172.16.0.2/30,gw=172.16.0.1", ""}, // the last wins
		{"console=ttyS0 noapic", ErrNoConfig.Error()},
		{"xkindling.net=172.16.0.2/30,gw=172.16.0.1", ErrNoConfig.Error()},
		{"kindling.net=172.16.0.2,gw=172.16.0.1", "ADDR/BITS"},
		{"kindling.net=172.16.0.2/30", "no gw="},
		{"kindling.net=172.16.0.2/30,gw=172.16.0.9", "gateway"},
		{"kindling.net=172.16.0.2/30,gw=172.16.0.2", "gateway"},
		{"kindling.net=172.16.0.2/30,gw=172.16.0.3", "gateway"}, // the broadcast address
		{"kindling.net=172.16.0.3/30,gw=172.16.0.1", "broadcast"},
		{"kindling.net=172.16.0.2/31,gw=172.16.0.3", "/30 or shorter"},
		{"kindling.net=fd00::2/64,gw=fd00::1", "IPv4"},
		{"kindling.net=172.16.0.2/30,gw=172.16.0.1,dns=nope", "dns"},
		{"kindling.net=172.16.0.2/30,gw=172.16.0.1,mtu=1500", "unknown field"},
	} {
		_, err := ParseCmdline(c.cmdline)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%q: %v", c.cmdline, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%q: %v, want an error with %q", c.cmdline, err, c.want)
		}
	}
	if _, err := ParseCmdline(""); !errors.Is(err, ErrNoConfig) {
		t.Errorf("empty: %v, want ErrNoConfig", err)
	}
}

func TestResolvConf(t *testing.T) {
	c := Default(netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("8.8.8.8"))
	got := c.ResolvConf()
	if !strings.Contains(got, "nameserver 1.1.1.1\nnameserver 8.8.8.8\n") {
		t.Errorf("%q", got)
	}
}

func FuzzParse(f *testing.F) {
	f.Add("172.16.0.2/30,gw=172.16.0.1,dns=1.1.1.1")
	f.Add(",,,=")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever parses writes back to something that parses the same.
		again, err := Parse(strings.TrimPrefix(c.CmdlineArg(), Param+"="))
		if err != nil || again.CmdlineArg() != c.CmdlineArg() {
			t.Fatalf("%q -> %q -> %v %v", s, c.CmdlineArg(), again, err)
		}
	})
}
