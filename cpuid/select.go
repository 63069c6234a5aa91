package cpuid

import (
	"errors"
	"fmt"
	"strings"
)

// Choice is the template picked for a task on a host.
type Choice struct {
	Template *Template
	// Offers are the features the guest will see (before per-vCPU
	// normalisation).
	Offers []string
	// HiddenOptional are optional extensions the task could use that the
	// template hides: their runtime-dispatched paths take the fallback.
	HiddenOptional []string
	// Considered says, per built-in template, why it was or was not taken.
	Considered []string
}

// ErrNoTemplate: no built-in template gives the task what it requires on
// this host.
var ErrNoTemplate = errors.New("no CPU template fits")

// Select picks the built-in template that offers the fewest instruction-set
// extensions while covering every required one, on a host whose KVM
// supports the table host. It refuses, naming the missing extensions,
// when none does.
func Select(host Table, required, optional []string) (*Choice, error) {
	var best *Choice
	bestScore := -1
	var considered []string
	for _, name := range BuiltinNames() {
		t, _ := Builtin(name)
		table, err := t.Apply(host)
		var ue *UnavailableError
		if errors.As(err, &ue) {
			considered = append(considered, fmt.Sprintf("%s: this host lacks %s", name, strings.Join(ue.Missing, ", ")))
			continue
		} else if err != nil {
			return nil, err
		}
		if lack := absent(table, required); len(lack) > 0 {
			considered = append(considered, fmt.Sprintf("%s: hides %s", name, strings.Join(lack, ", ")))
			continue
		}
		score := isaCount(table)
		considered = append(considered, fmt.Sprintf("%s: fits, %d extensions", name, score))
		if best == nil || score < bestScore {
			best = &Choice{Template: t, Offers: table.Features(), HiddenOptional: absent(table, optional)}
			bestScore = score
		}
	}
	if best != nil {
		best.Considered = considered
		return best, nil
	}
	if lack := absent(host, required); len(lack) > 0 {
		return nil, fmt.Errorf("%w: the task requires %s, which this host's KVM does not offer; run it on a host that has them (kindling cpu show lists this host's)",
			ErrNoTemplate, strings.Join(lack, ", "))
	}
	return nil, fmt.Errorf("%w: every built-in template hides something the task requires (%s); use --cpu-template host or a custom template",
		ErrNoTemplate, strings.Join(considered, "; "))
}

// absent lists the names in want that t does not offer. Unknown names
// count as absent: nothing can promise them.
func absent(t Table, want []string) []string {
	var out []string
	for _, n := range want {
		if f := Lookup(n); f == nil || !t.Has(f) {
			out = append(out, n)
		}
	}
	return out
}

func isaCount(t Table) int {
	n := 0
	for i := range features {
		if features[i].Kind == ISA && t.Has(&features[i]) {
			n++
		}
	}
	return n
}
