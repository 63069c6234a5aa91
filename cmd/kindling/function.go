package main

// kindling function register|list|delete|prewarm and kindling instances:
// the function registry and the sandboxes kindlingd runs for it.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/vmm"
)

const functionUsage = `usage: kindling function register NAME --image DIR [flags]
       kindling function list [--json]
       kindling function delete NAME [--version V]
       kindling function prewarm NAME [--version V] [--tenant T] [--instances N] [--json]
       kindling function profile NAME [--version V] [-o FILE] [--json]

'function register' adds a version of a function to kindlingd, or replaces
one that has no instances. DIR is an image from 'kindling image build', on
kindlingd's host: the CLI sends its absolute path and the SHA-256 of its
manifest.json, and kindlingd refuses the image if its files differ. Flags
left out take kindlingd's defaults (version 1, --memory 256M, 1 vCPU,
--timeout 30s, --concurrency 10, --keep-alive 10m, --queue-limit 100).
--env K=V and --warmup JSON|@FILE may be repeated; warm-up payloads run in
every new instance before it serves, and before a warm snapshot is cut.

'function delete' removes one version, or every version without
--version, and stops their instances.

'function prewarm' starts N new instances (default 1, at most the
function's concurrency limit) for the tenant (default the function's own),
runs the warm-up payloads in each and, on a backend that can, cuts the
version's warm snapshot. It prints the instances, the time their boots,
warm-ups and the snapshot took, and the snapshot's directory or why there
is none. The instances then wait idle in the pool for invocations. A task
that speaks SnapStart (AWS_LAMBDA_INITIALIZATION_TYPE=snap-start, GET
/runtime/restore/next) is snapshotted at its own checkpoint, after its
before-snapshot hooks, and every restore runs its after-restore hooks
before it serves; --checkpoint-timeout (default 10s) bounds them, and a
snapshot whose hooks hang is abandoned: the version serves without one.

'function profile' shows what a version's invocations cost (task CPU per
invocation), its merged CPU profile (images built with --profile) and the
instruction-set extensions the profile says it wants; -o FILE writes the
profile (pprof), for 'go tool pprof' or 'go build -pgo'.

Every command takes --socket PATH, or --addr HOST:PORT with --tls-cert,
--tls-key and --tls-ca, to find kindlingd.
`

func (d *daemonCLI) functionMain(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(d.stderr, functionUsage)
		return exitError{2}
	}
	switch args[0] {
	case "register":
		return d.functionRegister(args[1:])
	case "list":
		return d.functionList(args[1:])
	case "delete":
		return d.functionDelete(args[1:])
	case "prewarm":
		return d.functionPrewarm(args[1:])
	case "profile":
		return d.functionProfile(args[1:])
	case "-h", "--help", "help":
		fmt.Fprint(d.stdout, functionUsage)
		return nil
	}
	fmt.Fprint(d.stderr, functionUsage)
	return d.badInput(fmt.Errorf("function: unknown command %q", args[0]))
}

