package nodebig

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestWriteModuleTreeIsDeterministic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	for _, d := range []string{a, b} {
		if err := WriteModuleTree(d, 40); err != nil {
			t.Fatal(err)
		}
	}
	var files, size int
	filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		x, _ := os.ReadFile(p)
		y, err := os.ReadFile(filepath.Join(b, rel))
		if err != nil || !bytes.Equal(x, y) {
			t.Errorf("%s differs between two writes (%v)", rel, err)
		}
		files++
		size += len(x)
		return nil
	})
	if files != 2+2*40 || size < 40*3000 {
		t.Errorf("%d files, %d bytes", files, size)
	}
	if err := WriteModuleTree(t.TempDir(), 0); err == nil {
		t.Error("0 modules accepted")
	}
}

// The handler answers with every module counted (with the host's node,
// if it has one: the tree is plain CommonJS any node runs).
func TestHandlerAnswers(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("no node on PATH")
	}
	dir := t.TempDir()
	if err := WriteModuleTree(dir, 25); err != nil {
		t.Fatal(err)
	}
	run := func() Answer {
		out, err := exec.Command(node, "-e", `require(process.argv[1]).handler({seed: 7}).then((r) => console.log(JSON.stringify(r)))`, filepath.Join(dir, "index.js")).Output()
		if err != nil {
			t.Fatal(err)
		}
		var a Answer
		if err := json.Unmarshal(out, &a); err != nil {
			t.Fatalf("%q: %v", out, err)
		}
		return a
	}
	a, b := run(), run()
	if a.Modules != 25 || a.Checksum == "" || a != b {
		t.Errorf("answers %+v, %+v", a, b)
	}
}
