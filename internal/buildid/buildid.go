// Package buildid names a binary's build: the identity a profile's main
// mapping carries and kindlingd checks it against, so that a profile of
// one build is never merged into another's.
package buildid

import (
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
)

// ErrNone: the binary carries neither a GNU nor a Go build ID.
var ErrNone = errors.New("no build ID")

// File returns path's build ID: the GNU build ID (NT_GNU_BUILD_ID) in hex
// where the linker wrote one, else the Go build ID (the .note.go.buildid
// note: "actionID/contentID", which changes with any change to the
// binary's inputs).
func File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	ef, err := elf.NewFile(f)
	if err != nil {
		return "", fmt.Errorf("build ID of %s: %w", path, err)
	}
	return ELF(ef)
}

// ELF is File for an opened ELF file.
func ELF(ef *elf.File) (string, error) {
	var goID string
	for _, s := range ef.Sections {
		if s.Type != elf.SHT_NOTE {
			continue
		}
		data, err := s.Data()
		if err != nil {
			continue
		}
		for _, n := range notes(ef, data) {
			switch {
			case n.name == "GNU" && n.typ == 3: // NT_GNU_BUILD_ID
				return hex.EncodeToString(n.desc), nil
			case n.name == "Go" && n.typ == 4: // ELF_NOTE_GOBUILDID_TAG
				goID = strings.TrimRight(string(n.desc), "\x00")
			}
		}
	}
	if goID != "" {
		return goID, nil
	}
	return "", ErrNone
}

type note struct {
	name string
	typ  uint32
	desc []byte
}

// notes splits an SHT_NOTE section: namesz, descsz, type, then name and
// desc each padded to 4 bytes.
func notes(ef *elf.File, d []byte) []note {
	bo := ef.ByteOrder
	var out []note
	for len(d) >= 12 {
		nsz, dsz, typ := bo.Uint32(d[0:]), bo.Uint32(d[4:]), bo.Uint32(d[8:])
		d = d[12:]
		np, dp := (uint64(nsz)+3)&^3, (uint64(dsz)+3)&^3
		if uint64(len(d)) < np+uint64(dsz) {
			break
		}
		name := strings.TrimRight(string(d[:nsz]), "\x00")
		desc := d[np : np+uint64(dsz)]
		out = append(out, note{name, typ, desc})
		if uint64(len(d)) < np+dp {
			break
		}
		d = d[np+dp:]
	}
	return out
}
