package host

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/agent/guest"
)

// capLogs passes lines up to the limit, then one marker, then nothing.
func TestCapLogs(t *testing.T) {
	var got []guest.Frame
	fn := capLogs(func(f guest.Frame) { got = append(got, f) }, 10)
	line := func(s string) guest.Frame {
		return guest.Frame{Header: guest.Header{Type: guest.TypeLog, ID: "inv", Stream: "stdout"}, Body: []byte(s)}
	}
	for _, s := range []string{"abcd", "efgh", "", "ij", "k", "lmnop", "q"} {
		fn(line(s))
	}
	var bodies []string
	for _, f := range got {
		bodies = append(bodies, f.Stream+":"+string(f.Body))
	}
	want := []string{"stdout:abcd", "stdout:efgh", "stdout:", "stdout:ij"}
	if len(got) != len(want)+1 || strings.Join(bodies[:len(want)], "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q and a marker", bodies, want)
	}
	if m := got[len(want)]; m.Stream != "kindling" || m.ID != "inv" || !strings.HasPrefix(string(m.Body), logTruncated) || !strings.Contains(string(m.Body), "10 bytes") {
		t.Fatalf("marker: %+v %q", m.Header, m.Body)
	}
	if capLogs(nil, 10) != nil {
		t.Fatal("capLogs(nil) is not nil: forward would take it for an invocation's callback")
	}
}

// A guest that sends a frame over the protocol's limits fails the
// invocation at once, naming the frame's size and the limit; kindlingd
// neither allocates it nor waits for the guest to reconnect.
func TestAgentLinkRefusesAnOversizedFrame(t *testing.T) {
	ln, err := listenAgent(filepath.Join(t.TempDir(), "agent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	dead := newProcEnd()
	l := newAgentLink("sb-test", slog.New(slog.DiscardHandler), ln, dead)
	defer l.close()
	conn, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	go func() {
		if f, err := guest.ReadFrame(conn); err != nil || f.Type != guest.TypeHello {
			return
		}
		guest.WriteFrame(conn, guest.Frame{Header: guest.Header{Type: guest.TypeReady}})
		if _, err := guest.ReadFrame(conn); err != nil {
			return
		}
		b := binary.BigEndian.AppendUint32(nil, 32)
		b = append(b, `{"type":"log","stream":"stdout"}`...)
		b = binary.BigEndian.AppendUint32(b, 0xfffffff0)
		conn.Write(b)
		for { // garbage until kindlingd closes the connection
			if _, err := conn.Write(make([]byte, 4096)); err != nil {
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t0 := time.Now()
	_, err = l.invoke(ctx, "inv-1", []byte("{}"), time.Second, func(guest.Frame) {})
	if !errors.Is(err, guest.ErrProtocol) || !strings.Contains(err.Error(), "4294967280 bytes, above the 1048576-byte limit") ||
		!strings.Contains(err.Error(), "sb-test") {
		t.Fatalf("invoke: %v; want the sandbox, ErrProtocol, the size and the limit", err)
	}
	if took := time.Since(t0); took > agentReconnectWait/2 {
		t.Fatalf("the invocation failed after %v: kindlingd waited for a reconnection", took)
	}
	t.Logf("the caller got: %v", err)
}
