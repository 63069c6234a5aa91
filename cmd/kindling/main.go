// Command kindling is the developer's CLI: it boots and drives microVMs
// (`kindling vm`), builds kernels and images, checks what this host's KVM
// can do (`kindling host check`), and is a client of kindlingd, the host
// agent (`kindling function`, `invoke FUNCTION`, `invocation`,
// `instances`, `host status`).
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
)

const usage = `usage: kindling [--socket PATH] COMMAND [ARGS]

Commands that run here:
  vm run      boot a kernel in a microVM and stream its console
  vm status   show a running VM's state (also: pause, resume, stop, metrics)
  kernel      build kernels (kindling kernel --help)
  image build build a task image: kernel, initramfs, manifest (kindling image --help)
  invoke --image DIR
              boot an image in a microVM and invoke its task once
  host check  probe this host's KVM and say what it can run
  cpu         CPU templates and a task's instruction-set needs (kindling cpu --help)

Commands that ask kindlingd, the host agent:
  function register NAME --image DIR
              register a function version (kindling function --help)
  function list, function delete NAME
              the registered versions; remove one, or all of a function's
  function prewarm NAME [--instances N]
              start warm instances (and a warm snapshot where the backend can)
  invoke FUNCTION --payload JSON
              invoke a registered function: its logs on stderr, its response on stdout
  invocation get ID
              an invocation's state, result, start and phases
  instances   the sandboxes kindlingd runs
  host status kindlingd's backend, isolation, capacity, KVM and versions

These find kindlingd on its Unix socket, --socket PATH (default
$KINDLING_SOCKET, else /run/kindling/kindlingd.sock), or over TCP with
--addr HOST:PORT and mutual TLS (--tls-cert FILE --tls-key FILE
--tls-ca FILE). The flags go before or after the command.

Run 'kindling COMMAND --help' for a command's flags.
`

// exitError carries a process exit status through error returns.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func main() {
	d := newDaemonCLI(os.Stdout, os.Stderr, os.Getenv)
	os.Exit(exitCode(dispatch(d, os.Args[1:]), os.Stderr))
}

// exitCode is the exit status for a command's error, which it prints
// unless the command already has.
func exitCode(err error, stderr io.Writer) int {
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	fmt.Fprintf(stderr, "kindling: %v\n", err)
	return 1
}

// dispatch runs a command; d runs those that talk to kindlingd and holds
// the connection flags given before the command.
func dispatch(d *daemonCLI, args []string) error {
	args, err := d.globalFlags(args)
	if err != nil {
		return err
	}
	if len(args) == 0 {
		fmt.Fprint(d.stderr, usage)
		return exitError{2}
	}
	switch args[0] {
	case "vm":
		return vmMain(args[1:])
	case "kernel":
		return kernelMain(args[1:])
	case "image":
		return d.imageMain(args[1:])
	case "invoke":
		if hasImageFlag(args[1:]) {
			return invokeMain(args[1:])
		}
		return d.invoke(args[1:])
	case "function":
		return d.functionMain(args[1:])
	case "invocation":
		return d.invocationMain(args[1:])
	case "instances":
		return d.instances(args[1:])
	case "host":
		return hostMain(d, args[1:])
	case "cpu":
		return cpuMain(args[1:])
	case "-h", "--help", "help":
		fmt.Fprint(d.stdout, usage)
		return nil
	}
	fmt.Fprint(d.stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
