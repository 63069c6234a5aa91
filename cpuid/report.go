package cpuid

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// TemplateStatus is what one built-in template comes to on a host.
type TemplateStatus struct {
	Name string `json:"name"`
	// Offered: the host can run it; Missing says what it lacks otherwise.
	Offered    bool     `json:"offered"`
	Missing    []string `json:"missing,omitempty"`
	Extensions int      `json:"extensions"` // ISA extensions the guest sees
	XCR0       string   `json:"xcr0"`
	XSaveSize  uint32   `json:"xsave_size"`
}

// Statuses applies every built-in template to host.
func Statuses(host Table) []TemplateStatus {
	var out []TemplateStatus
	for _, name := range append([]string{HostName}, BuiltinNames()...) {
		t, _ := Builtin(name)
		st := TemplateStatus{Name: name}
		table, err := t.Apply(host)
		var ue *UnavailableError
		switch {
		case errors.As(err, &ue):
			st.Missing = ue.Missing
		case err != nil:
			st.Missing = []string{err.Error()}
		default:
			st.Offered = true
			n := Normalize(table, 0, 1)
			user, _ := n.XCR0()
			st.Extensions = isaCount(n)
			st.XCR0 = fmt.Sprintf("%#x", user)
			st.XSaveSize = n.XSaveSize(user)
		}
		out = append(out, st)
	}
	return out
}

// WriteStatuses prints Statuses as a table.
func WriteStatuses(w io.Writer, sts []TemplateStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TEMPLATE\tOFFERED\tEXTENSIONS\tXCR0\tXSAVE BYTES\t")
	for _, s := range sts {
		if s.Offered {
			fmt.Fprintf(tw, "%s\tyes\t%d\t%s\t%d\t\n", s.Name, s.Extensions, s.XCR0, s.XSaveSize)
		} else {
			fmt.Fprintf(tw, "%s\tno\t-\t-\t-\tlacks %s\n", s.Name, strings.Join(s.Missing, ", "))
		}
	}
	tw.Flush()
}

// WriteFeatures prints the named features a table sets, grouped by kind.
func WriteFeatures(w io.Writer, t Table) {
	var isa, sys []string
	for i := range features {
		f := &features[i]
		if !t.Has(f) {
			continue
		}
		if f.Kind == ISA {
			isa = append(isa, f.Name)
		} else {
			sys = append(sys, f.Name)
		}
	}
	user, super := t.XCR0()
	fmt.Fprintf(w, "instruction-set extensions (%d): %s\n", len(isa), strings.Join(isa, " "))
	fmt.Fprintf(w, "system features (%d): %s\n", len(sys), strings.Join(sys, " "))
	fmt.Fprintf(w, "XSAVE components: user %#x, supervisor %#x; area %d bytes\n", user, super, t.XSaveSize(user))
}

// WriteDiff prints the features two tables disagree on, and their XSAVE
// state.
func WriteDiff(w io.Writer, nameA, nameB string, a, b Table) {
	d := Diff(a, b)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "FEATURE\t%s\t%s\n", nameA, nameB)
	yes := func(v bool) string {
		if v {
			return "yes"
		}
		return "-"
	}
	for _, f := range d {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Feature, yes(f.InA), yes(f.InB))
	}
	ua, _ := a.XCR0()
	ub, _ := b.XCR0()
	fmt.Fprintf(tw, "XCR0\t%#x\t%#x\n", ua, ub)
	fmt.Fprintf(tw, "XSAVE bytes\t%d\t%d\n", a.XSaveSize(ua), b.XSaveSize(ub))
	tw.Flush()
	if len(d) == 0 {
		fmt.Fprintf(w, "%s and %s expose the same features on this host\n", nameA, nameB)
	}
}

// WriteRaw prints every entry of a table, one leaf and subleaf per line.
func WriteRaw(w io.Writer, t Table) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "LEAF\tSUBLEAF\tEAX\tEBX\tECX\tEDX")
	for _, e := range t {
		sub := "-"
		if e.Flags&FlagSignificantIndex != 0 {
			sub = fmt.Sprint(e.Subleaf)
		}
		fmt.Fprintf(tw, "0x%08x\t%s\t%08x\t%08x\t%08x\t%08x\n", uint32(e.Leaf), sub, uint32(e.EAX), uint32(e.EBX), uint32(e.ECX), uint32(e.EDX))
	}
	tw.Flush()
}
