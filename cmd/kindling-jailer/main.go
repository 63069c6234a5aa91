// Command kindling-jailer puts one program, a kindling-vmm, in a jail:
// new namespaces, a root of its own holding only what the jail's Spec
// names, a cgroup, an unprivileged uid and gid, no_new_privs; then execs
// it. It is started by jail.Command (package vmm/jail), never by hand.
package main

import (
	"os"

	"github.com/kindlingvm/kindling/vmm/jail"
)

func main() { os.Exit(jail.Main(os.Args[1:])) }
