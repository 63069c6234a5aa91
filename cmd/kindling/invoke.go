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
	"path/filepath"
	"time"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/rootfs"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/hostcheck"
	"github.com/kindlingvm/kindling/vmm/launch"
)

const invokeUsage = `usage: kindling invoke --image DIR --payload JSON [--timeout D] [--mem SIZE] [--console]

Boots the image in a microVM, waits for its kindling-init to connect over
vsock, invokes the task once with the payload, prints the response (or
the error document) on stdout and the time of each phase on stderr. Needs
a host where guest user space runs ('kindling host check').
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
