// Command init is the /init of the Linux smoke test: it prints one line on
// the console and reboots, which with reboot=k ends the VM cleanly. Built
// static (CGO_ENABLED=0), so the initramfs needs nothing else.
package main

import (
	"os"
	"syscall"

	"github.com/kindlingvm/kindling/internal/testinit"
)

func main() {
	if c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		c.WriteString(testinit.Message + "\n")
		c.Close()
	}
	syscall.Sync()
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
	select {}
}
