package hostnet

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/kindlingvm/kindling/agent/guestnet"
)

// TableName is the nftables table (family ip) hostnet keeps in the
// Host's namespace and in each microVM sandbox's namespace with Egress.
const TableName = "kindling"

// Rule comments, as `nft list table ip kindling` shows them; the tests
// find rules by them.
const (
	commentMasquerade     = "kindling: sandboxes out through NAT"
	commentBetween        = "kindling: no traffic between sandboxes"
	commentReplies        = "kindling: replies to sandboxes"
	commentInbound        = "kindling: nothing new into a sandbox"
	commentOutbound       = "kindling: sandboxes out"
	commentSpoofed        = "kindling: a sandbox source outside the pool"
	commentHostReplies    = "kindling: the host's replies to sandboxes"
	commentHostPing       = "kindling: sandboxes may ping the host"
	commentHostRefused    = "kindling: sandboxes reach no host service"
	commentHostToSandbox  = "kindling: the host opens nothing into a sandbox"
	commentGuestOut       = "kindling: the guest out through the veth"
	commentGuestReplies   = "kindling: replies to the guest"
	commentGuestForbidden = "kindling: anything else through the sandbox"
	commentGuestNAT       = "kindling: the guest behind the sandbox's address"
)

// installHostTable replaces the Host namespace's table with the rules for
// pool, in one transaction: a table left by an earlier run of kindlingd,
// whatever it holds, is replaced whole, and there is no moment without
// rules. Chains other than ours keep their own say: a drop in another
// table still drops.
//
// Interfaces are matched by vethPrefix (`iifname "kl*"`), so a sandbox
// adds no rule and removing one leaves none behind.
func installHostTable(ns netns.NsHandle, p netip.Prefix) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
	// Add (a no-op if it exists), delete, add: replace without first
	// asking whether it is there.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	chain := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
	}
	rule := func(ch *nftables.Chain, comment string, e ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: concat(e...), UserData: userdata.AppendString(nil, userdata.TypeComment, comment)})
	}
	fromSandbox, toSandbox := iifname(vethPrefix, false), oifname(vethPrefix, false)

	post := chain("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource)
	rule(post, commentMasquerade, saddrIn(p), notOifname(vethPrefix), []expr.Any{&expr.Masq{}})

	fwd := chain("forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
	rule(fwd, commentBetween, fromSandbox, toSandbox, countAnd(expr.VerdictDrop))
	rule(fwd, commentReplies, toSandbox, established(), countAnd(expr.VerdictAccept))
	rule(fwd, commentInbound, toSandbox, countAnd(expr.VerdictDrop))
	rule(fwd, commentOutbound, fromSandbox, saddrIn(p), countAnd(expr.VerdictAccept))
	rule(fwd, commentSpoofed, fromSandbox, countAnd(expr.VerdictDrop))

	in := chain("input", nftables.ChainTypeFilter, nftables.ChainHookInput, nftables.ChainPriorityFilter)
	rule(in, commentHostReplies, fromSandbox, established(), countAnd(expr.VerdictAccept))
	rule(in, commentHostPing, fromSandbox, icmpEchoRequest(), countAnd(expr.VerdictAccept))
	rule(in, commentHostRefused, fromSandbox, countAnd(expr.VerdictDrop))

	out := chain("output", nftables.ChainTypeFilter, nftables.ChainHookOutput, nftables.ChainPriorityFilter)
	rule(out, commentHostReplies, toSandbox, established(), countAnd(expr.VerdictAccept))
	rule(out, commentHostToSandbox, toSandbox, countAnd(expr.VerdictDrop))

	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables table ip %s: %w (the kernel needs nf_tables with nft_nat, nft_masq and nft_ct)", TableName, err)
	}
	return nil
}

// installSandboxTable gives a microVM sandbox's namespace its table: the
// guest, and only the guest's address, goes out through the veth (peer)
// masqueraded behind the sandbox's address, and only replies come back;
// nothing else crosses the namespace.
func installSandboxTable(ns netns.NsHandle, tap, peer string) error {
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName})
	rule := func(ch *nftables.Chain, comment string, e ...[]expr.Any) {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: concat(e...), UserData: userdata.AppendString(nil, userdata.TypeComment, comment)})
	}
	accept, drop := nftables.ChainPolicyAccept, nftables.ChainPolicyDrop
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	rule(post, commentGuestNAT, oifname(peer, true), saddrIn(guestnet.Addr.Masked()), []expr.Any{&expr.Masq{}})
	fwd := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
	rule(fwd, commentGuestOut, iifname(tap, true), oifname(peer, true), saddrIn(netip.PrefixFrom(guestnet.Addr.Addr(), 32)), countAnd(expr.VerdictAccept))
	rule(fwd, commentGuestReplies, iifname(peer, true), oifname(tap, true), established(), countAnd(expr.VerdictAccept))
	rule(fwd, commentGuestForbidden, countAnd(expr.VerdictDrop))
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables table ip %s in the sandbox: %w (the kernel needs nf_tables with nft_nat, nft_masq and nft_ct)", TableName, err)
	}
	return nil
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ifnameData is an interface name as nftables compares it: the whole
// NUL-padded IFNAMSIZ field for a name, only the prefix's bytes for a
// wildcard ("kl*").
func ifnameData(name string, exact bool) []byte {
	if !exact {
		return []byte(name)
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func ifname(key expr.MetaKey, op expr.CmpOp, name string, exact bool) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: ifnameData(name, exact)},
	}
}

func iifname(name string, exact bool) []expr.Any {
	return ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, name, exact)
}
func oifname(name string, exact bool) []expr.Any {
	return ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, name, exact)
}
func notOifname(prefix string) []expr.Any {
	return ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, prefix, false)
}

// saddrIn is `ip saddr P`.
func saddrIn(p netip.Prefix) []expr.Any {
	m := make([]byte, 4)
	for i := 0; i < p.Bits(); i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	net4 := p.Masked().Addr().As4()
	return []expr.Any{
		// The IPv4 header's source address: bytes 12 to 15 (RFC 791).
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: m, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net4[:]},
	}
}

// established is `ct state established,related`.
func established() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}

// icmpEchoRequest is `icmp type echo-request` (type 8, RFC 792).
func icmpEchoRequest() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{8}},
	}
}

// countAnd counts what reaches it, then gives verdict v: the counters
// say, in `nft list`, what the policy stopped.
func countAnd(v expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: v}}
}
