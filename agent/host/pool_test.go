package host

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestGateLimitQueueAndOrder(t *testing.T) {
	g := &gate{limit: 2, queueLimit: 2}
	for i := range 2 {
		if ch, err := g.reserve(true); ch != nil || err != nil {
			t.Fatalf("slot %d: %v %v", i, ch, err)
		}
	}
	q1, err1 := g.reserve(true)
	q2, err2 := g.reserve(true)
	if q1 == nil || q2 == nil || err1 != nil || err2 != nil {
		t.Fatalf("queue places: %v %v", err1, err2)
	}
	if _, err := g.reserve(true); !errors.Is(err, errQueueFull) {
		t.Fatalf("third waiter: %v, want errQueueFull", err)
	}
	// Accepted asynchronous invocations are on disk already: never refused.
	q3, err := g.reserve(false)
	if q3 == nil || err != nil {
		t.Fatalf("unbounded place: %v", err)
	}
	// A released slot goes to the oldest waiter.
	g.release()
	select {
	case <-q1:
	default:
		t.Fatal("the oldest waiter was not handed the slot")
	}
	select {
	case <-q2:
		t.Fatal("a younger waiter jumped the queue")
	default:
	}
	// A waiter that gives up leaves the queue.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := g.wait(ctx, q2); err == nil {
		t.Fatal("wait on a cancelled context succeeded")
	}
	g.release()
	select {
	case <-q3:
	case <-time.After(time.Second):
		t.Fatal("the slot skipped the remaining waiter")
	}
	if running, queued := g.depth(); running != 2 || queued != 0 {
		t.Fatalf("depth: %d running, %d queued", running, queued)
	}
	g.release()
	g.release()
	if running, _ := g.depth(); running != 0 {
		t.Fatalf("after releasing all: %d running", running)
	}
}