func (d *daemonCLI) functionRegister(args []string) error {
	fs := d.flagSet("kindling function register", functionUsage)
	spec := &api.FunctionSpec{Environment: map[string]string{}}
	image := fs.String("image", "", "image `dir` from kindling image build")
	fs.StringVar(&spec.Version, "version", "", "the version `V` to register (kindlingd's default: 1)")
	fs.Var(memFlag{&spec.MemoryMib}, "memory", "guest memory `size`, e.g. 256M or 1G")
	fs.Var(uint32Flag{&spec.Vcpus, 1}, "vcpus", "`N` vCPUs per instance")
	fs.Var(msFlag{&spec.TimeoutMs}, "timeout", "an invocation's `deadline`, e.g. 30s")
	fs.StringVar(&spec.CpuTemplate, "cpu-template", "", "built-in CPU template `name` (default: the image's own)")
	fs.Var(uint32Flag{&spec.ConcurrencyLimit, 1}, "concurrency", "`N` invocations running at once, across tenants")
	fs.StringVar(&spec.Tenant, "tenant", "", "the `tenant` that owns the function")
	fs.Var(envFlag(spec.Environment), "env", "set `K=V` in the task's environment (repeatable)")
	fs.Var(uint32Flag{&spec.MinWarm, 0}, "min-warm", "keep `N` idle instances for the owning tenant")
	fs.Var(msFlag{&spec.KeepAliveMs}, "keep-alive", "stop an instance idle this `long`, e.g. 10m")
	fs.Var(uint32Flag{&spec.QueueLimit, 1}, "queue-limit", "`N` invocations may wait for a slot before kindlingd refuses more")
	fs.Var(payloadsFlag{&spec.WarmupPayloads}, "warmup", "a warm-up payload, `JSON` or @FILE (repeatable)")
	fs.Var(networkFlag{&spec.Network}, "network", "`policy`: none (loopback only, the default) or egress (outbound through NAT, nothing inbound)")
	fs.Var(uint32Flag{&spec.RecordWarmups, 0}, "record-warmups", "without --warmup: keep the owner's first `N` successful payloads (at most 8) as warm-ups; they end up in the snapshot every tenant restores, so only for payloads that are not secret")
	fs.Var(msFlag{&spec.CheckpointTimeoutMs}, "checkpoint-timeout", "bound the task's before-snapshot and after-restore hooks to this `long`, e.g. 10s")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return d.badInput(fmt.Errorf("function register takes one NAME, got %d", len(pos)))
	}
	spec.Name = pos[0]
	if *image == "" {
		return d.badInput(errors.New("function register: --image DIR is required (an image from kindling image build)"))
	}
	abs, err := filepath.Abs(*image)
	if err != nil {
		return d.badInput(fmt.Errorf("--image %s: %w", *image, err))
	}
	sum, err := rootfs.ManifestDigest(abs)
	if err != nil {
		return d.badInput(fmt.Errorf("--image: %w (build one with kindling image build)", err))
	}
	spec.Image = &api.ImageRef{Path: abs, ManifestSha256: sum}
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	f, err := call(dc, "function register "+spec.Name, dc.RegisterFunction, &api.RegisterFunctionRequest{Function: spec})
	if err != nil {
		return err
	}
	fmt.Fprintf(d.stdout, "registered %s\n", functionTitle(f.GetSpec()))
	writeFunction(d.stdout, f)
	return nil
}

// functionTitle is "NAME version V" and its tenant.
func functionTitle(s *api.FunctionSpec) string {
	t := fmt.Sprintf("%s version %s", s.GetName(), s.GetVersion())
	if s.GetTenant() != "" {
		t += " (tenant " + s.GetTenant() + ")"
	}
	return t
}

