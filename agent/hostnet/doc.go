// Package hostnet gives each kindlingd sandbox a network namespace of its
// own and applies the function's network policy to it, on the host side:
//
//   - None: the namespace has loopback only (and, for a microVM, its tap,
//     which leads nowhere).
//   - Egress: a veth pair joins the namespace to the host's; the sandbox
//     reaches the outside through NAT, and nothing reaches it: no new
//     connection from outside, from the host or from another sandbox.
//
// A microVM's namespace holds a persistent tap, TapName, owned by the
// jailed VMM's uid, that the VMM attaches to by name. Every guest has the
// same address, gateway and MAC (package guestnet) so that a snapshot
// restores into any sandbox; with Egress the sandbox's namespace
// masquerades the guest behind its veth address. A process sandbox runs
// in the namespace itself, on the veth's address.
//
// The host side of Egress lives in the Host's namespace (the root one for
// kindlingd): one veth per sandbox, named kl<slot>, with the sandbox ID as
// its alias and the slot's /30 of the pool; and one nftables table,
// "kindling" (family ip), that masquerades the pool and filters what
// crosses kl* interfaces. The kernel's state is the only record: slots are
// claimed by creating the veth (so two claims never collide), found again
// after a restart by listing links, and leftovers of a crash are found
// and removed by Sweep, never reused.
//
// The package uses netlink and nftables only; it never runs ip(8),
// iptables or nft. Its namespace work runs on OS threads locked for the
// purpose, which go back to their own namespace before they are unlocked
// (or end locked), so no goroutine of the caller ever runs in a
// sandbox's namespace.
package hostnet
