package echoguest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/internal/syncbuf"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/launch"
)

// readyTimeout bounds a boot or restore up to the guest's first answer.
const readyTimeout = 30 * time.Second

// tools are built once for all tests: the VMM binary and the guest.
var tools struct {
	once   sync.Once
	vmm    string
	kernel string
	err    error
	dir    string
}

// setup builds the tools once; every test that starts a VM calls it first.
func setup(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/dev/kvm"); err != nil {
		t.Skipf("skipping: no /dev/kvm (%v)", err)
	}
	if err := Available(); err != nil {
		t.Skip(err)
	}
	tools.once.Do(func() {
		if tools.dir, tools.err = os.MkdirTemp("", "echoguest-"); tools.err != nil {
			return
		}
		if tools.kernel, tools.err = Build(filepath.Join(tools.dir, "guest")); tools.err != nil {
			return
		}
		tools.vmm = filepath.Join(tools.dir, launch.BinaryName)
		// Static, as `make build` builds it and as a jail needs it.
		cmd := exec.Command("go", "build", "-o", tools.vmm, "github.com/kindlingvm/kindling/cmd/kindling-vmm")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			tools.err = fmt.Errorf("build %s: %v\n%s", launch.BinaryName, err, out)
		}
	})
	if tools.err != nil {
		t.Fatal(tools.err)
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if tools.dir != "" {
		os.RemoveAll(tools.dir)
	}
	os.Exit(code)
}

// vm is one kindling-vmm process running the echo guest, with the host
// end of the guest's agent connection.
type vm struct {
	t        *testing.T
	name     string
	dir      string
	proc     *launch.Process
	ln       *net.UnixListener
	conn     net.Conn
	client   *guest.Client
	stderr   *syncbuf.Buffer
	console  string
	raw      bool // no guest.Client: the test reads and writes frames itself
	stopOnce sync.Once
}

// sockDir is a short directory for Unix sockets (108-byte path limit).
func sockDir(t *testing.T) (string, error) {
	d, err := os.MkdirTemp("", "eg")
	if err == nil {
		t.Cleanup(func() { os.RemoveAll(d) })
	}
	return d, err
}

// start boots the echo guest (snapshot == "") or restores snapshot, and
// accepts the guest's connection.
func start(t *testing.T, name, snapshot, cmdline string) *vm {
	t.Helper()
	v, err := launchVM(t, name, vmOpts{snapshot: snapshot, cmdline: cmdline})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

type vmOpts struct {
	snapshot, cmdline string
	port              int           // the host port to listen on; default Port
	listenAfter       time.Duration // listen this long after the VMM started, not before
	noVsock           bool          // no vsock device, no connection
	raw               bool          // see vm.raw
	memoryMiB         uint64        // default 128
}

// launchVM is start for any goroutine, with options. It listens before
// the VMM starts, as kindlingd does, unless told otherwise, and returns
// an error rather than failing the test.
func launchVM(t *testing.T, name string, o vmOpts) (*vm, error) {
	if tools.err != nil || tools.vmm == "" {
		return nil, fmt.Errorf("%s: the tools are not built", name)
	}
	if o.port == 0 {
		o.port = Port
	}
	if o.memoryMiB == 0 {
		o.memoryMiB = 128
	}
	v := &vm{t: t, name: name, stderr: &syncbuf.Buffer{}, raw: o.raw}
	var err error
	if v.dir, err = sockDir(t); err != nil {
		return nil, err
	}
	v.console = filepath.Join(v.dir, "console.log")
	listen := func() (err error) {
		v.ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(v.dir, fmt.Sprintf("vsock_%d", o.port)), Net: "unix"})
		return err
	}
	if !o.noVsock && o.listenAfter == 0 {
		if err := listen(); err != nil {
			return nil, err
		}
	}
	cfg := vmm.Config{Console: v.console}
	if !o.noVsock {
		cfg.Vsock = &vmm.Vsock{GuestCID: 3, Path: filepath.Join(v.dir, "vsock")}
	}
	if o.snapshot == "" {
		cfg.Kernel, cfg.Cmdline, cfg.MemoryMiB, cfg.VCPUs = tools.kernel, o.cmdline, o.memoryMiB, 1
	}
	t0 := time.Now()
	v.proc, err = launch.Start(context.Background(), cfg, launch.Options{Binary: tools.vmm, Dir: v.dir, ID: name,
		Start: true, Restore: o.snapshot, Stderr: v.stderr})
	if err != nil {
		if v.ln != nil {
			v.ln.Close()
		}
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	t.Cleanup(v.stop)
	up := time.Since(t0)
	if o.noVsock {
		return v, nil
	}
	if o.listenAfter > 0 {
		time.Sleep(o.listenAfter)
		if err := listen(); err != nil {
			return nil, err
		}
	}
	t1 := time.Now()
	if err := v.acceptE(); err != nil {
		return nil, err
	}
	t.Logf("%s: the VMM's API was up in %v; the guest connected %v after the host listened", name, up, time.Since(t1))
	return v, nil
}

