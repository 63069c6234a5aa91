package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kindlingvm/kindling/agent/profiles"
	"github.com/kindlingvm/kindling/cpuid"
	"github.com/kindlingvm/kindling/cpuid/isa"
	"github.com/kindlingvm/kindling/internal/buildid"
	"github.com/kindlingvm/kindling/vmm"
)

const cpuUsage = `usage: kindling cpu COMMAND [FLAGS] [ARGS]

Commands:
  show                 this host's CPU as KVM offers it: features, XSAVE state,
                       and which built-in CPU templates it can run (--raw: the
                       supported CPUID table itself)
  needs BINARY         the instruction-set extensions a task binary needs, each
                       'required' (declared by GOAMD64 or an ELF ISA-level note,
                       or used where no CPU-feature check guards it) or
                       'optional' (runtime-dispatched), and the template
                       Kindling would pick for it on this host
                       --profile FILE: a CPU profile (pprof) of BINARY, checked
                       against its build ID, says for each optional extension
                       what share of the CPU time ran in its dispatched code (the
                       fast paths and the functions that test for it and call
                       them, or their fallback when it is hidden), its hottest
                       functions, and whether it is 'wanted': worth exposing, at
                       5% or more
  diff TEMPLATE TEMPLATE
                       what two templates expose differently on this host

A TEMPLATE is a built-in name (x86-64-v2, x86-64-v3, x86-64-v4, t2, c3, or host
for no template) or a JSON file:
  {"name": "...", "cpuid": [{"leaf": "0x7", "subleaf": 0, "register": "ebx",
   "bitmap": "<32 chars of 0, 1 or x, bit 31 first>"}],
   "msrs": [{"index": "0x10a", "bitmap": "<64 chars>"}]}
'kindling cpu show --template NAME' prints a built-in one in that form.

Every command takes --host-dump FILE to use a recorded KVM_GET_SUPPORTED_CPUID
table (cpu show --dump FILE writes one) instead of this host's /dev/kvm.
`

func cpuMain(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, cpuUsage)
		return exitError{2}
	}
	switch args[0] {
	case "show":
		return cpuShow(args[1:])
	case "needs":
		return cpuNeeds(args[1:])
	case "diff":
		return cpuDiff(args[1:])
	case "-h", "--help", "help":
		fmt.Print(cpuUsage)
		return nil
	}
	fmt.Fprint(os.Stderr, cpuUsage)
	return fmt.Errorf("unknown cpu command %q", args[0])
}

// parseInterspersed parses flags that may come before or after the
// positional arguments, and returns those.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// hostTable is this host's supported CPUID, or a recorded one.
func hostTable(dump string) (cpuid.Table, string, error) {
	if dump != "" {
		d, err := cpuid.LoadDump(dump)
		if err != nil {
			return nil, "", err
		}
		return d.Entries, "recorded: " + d.CPU, nil
	}
	t, err := cpuid.Supported()
	if err != nil {
		return nil, "", fmt.Errorf("read this host's supported CPUID: %w (check /dev/kvm, or pass --host-dump FILE)", err)
	}
	return t, "this host: " + cpuModel() + ", KVM " + vmm.HostKind(), nil
}

// cpuModel is the host CPU's name from /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

