package jail

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// What a jail adds to starting a program: the same static program run
// plainly, and in a jail (namespaces, root, binds, /dev/kvm, privilege
// drop), each to its exit. The jail directory is made and cleaned in the
// loop too, as a caller would.
func BenchmarkStart(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("skipping: jails need root")
	}
	prog, jb := probe(b), jailerBin(b)
	b.Run("plain", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := exec.Command(prog, "exit").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jailed", func(b *testing.B) {
		base := b.TempDir()
		for i := 0; i < b.N; i++ {
			dir := filepath.Join(base, "j")
			if err := os.Mkdir(dir, 0o700); err != nil {
				b.Fatal(err)
			}
			cmd, err := Command(jb, Spec{ID: "bench", Dir: dir, UID: UniqueID("bench"), GID: UniqueID("bench"),
				ReadOnly: []Bind{{Source: prog, Target: "/probe"}}, Devices: []string{"/dev/kvm"}, Argv: []string{"/probe", "exit"}})
			if err != nil {
				b.Fatal(err)
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("%v: %s", err, out)
			}
			if err := Clean(dir); err != nil {
				b.Fatal(err)
			}
		}
	})
}
