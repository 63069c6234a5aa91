// Command probe reports, as JSON on stdout, what a program sees from
// inside a jail; the jail tests run it there (static: CGO_ENABLED=0).
//
//	probe report [HOSTPATH...]   the report; HOSTPATHs are checked for visibility
//	probe wait                   make /run/ready, then wait for /run/release
//	probe exit                   exit at once (for timing the jail)
package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Report is what the probe saw.
type Report struct {
	UID, GID, EUID, EGID int
	Groups               []int
	PID, PPID            int
	Root                 []string        // entries of /
	Visible              map[string]bool // paths asked about, and /etc/passwd
	PIDs                 []int           // numeric entries of /proc; nil without /proc
	ProcEntries          int             // entries of /proc
	Interfaces           []Iface
	NoNewPrivs           string // /proc/self/status
	NoNewPrivsPrctl      int
	CapEff               string
	Seccomp              string
	Hostname             string
	FDs                  []int  // open descriptors at start
	RootWrite            string // error creating /x, "" if it worked
	RunWrite             string // error creating /run/probe, "" if it worked
	TmpWrite             string
	BindWrite            string // error writing into the read-only bind at /data
	Devices              map[string]string
	DeviceOpen           map[string]string // "" or the error opening it read-write
	Env                  []string
	Args                 []string
	NetNS                string // /proc/self/ns/net's target; "" without /proc
	TapAttach            string // "" or the error attaching to tap0 as a VMM does; "no tap0" without one
}

// Iface is a network interface.
type Iface struct {
	Name string
	Up   bool
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func main() {
	// Descriptors first, before this program opens any: probe each low
	// number, as /proc may be absent.
	var fds []int
	for fd := 0; fd < 64; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			fds = append(fds, fd)
		}
	}
	if len(os.Args) > 1 && os.Args[1] == "exit" {
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == "wait" {
		os.WriteFile("/run/ready", []byte(strconv.Itoa(os.Getpid())), 0o644)
		for {
			if _, err := os.Stat("/run/release"); err == nil {
				os.Exit(0)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	r := Report{UID: os.Getuid(), GID: os.Getgid(), EUID: os.Geteuid(), EGID: os.Getegid(), PID: os.Getpid(), PPID: os.Getppid(),
		FDs: fds, Visible: map[string]bool{}, Devices: map[string]string{}, DeviceOpen: map[string]string{}, Env: os.Environ(), Args: os.Args}
	r.Groups, _ = os.Getgroups()
	if es, err := os.ReadDir("/"); err == nil {
		for _, e := range es {
			r.Root = append(r.Root, e.Name())
		}
	}
	for _, p := range append([]string{"/etc/passwd"}, os.Args[min(2, len(os.Args)):]...) {
		_, err := os.Lstat(p)
		r.Visible[p] = err == nil
	}
	if es, err := os.ReadDir("/proc"); err == nil {
		r.ProcEntries = len(es)
		r.PIDs = []int{}
		for _, e := range es {
			if n, err := strconv.Atoi(e.Name()); err == nil {
				r.PIDs = append(r.PIDs, n)
			}
		}
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			r.Interfaces = append(r.Interfaces, Iface{Name: i.Name, Up: i.Flags&net.FlagUp != 0})
		}
	}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(l, ":")
			v = strings.TrimSpace(v)
			switch k {
			case "NoNewPrivs":
				r.NoNewPrivs = v
			case "CapEff":
				r.CapEff = v
			case "Seccomp":
				r.Seccomp = v
			}
		}
	}
	r.NetNS, _ = os.Readlink("/proc/self/ns/net")
	r.TapAttach = tapAttach("tap0")
	r.NoNewPrivsPrctl, _ = unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		r.Hostname = unix.ByteSliceToString(uts.Nodename[:])
	}
	r.RootWrite = errString(os.WriteFile("/x", nil, 0o644))
	r.RunWrite = errString(os.WriteFile("/run/probe", []byte("was here"), 0o644))
	r.TmpWrite = errString(os.WriteFile("/tmp/probe", nil, 0o644))
	r.BindWrite = errString(os.WriteFile("/data/new", nil, 0o644))
	filepath.Walk("/dev", func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		st := info.Sys().(*syscall.Stat_t)
		r.Devices[p] = strconv.Itoa(int(unix.Major(uint64(st.Rdev)))) + ":" + strconv.Itoa(int(unix.Minor(uint64(st.Rdev)))) +
			" " + strconv.Itoa(int(st.Uid)) + ":" + strconv.Itoa(int(st.Gid)) + " " + info.Mode().String()
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err == nil {
			f.Close()
		}
		r.DeviceOpen[p] = errString(err)
		return nil
	})
	sort.Strings(r.Root)
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		os.Exit(1)
	}
}

// tapAttach attaches to the tap called name as kindling-vmm does:
// TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR on /dev/net/tun.
func tapAttach(name string) string {
	if _, err := net.InterfaceByName(name); err != nil {
		return "no " + name
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return err.Error()
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err.Error()
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	return errString(unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr))
}