// writeFunction describes a registered version, one field a line.
func writeFunction(w io.Writer, f *api.Function) {
	s := f.GetSpec()
	line := func(k, format string, args ...any) { fmt.Fprintf(w, "  %-13s %s\n", k, fmt.Sprintf(format, args...)) }
	line("image", "%s (manifest.json sha256 %s)", s.GetImage().GetPath(), s.GetImage().GetManifestSha256())
	line("memory", "%d MiB, %d vCPU", s.GetMemoryMib(), s.GetVcpus())
	line("timeout", "%v", msDuration(s.GetTimeoutMs()))
	line("cpu template", "%s", orText(s.GetCpuTemplate(), "the image's own"))
	line("concurrency", "%d at once, queue limit %d", s.GetConcurrencyLimit(), s.GetQueueLimit())
	line("warm", "min %d, keep-alive %v", s.GetMinWarm(), msDuration(s.GetKeepAliveMs()))
	line("network", "%s", networkName(s.GetNetwork()))
	if len(s.GetEnvironment()) > 0 {
		keys := make([]string, 0, len(s.GetEnvironment()))
		for k := range s.GetEnvironment() {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for i, k := range keys {
			keys[i] = k + "=" + s.GetEnvironment()[k]
		}
		line("environment", "%s", strings.Join(keys, " "))
	}
	if n := len(s.GetWarmupPayloads()); n > 0 {
		line("warm-up", "%d payload(s)", n)
	}
	line("snapshot", "%s", orText(f.GetSnapshot(), "none"))
	if u := f.GetUsage(); u.GetInvocations() > 0 {
		line("cpu", "%s per invocation over %d invocations", time.Duration(u.GetCpuNsPerInvocation()), u.GetInvocations())
	}
	if u := f.GetUsage(); u.GetProfileSamples() > 0 || len(u.GetArtifacts()) > 0 {
		line("learned", "%d profile samples; artifacts: %s", u.GetProfileSamples(), orText(strings.Join(u.GetArtifacts(), ", "), "none"))
	}
	line("registered", "%s", unixTime(f.GetRegisteredUnixNano()))
}

func orText(s, none string) string {
	if s == "" {
		return none
	}
	return s
}

func (d *daemonCLI) functionList(args []string) error {
	fs := d.flagSet("kindling function list", functionUsage)
	asJSON := fs.Bool("json", false, "print the functions as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return d.badInput(fmt.Errorf("function list takes no arguments, got %q", pos))
	}
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	r, err := call(dc, "function list", dc.ListFunctions, &api.ListFunctionsRequest{})
	if err != nil {
		return err
	}
	if *asJSON {
		return d.printProto(r)
	}
	if len(r.GetFunctions()) == 0 {
		fmt.Fprintln(d.stderr, "no functions registered (kindling function register NAME --image DIR)")
		return nil
	}
	tw := tabwriter.NewWriter(d.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tTENANT\tMEMORY\tVCPUS\tTIMEOUT\tLIMIT\tMIN-WARM\tSNAPSHOT\tIMAGE")
	for _, f := range r.GetFunctions() {
		s := f.GetSpec()
		snap := "-"
		if f.GetSnapshot() != "" {
			snap = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%dM\t%d\t%v\t%d\t%d\t%s\t%s\n", s.GetName(), s.GetVersion(), orDash(s.GetTenant()),
			s.GetMemoryMib(), s.GetVcpus(), msDuration(s.GetTimeoutMs()), s.GetConcurrencyLimit(), s.GetMinWarm(), snap, s.GetImage().GetPath())
	}
	return tw.Flush()
}

func (d *daemonCLI) functionDelete(args []string) error {
	fs := d.flagSet("kindling function delete", functionUsage)
	version := fs.String("version", "", "delete only version `V` (default: every version)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return d.badInput(fmt.Errorf("function delete takes one NAME, got %d", len(pos)))
	}
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	r, err := call(dc, "function delete "+pos[0], dc.DeleteFunction, &api.DeleteFunctionRequest{Name: pos[0], Version: *version})
	if err != nil {
		return err
	}
	if len(r.GetDeletedVersions()) == 0 {
		fmt.Fprintf(d.stdout, "%s: no versions deleted\n", pos[0])
		return nil
	}
	fmt.Fprintf(d.stdout, "deleted %s version %s\n", pos[0], strings.Join(r.GetDeletedVersions(), ", "))
	return nil
}

func (d *daemonCLI) functionPrewarm(args []string) error {
	fs := d.flagSet("kindling function prewarm", functionUsage)
	req := &api.PrewarmRequest{}
	fs.StringVar(&req.Version, "version", "", "prewarm version `V` (default: the latest registered)")
	fs.StringVar(&req.Tenant, "tenant", "", "start the instances for `tenant` T (default: the function's own)")
	fs.Var(uint32Flag{&req.Instances, 1}, "instances", "start `N` instances (kindlingd's default: 1)")
	asJSON := fs.Bool("json", false, "print kindlingd's answer as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return d.badInput(fmt.Errorf("function prewarm takes one NAME, got %d", len(pos)))
	}
	req.Function = pos[0]
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	r, err := call(dc, "function prewarm "+req.Function, dc.Prewarm, req)
	if err != nil {
		return err
	}
	if *asJSON {
		return d.printProto(r)
	}
	writePrewarm(d.stdout, req.Function, r)
	return nil
}

// writePrewarm describes a prewarm: the instances started, what their
// start-up took, and the snapshot or why there is none.
func writePrewarm(w io.Writer, function string, r *api.PrewarmResponse) {
	title := function
	if in := r.GetInstances(); len(in) > 0 {
		title = in[0].GetFunction() + " version " + in[0].GetVersion()
		if in[0].GetTenant() != "" {
			title += " (tenant " + in[0].GetTenant() + ")"
		}
	}
	n := len(r.GetInstances())
	fmt.Fprintf(w, "prewarmed %s: %d %s started\n", title, n, plural(n, "instance", "instances"))
	line := func(k, format string, args ...any) { fmt.Fprintf(w, "  %-9s %s\n", k, fmt.Sprintf(format, args...)) }
	for _, in := range r.GetInstances() {
		pid := ""
		if in.GetPid() != 0 {
			pid = fmt.Sprintf(", pid %d", in.GetPid())
		}
		line("instance", "%s (%s backend, %s%s)", in.GetId(), orText(in.GetBackend(), "-"), strings.ToLower(in.GetState().String()), pid)
	}
	summed := ""
	if n > 1 {
		summed = fmt.Sprintf(" (boot and warm-up summed over the %d instances)", n)
	}
	line("took", "boot %s, warm-up %s, snapshot %s%s", ms(r.GetBootUs()), ms(r.GetWarmupUs()), ms(r.GetSnapshotUs()), summed)
	switch {
	case r.GetSnapshot() != "" && r.GetSnapshotNote() != "":
		line("snapshot", "%s (%s)", r.GetSnapshot(), r.GetSnapshotNote())
	case r.GetSnapshot() != "":
		line("snapshot", "%s", r.GetSnapshot())
	default:
		line("snapshot", "none: %s", orText(r.GetSnapshotNote(), "kindlingd gave no reason"))
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

const instancesUsage = `usage: kindling instances [--function NAME] [--json]

Lists the sandboxes kindlingd runs: each one's function version and
tenant, backend (microvm or process), state, how it started (warm, restore
or cold), invocations served, how long it has been idle, and its process.
`

func (d *daemonCLI) instances(args []string) error {
	fs := d.flagSet("kindling instances", instancesUsage)
	function := fs.String("function", "", "only the instances of function `NAME`")
	asJSON := fs.Bool("json", false, "print the instances as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return d.badInput(fmt.Errorf("instances takes no arguments (--function NAME), got %q", pos))
	}
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	r, err := call(dc, "instances", dc.ListInstances, &api.ListInstancesRequest{Function: *function})
	if err != nil {
		return err
	}
	if *asJSON {
		return d.printProto(r)
	}
	if len(r.GetInstances()) == 0 {
		fmt.Fprintln(d.stderr, "no instances")
		return nil
	}
	now := time.Now()
	tw := tabwriter.NewWriter(d.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tFUNCTION\tVERSION\tTENANT\tBACKEND\tSTATE\tSTARTED-AS\tINVOCATIONS\tIDLE-FOR\tPID")
	for _, in := range r.GetInstances() {
		idle := "-"
		if in.GetState() == api.InstanceState_IDLE {
			since := in.GetLastUsedUnixNano()
			if since == 0 {
				since = in.GetStartedUnixNano()
			}
			if since != 0 {
				idle = now.Sub(time.Unix(0, since)).Round(time.Second).String()
			}
		}
		pid := "-"
		if in.GetPid() != 0 {
			pid = strconv.Itoa(int(in.GetPid()))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", in.GetId(), in.GetFunction(), in.GetVersion(), orDash(in.GetTenant()),
			in.GetBackend(), in.GetState(), orDash(startKind(in.GetStartedAs())), in.GetInvocations(), idle, pid)
	}
	return tw.Flush()
}

// readPayload reads a payload flag's value: JSON, or @FILE. It must be
// JSON within guest.MaxPayload.
func readPayload(v string) ([]byte, error) {
	b := []byte(v)
	if strings.HasPrefix(v, "@") {
		var err error
		if b, err = os.ReadFile(v[1:]); err != nil {
			return nil, err
		}
	}
	if len(b) > guest.MaxPayload {
		return nil, fmt.Errorf("payload of %d bytes exceeds the %d-byte limit", len(b), guest.MaxPayload)
	}
	if !json.Valid(b) {
		return nil, fmt.Errorf("the payload is not JSON: %.40q", b)
	}
	return b, nil
}

// networkFlag is a function's network policy by its short name.
type networkFlag struct{ v *api.NetworkPolicy }

func (f networkFlag) String() string {
	if f.v == nil {
		return ""
	}
	return networkName(*f.v)
}

func (f networkFlag) Set(s string) error {
	switch s {
	case "none":
		*f.v = api.NetworkPolicy_NETWORK_NONE
	case "egress":
		*f.v = api.NetworkPolicy_NETWORK_EGRESS
	default:
		return errors.New("want none or egress")
	}
	return nil
}

func networkName(p api.NetworkPolicy) string {
	switch p {
	case api.NetworkPolicy_NETWORK_NONE:
		return "none"
	case api.NetworkPolicy_NETWORK_EGRESS:
		return "egress"
	}
	return p.String()
}

// uint32Flag is a count with a lower bound.
type uint32Flag struct {
	v   *uint32
	min uint32
}

func (f uint32Flag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(*f.v), 10)
}

func (f uint32Flag) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return errors.New("want a whole number")
	}
	if uint32(n) < f.min {
		return fmt.Errorf("want at least %d", f.min)
	}
	*f.v = uint32(n)
	return nil
}

// msFlag is a duration sent in whole milliseconds.
type msFlag struct{ v *uint32 }

func (f msFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return msDuration(*f.v).String()
}

func (f msFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return errors.New("want a duration such as 500ms, 30s or 10m")
	case d < time.Millisecond:
		return errors.New("want at least 1ms")
	case d%time.Millisecond != 0:
		return errors.New("want whole milliseconds")
	case d/time.Millisecond > math.MaxUint32:
		return errors.New("too long")
	}
	*f.v = uint32(d / time.Millisecond)
	return nil
}

// memFlag is a memory size (vmm.ParseSize) sent in MiB.
type memFlag struct{ v *uint32 }

func (f memFlag) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return fmt.Sprintf("%dM", *f.v)
}