// accept waits for the guest to connect (again).
func (v *vm) accept() {
	v.t.Helper()
	if err := v.acceptE(); err != nil {
		v.t.Fatal(err)
	}
}

func (v *vm) acceptE() error {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := v.ln.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return fmt.Errorf("%s: accept: %w", v.name, r.err)
		}
		v.conn = r.c
		if !v.raw {
			v.client = guest.NewClient(r.c)
		}
		return nil
	case <-v.proc.Exited():
		v.ln.Close()
		return fmt.Errorf("%s: the VMM exited before the guest connected; %s", v.name, v.diagnose())
	case <-time.After(readyTimeout):
		v.ln.Close()
		return fmt.Errorf("%s: the guest did not connect within %v; %s", v.name, readyTimeout, v.diagnose())
	}
}

// hello greets the guest with seed and waits for its ready frame.
func (v *vm) hello(seed []byte) {
	v.t.Helper()
	if err := v.client.Hello(seed); err != nil {
		v.t.Fatalf("%s: hello: %v", v.name, err)
	}
	select {
	case <-v.client.Ready:
	case <-time.After(readyTimeout):
		v.t.Fatalf("%s: no ready frame within %v; %s", v.name, readyTimeout, v.diagnose())
	}
}

// diagnose says what the VMM and the guest console say, for failures.
func (v *vm) diagnose() string {
	var b strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	select {
	case <-v.proc.Exited():
		// Its last words ("vm stopped: ...", with the exit reason) are
		// in its stderr, below.
		fmt.Fprintf(&b, "the VMM exited with status %d", v.proc.ExitCode())
	default:
		if st, err := v.proc.Client.Status(ctx); err != nil {
			fmt.Fprintf(&b, "the VMM does not answer (%v)", err)
		} else if st.Exit != nil {
			fmt.Fprintf(&b, "the VM is %s: %s", st.State, st.Exit)
		} else {
			fmt.Fprintf(&b, "the VM is %s", st.State)
		}
		if m, err := v.proc.Client.Metrics(ctx); err == nil {
			fmt.Fprintf(&b, " (exits: %d pio, %d mmio)", m.ExitsIO, m.ExitsMMIO)
		}
	}
	con, _ := os.ReadFile(v.console)
	fmt.Fprintf(&b, "\nguest console:\n%s\nvmm stderr:\n%s", con, v.stderr.String())
	return b.String()
}

func (v *vm) invoke(id string, payload []byte) guest.Frame {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	f, err := v.client.Invoke(ctx, id, payload, readyTimeout)
	if err != nil {
		v.t.Fatalf("%s: invoke %s: %v; %s", v.name, id, err, v.diagnose())
	}
	if f.Type != guest.TypeResponse || f.ID != id {
		v.t.Fatalf("%s: invoke %s: got a %q frame for %q", v.name, id, f.Type, f.ID)
	}
	return f
}

