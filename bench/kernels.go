package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/kindlingvm/kindling/internal/testtasks"
	"github.com/kindlingvm/kindling/kernelbuilder"
	"github.com/kindlingvm/kindling/rootfs"
)

// firecrackerY is the number of =y options in Firecracker's x86-64 guest
// config (resources/guest_configs/microvm-kernel-ci-x86_64-6.1.config), as
// counted in the kernel-builder issue; it is not installed here to count.
const firecrackerY = 1238

const debianCloudConfig = "/usr/src/linux-config-6.12/config.amd64_none_cloud-amd64.xz"

// kernelTable builds the per-task kernel of three tasks and prints their
// size against Firecracker's and Debian's cloud configurations. The hello
// image is bzImage + a zstd initramfs holding the task (the target
// is 4 MB).
func kernelTable(w io.Writer) error {
	dir, err := os.MkdirTemp("", "kindling-kernels-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kernel\tsyscalls\toptions asked\t=y\tvmlinux MiB\tbzImage MiB\timage MiB\tbuild\t")
	for _, name := range []string{testtasks.GoHello, testtasks.GoHTTP, testtasks.CSockets} {
		bin, err := testtasks.Build(dir, name)
		if err != nil {
			return err
		}
		plan, err := kernelbuilder.PlanFiles(bin)
		if err != nil {
			return err
		}
		// The stock (unpatched) kernel: what a real KVM host runs.
		art, err := kernelbuilder.Build(context.Background(), plan.Spec(false), kernelbuilder.BuildOptions{Progress: os.Stderr})
		if err != nil {
			return err
		}
		y, err := countY(art.Config)
		if err != nil {
			return err
		}
		image, err := imageSize(dir, bin, art.BzImage)
		if err != nil {
			return err
		}
		build := "n/a"
		if art.BuildTime > 0 {
			build = art.BuildTime.String()
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.2f\t%.2f\t%.2f\t%s\t\n", name, len(plan.Reports[0].Syscalls), len(plan.Why), y,
			mib(fileSize(art.Vmlinux)), mib(fileSize(art.BzImage)), mib(image), build)
	}
	fmt.Fprintf(tw, "firecracker guest (6.1)\t\t\t%d\t\t\t\t\t\n", firecrackerY)
	if y, err := countY(debianCloudConfig); err == nil {
		fmt.Fprintf(tw, "debian cloud-amd64 (6.12)\t\t\t%d\t\t\t\t\t\n", y)
	} else {
		fmt.Fprintf(tw, "debian cloud-amd64\t\t\tn/a (%v)\t\t\t\t\t\n", err)
	}
	return tw.Flush()
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func fileSize(p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return st.Size()
}

// countY counts =y lines of a .config, xz-compressed or not.
func countY(p string) (int, error) {
	var data []byte
	var err error
	if strings.HasSuffix(p, ".xz") {
		data, err = exec.Command("xz", "-dc", p).Output()
	} else {
		data, err = os.ReadFile(p)
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", p, err)
	}
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, "CONFIG_") && strings.HasSuffix(l, "=y") {
			n++
		}
	}
	return n, nil
}

// imageSize is the bytes a task image needs: the bzImage plus an
// initramfs holding the task as /init, compressed with zstd -19.
func imageSize(dir, bin, bzImage string) (int64, error) {
	f, err := rootfs.FileFromHost("init", bin)
	if err != nil {
		return 0, err
	}
	cpio := filepath.Join(dir, filepath.Base(bin)+".cpio")
	out, err := os.Create(cpio)
	if err != nil {
		return 0, err
	}
	err = rootfs.WriteInitramfs(out, []rootfs.File{f})
	out.Close()
	if err != nil {
		return 0, err
	}
	if o, err := exec.Command("zstd", "-q", "-f", "-19", cpio, "-o", cpio+".zst").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("zstd: %v %s", err, o)
	}
	return fileSize(bzImage) + fileSize(cpio+".zst"), nil
}
