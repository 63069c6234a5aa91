package main

// Stage 9: the image from stage 7 served by kindlingd, the host agent,
// driven only through the kindling CLI, as an operator would.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kindlingvm/kindling/agent/api"
	"github.com/kindlingvm/kindling/internal/syncbuf"
	"github.com/kindlingvm/kindling/internal/testdaemon"
)

const (
	// kindlingdReadyTimeout bounds the wait for kindlingd to answer on
	// its socket (it runs the host check first: well under a second on
	// our machines).
	kindlingdReadyTimeout = 30 * time.Second
	// kindlingdStopTimeout bounds the wait after SIGTERM; nothing is
	// running by then, so draining is immediate.
	kindlingdStopTimeout = 30 * time.Second
	demoPayload          = `{"name":"Kindling"}`
)

// cliRun is one kindling command's outcome.
type cliRun struct {
	stdout, stderr string
	took           time.Duration // wall clock around the whole command
}

// kindlingdStage starts bin/kindlingd on a fresh state directory, drives
// it with bin/kindling, prints the two invocations' phases, and stops it
// and the sandboxes it leaves (they outlive kindlingd by design).
func kindlingdStage(binDir, img string) error {
	kindlingd, kindling := filepath.Join(binDir, "kindlingd"), filepath.Join(binDir, "kindling")
	for _, b := range []string{kindlingd, kindling} {
		if _, err := os.Stat(b); err != nil {
			return fmt.Errorf("%s missing: run make build", b)
		}
	}
	// Short: the socket's path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "kd-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	state, sock := filepath.Join(dir, "state"), filepath.Join(dir, "kindlingd.sock")
	args := []string{"--state-dir", state, "--socket", sock, "--backend", "auto", "--cgroup-parent", ""}
	fmt.Printf("$ kindlingd %s\n", strings.Join(quoteArgs(args), " "))
	d := exec.Command(kindlingd, args...)
	var dlog syncbuf.Buffer
	d.Stderr = &dlog
	if err := d.Start(); err != nil {
		return fmt.Errorf("start kindlingd: %w", err)
	}
	exited := make(chan struct{})
	go func() { d.Wait(); close(exited) }()
	stopped := false
	defer func() {
		if !stopped {
			d.Process.Kill()
			<-exited
			testdaemon.KillSandboxes(state)
		}
	}()
	// logTail is kindlingd's log for an error message.
	logTail := func() string { return "\nkindlingd's log:\n" + lastLines(dlog.String(), 20) }

	cli := func(step string, args ...string) (cliRun, error) {
		cmd := exec.Command(kindling, append([]string{"--socket", sock}, args...)...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		t0 := time.Now()
		err := cmd.Run()
		r := cliRun{stdout: o.String(), stderr: e.String(), took: time.Since(t0)}
		if err != nil {
			return r, fmt.Errorf("%s: kindling %s: %v\n%s%s%s", step, strings.Join(quoteArgs(args), " "), err, r.stdout, r.stderr, logTail())
		}
		return r, nil
	}
	show := func(r cliRun, args ...string) {
		fmt.Printf("$ kindling --socket %s %s\n", sock, strings.Join(quoteArgs(args), " "))
		io.WriteString(os.Stdout, r.stdout)
		io.WriteString(os.Stdout, r.stderr)
	}
	// step runs a command and shows it with its output.
	step := func(name string, args ...string) (cliRun, error) {
		r, err := cli(name, args...)
		if err == nil {
			show(r, args...)
		}
		return r, err
	}

	// Ready once 'host status' answers.
	deadline := time.Now().Add(kindlingdReadyTimeout)
	for {
		r, err := cli("wait for kindlingd", "host", "status")
		if err == nil {
			show(r, "host", "status")
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("kindlingd exited before it served (%v)%s", d.ProcessState, logTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kindlingd did not answer 'kindling host status' within %v: %w", kindlingdReadyTimeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	hs, err := cli("host status --json", "host", "status", "--json")
	if err != nil {
		return err
	}
	var status api.HostStatusResponse
	if err := protojson.Unmarshal([]byte(hs.stdout), &status); err != nil {
		return fmt.Errorf("host status --json: %w", err)
	}
	fmt.Println(backendSentence(&status))

	fmt.Println()
	if _, err := step("register", "function", "register", "hello", "--image", img); err != nil {
		return err
	}
	runs := map[string]cliRun{}
	fmt.Println()
	if runs["demo-cold"], err = step("cold invocation", "invoke", "hello", "--payload", demoPayload, "--id", "demo-cold"); err != nil {
		return err
	}
	fmt.Println()
	if _, err := step("prewarm", "function", "prewarm", "hello"); err != nil {
		return err
	}
	fmt.Println()
	if runs["demo-warm"], err = step("warm invocation", "invoke", "hello", "--payload", demoPayload, "--id", "demo-warm"); err != nil {
		return err
	}

	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "invocation\tstart kind\tqueued ms\tstart ms\trun ms\ttotal ms (kindlingd)\ttotal ms (CLI wall clock)\t")
	var notes []string
	for _, id := range []string{"demo-cold", "demo-warm"} {
		r, err := cli("invocation get "+id, "invocation", "get", id, "--json")
		if err != nil {
			return err
		}
		var inv api.Invocation
		if err := protojson.Unmarshal([]byte(r.stdout), &inv); err != nil {
			return fmt.Errorf("invocation get %s --json: %w", id, err)
		}
		if inv.State != api.InvocationState_SUCCEEDED {
			return fmt.Errorf("invocation %s: %v %s: %s", id, inv.State, inv.ErrorType, inv.ErrorMessage)
		}
		var resp struct {
			Cold bool `json:"cold"`
		}
		if err := json.Unmarshal(inv.Response, &resp); err != nil {
			return fmt.Errorf("invocation %s: the handler's response %q: %w", id, inv.Response, err)
		}
		if inv.Start == api.StartKind_WARM && resp.Cold {
			notes = append(notes, fmt.Sprintf("%s: kindlingd served it warm (its instance was started by 'function prewarm' before it arrived),\n"+
				"  yet the handler says \"cold\": true: it was the first invocation that instance's process ran. Registering\n"+
				"  with --warmup '{\"name\":\"warm-up\"}' would run one in every new instance before it serves.", id))
		}
		p := inv.GetPhases()
		total := time.Duration(inv.FinishedUnixNano - inv.AcceptedUnixNano)
		fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", id, strings.ToLower(inv.Start.String()),
			float64(p.GetQueuedUs())/1e3, float64(p.GetStartUs())/1e3, float64(p.GetRunUs())/1e3,
			float64(total.Microseconds())/1e3, float64(runs[id].took.Microseconds())/1e3)
	}
	tw.Flush()
	fmt.Println("(the CLI's wall clock adds starting the kindling process and dialling kindlingd to kindlingd's own total)")
	for _, n := range notes {
		fmt.Println(n)
	}

	// SIGTERM: kindlingd drains and exits; its sandboxes stay for the next
	// kindlingd to reattach to, so the demo stops them itself.
	fmt.Println()
	fmt.Println("stopping kindlingd (SIGTERM)")
	d.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(kindlingdStopTimeout):
		return fmt.Errorf("kindlingd did not exit within %v of SIGTERM%s", kindlingdStopTimeout, logTail())
	}
	stopped = true
	n := testdaemon.KillSandboxes(state)
	fmt.Printf("kindlingd exited (%v). Its sandboxes outlive it by design (a restarted kindlingd reattaches to them):\n"+
		"the demo killed their %d processes (kindling-init and the handler, per instance).\n", d.ProcessState, n)
	if !d.ProcessState.Success() {
		return fmt.Errorf("kindlingd exited with %v after SIGTERM%s", d.ProcessState, logTail())
	}
	return nil
}

// backendSentence says in plain words what the backend in force means.
func backendSentence(s *api.HostStatusResponse) string {
	if s.GetIsolationGrade() {
		return fmt.Sprintf("In plain words: kindlingd chose the %s backend, so each instance below is a microVM: isolation-grade.", s.GetBackend())
	}
	return fmt.Sprintf("In plain words: kindlingd chose the %s backend, so each instance below is a jailed host process, not a microVM: NOT isolation-grade (fine for this demo, not for untrusted code).", s.GetBackend())
}

// quoteArgs quotes the arguments a shell would need quoted.
func quoteArgs(args []string) []string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \"'{}$*?") {
			a = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		q[i] = a
	}
	return q
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