func cpuShow(args []string) error {
	fs := flag.NewFlagSet("kindling cpu show", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	dumpTo := fs.String("dump", "", "write the host's supported CPUID to `FILE` as a recorded dump")
	template := fs.String("template", "", "print template `NAME` (or FILE) as JSON and what it exposes on this host")
	hostDump := fs.String("host-dump", "", "use a recorded supported-CPUID `FILE` instead of /dev/kvm")
	raw := fs.Bool("raw", false, "print the supported CPUID table itself, every leaf and register")
	if _, err := parseInterspersed(fs, args); err != nil {
		return err
	}
	host, where, err := hostTable(*hostDump)
	if err != nil {
		return err
	}
	if *raw {
		fmt.Printf("KVM_GET_SUPPORTED_CPUID, %s\n", where)
		cpuid.WriteRaw(os.Stdout, host)
		return nil
	}
	if *dumpTo != "" {
		d := cpuid.Dump{CPU: cpuModel(), Vendor: host.Vendor(), Kind: "kvm-supported-cpuid",
			Source: "kindling cpu show --dump on a " + vmm.HostKind() + " KVM host", Entries: host}
		b, err := json.MarshalIndent(d, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*dumpTo, append(b, '\n'), 0o644); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "wrote %d entries to %s\n", len(host), *dumpTo)
		return nil
	}
	if *template != "" {
		t, err := cpuid.Load(*template)
		if err != nil {
			return badInput(err)
		}
		b, err := t.MarshalIndent()
		if err != nil {
			return err
		}
		os.Stdout.Write(b)
		applied, err := t.Apply(host)
		if err != nil {
			return err
		}
		fmt.Printf("\n%s on %s:\n", t.Name, where)
		cpuid.WriteFeatures(os.Stdout, cpuid.Normalize(applied, 0, 1))
		return nil
	}
	sts := cpuid.Statuses(host)
	if *asJSON {
		return printJSON(map[string]any{"host": where, "vendor": host.Vendor(), "features": host.Features(), "templates": sts})
	}
	fmt.Printf("%s (vendor %s)\n", where, host.Vendor())
	fmt.Println("KVM_GET_SUPPORTED_CPUID offers:")
	cpuid.WriteFeatures(os.Stdout, host)
	fmt.Println()
	cpuid.WriteStatuses(os.Stdout, sts)
	if *hostDump == "" && vmm.HostKind() == "pvm" {
		fmt.Println("\nThis is a PVM host: a guest sees the host's own CPUID whatever a template sets (kindling host check tests it), so templates here shape the CPUID the VMM records and checks, not what the guest reads.")
	}
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func cpuNeeds(args []string) error {
	fs := flag.NewFlagSet("kindling cpu needs", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the analysis as JSON")
	hostDump := fs.String("host-dump", "", "choose the template against a recorded supported-CPUID `FILE`")
	noSelect := fs.Bool("no-select", false, "only analyse; do not choose a template for this host")
	profFile := fs.String("profile", "", "read hardware hints from a CPU profile `FILE` (pprof) of BINARY")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return badInput(errors.New("cpu needs takes one BINARY"))
	}
	r, err := isa.File(pos[0])
	if err != nil {
		return badInput(err)
	}
	var prof *profileHints
	if *profFile != "" {
		if prof, err = readProfileHints(pos[0], *profFile, r); err != nil {
			return badInput(err)
		}
	}
	var choice *cpuid.Choice
	var selErr error
	if !*noSelect {
		host, _, err := hostTable(*hostDump)
		if err != nil {
			return err
		}
		choice, selErr = cpuid.Select(host, r.Required(), r.Optional())
	}
	if *asJSON {
		out := map[string]any{"analysis": r}
		if choice != nil {
			out["template"] = choice.Template.Name
			out["hidden_optional"] = choice.HiddenOptional
		}
		if selErr != nil {
			out["refused"] = selErr.Error()
		}
		if prof != nil {
			out["profile"], out["hints"] = prof, prof.Hints
		}
		if err := printJSON(out); err != nil {
			return err
		}
	} else {
		writeNeeds(r, choice, selErr)
		if prof != nil {
			writeHints(prof, choice)
		}
	}
	if selErr != nil {
		return exitError{1}
	}
	return nil
}

func writeNeeds(r *isa.Report, choice *cpuid.Choice, selErr error) {
	fmt.Printf("%s: %s binary, x86-64-v%d (%s)\n", r.Path, r.Language, r.Level, orNone(r.LevelFrom))
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	for _, u := range r.Uses {
		kind := "optional"
		if u.Required {
			kind = "required"
		}
		fmt.Fprintf(tw, "%s\t%s\tunguarded %d\tguarded %d\t%s\n", u.Extension, kind, u.Unguarded, u.Guarded, u.Why)
	}
	tw.Flush()
	fmt.Printf("%d instructions decoded, %d bytes skipped\n", r.Instructions, r.Undecoded)
	for _, n := range r.Notes {
		fmt.Println("note:", n)
	}
	switch {
	case selErr != nil:
		fmt.Println("template: refused:", selErr)
	case choice != nil:
		fmt.Printf("template: %s", choice.Template.Name)
		if len(choice.HiddenOptional) > 0 {
			fmt.Printf(" (hides optional %s: their dispatched paths fall back)", strings.Join(choice.HiddenOptional, ", "))
		}
		fmt.Println()
	}
}

// profileHints is what a CPU profile of the binary says about its
// optional extensions.
type profileHints struct {
	File    string          `json:"file"`
	BuildID string          `json:"build_id"`
	Samples int64           `json:"samples"`
	CPUNs   int64           `json:"cpu_ns"`
	Hints   []profiles.Hint `json:"-"` // beside it in the JSON
}

// readProfileHints checks the profile in file against bin's build ID, as
// kindlingd checks the ones guests send, and reads its hints.
func readProfileHints(bin, file string, r *isa.Report) (*profileHints, error) {
	id, err := buildid.File(bin)
	if err != nil {
		return nil, fmt.Errorf("%s: %w: a profile can only be checked against a binary that has one", bin, err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	p, err := profiles.Check(data, profiles.Expect{BuildID: id})
	if errors.Is(err, profiles.ErrOtherBuild) {
		return nil, fmt.Errorf("%s is not a profile of %s: %w", file, bin, err)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	samples, cpuNs := profiles.Totals(p)
	return &profileHints{File: file, BuildID: id, Samples: samples, CPUNs: cpuNs, Hints: profiles.Hints(p, r.Dispatch())}, nil
}

func writeHints(ph *profileHints, choice *cpuid.Choice) {
	fmt.Printf("\nprofile %s: %d samples, %s of CPU\n", ph.File, ph.Samples, time.Duration(ph.CPUNs))
	if len(ph.Hints) == 0 {
		fmt.Println("no optional extensions to weigh")
		return
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "extension\tprofile CPU\twanted\thottest dispatched functions")
	var hidden []string
	for _, h := range ph.Hints {
		want := "-"
		if h.Wanted {
			want = "wanted"
			if choice != nil && slices.Contains(choice.HiddenOptional, h.Extension) {
				hidden = append(hidden, h.Extension)
			}
		}
		fmt.Fprintf(tw, "%s\t%5.1f%%\t%s\t%s\n", h.Extension, 100*h.Fraction, want, orDash(strings.Join(h.Functions, ", ")))
	}
	tw.Flush()
	fmt.Printf("wanted: %.0f%% or more of the profile's CPU in an extension's dispatched code\n", 100*profiles.WantedFraction)
	if len(hidden) > 0 {
		fmt.Printf("note: template %s hides wanted %s: that time runs in the fallback code\n", choice.Template.Name, strings.Join(hidden, ", "))
	}
}

func orNone(s string) string {
	if s == "" {
		return "no level declared"
	}
	return s
}

func cpuDiff(args []string) error {
	fs := flag.NewFlagSet("kindling cpu diff", flag.ContinueOnError)
	hostDump := fs.String("host-dump", "", "compare on a recorded supported-CPUID `FILE`")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return badInput(errors.New("cpu diff takes two templates: names (x86-64-v2, x86-64-v3, x86-64-v4, t2, c3, host) or JSON files"))
	}
	host, where, err := hostTable(*hostDump)
	if err != nil {
		return err
	}
	var tables [2]cpuid.Table
	var names [2]string
	for i, p := range pos {
		t, err := cpuid.Load(p)
		if err != nil {
			return badInput(err)
		}
		applied, err := t.Apply(host)
		if err != nil {
			return err
		}
		tables[i], names[i] = cpuid.Normalize(applied, 0, 1), t.Name
	}
	fmt.Printf("on %s\n", where)
	cpuid.WriteDiff(os.Stdout, names[0], names[1], tables[0], tables[1])
	return nil
}
