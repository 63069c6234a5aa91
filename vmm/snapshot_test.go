package vmm

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kindlingvm/kindling/internal/testguest"
	"github.com/kindlingvm/kindling/snapshot"
)

func startXorshift(t testing.TB, m *Machine, vcpus int) {
	t.Helper()
	if err := testguest.LoadXorshift(m.Memory()); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < vcpus; i++ {
		if err := testguest.StartUser64(m.VCPU(i), m.Memory(), i, vcpus, testguest.Rounds); err != nil {
			t.Fatal(err)
		}
	}
}

func results(t testing.TB, m *Machine, n int) []uint64 {
	out := make([]uint64, n)
	for i := range out {
		out[i], _ = m.Memory().ReadU64(testguest.ResultAddr + 8*uint64(i))
	}
	return out
}

func TestSnapshotMidRunRestoresToTheSameResult(t *testing.T) {
	for _, vcpus := range []int{1, 2} {
		t.Run(map[int]string{1: "1 vcpu", 2: "2 vcpus"}[vcpus], func(t *testing.T) {
			// Uninterrupted reference run.
			ref, refCon := bareVM(t, 8, vcpus)
			startXorshift(t, ref, vcpus)
			start := time.Now()
			if r := runToExit(t, ref, 60*time.Second); r.Kind != ExitGuestReset {
				t.Fatalf("reference run: %v", r)
			}
			took := time.Since(start)
			want := results(t, ref, vcpus)

			// Interrupted run: pause a third of the way in and snapshot.
			m, _ := bareVM(t, 8, vcpus)
			startXorshift(t, m, vcpus)
			if err := m.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(took / 3)
			if err := m.Pause(); err != nil {
				t.Fatal(err)
			}
			if got := results(t, m, vcpus); got[0] != 0 {
				t.Skipf("the guest finished before the pause (reference run took %v); nothing to test", took)
			}
			dir := filepath.Join(t.TempDir(), "snap")
			info, err := m.Snapshot(dir)
			if err != nil {
				t.Fatal(err)
			}
			m.Stop()
			t.Logf("reference run %v; snapshot of %d MiB wrote %d KiB in %v", took, info.MemoryBytes>>20, info.WrittenBytes>>10, info.Took)
			memBefore, _ := os.ReadFile(filepath.Join(dir, "memory"))

			con := &syncBuffer{}
			restored, err := Restore(dir, RestoreOverrides{}, Options{Console: con})
			if err != nil {
				t.Fatal(err)
			}
			defer restored.Close()
			if r := runToExit(t, restored, 60*time.Second); r.Kind != ExitGuestReset {
				t.Fatalf("restored run: %v", r)
			}
			got := results(t, restored, vcpus)
			for i := range want {
				if got[i] != want[i] {
					t.Errorf("vcpu %d: restored run computed %#x, uninterrupted run %#x", i, got[i], want[i])
				}
			}
			if con.String() != refCon.String() || len(con.String()) != 17*vcpus {
				t.Errorf("restored console %q, uninterrupted %q", con.String(), refCon.String())
			}
			memAfter, _ := os.ReadFile(filepath.Join(dir, "memory"))
			if string(memBefore) != string(memAfter) {
				t.Error("running the restored VM changed the snapshot's memory file")
			}
		})
	}
}

