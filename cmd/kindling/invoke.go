package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
	"github.com/kindlingvm/kindling/vmm/launch"
)

const invokeUsage = `usage: kindling invoke FUNCTION [--payload JSON|@FILE] [--version V] [--tenant T] [--async] [--id ID]
       kindling invoke --image DIR [--payload JSON|@FILE] [--timeout D] [--mem SIZE] [--console]

With a FUNCTION, kindlingd runs the invocation (found by --socket, or
--addr with mutual TLS; see 'kindling --help'): on the latest version
registered, or --version, for the function's tenant, or --tenant. The
task's log lines stream to stderr as they arrive, the response (or the
error document) goes to stdout, then a summary line to stderr: the
invocation ID, its state, how its instance started (warm, restore or
cold), the queued, start and run phases, and the instance. It exits 1 if
the invocation FAILED. --async has kindlingd accept the invocation and
run it in the background, and prints its ID ('kindling invocation get
ID' for the result). --id names the invocation: the same ID with the
same payload returns the first result instead of running again.

With --image there is no daemon: this process boots the image in a
microVM, waits for its kindling-init to connect over vsock, invokes the
task once with the payload, prints the response (or the error document)
on stdout and the time of each phase on stderr. It needs a host where
guest user space runs ('kindling host check').

The payload is JSON, or @FILE to read it from a file; the default is {}.
`

// agentPort is where kindling-init connects: the VMM's <uds>_1024.
const agentPort = 1024

func invokeMain(args []string) error {
	fs := flag.NewFlagSet("kindling invoke", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), invokeUsage); fs.PrintDefaults() }
	image := fs.String("image", "", "image `dir` from kindling image build")
	payload := fs.String("payload", "{}", "the event, JSON, or @FILE to read it from a file")
	timeout := fs.Duration("timeout", 30*time.Second, "the invocation's deadline")
	boot := fs.Duration("boot-timeout", time.Minute, "how long the guest may take to connect")
	mem := fs.String("mem", "256M", "guest memory `size`")
	console := fs.Bool("console", false, "show the guest console on stderr")
	force := fs.Bool("force", false, "try even where 'kindling host check' says guest user space cannot run")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *image == "" {
		return badInput(errors.New("invoke: --image is required"))
	}
	if len(*payload) > 0 && (*payload)[0] == '@' {
		b, err := os.ReadFile((*payload)[1:])
		if err != nil {
			return badInput(fmt.Errorf("invoke: --payload: %w", err))
		}
		*payload = string(b)
	}
	if len(*payload) > guest.MaxPayload {
		return badInput(fmt.Errorf("invoke: payload of %d bytes exceeds the %d-byte limit", len(*payload), guest.MaxPayload))
	}
	m, err := rootfs.ReadManifest(*image)
	if err != nil {
		return badInput(err)
	}
	memMiB, err := vmm.ParseSize(*mem)
	if err != nil {
		return badInput(fmt.Errorf("--mem: %w", err))
	}
	if !*force {
		r, err := hostcheck.Run()
		if err != nil {
			return err
		}
		if !r.UserSpaceRuns() {
			return fmt.Errorf("invoke: this host cannot run a guest's user space (%s), so kindling-init would never start; run it on a VMX/SVM KVM host, or pass --force", r.UserSyscalls.Detail)
		}
	}
	dir, err := os.MkdirTemp("", "kindling-invoke-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	uds := filepath.Join(dir, "vsock")
	ln, err := net.Listen("unix", fmt.Sprintf("%s_%d", uds, agentPort))
	if err != nil {
		return err
	}
	defer ln.Close()
	var con io.Writer = io.Discard
	cons := "none"
	if *console {
		con, cons = os.Stderr, "stdout"
	}
	ctx := context.Background()
	t0 := time.Now()
	cfg := vmm.Config{Kernel: filepath.Join(*image, m.Kernel.Name), Initrd: filepath.Join(*image, m.Initramfs.Name), Cmdline: m.Cmdline,
		MemoryMiB: memMiB, VCPUs: 1, Console: cons, Vsock: &vmm.Vsock{GuestCID: 3, Path: uds}, CPUTemplate: m.CPUTemplate}
	p, err := launch.Start(ctx, cfg, launch.Options{ID: "invoke", Stdout: con, Stderr: os.Stderr, Start: true})
	if err != nil {
		return err
	}
	defer func() { p.Kill(); p.Wait() }()
	tLaunched := time.Now()
	ln.(*net.UnixListener).SetDeadline(time.Now().Add(*boot))
	conn, err := ln.Accept()
	if err != nil {
		st, _ := p.Client.Status(ctx)
		return fmt.Errorf("invoke: the guest agent did not connect within %v (VM %s %v); rerun with --console to see the guest", *boot, st.State, st.Exit)
	}
	defer conn.Close()
	tConnected := time.Now()
	c := guest.NewClient(conn)
	seed := make([]byte, 32)
	rand.Read(seed)
	if err := c.Hello(seed); err != nil {
		return err
	}
	select {
	case <-c.Ready:
	case <-time.After(*boot):
		return fmt.Errorf("invoke: the task never asked for an invocation within %v", *boot)
	}
	tReady := time.Now()
	id := fmt.Sprintf("invoke-%x", seed[:8])
	f, err := c.Invoke(ctx, id, []byte(*payload), *timeout)
	if err != nil {
		return err
	}
	tDone := time.Now()
	os.Stdout.Write(append(f.Body, '\n'))
	fmt.Fprintf(os.Stderr, "launch %v  boot to agent %v  task ready %v  invoke %v  total %v\n",
		tLaunched.Sub(t0).Round(time.Microsecond), tConnected.Sub(tLaunched).Round(time.Microsecond),
		tReady.Sub(tConnected).Round(time.Microsecond), tDone.Sub(tReady).Round(time.Microsecond), tDone.Sub(t0).Round(time.Microsecond))
	if f.Type == guest.TypeError {
		return fmt.Errorf("invoke: %s", f.ErrorType)
	}
	return nil
}

