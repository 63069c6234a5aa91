// Package testinit builds the initramfs of the Linux smoke test and the
// demo: a static /init (./init) that prints Message and reboots.
package testinit

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/kindlingvm/kindling/rootfs"
)

// Message is the line /init prints.
const Message = "KINDLING-INIT-OK: hello from a static /init"

// BuildInitramfs compiles /init with the go tool and packs it into
// dir/initramfs.cpio, whose path it returns.
func BuildInitramfs(dir string) (string, error) {
	initBin := filepath.Join(dir, "init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", initBin, "github.com/kindlingvm/kindling/internal/testinit/init")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build /init: %v\n%s", err, out)
	}
	f, err := rootfs.FileFromHost("init", initBin)
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := rootfs.WriteInitramfs(&buf, []rootfs.File{f}); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "initramfs.cpio")
	return p, os.WriteFile(p, buf.Bytes(), 0o644)
}
