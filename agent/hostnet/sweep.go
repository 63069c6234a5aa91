package hostnet

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
)

// Sweep removes what dead sandboxes left after a crash: veths in the
// Host's namespace whose alias names a sandbox that live says is gone
// (and, as a crash between creating a veth and naming it leaves, veths
// named kl<slot> with no alias at all), with their NAT entries; and the
// namespace files at root/ID/netns, mounted or not, of every ID under
// root that live says is gone. It never reuses what it finds. It returns
// what it removed, for the log, and every error it met; it goes on past
// them.
//
// Run it before Setup (kindlingd: at start, after deciding which
// sandboxes survive, and before removing their directories: a mounted
// namespace file makes a directory unremovable). An empty root sweeps
// veths only.
func (h *Host) Sweep(root string, live func(id string) bool) ([]string, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var removed []string
	var errs []error
	err := inNS(h.ns, func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			a := l.Attrs()
			slot, ok := parseVethName(a.Name)
			if !ok || l.Type() != "veth" {
				continue
			}
			id, ours := strings.CutPrefix(a.Alias, aliasPrefix)
			switch {
			case ours && live(id):
				continue
			case !ours && a.Alias != "":
				continue // someone else's, named like ours: not for us to remove
			}
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete veth %s: %w", a.Name, err))
				continue
			}
			if err := flushConntrack(h.pool, slot); err != nil {
				errs = append(errs, err)
			}
			if ours {
				removed = append(removed, fmt.Sprintf("veth %s of sandbox %s", a.Name, id))
			} else {
				removed = append(removed, fmt.Sprintf("veth %s of an unnamed sandbox", a.Name))
			}
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	if root != "" {
		entries, err := os.ReadDir(root)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
		for _, e := range entries {
			if !e.IsDir() || live(e.Name()) {
				continue
			}
			path := filepath.Join(root, e.Name(), NetNSName)
			if _, err := os.Lstat(path); err != nil {
				continue
			}
			if err := removeNetNS(path); err != nil {
				errs = append(errs, err)
				continue
			}
			removed = append(removed, "network namespace "+path)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("hostnet: sweep: %w", err)
	}
	return removed, nil
}
