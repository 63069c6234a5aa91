// Package profiles checks, merges and keeps the CPU profiles that guest
// agents ship for the function versions they run, and reads hardware
// hints from them: which optional instruction-set extensions a version's
// measured CPU time depends on.
//
// A profile comes from a hostile guest: Check bounds what it decompresses
// and parses, and refuses anything that is not a CPU profile of the
// version's own task binary. Nothing is merged or stored that Check has
// not passed. Merge is deterministic: the same profiles in any order give
// the same bytes.
//
// This package never runs or symbolizes a binary, and it keeps no
// package-level mutable state.
package profiles
