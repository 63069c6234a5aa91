package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSystemdNotifyAndWatchdog plays systemd's side of sd_notify: kindlingd
// says READY=1 once it serves, pings WATCHDOG=1 at half WATCHDOG_USEC, and
// says STOPPING=1 on SIGTERM.
func TestSystemdNotifyAndWatchdog(t *testing.T) {
	dir, err := os.MkdirTemp("", "kn-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "200000")
	msgs := make(chan string, 100)
	go func() {
		b := make([]byte, 4096)
		for {
			n, _, err := conn.ReadFromUnix(b)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(b[:n])
		}
	}()
	d := startDaemon(t)
	want := []string{"READY=1", "WATCHDOG=1", "WATCHDOG=1"}
	deadline := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case m := <-msgs:
			if strings.Contains(m, want[0]) {
				want = want[1:]
			}
		case <-deadline:
			t.Fatalf("still waiting for %v from kindlingd", want)
		}
	}
	if code, err := d.Terminate(30 * time.Second); err != nil || code != 0 {
		t.Fatalf("SIGTERM: %d %v", code, err)
	}
	for {
		select {
		case m := <-msgs:
			if strings.Contains(m, "STOPPING=1") {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no STOPPING=1 after SIGTERM")
		}
	}
}