func (f memFlag) Set(s string) error {
	n, err := vmm.ParseSize(s)
	if err != nil {
		return err
	}
	if n > math.MaxUint32 {
		return fmt.Errorf("memory size %q is too large", s)
	}
	*f.v = uint32(n)
	return nil
}

// envFlag collects K=V pairs; a later value for a key wins.
type envFlag map[string]string

func (f envFlag) String() string { return "" }

func (f envFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return errors.New("want NAME=VALUE")
	}
	f[k] = v
	return nil
}

// payloadsFlag collects payloads, each JSON or @FILE.
type payloadsFlag struct{ v *[][]byte }

func (f payloadsFlag) String() string { return "" }

func (f payloadsFlag) Set(s string) error {
	b, err := readPayload(s)
	if err != nil {
		return err
	}
	*f.v = append(*f.v, b)
	return nil
}

func (d *daemonCLI) functionProfile(args []string) error {
	fs := d.flagSet("kindling function profile", functionUsage)
	version := fs.String("version", "", "the version `V` (default: the latest registered)")
	out := fs.String("o", "", "write the merged profile (pprof) to `file`")
	asJSON := fs.Bool("json", false, "print kindlingd's answer as JSON (without the profile's bytes)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return d.badInput(fmt.Errorf("function profile takes one NAME, got %d", len(pos)))
	}
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	r, err := call(dc, "function profile "+pos[0], dc.GetProfile, &api.GetProfileRequest{Function: pos[0], Version: *version})
	if err != nil {
		return err
	}
	if *out != "" {
		if len(r.Profile) == 0 {
			return fmt.Errorf("function profile %s: version %s has no profile yet (was its image built with --profile, and has it been invoked?)", pos[0], r.Version)
		}
		if err := os.WriteFile(*out, r.Profile, 0o644); err != nil {
			return err
		}
	}
	if *asJSON {
		r.Profile = nil
		return d.printProto(r)
	}
	u := r.GetUsage()
	fmt.Fprintf(d.stdout, "%s version %s\n", pos[0], r.Version)
	if u.GetInvocations() > 0 {
		fmt.Fprintf(d.stdout, "  cpu           %s per invocation over %d invocations\n", time.Duration(u.GetCpuNsPerInvocation()), u.GetInvocations())
	} else {
		fmt.Fprintf(d.stdout, "  cpu           no invocations measured yet\n")
	}
	fmt.Fprintf(d.stdout, "  profile       %d samples from %d profiles (%d refused)\n", r.Samples, r.Profiles, r.Refused)
	if len(r.Hints) > 0 {
		tw := tabwriter.NewWriter(d.stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  EXTENSION\tCPU IN ITS DISPATCHED CODE\tWANTED\tHOTTEST")
		for _, h := range r.Hints {
			fmt.Fprintf(tw, "  %s\t%.1f%%\t%v\t%s\n", h.Extension, 100*h.Fraction, h.Wanted, strings.Join(h.Functions, ", "))
		}
		tw.Flush()
	}
	if *out != "" {
		fmt.Fprintf(d.stdout, "  written to    %s\n", *out)
	}
	return nil
}
