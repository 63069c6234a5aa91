package drive

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kindlingvm/kindling/internal/testtasks/gocpu/work"
)

// TestRunMeasuresGocpu drives the gocpu task and checks that its answer
// is work.Invoke's and that its CPU was counted.
func TestRunMeasuresGocpu(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "gocpu")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/kindlingvm/kindling/internal/testtasks/gocpu").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	event := work.Event(1, work.DefaultOrders)
	r, err := Run(context.Background(), bin, event, 2, 5)
	if err != nil {
		t.Fatal(err)
	}
	want, err := work.Invoke(event)
	if err != nil {
		t.Fatal(err)
	}
	if string(r.Response) != string(want) {
		t.Errorf("the task answered %.300s\nwork.Invoke %.300s", r.Response, want)
	}
	if r.Invocations != 5 || r.PerInvocation() <= 0 || r.Wall <= 0 {
		t.Errorf("result %+v", r)
	}
	t.Logf("%v CPU per invocation (%v wall for %d)", r.PerInvocation(), r.Wall, r.Invocations)
}

// TestRunReportsATaskThatFails names the task's error.
func TestRunReportsATaskThatFails(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "gocpu")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/kindlingvm/kindling/internal/testtasks/gocpu").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	_, err := Run(context.Background(), bin, []byte(`{"orders": "not a list"}`), 0, 1)
	if err == nil || !strings.Contains(err.Error(), "answered with an error") {
		t.Fatalf("err %v; want the task's error", err)
	}
	_, err = Run(context.Background(), "/bin/true", nil, 0, 1)
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("err %v; want it to say the task exited", err)
	}
}
