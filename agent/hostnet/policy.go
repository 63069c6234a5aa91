package hostnet

import "fmt"

// Policy is what a function's sandboxes may reach over the network.
type Policy string

const (
	// None gives a sandbox a namespace with loopback only: the default.
	None Policy = "none"
	// Egress lets a sandbox open connections out, through NAT, and
	// lets nothing in.
	Egress Policy = "egress"
)

// ParsePolicy reads a policy by name; "" is None.
func ParsePolicy(s string) (Policy, error) {
	switch p := Policy(s); p {
	case "":
		return None, nil
	case None, Egress:
		return p, nil
	}
	return "", fmt.Errorf("network policy %q: want %q or %q", s, None, Egress)
}
