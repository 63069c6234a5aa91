package main

import (
	"bytes"
	"log/slog"
	"os/exec"
	"sync"

	"github.com/kindlingvm/kindling/agent/guest"
	"github.com/kindlingvm/kindling/agent/profiler"
)

// startProfiled starts the task under the CPU sampler (agent/profiler),
// symbolising from the task binary.
func startProfiled(task string, log *slog.Logger) func(*exec.Cmd) (guest.Sampler, error) {
	return func(cmd *exec.Cmd) (guest.Sampler, error) {
		s, err := profiler.Start(cmd, profiler.Options{Binary: task})
		if err != nil {
			return nil, err
		}
		log.Info("task profiled", "task", task)
		return &sampler{s: s}, nil
	}
}

// sampler gives the agent gzipped pprof bytes, and keeps a Collect that
// races the task's end from using a closed sampler.
type sampler struct {
	mu     sync.Mutex
	s      *profiler.Sampler
	closed bool
}

func (p *sampler) Collect() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil
	}
	prof, _, err := p.s.Collect()
	if err != nil || prof == nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := prof.Write(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func (p *sampler) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	return p.s.Close()
}
