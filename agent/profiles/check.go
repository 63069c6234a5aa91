package profiles

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"

	"github.com/google/pprof/profile"
)

// Errors for refused profiles, each wrapped with the cause.
var (
	// ErrCorrupt: not a pprof profile at all, truncated, too large, or
	// inconsistent (it fails profile.CheckValid).
	ErrCorrupt = errors.New("corrupt profile")
	// ErrForeign: a valid pprof profile, but not a CPU profile of the
	// kind guest agents send (sample and period types, a mapping for the
	// task binary, some samples).
	ErrForeign = errors.New("not a task CPU profile")
	// ErrOtherBuild: a CPU profile of some other build than the
	// version's task binary.
	ErrOtherBuild = errors.New("wrong build")
)

// Size limits on what Check reads. A Go CPU profile at 100 Hz costs some
// tens of bytes per distinct stack: a busy task's profile of a minute is
// some hundreds of KiB, a version's profile merged over a day of
// invocations a few MiB. maxUncompressed leaves ten times that, and
// bounds the memory a parse takes: measured with the smallest possible
// samples (8 bytes each), the parsed profile holds about 24 bytes of heap
// per protobuf byte, so some 800 MiB at the limit. It is also the limit
// on a version's merged profile. maxCompressed bounds what is read at
// all; gzip bombs are stopped by maxUncompressed, as decompression goes
// through a limit.
const (
	maxCompressed   = 16 << 20
	maxUncompressed = 32 << 20
)

// maxTotal bounds each of a profile's totals (samples, CPU nanoseconds):
// 2^50 ns is some 13 CPU-days, far more than one upload covers, and small
// enough that merging thousands of them cannot overflow an int64.
const maxTotal = 1 << 50

// Expect is what a profile must be a profile of.
type Expect struct {
	// BuildID is the version's task binary's (internal/buildid.File),
	// which the profile's first mapping must carry.
	BuildID string
}

// The one kind of profile accepted: pprof's CPU profile as runtime/pprof
// and the guest sampler write it.
var (
	sampleTypes = []profile.ValueType{{Type: "samples", Unit: "count"}, {Type: "cpu", Unit: "nanoseconds"}}
	periodType  = profile.ValueType{Type: "cpu", Unit: "nanoseconds"}
)

// Value indexes in a checked profile's samples.
const (
	samplesValue = 0
	cpuValue     = 1
)

// Check parses data, a gzipped (or plain) pprof protobuf, and returns the
// profile if it is a CPU profile of the build e names. Errors wrap
// ErrCorrupt, ErrForeign or ErrOtherBuild, and name the cause.
func Check(data []byte, e Expect) (*profile.Profile, error) {
	p, err := decode(data, maxCompressed)
	if err != nil {
		return nil, err
	}
	if err := checkKind(p); err != nil {
		return nil, err
	}
	got := p.Mapping[0].BuildID
	switch {
	case e.BuildID == "":
		return nil, fmt.Errorf("%w: this version's task has no build ID to check the profile's (%s) against", ErrOtherBuild, orNone(got))
	case got != e.BuildID:
		return nil, fmt.Errorf("%w: profile of build %s, this version's task is build %s", ErrOtherBuild, orNone(got), e.BuildID)
	}
	return p, nil
}

func orNone(id string) string {
	if id == "" {
		return "(none)"
	}
	return id
}

// decode parses a pprof protobuf, gzipped or not, of at most maxData
// bytes and maxUncompressed decompressed, and checks it is consistent.
// Errors wrap ErrCorrupt.
func decode(data []byte, maxData int) (p *profile.Profile, err error) {
	switch {
	case len(data) == 0:
		return nil, fmt.Errorf("%w: empty", ErrCorrupt)
	case len(data) > maxData:
		return nil, fmt.Errorf("%w: %d bytes, more than the %d MiB a profile may be", ErrCorrupt, len(data), maxData>>20)
	}
	raw := data
	if len(data) >= 2 && data[0] == 0x1f && data[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("%w: gzip header: %v", ErrCorrupt, err)
		}
		raw, err = io.ReadAll(io.LimitReader(zr, maxUncompressed+1))
		switch {
		case err != nil:
			return nil, fmt.Errorf("%w: gzip: %v (truncated?)", ErrCorrupt, err)
		case len(raw) > maxUncompressed:
			return nil, fmt.Errorf("%w: decompresses to more than %d MiB", ErrCorrupt, maxUncompressed>>20)
		}
	}
	// The decoder checks its indexes, but this is guest input: a decoder
	// bug must refuse the profile, not take down kindlingd.
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fmt.Errorf("%w: the pprof decoder failed on it: %v", ErrCorrupt, r)
		}
	}()
	p, err = profile.ParseUncompressed(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: not a pprof protobuf: %v", ErrCorrupt, err)
	}
	if err := p.CheckValid(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return p, nil
}

// checkKind refuses a valid profile that is not a task CPU profile.
// Errors wrap ErrForeign.
func checkKind(p *profile.Profile) error {
	if !sameTypes(p.SampleType) {
		return fmt.Errorf("%w: sample types %s, want %s", ErrForeign, typesString(p.SampleType), typesString(ptrs(sampleTypes)))
	}
	if pt := p.PeriodType; pt == nil || pt.Type != periodType.Type || pt.Unit != periodType.Unit {
		return fmt.Errorf("%w: period type %s, want %s", ErrForeign, typesString([]*profile.ValueType{p.PeriodType}), typesString([]*profile.ValueType{&periodType}))
	}
	if len(p.Mapping) == 0 {
		return fmt.Errorf("%w: no mappings: it does not say which binary it profiled", ErrForeign)
	}
	var total [2]int64
	for _, s := range p.Sample {
		for i, v := range s.Value {
			if v < 0 {
				return fmt.Errorf("%w: negative sample value %d (a diff profile?)", ErrForeign, v)
			}
			if total[i] += min(v, maxTotal+1); total[i] > maxTotal {
				return fmt.Errorf("%w: %s add up to more than %d", ErrForeign, sampleTypes[i].Type, int64(maxTotal))
			}
		}
	}
	if total[samplesValue] == 0 {
		return fmt.Errorf("%w: no samples", ErrForeign)
	}
	return nil
}

func sameTypes(ts []*profile.ValueType) bool {
	if len(ts) != len(sampleTypes) {
		return false
	}
	for i, t := range ts {
		// Compare the exported fields: ValueType also holds encoder state.
		if t == nil || t.Type != sampleTypes[i].Type || t.Unit != sampleTypes[i].Unit {
			return false
		}
	}
	return true
}

func ptrs(ts []profile.ValueType) []*profile.ValueType {
	out := make([]*profile.ValueType, len(ts))
	for i := range ts {
		out[i] = &ts[i]
	}
	return out
}

func typesString(ts []*profile.ValueType) string {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, t := range ts {
		if i > 0 {
			b.WriteByte(' ')
		}
		if t == nil {
			b.WriteString("none")
			continue
		}
		fmt.Fprintf(&b, "%s/%s", t.Type, t.Unit)
	}
	b.WriteByte(']')
	return b.String()
}

// Totals are a checked profile's sample count and CPU nanoseconds.
func Totals(p *profile.Profile) (samples, cpuNs int64) {
	for _, s := range p.Sample {
		if len(s.Value) > cpuValue {
			samples += s.Value[samplesValue]
			cpuNs += s.Value[cpuValue]
		}
	}
	return samples, cpuNs
}
