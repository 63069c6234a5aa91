package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/kindlingvm/kindling/vmm/hostcheck"
)

func hostMain(args []string) error {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(os.Stderr, "usage: kindling host check [--json]\n\nProbes this host's KVM: API version, capabilities, host kind (VMX, SVM or\nPVM), and with tiny guests whether guest kernel mode runs natively, whether\na guest's user-mode system calls reach its kernel, and whether CPUID is\nvirtualised. Prints one plain verdict per line.\n")
		return exitError{2}
	}
	fs := flag.NewFlagSet("kindling host check", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	r, err := hostcheck.Run()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			return err
		}
	} else {
		r.Print(os.Stdout)
	}
	if !r.KVM.OK {
		return exitError{1}
	}
	return nil
}

// hostEmulatesCPL0 is the check kernel builds use to decide on the int3
// self-test patch.
func hostEmulatesCPL0() (bool, error) {
	r, err := hostcheck.Run()
	if err != nil {
		return false, err
	}
	if !r.KVM.OK {
		return false, fmt.Errorf("cannot probe KVM: %s", r.KVM.Detail)
	}
	return r.EmulatesCPL0(), nil
}

// parseEmulatedCPL0 reads an --emulated-cpl0 flag: true, false, or auto
// (ask 'kindling host check').
func parseEmulatedCPL0(v, verb string) (bool, error) {
	switch v {
	case "true":
		return true, nil
	case "false":
		return false, nil
	case "auto":
		emu, err := hostEmulatesCPL0()
		if err != nil {
			return false, fmt.Errorf("%s: %w (pass --emulated-cpl0=true or false)", verb, err)
		}
		return emu, nil
	}
	return false, badInput(fmt.Errorf("--emulated-cpl0=%q: want auto, true or false", v))
}