func (v *vm) echo(id string, payload []byte) {
	v.t.Helper()
	if f := v.invoke(id, payload); !bytes.Equal(f.Body, payload) {
		v.t.Fatalf("%s: invoke %s: %d bytes back, want the %d sent (first %q)", v.name, id, len(f.Body), len(payload), trim(f.Body))
	}
}

func (v *vm) random() string {
	v.t.Helper()
	f := v.invoke("random-"+v.name, []byte(RandomOp))
	if len(f.Body) != 16 {
		v.t.Fatalf("%s: random: %q, want 16 hex digits", v.name, f.Body)
	}
	if _, err := hex.DecodeString(string(f.Body)); err != nil {
		v.t.Fatalf("%s: random: %q, want 16 hex digits", v.name, f.Body)
	}
	return string(f.Body)
}

// snapshot pauses the VM and cuts a full snapshot into a new directory.
func (v *vm) snapshot() string {
	v.t.Helper()
	dir := filepath.Join(v.t.TempDir(), "snap")
	ctx := context.Background()
	if err := v.proc.Client.Pause(ctx); err != nil {
		v.t.Fatalf("%s: pause: %v", v.name, err)
	}
	info, err := v.proc.Client.Snapshot(ctx, dir)
	if err != nil {
		v.t.Fatalf("%s: snapshot: %v", v.name, err)
	}
	v.t.Logf("%s: snapshot of %d MiB (%d KiB written) in %v", v.name, info.MemoryBytes>>20, info.WrittenBytes>>10, info.Took)
	return dir
}

func (v *vm) resume() {
	v.t.Helper()
	if err := v.proc.Client.Resume(context.Background()); err != nil {
		v.t.Fatalf("%s: resume: %v", v.name, err)
	}
}