// Ten VMs restored at once from one snapshot share its memory file
// copy-on-write: each runs to the right result, the file never changes.
func TestTenVMsFromOneSnapshot(t *testing.T) {
	ref, refCon := bareVM(t, 8, 1)
	startXorshift(t, ref, 1)
	start := time.Now()
	if r := runToExit(t, ref, 60*time.Second); r.Kind != ExitGuestReset {
		t.Fatalf("reference run: %v", r)
	}
	took := time.Since(start)

	m, _ := bareVM(t, 8, 1)
	startXorshift(t, m, 1)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(took / 3)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "snap")
	if _, err := m.Snapshot(dir); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	memBefore, _ := os.ReadFile(filepath.Join(dir, "memory"))

	const n = 10
	type result struct {
		console string
		exit    ExitReason
		err     error
	}
	results := make(chan result, n)
	begin := time.Now()
	for i := 0; i < n; i++ {
		go func() {
			con := &syncBuffer{}
			vm, err := Restore(dir, RestoreOverrides{}, Options{Console: con})
			if err != nil {
				results <- result{err: err}
				return
			}
			defer vm.Close()
			if err := vm.Start(); err != nil {
				results <- result{err: err}
				return
			}
			select {
			case <-vm.Done():
			case <-time.After(2 * time.Minute):
				vm.Stop()
			}
			results <- result{console: con.String(), exit: vm.Wait()}
		}()
	}
	for i := 0; i < n; i++ {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		if r.exit.Kind != ExitGuestReset || r.console != refCon.String() {
			t.Errorf("restored VM: exit %v, console %q, want %q", r.exit, r.console, refCon.String())
		}
	}
	t.Logf("%d VMs restored and run to completion in %v (one uninterrupted run: %v)", n, time.Since(begin), took)
	memAfter, _ := os.ReadFile(filepath.Join(dir, "memory"))
	if string(memBefore) != string(memAfter) {
		t.Error("the restored VMs changed the snapshot's memory file")
	}
}

// runAndSnapshot starts the xorshift guest on m, pauses it and snapshots
// it into dir/snap, whose path it returns; m is left paused.
func runAndSnapshot(t *testing.T, m *Machine, dir string) string {
	t.Helper()
	startXorshift(t, m, 1)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(dir, "snap")
	if _, err := m.Snapshot(snap); err != nil {
		t.Fatal(err)
	}
	return snap
}

// emptyDisk writes a zeroed 1 MiB disk image into dir.
func emptyDisk(t *testing.T, dir string) string {
	t.Helper()
	disk := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return disk
}

func TestRestoreRefusesDamagedSnapshots(t *testing.T) {
	m, _ := bareVM(t, 8, 1)
	good := runAndSnapshot(t, m, t.TempDir())
	m.Stop()
	if _, err := m.Snapshot(good); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("snapshot of a stopped VM: %v", err)
	}
	state, _ := os.ReadFile(filepath.Join(good, snapshot.StateFile))
	memFile, _ := os.ReadFile(filepath.Join(good, snapshot.MemoryFile))
	for _, tc := range []struct {
		name  string
		state []byte
		mem   []byte
		want  error
	}{
		{"flipped state byte", flip(state, len(state)-10), memFile, snapshot.ErrCorrupt},
		{"truncated state", state[:len(state)/2], memFile, snapshot.ErrTruncated},
		{"other format version", flip(state, 8), memFile, snapshot.ErrVersion},
		{"truncated memory", state, memFile[:len(memFile)/2], snapshot.ErrTruncated},
	} {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, snapshot.StateFile), tc.state, 0o644)
		os.WriteFile(filepath.Join(dir, snapshot.MemoryFile), tc.mem, 0o644)
		if _, err := Restore(dir, RestoreOverrides{}, Options{}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := Restore(t.TempDir(), RestoreOverrides{}, Options{}); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("empty directory: %v", err)
	}
	if _, err := Restore(good, RestoreOverrides{Disks: []Disk{{Path: "/x"}}}, Options{}); err == nil || !strings.Contains(err.Error(), "1 disk overrides for a VM with 0 disks") {
		t.Errorf("disk override count: %v", err)
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x40
	return c
}

const tickTarget = testguest.TickTarget

func startTicks(t testing.TB, m *Machine) {
	t.Helper()
	if err := testguest.StartTicks(m.VCPU(0), m.Memory()); err != nil {
		t.Fatal(err)
	}
}

