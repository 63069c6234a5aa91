// Command kindling is the developer's CLI: it boots and drives microVMs
// (`kindling vm`), builds kernels (`kindling kernel`) and checks what this
// host's KVM can do (`kindling host check`).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `usage: kindling COMMAND [ARGS]

Commands:
  vm run      boot a kernel in a microVM and stream its console
  vm status   show a running VM's state (also: pause, resume, stop, metrics)
  kernel      build kernels (kindling kernel --help)
  image build build a task image: kernel, initramfs, manifest (kindling image --help)
  invoke      boot an image and invoke its task once
  host check  probe this host's KVM and say what it can run
  cpu         CPU templates and a task's instruction-set needs (kindling cpu --help)

Run 'kindling COMMAND --help' for a command's flags.
`

// exitError carries a process exit status through error returns.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	err := dispatch(os.Args[1:])
	var ee exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		os.Exit(ee.code)
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "kindling: %v\n", err)
		os.Exit(1)
	}
}

func dispatch(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitError{2}
	}
	switch args[0] {
	case "vm":
		return vmMain(args[1:])
	case "kernel":
		return kernelMain(args[1:])
	case "image":
		return imageMain(args[1:])
	case "invoke":
		return invokeMain(args[1:])
	case "host":
		return hostMain(args[1:])
	case "cpu":
		return cpuMain(args[1:])
	case "-h", "--help", "help":
		fmt.Print(usage)
		return nil
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