// hasImageFlag says whether args (kindling invoke's) name --image, which
// boots the image here instead of asking kindlingd.
func hasImageFlag(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		if name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "="); name == "image" {
			return true
		}
	}
	return false
}

// invoke invokes a registered function through kindlingd.
func (d *daemonCLI) invoke(args []string) error {
	fs := d.flagSet("kindling invoke", invokeUsage)
	payload := fs.String("payload", "{}", "the event, `JSON`, or @FILE to read it from a file")
	version := fs.String("version", "", "invoke version `V` (default: the latest registered)")
	tenant := fs.String("tenant", "", "invoke as `tenant` T (default: the function's own)")
	async := fs.Bool("async", false, "have kindlingd accept the invocation and print its ID")
	id := fs.String("id", "", "the invocation's `ID` (default: kindlingd makes one)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	switch len(pos) {
	case 0:
		return d.badInput(errors.New("invoke: name a FUNCTION registered with kindlingd, or boot an image here with --image DIR (--image is required without a FUNCTION)"))
	case 1:
	default:
		return d.badInput(fmt.Errorf("invoke takes one FUNCTION, got %q", pos))
	}
	body, err := readPayload(*payload)
	if err != nil {
		return d.badInput(fmt.Errorf("invoke: --payload: %w", err))
	}
	req := &api.InvokeRequest{Function: pos[0], Version: *version, Tenant: *tenant, Payload: body, InvocationId: *id}
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	if *async {
		r, err := call(dc, "invoke "+req.Function, dc.InvokeAsync, req)
		if err != nil {
			return err
		}
		fmt.Fprintln(d.stdout, r.GetInvocationId())
		if r.GetDuplicate() {
			fmt.Fprintf(d.stderr, "%s (duplicate): already accepted with this payload; 'kindling invocation get %s' for its result\n", r.GetInvocationId(), r.GetInvocationId())
		} else {
			fmt.Fprintf(d.stderr, "%s accepted; 'kindling invocation get %s' for its result\n", r.GetInvocationId(), r.GetInvocationId())
		}
		return nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stream, err := dc.Invoke(ctx, req)
	if err != nil {
		return dc.fail("invoke "+req.Function, err)
	}
	for {
		ev, err := stream.Recv()
		switch {
		case err == io.EOF:
			return fmt.Errorf("invoke %s: kindlingd ended the stream without a result", req.Function)
		case err != nil && ctx.Err() != nil:
			later := ""
			if req.InvocationId != "" {
				later = fmt.Sprintf("; 'kindling invocation get %s' for its result", req.InvocationId)
			}
			return fmt.Errorf("invoke %s: interrupted; kindlingd completes the invocation anyway%s", req.Function, later)
		case err != nil:
			return dc.fail("invoke "+req.Function, err)
		}
		switch e := ev.GetEvent().(type) {
		case *api.InvokeEvent_Log:
			line := e.Log.GetLine()
			if !strings.HasSuffix(line, "\n") {
				line += "\n"
			}
			io.WriteString(d.stderr, line)
		case *api.InvokeEvent_Result:
			return d.invokeResult(e.Result)
		}
	}
}

// invokeResult prints a finished invocation: its response on stdout and
// the one-line summary on stderr. A FAILED one exits 1.
func (d *daemonCLI) invokeResult(inv *api.Invocation) error {
	if resp := inv.GetResponse(); len(resp) > 0 {
		d.stdout.Write(resp)
		if resp[len(resp)-1] != '\n' {
			io.WriteString(d.stdout, "\n")
		}
	}
	fmt.Fprintln(d.stderr, invocationSummary(inv))
	if inv.GetState() != api.InvocationState_SUCCEEDED {
		return exitError{1}
	}
	return nil
}

// invocationSummary is one line: ID, state, start, phases, instance,
// and for a failure its error.
func invocationSummary(inv *api.Invocation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "invocation %s %s", inv.GetInvocationId(), inv.GetState())
	if k := startKind(inv.GetStart()); k != "" {
		fmt.Fprintf(&b, ", %s start", k)
	}
	p := inv.GetPhases()
	fmt.Fprintf(&b, ": queued %s, start %s, run %s", ms(p.GetQueuedUs()), ms(p.GetStartUs()), ms(p.GetRunUs()))
	if inv.GetInstanceId() != "" {
		fmt.Fprintf(&b, ", instance %s", inv.GetInstanceId())
	}
	if inv.GetAttempts() > 1 {
		fmt.Fprintf(&b, ", %d attempts (%s)", inv.GetAttempts(), orText(inv.GetRerunReason(), "no reason given"))
	}
	if e := invocationError(inv); e != "" {
		fmt.Fprintf(&b, ": %s", e)
	}
	return b.String()
}