// A VM snapshotted while its LAPIC timer is armed (and often with a tick
// pending) keeps taking ticks after a restore and reaches its count.
func TestSnapshotWithArmedTimer(t *testing.T) {
	m, _ := bareVM(t, 8, 1)
	startTicks(t, m)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, _ := m.Memory().ReadU32(0x2000)
		if n >= tickTarget/3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d ticks after 30 s", n)
		}
		time.Sleep(time.Millisecond)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	at, _ := m.Memory().ReadU32(0x2000)
	if at >= tickTarget {
		t.Skip("the guest finished before the pause")
	}
	dir := filepath.Join(t.TempDir(), "snap")
	if _, err := m.Snapshot(dir); err != nil {
		t.Fatal(err)
	}
	m.Stop()
	r, err := Restore(dir, RestoreOverrides{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if exit := runToExit(t, r, 30*time.Second); exit.Kind != ExitGuestReset {
		t.Fatalf("restored VM: %v", exit)
	}
	if n, _ := r.Memory().ReadU32(0x2000); n != tickTarget {
		t.Fatalf("restored VM counted %d ticks, want %d", n, tickTarget)
	}
	t.Logf("snapshot at tick %d; the restored VM counted on to %d", at, tickTarget)
}

// REAP: the pages a restored VM touches are recorded beside the snapshot;
// a restore with Prefetch has them mapped before the guest runs, and still
// computes the right result.
func TestWorkingSetPrefetch(t *testing.T) {
	m, _ := bareVM(t, 64, 1)
	startXorshift(t, m, 1)
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "snap")
	if _, err := m.Snapshot(dir); err != nil {
		t.Fatal(err)
	}
	m.Stop()

	first, err := Restore(dir, RestoreOverrides{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := first.Memory().Resident()
	if r := runToExit(t, first, 60*time.Second); r.Kind != ExitGuestReset {
		t.Fatalf("first restore: %v", r)
	}
	want := results(t, first, 1)
	pages, err := first.RecordWorkingSet(dir)
	first.Close()
	if err != nil {
		t.Fatal(err)
	}
	if pages == 0 || len(before) != 0 {
		t.Fatalf("recorded %d pages (resident before the run: %v)", pages, before)
	}

	second, err := Restore(dir, RestoreOverrides{Prefetch: true}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	res, _ := second.Memory().Resident()
	got := 0
	for _, r := range res {
		got += int(r.Length / 4096)
	}
	if got < pages {
		t.Fatalf("prefetch mapped %d of the %d working-set pages before the guest ran", got, pages)
	}
	if r := runToExit(t, second, 60*time.Second); r.Kind != ExitGuestReset {
		t.Fatalf("prefetched restore: %v", r)
	}
	if res := results(t, second, 1); res[0] != want[0] {
		t.Fatalf("prefetched restore computed %#x, want %#x", res[0], want[0])
	}
	t.Logf("working set: %d pages of a 64 MiB guest", pages)
}

// A diff snapshot holds only the pages written since the last snapshot;
// restored on top of its base it continues where the diff was cut, not
// where the base was.
func TestDiffSnapshot(t *testing.T) {
	m, _ := bareVM(t, 64, 1)
	startTicks(t, m)
	ticks := func(vm *Machine) uint32 { n, _ := vm.Memory().ReadU32(0x2000); return n }
	waitTicks := func(n uint32) {
		deadline := time.Now().Add(30 * time.Second)
		for ticks(m) < n {
			if time.Now().After(deadline) {
				t.Fatalf("stuck at %d ticks", ticks(m))
			}
			time.Sleep(time.Millisecond)
		}
	}
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.SnapshotDiff(filepath.Join(t.TempDir(), "x")); !errors.Is(err, ErrNoBase) {
		t.Fatalf("diff without a base: %v", err)
	}
	m.Resume()
	waitTicks(50)
	m.Pause()
	base := filepath.Join(t.TempDir(), "base")
	full, err := m.Snapshot(base)
	if err != nil {
		t.Fatal(err)
	}
	m.Resume()
	waitTicks(150)
	m.Pause()
	at := ticks(m)
	diff := filepath.Join(t.TempDir(), "diff")
	d, err := m.SnapshotDiff(diff)
	if err != nil {
		t.Fatal(err)
	}
	m.Stop()
	t.Logf("full snapshot wrote %d KiB, the diff %d KiB", full.WrittenBytes>>10, d.WrittenBytes>>10)
	if d.WrittenBytes == 0 || d.WrittenBytes > 64<<10 {
		t.Fatalf("diff wrote %d bytes: want the few pages the guest touched", d.WrittenBytes)
	}
	r, err := Restore(diff, RestoreOverrides{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := ticks(r); got != at {
		t.Fatalf("restored memory says %d ticks, the diff was cut at %d (the base had %d or so)", got, at, 50)
	}
	if exit := runToExit(t, r, 30*time.Second); exit.Kind != ExitGuestReset || ticks(r) != tickTarget {
		t.Fatalf("restored diff: exit %v, %d ticks", exit, ticks(r))
	}
	os.RemoveAll(base)
	if _, err := Restore(diff, RestoreOverrides{}, Options{}); err == nil || !strings.Contains(err.Error(), "base") {
		t.Fatalf("a diff whose base is gone: %v", err)
	}
}

// Host-specific resources can move between snapshot and restore: here the
// disk is restored from a copy at another path.
func TestRestoreWithMovedDisk(t *testing.T) {
	requireKVM(t)
	dir := t.TempDir()
	disk := emptyDisk(t, dir)
	m, err := New(Config{MemoryMiB: 8, VCPUs: 1, Disks: []Disk{{Path: disk}}}, Options{Console: &syncBuffer{}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	snap := runAndSnapshot(t, m, dir)
	m.Stop()
	moved := filepath.Join(dir, "moved.img")
	data, _ := os.ReadFile(disk)
	os.WriteFile(moved, data, 0o644)
	os.Remove(disk)
	if _, err := Restore(snap, RestoreOverrides{}, Options{}); err == nil || !strings.Contains(err.Error(), "disk.img") {
		t.Fatalf("restore with the disk gone: %v", err)
	}
	r, err := Restore(snap, RestoreOverrides{Disks: []Disk{{Path: moved}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.Config().Disks[0].Path; got != moved {
		t.Fatalf("restored VM uses %s", got)
	}
	if exit := runToExit(t, r, 60*time.Second); exit.Kind != ExitGuestReset {
		t.Fatalf("restored VM: %v", exit)
	}
}

// A VM with a vsock device announces it after its disks, serves its Unix
// socket, and restores with the socket moved (the original VM still holds
// its path); the restored device starts with no connections.
func TestVsockDeviceWiringAndRestore(t *testing.T) {
	requireKVM(t)
	dir := t.TempDir()
	disk := emptyDisk(t, dir)
	sock := filepath.Join(dir, "v.sock")
	m, err := New(Config{MemoryMiB: 8, VCPUs: 1, Disks: []Disk{{Path: disk}}, Vsock: &Vsock{GuestCID: 3, Path: sock}}, Options{Console: &syncBuffer{}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if got, want := m.kernelCmdline(), "virtio_mmio.device=4K@0xd0001000:6"; !strings.Contains(got, want) {
		t.Fatalf("command line %q lacks the vsock device %q", got, want)
	}
	// No guest driver yet: a host connect is refused with a reason.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "CONNECT 52\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, _ := io.ReadAll(c)
	c.Close()
	if !strings.Contains(string(reply), "driver is not running") {
		t.Fatalf("reply %q", reply)
	}
	snap := runAndSnapshot(t, m, dir)
	if _, err := Restore(snap, RestoreOverrides{}, Options{}); err == nil || !strings.Contains(err.Error(), "v.sock") {
		t.Fatalf("restore onto the live VM's socket: %v", err)
	}
	moved := filepath.Join(dir, "v2.sock")
	r, err := Restore(snap, RestoreOverrides{VsockPath: moved}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Config().Vsock.Path != moved || r.Config().Vsock.GuestCID != 3 {
		t.Fatalf("restored vsock %+v", r.Config().Vsock)
	}
	if _, err := os.Stat(moved); err != nil {
		t.Fatalf("restored VM does not serve %s: %v", moved, err)
	}
	m.Stop()
	if exit := runToExit(t, r, 60*time.Second); exit.Kind != ExitGuestReset {
		t.Fatalf("restored VM: %v", exit)
	}
}