// cpuTime is the VMM process's CPU time so far (user and system).
func (v *vm) cpuTime() time.Duration {
	v.t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", v.proc.Cmd.Process.Pid))
	if err != nil {
		v.t.Fatal(err)
	}
	// Fields after the command name; utime and stime are the 14th and
	// 15th of the line, in clock ticks of 1/100 s (USER_HZ).
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			v.t.Fatalf("/proc stat %q: %v", s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

func (v *vm) stop() {
	v.stopOnce.Do(func() {
		if v.conn != nil {
			v.conn.Close()
		}
		if v.ln != nil {
			v.ln.Close()
		}
		v.proc.Kill()
		if v.t.Failed() {
			con, _ := os.ReadFile(v.console)
			v.t.Logf("%s: guest console:\n%s\nvmm stderr:\n%s", v.name, con, v.stderr.String())
		}
	})
}

func seed(t *testing.T) []byte {
	s := make([]byte, 32)
	if _, err := rand.Read(s); err != nil {
		t.Fatal(err)
	}
	return s
}

func trim(b []byte) []byte {
	if len(b) > 64 {
		return b[:64]
	}
	return b
}

// payload is n bytes that differ with i and along their length.
func payload(i, n int) []byte {
	p := make([]byte, n)
	for j := range p {
		p[j] = byte(i*31 + j*7 + j>>8)
	}
	copy(p, fmt.Sprintf(`{"n":%d}`, i))
	return p
}

func TestBuild(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	p, err := Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Size() == 0 {
		t.Fatalf("%s: %v", p, err)
	}
	cfg := vmm.Config{Kernel: p, MemoryMiB: MinMemoryMiB, VCPUs: 1}
	if err := vmm.Check(cfg); err != nil {
		t.Fatalf("the VMM refuses the echo guest: %v", err)
	}
}

// The guest answers hello with ready and echoes invocations: 100 in
// sequence, 20 at once (several frames in one packet), a 64 KiB one split
// over many packets and the protocol's largest, which needs credit
// updates both ways.
func TestEcho(t *testing.T) {
	setup(t)
	start0 := time.Now()
	v := start(t, "echo", "", DebugArg)
	v.hello(seed(t))
	t.Logf("boot to ready: %v", time.Since(start0))

	t0 := time.Now()
	for i := 0; i < 100; i++ {
		v.echo(fmt.Sprintf("seq-%d", i), payload(i, 16+i*13))
	}
	t.Logf("100 sequential invocations: %v", time.Since(t0))

	t0 = time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
			defer cancel()
			id, p := fmt.Sprintf("par-%d", i), payload(1000+i, 100+i)
			f, err := v.client.Invoke(ctx, id, p, readyTimeout)
			switch {
			case err != nil:
				errs <- fmt.Errorf("%s: %w", id, err)
			case f.ID != id || !bytes.Equal(f.Body, p):
				errs <- fmt.Errorf("%s: got %q for %q", id, trim(f.Body), f.ID)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("20 concurrent invocations: %v", time.Since(t0))

	for _, n := range []int{64 << 10, guest.MaxPayload} {
		t0 = time.Now()
		v.echo(fmt.Sprintf("big-%d", n), payload(n, n))
		t.Logf("%d KiB echo: %v", n>>10, time.Since(t0))
	}

	// Odd IDs are copied as they are, escapes and all.
	v.echo(`id "quoted" \ ünïcode`, []byte("x"))
	v.echo("empty-body", nil)
}

// The guest reassembles frames however the stream is cut: several in one
// packet, one dribbled a few bytes at a time (split inside its length
// prefixes), and skips frames of types it does not serve.
func TestFraming(t *testing.T) {
	setup(t)
	v, err := launchVM(t, "framing", vmOpts{cmdline: DebugArg, raw: true})
	if err != nil {
		t.Fatal(err)
	}
	frame := func(h guest.Header, body string) []byte {
		var b bytes.Buffer
		if err := guest.WriteFrame(&b, guest.Frame{Header: h, Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	read := func(wantType, wantID, wantBody string) {
		t.Helper()
		v.conn.SetReadDeadline(time.Now().Add(readyTimeout))
		f, err := guest.ReadFrame(v.conn)
		if err != nil {
			t.Fatalf("read a frame: %v; %s", err, v.diagnose())
		}
		if f.Type != wantType || f.ID != wantID || string(f.Body) != wantBody {
			t.Fatalf("got %s %q %q, want %s %q %q", f.Type, f.ID, f.Body, wantType, wantID, wantBody)
		}
	}
	var burst []byte
	burst = append(burst, frame(guest.Header{Type: guest.TypeHello, TimeNs: 1}, "seed")...)
	burst = append(burst, frame(guest.Header{Type: guest.TypeLog, Stream: "stdout"}, "not for the guest")...)
	burst = append(burst, frame(guest.Header{Type: guest.TypeInvoke, ID: "a", DeadlineMs: 1}, "first")...)
	burst = append(burst, frame(guest.Header{Type: guest.TypeInvoke, ID: "b"}, `{"nested":{"id":"no","type":"no"},"s":"}"}`)...)
	if _, err := v.conn.Write(burst); err != nil {
		t.Fatal(err)
	}
	read(guest.TypeReady, "", "")
	read(guest.TypeResponse, "a", "first")
	read(guest.TypeResponse, "b", `{"nested":{"id":"no","type":"no"},"s":"}"}`)

	dribble := frame(guest.Header{Type: guest.TypeInvoke, ID: "c"}, strings.Repeat("slow ", 20))
	for i := 0; i < len(dribble); i += 3 {
		if _, err := v.conn.Write(dribble[i:min(i+3, len(dribble))]); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	read(guest.TypeResponse, "c", strings.Repeat("slow ", 20))
}

// Snapshots of a connected guest restored in new processes reconnect (the
// transport-reset event) and answer: one cut while the guest polls at
// CPL 3 right after an invocation, one while it sleeps in HLT at CPL 0
// after a while idle (kindlingd's warm snapshots). Two restores of the
// same snapshot run at once, each answering, with different randomness
// after different hello seeds.
func TestSnapshotRestore(t *testing.T) {
	setup(t)
	v := start(t, "original", "", DebugArg)
	v.hello(seed(t))
	v.echo("before", []byte("before the snapshot"))
	busy := v.snapshot()
	v.resume()
	v.echo("between", []byte("between the snapshots"))
	time.Sleep(200 * time.Millisecond)
	idle := v.snapshot()
	v.stop()

	for _, snap := range []struct{ name, dir string }{{"busy", busy}, {"idle", idle}} {
		t0 := time.Now()
		r := start(t, "restored-"+snap.name, snap.dir, "")
		r.hello(seed(t))
		r.echo("after", []byte("after the restore"))
		t.Logf("%s snapshot: restore to first response: %v", snap.name, time.Since(t0))
		for i := 0; i < 10; i++ {
			r.echo(fmt.Sprintf("after-%d", i), payload(i, 1000))
		}
		r.stop()
	}

	t0 := time.Now()
	var twins [2]*vm
	var errs [2]error
	var wg sync.WaitGroup
	for i := range twins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			twins[i], errs[i] = launchVM(t, fmt.Sprintf("twin%d", i), vmOpts{snapshot: idle})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var rnd [2]string
	for i, w := range twins {
		w.hello(seed(t))
		w.echo("twin", []byte(w.name))
		rnd[i] = w.random()
	}
	t.Logf("two restores to their first responses: %v; random %s and %s", time.Since(t0), rnd[0], rnd[1])
	if rnd[0] == rnd[1] {
		t.Errorf("both restored guests drew %s", rnd[0])
	}
	if again := twins[0].random(); again == rnd[0] {
		t.Errorf("one guest drew %s twice", again)
	}
}

// An idle guest sleeps (HLT, through its #GP handler) instead of
// spinning, and wakes for the next invocation. With PollArg it spins; how
// much CPU that gets depends on the load, so it is only logged.
func TestIdleGuestSleeps(t *testing.T) {
	setup(t)
	const window = 500 * time.Millisecond
	for _, arg := range []string{"", PollArg} {
		v := start(t, "idle"+arg, "", arg)
		v.hello(seed(t))
		v.echo("first", []byte("1"))
		time.Sleep(100 * time.Millisecond)
		c0 := v.cpuTime()
		time.Sleep(window)
		share := float64(v.cpuTime()-c0) / float64(window)
		t.Logf("%q: the idle guest's VMM used %.0f%% of a CPU", arg, 100*share)
		if arg == "" && share > 0.2 {
			t.Errorf("the idle guest's VMM used %.0f%% of a CPU; want it asleep", 100*share)
		}
		t0 := time.Now()
		v.echo("woken", []byte("2"))
		t.Logf("%q: first invocation after idling: %v", arg, time.Since(t0))
		v.stop()
	}
}

// The guest runs in the least memory it claims to need.
func TestMinMemory(t *testing.T) {
	setup(t)
	v, err := launchVM(t, "small", vmOpts{memoryMiB: MinMemoryMiB})
	if err != nil {
		t.Fatal(err)
	}
	v.hello(seed(t))
	v.echo("max", payload(0, guest.MaxPayload))
}

// The guest connects again when the host closes its connection (a
// kindlingd restart) and answers on the new one.
func TestReconnect(t *testing.T) {
	setup(t)
	v := start(t, "reconnect", "", DebugArg)
	v.hello(seed(t))
	v.echo("first", []byte("one"))
	v.conn.Close()
	v.accept()
	v.hello(seed(t))
	v.echo("second", []byte("two"))
}

// A guest whose host is not listening yet (a restarted kindlingd) is
// refused, backs off on its timer and connects once the host listens; it
// dials the port its command line names.
func TestConnectsWhenTheHostListensLate(t *testing.T) {
	setup(t)
	v, err := launchVM(t, "late", vmOpts{cmdline: DebugArg + " " + PortArg + "=2000", port: 2000, listenAfter: 700 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	v.hello(seed(t))
	v.echo("late", []byte("at last"))
}

// Without a vsock device the guest says so on its console.
func TestNoVsockDevice(t *testing.T) {
	setup(t)
	v, err := launchVM(t, "novsock", vmOpts{noVsock: true})
	if err != nil {
		t.Fatal(err)
	}
	const want = "no virtio-vsock device found"
	deadline := time.Now().Add(readyTimeout)
	for {
		con, _ := os.ReadFile(v.console)
		if strings.Contains(string(con), want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on the console within %v; %s", want, readyTimeout, v.diagnose())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The bad guests: after FloodLogsOp the guest sends nothing but log
// frames and drops what the host sends (another invocation gets no
// answer); after FloodGarbageOp, a frame head declaring a body no host
// should allocate, then bytes that are not frames. Either lasts as long
// as its connection: on the next one the guest is a good one again.
func TestFlood(t *testing.T) {
	setup(t)
	v, err := launchVM(t, "flood", vmOpts{cmdline: DebugArg, raw: true})
	if err != nil {
		t.Fatal(err)
	}
	write := func(h guest.Header, body string) {
		t.Helper()
		if err := guest.WriteFrame(v.conn, guest.Frame{Header: h, Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
	}
	read := func() (guest.Frame, error) {
		v.conn.SetReadDeadline(time.Now().Add(readyTimeout))
		return guest.ReadFrame(v.conn)
	}
	greet := func() {
		t.Helper()
		write(guest.Header{Type: guest.TypeHello, TimeNs: 1}, "seed")
		if f, err := read(); err != nil || f.Type != guest.TypeReady {
			t.Fatalf("after hello: %v %v; %s", f.Header, err, v.diagnose())
		}
	}
	greet()
	write(guest.Header{Type: guest.TypeInvoke, ID: "logs"}, FloodLogsOp)
	line := strings.Repeat("flood ", 200)[:1000]
	const frames = 20000
	t0 := time.Now()
	for i := range frames {
		if i == frames/2 {
			write(guest.Header{Type: guest.TypeInvoke, ID: "ignored"}, "x")
		}
		f, err := read()
		if err != nil {
			t.Fatalf("log frame %d: %v; %s", i, err, v.diagnose())
		}
		if f.Type != guest.TypeLog || f.Stream != "stdout" || string(f.Body) != line {
			t.Fatalf("frame %d: %v %q, want a log line of %q", i, f.Header, trim(f.Body), trim([]byte(line)))
		}
	}
	took := time.Since(t0)
	t.Logf("%d log frames (%.1f MiB) in %v: %.0f MiB/s", frames, float64(frames*(len(line)+40))/(1<<20), took.Round(time.Millisecond),
		float64(frames*(len(line)+40))/(1<<20)/took.Seconds())

	v.conn.Close()
	v.accept()
	greet()
	write(guest.Header{Type: guest.TypeInvoke, ID: "garbage"}, FloodGarbageOp)
	if f, err := read(); !errors.Is(err, guest.ErrFrameTooLarge) || !strings.Contains(err.Error(), strconv.Itoa(FloodDeclaredBytes)) {
		t.Fatalf("got %v %v, want a frame of %d bytes refused", f.Header, err, FloodDeclaredBytes)
	}
	if _, err := io.ReadFull(v.conn, make([]byte, 1<<20)); err != nil {
		t.Fatalf("garbage after the frame head: %v", err)
	}

	v.conn.Close()
	v.accept()
	greet()
	write(guest.Header{Type: guest.TypeInvoke, ID: "good"}, "again")
	if f, err := read(); err != nil || f.Type != guest.TypeResponse || f.ID != "good" || string(f.Body) != "again" {
		t.Fatalf("after the floods: %v %q %v", f.Header, f.Body, err)
	}
}

// send writes one frame to the guest of a raw vm.
func (v *vm) send(h guest.Header, body string) {
	v.t.Helper()
	if err := guest.WriteFrame(v.conn, guest.Frame{Header: h, Body: []byte(body)}); err != nil {
		v.t.Fatalf("%s: send a %s frame: %v", v.name, h.Type, err)
	}
}

// recv reads the next frame from the guest of a raw vm, waiting up to
// wait.
func (v *vm) recv(wait time.Duration) (guest.Frame, error) {
	v.conn.SetReadDeadline(time.Now().Add(wait))
	defer v.conn.SetReadDeadline(time.Time{})
	return guest.ReadFrame(v.conn)
}

// expect reads the next frame and fails the test unless it has the type
// and id given.
func (v *vm) expect(typ, id string) guest.Frame {
	v.t.Helper()
	f, err := v.recv(readyTimeout)
	if err != nil {
		v.t.Fatalf("%s: waiting for a %s frame: %v; %s", v.name, typ, err, v.diagnose())
	}
	if f.Type != typ || f.ID != id {
		v.t.Fatalf("%s: got a %s frame for %q (body %q), want a %s frame for %q", v.name, f.Type, f.ID, trim(f.Body), typ, id)
	}
	return f
}

// greet sends a hello with a fresh seed on a raw vm and wants an answer
// of type want (ready, or restored).
func (v *vm) greet(want string) {
	v.t.Helper()
	v.send(guest.Header{Type: guest.TypeHello, TimeNs: time.Now().UnixNano()}, string(seed(v.t)))
	if f := v.expect(want, ""); len(f.Body) != 0 || f.ErrorType != "" {
		v.t.Fatalf("%s: %s frame with error type %q and body %q, want neither", v.name, want, f.ErrorType, trim(f.Body))
	}
}

// call invokes body on a raw vm and returns the response's body.
func (v *vm) call(id, body string) string {
	v.t.Helper()
	v.send(guest.Header{Type: guest.TypeInvoke, ID: id, DeadlineMs: time.Now().Add(readyTimeout).UnixMilli()}, body)
	return string(v.expect(guest.TypeResponse, id).Body)
}

// events is the guest's event log (EventsOp), oldest first; the last
// event is this call's own, id's.
func (v *vm) events(id string) []string {
	v.t.Helper()
	return strings.Split(v.call(id, EventsOp), "\n")
}

func sameEvents(got, want []string) error {
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		return fmt.Errorf("events:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	return nil
}

// The guest's event log keeps the last MaxEvents events, oldest first,
// with ids unescaped, control characters turned to '?' and long ids cut
// at a whole character.
func TestEventLog(t *testing.T) {
	setup(t)
	v, err := launchVM(t, "events", vmOpts{cmdline: DebugArg, raw: true})
	if err != nil {
		t.Fatal(err)
	}
	v.greet(guest.TypeReady)
	var want []string
	for i := range 40 {
		id := fmt.Sprintf("e-%02d", i)
		if got := v.call(id, id); got != id {
			t.Fatalf("invoke %s: got %q", id, got)
		}
		want = append(want, EventInvokePrefix+id)
	}
	// 40 bytes of id fit, the 2-byte é after them does not.
	long := strings.Repeat("x", MaxEventBytes-len(EventInvokePrefix)-1) + "étail"
	// JSON escapes all: \", \\, \u003c and \u003e, \t; ü as it is.
	odd := "q \"<ü>\" \\ \t"
	for _, id := range []string{long, odd} {
		v.call(id, "x")
	}
	want = append(want, EventInvokePrefix+strings.Repeat("x", MaxEventBytes-len(EventInvokePrefix)-1), EventInvokePrefix+`q "<ü>" \ ?`,
		EventInvokePrefix+"log")
	got := v.events("log")
	if err := sameEvents(got, want[len(want)-MaxEvents:]); err != nil {
		t.Fatal(err)
	}
	for _, e := range got {
		if len(e) > MaxEventBytes {
			t.Errorf("event %q: %d bytes, above MaxEventBytes", e, len(e))
		}
	}
}

// A warm snapshot: the guest warms up, answers a checkpoint (its
// before-snapshot hook), and two VMs restored from the snapshot cut then
// answer their hellos with "restored" (their after-restore hooks), log
// the events in order, and draw different randomness after different
// seeds. A restored guest's next connection is greeted as any other.
func TestCheckpointRestore(t *testing.T) {
	setup(t)
	v, err := launchVM(t, "warm", vmOpts{cmdline: DebugArg, raw: true})
	if err != nil {
		t.Fatal(err)
	}
	v.greet(guest.TypeReady)
	warm := []string{"warm-up-1", "warm-up-2"}
	for _, id := range warm {
		if got := v.call(id, "warming "+id); got != "warming "+id {
			t.Fatalf("invoke %s: got %q", id, got)
		}
	}
	t0 := time.Now()
	v.send(guest.Header{Type: guest.TypeCheckpoint}, "")
	if f := v.expect(guest.TypeCheckpoint, ""); len(f.Body) != 0 || f.ErrorType != "" {
		t.Fatalf("checkpoint answered with error type %q and body %q, want neither", f.ErrorType, trim(f.Body))
	}
	t.Logf("checkpoint answered in %v", time.Since(t0))
	snap := v.snapshot()
	v.stop()

	var twins [2]*vm
	var errs [2]error
	var wg sync.WaitGroup
	for i := range twins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			twins[i], errs[i] = launchVM(t, fmt.Sprintf("warm%d", i), vmOpts{snapshot: snap, raw: true})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	var rnd [2]string
	for i, w := range twins {
		w.greet(guest.TypeRestored)
		id := "events-" + w.name
		want := []string{EventInvokePrefix + warm[0], EventInvokePrefix + warm[1], EventBeforeSnapshot, EventAfterRestore, EventInvokePrefix + id}
		if err := sameEvents(w.events(id), want); err != nil {
			t.Errorf("%s: %v", w.name, err)
		}
		rnd[i] = w.call("random-"+w.name, RandomOp)
		if _, err := hex.DecodeString(rnd[i]); err != nil || len(rnd[i]) != 16 {
			t.Fatalf("%s: random: %q, want 16 hex digits", w.name, rnd[i])
		}
	}
	t.Logf("random after the restores: %s and %s", rnd[0], rnd[1])
	if rnd[0] == rnd[1] {
		t.Errorf("both restored guests drew %s", rnd[0])
	}

	// The after-restore hook ran once: a new connection is a ready guest.
	w := twins[0]
	w.conn.Close()
	w.accept()
	w.greet(guest.TypeReady)
	got := w.events("events-again")
	if err := sameEvents(got[len(got)-3:], []string{EventInvokePrefix + "events-" + w.name, EventInvokePrefix + "random-" + w.name,
		EventInvokePrefix + "events-again"}); err != nil {
		t.Errorf("after a reconnect: %v", err)
	}
}

// After HangCheckpointOp the guest's before-snapshot hook hangs: a
// checkpoint gets no answer (the host gives up at its deadline), and
// invocations are answered as before.
func TestHangingCheckpoint(t *testing.T) {
	setup(t)
	v, err := launchVM(t, "hang", vmOpts{cmdline: DebugArg, raw: true})
	if err != nil {
		t.Fatal(err)
	}
	v.greet(guest.TypeReady)
	if got := v.call("hang", HangCheckpointOp); got != "ok" {
		t.Fatalf("%s: got %q, want ok", HangCheckpointOp, got)
	}
	v.send(guest.Header{Type: guest.TypeCheckpoint}, "")
	const deadline = 500 * time.Millisecond
	if f, err := v.recv(deadline); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("after a checkpoint: got %v %q %v, want nothing within %v", f.Header, trim(f.Body), err, deadline)
	}
	// Were the checkpoint answered late, this would read its answer.
	if got := v.call("after", "still here"); got != "still here" {
		t.Fatalf("after the hanging checkpoint: got %q", got)
	}
	if err := sameEvents(v.events("log"), []string{EventInvokePrefix + "hang", EventInvokePrefix + "after", EventInvokePrefix + "log"}); err != nil {
		t.Error(err)
	}
	// No checkpoint was answered: the next hello is not a restore's.
	v.greet(guest.TypeReady)
}