// invocationError is "Type: message", or "" for none.
func invocationError(inv *api.Invocation) string {
	switch t, m := inv.GetErrorType(), inv.GetErrorMessage(); {
	case t != "" && m != "":
		return t + ": " + m
	default:
		return t + m
	}
}

const invocationUsage = `usage: kindling invocation get ID [--json]

Prints an invocation kindlingd knows (one that is running, or finished
within its retention): its function version and tenant, state, response
or error, how its instance started, how many attempts it took and why it
was rerun, its phases and times.
`

func (d *daemonCLI) invocationMain(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(d.stderr, invocationUsage)
		return exitError{2}
	}
	switch args[0] {
	case "get":
		return d.invocationGet(args[1:])
	case "-h", "--help", "help":
		fmt.Fprint(d.stdout, invocationUsage)
		return nil
	}
	fmt.Fprint(d.stderr, invocationUsage)
	return d.badInput(fmt.Errorf("invocation: unknown command %q", args[0]))
}

func (d *daemonCLI) invocationGet(args []string) error {
	fs := d.flagSet("kindling invocation get", invocationUsage)
	asJSON := fs.Bool("json", false, "print the invocation as JSON")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return d.badInput(fmt.Errorf("invocation get takes one ID, got %d", len(pos)))
	}
	dc, err := d.dial()
	if err != nil {
		return err
	}
	defer dc.Close()
	inv, err := call(dc, "invocation get "+pos[0], dc.GetInvocation, &api.GetInvocationRequest{InvocationId: pos[0]})
	if err != nil {
		return err
	}
	if *asJSON {
		return d.printProto(inv)
	}
	writeInvocation(d.stdout, inv)
	return nil
}

// writeInvocation describes an invocation, one field a line, the
// response last.
func writeInvocation(w io.Writer, inv *api.Invocation) {
	line := func(k, format string, args ...any) { fmt.Fprintf(w, "%-10s %s\n", k, fmt.Sprintf(format, args...)) }
	line("id", "%s", inv.GetInvocationId())
	fn := inv.GetFunction() + " version " + orText(inv.GetVersion(), "-")
	if inv.GetTenant() != "" {
		fn += ", tenant " + inv.GetTenant()
	}
	line("function", "%s", fn)
	state := inv.GetState().String()
	if inv.GetAsync() {
		state += " (async)"
	}
	line("state", "%s", state)
	if k := startKind(inv.GetStart()); k != "" || inv.GetInstanceId() != "" {
		line("start", "%s on instance %s", orText(k, "-"), orText(inv.GetInstanceId(), "-"))
	}
	attempts := strconv.FormatUint(uint64(inv.GetAttempts()), 10)
	if inv.GetRerunReason() != "" {
		attempts += " (rerun: " + inv.GetRerunReason() + ")"
	}
	line("attempts", "%s", attempts)
	p := inv.GetPhases()
	line("phases", "queued %s, start %s, run %s", ms(p.GetQueuedUs()), ms(p.GetStartUs()), ms(p.GetRunUs()))
	line("accepted", "%s", unixTime(inv.GetAcceptedUnixNano()))
	finished := unixTime(inv.GetFinishedUnixNano())
	if a, f := inv.GetAcceptedUnixNano(), inv.GetFinishedUnixNano(); a != 0 && f != 0 {
		finished += fmt.Sprintf(" (%v after it was accepted)", time.Duration(f-a).Round(time.Microsecond))
	}
	line("finished", "%s", finished)
	if e := invocationError(inv); e != "" {
		line("error", "%s", e)
	}
	if r := inv.GetResponse(); len(r) > 0 {
		line("response", "%s", strings.TrimSuffix(string(r), "\n"))
	}
}
