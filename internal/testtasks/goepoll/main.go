// Command goepoll uses epoll, timerfd and eventfd through x/sys/unix, and
// opens a vsock socket (the family a constant at the call).
package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

func main() {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	spec := unix.ItimerSpec{Value: unix.Timespec{Nsec: 1e6}}
	if err := unix.TimerfdSettime(tfd, 0, &spec, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, fd := range []int{tfd, efd} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	if vs, err := unix.Socket(unix.AF_VSOCK, unix.SOCK_STREAM, 0); err == nil {
		unix.Close(vs)
	}
	events := make([]unix.EpollEvent, 2)
	n, err := unix.EpollWait(ep, events, 1000)
	fmt.Println("events:", n, err)
}
