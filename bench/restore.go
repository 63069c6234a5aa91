package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kindlingvm/kindling/internal/asm"
	"github.com/kindlingvm/kindling/vmm"
	"github.com/kindlingvm/kindling/vmm/launch"
)

// loopKernelSrc writes 'R' to COM1 forever: after a restore, the first
// console byte marks the restored guest's first instruction.
const loopKernelSrc = `.code32
	mov $0x3f8, %dx
	mov $'R', %al
1:	out %al, %dx
	jmp 1b
`

// restoreSample times one restore: process start to the first console
// byte of the restored guest.
func firstByte(cmd *exec.Cmd, want byte) (time.Duration, error) {
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	got := make(chan error, 1)
	go func() {
		r := bufio.NewReader(out)
		for {
			b, err := r.ReadByte()
			if err != nil {
				got <- err
				return
			}
			if b == want {
				got <- nil
				return
			}
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			return 0, fmt.Errorf("no %q on the console: %w", want, err)
		}
	case <-time.After(30 * time.Second):
		return 0, fmt.Errorf("no %q on the console within 30 s", want)
	}
	return time.Since(t0), nil
}

// kindlingSnapshot boots the loop kernel in kindling-vmm and snapshots it.
func kindlingSnapshot(dir, vmmBin, kernel string, memMiB uint64) (string, error) {
	ctx := context.Background()
	p, err := launch.Start(ctx, vmm.Config{Kernel: kernel, MemoryMiB: memMiB, VCPUs: 1, Console: "none"},
		launch.Options{Binary: vmmBin, Dir: dir, Start: true})
	if err != nil {
		return "", err
	}
	defer p.Kill()
	time.Sleep(50 * time.Millisecond)
	if err := p.Client.Pause(ctx); err != nil {
		return "", err
	}
	snap := filepath.Join(dir, "snap")
	if _, err := p.Client.Snapshot(ctx, snap); err != nil {
		return "", err
	}
	return snap, nil
}

// recordWorkingSet restores snap once, lets the guest run briefly and
// records the pages it touched beside the snapshot, through the API.
func recordWorkingSet(dir, vmmBin, snap string) error {
	ctx := context.Background()
	p, err := launch.Start(ctx, vmm.Config{Console: "none"}, launch.Options{Binary: vmmBin, Dir: dir, Restore: snap, Start: true})
	if err != nil {
		return err
	}
	defer p.Kill()
	time.Sleep(50 * time.Millisecond)
	_, err = p.Client.RecordWorkingSet(ctx, snap)
	return err
}

// qemuMigrationFile boots the loop kernel in QEMU microvm and migrates it
// to a file through the human monitor.
func qemuMigrationFile(dir, qemuBin, kernel string, memMiB uint64) (string, error) {
	mon := filepath.Join(dir, "qemu.mon")
	file := filepath.Join(dir, "qemu.mig")
	cmd := exec.Command(qemuBin, qemuArgs(kernel, memMiB, "-monitor", "unix:"+mon+",server,nowait")...)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var c net.Conn
	var err error
	for i := 0; i < 500; i++ {
		if c, err = net.Dial("unix", mon); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return "", fmt.Errorf("qemu monitor: %w", err)
	}
	defer c.Close()
	time.Sleep(50 * time.Millisecond)
	send := func(line string) { fmt.Fprintf(c, "%s\n", line) }
	send("migrate \"exec:cat > " + file + "\"")
	for i := 0; i < 3000; i++ {
		send("info migrate")
		time.Sleep(10 * time.Millisecond)
		if st, err := os.Stat(file); err == nil && st.Size() > 0 && cmd.ProcessState == nil {
			buf := make([]byte, 64<<10)
			_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			n, _ := c.Read(buf)
			if strings.Contains(string(buf[:n]), "Migration status: completed") {
				return file, nil
			}
		}
	}
	return "", fmt.Errorf("qemu migration to %s did not complete", file)
}

func qemuArgs(kernel string, memMiB uint64, extra ...string) []string {
	return append([]string{"-M", "microvm", "-enable-kvm", "-cpu", "host,-arch-capabilities",
		"-m", strconv.FormatUint(memMiB, 10), "-smp", "1", "-nodefaults", "-no-user-config",
		"-display", "none", "-serial", "stdio", "-kernel", kernel}, extra...)
}

// restoreRate restores snap n times, conc at a time, each in a new
// kindling-vmm process run to its first console byte, and returns
// restores per second.
func restoreRate(dir, vmmBin, snap string, n, conc int) (float64, error) {
	start := time.Now()
	errs := make(chan error, n)
	sem := make(chan struct{}, conc)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem }()
			sock := filepath.Join(dir, fmt.Sprintf("rate%d.sock", i))
			_, err := firstByte(exec.Command(vmmBin, "--restore", snap, "--api-sock", sock, "--start", "--console", "stdout"), 'R')
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// restoreRow measures restores of one guest size for both VMMs.
func restoreRow(dir, vmmBin, qemuBin, kernel string, memMiB uint64, runs int) (ours, prefetched, qemu []time.Duration, err error) {
	sub := filepath.Join(dir, fmt.Sprintf("restore-%d", memMiB))
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return nil, nil, nil, err
	}
	snap, err := kindlingSnapshot(sub, vmmBin, kernel, memMiB)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("kindling snapshot: %w", err)
	}
	if err := recordWorkingSet(sub, vmmBin, snap); err != nil {
		return nil, nil, nil, fmt.Errorf("record working set: %w", err)
	}
	mig, err := qemuMigrationFile(sub, qemuBin, kernel, memMiB)
	if err != nil {
		return nil, nil, nil, err
	}
	restore := func(i int, extra ...string) (time.Duration, error) {
		sock := filepath.Join(sub, fmt.Sprintf("r%d.sock", i))
		args := append([]string{"--restore", snap, "--api-sock", sock, "--start", "--console", "stdout"}, extra...)
		return firstByte(exec.Command(vmmBin, args...), 'R')
	}
	for i := 0; i < runs; i++ {
		d, err := restore(i)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("kindling restore: %w", err)
		}
		ours = append(ours, d)
		if d, err = restore(i, "--prefetch"); err != nil {
			return nil, nil, nil, fmt.Errorf("kindling restore --prefetch: %w", err)
		}
		prefetched = append(prefetched, d)
		d, err = firstByte(exec.Command(qemuBin, qemuArgs(kernel, memMiB, "-incoming", "exec:cat "+mig)...), 'R')
		if err != nil {
			return nil, nil, nil, fmt.Errorf("qemu -incoming: %w", err)
		}
		qemu = append(qemu, d)
	}
	return ours, prefetched, qemu, nil
}

// restoreRateFor snapshots the loop kernel at memMiB and measures restores
// per second.
func restoreRateFor(dir, vmmBin, kernel string, memMiB uint64, n, conc int) (float64, error) {
	sub := filepath.Join(dir, fmt.Sprintf("rate-%d", memMiB))
	if err := os.MkdirAll(sub, 0o755); err != nil {
		return 0, err
	}
	snap, err := kindlingSnapshot(sub, vmmBin, kernel, memMiB)
	if err != nil {
		return 0, err
	}
	return restoreRate(sub, vmmBin, snap, n, conc)
}

func buildLoopKernel(dir string) (string, error) {
	elf, err := asm.AssembleELF(loopKernelSrc+asm.PVHNote, 0x100000)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "loop-pvh.elf")
	return p, os.WriteFile(p, elf, 0o644)
}
