package isa

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

func decHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// Byte sequences are from GNU as/objdump 2.40 (testdata/dec_tricky.s).
func TestDecodeTable(t *testing.T) {
	tests := []struct {
		name  string
		hex   string
		len   int
		exts  string // space-separated, sorted
		vex   bool
		evex  bool
		isErr bool
	}{
		{name: "vex2 vpaddd xmm", hex: "c5 f1 fe c2", len: 4, exts: "avx", vex: true},
		{name: "vex2 vpaddd ymm", hex: "c5 f5 fe c2", len: 4, exts: "avx avx2", vex: true},
		{name: "vex3 0F3A imm8", hex: "c4 e3 6d 0f cb 05", len: 6, exts: "avx avx2", vex: true},
		{name: "evex disp8", hex: "62 f1 6d 48 fe 48 01", len: 7, exts: "avx512f", evex: true},
		{name: "evex rip-relative", hex: "62 f1 7e 48 6f 0d 00 10 00 00", len: 10, exts: "avx512f", evex: true},
		{name: "vex sib base=101", hex: "c5 ed fe 0c ad 10 00 00 00", len: 9, exts: "avx avx2", vex: true},
		{name: "vzeroupper", hex: "c5 f8 77", len: 3, exts: "avx", vex: true},
		{name: "vzeroall", hex: "c5 fc 77", len: 3, exts: "avx", vex: true},
		{name: "67 before vex", hex: "67 c5 fe 6f 00", len: 5, exts: "avx", vex: true},
		{name: "fs before vex", hex: "64 c5 fe 6f 00", len: 5, exts: "avx", vex: true},
		{name: "fma", hex: "c4 e2 75 b8 c2", len: 5, exts: "avx fma", vex: true},
		{name: "shlx", hex: "c4 e2 f1 f7 c3", len: 5, exts: "bmi2", vex: true},
		{name: "andn", hex: "c4 e2 e0 f2 c1", len: 5, exts: "bmi1", vex: true},
		{name: "kmovq", hex: "c4 e1 fb 92 c8", len: 5, exts: "avx512bw avx512f", vex: true},
		{name: "kmovb", hex: "c5 f9 92 c8", len: 4, exts: "avx512dq avx512f", vex: true},
		{name: "kmovw mem", hex: "c5 f8 90 48 08", len: 5, exts: "avx512f", vex: true},
		{name: "evex rounding reg form", hex: "62 f1 74 19 58 c2", len: 6, exts: "avx512f", evex: true},
		{name: "vaddss vex", hex: "c5 f2 58 c2", len: 4, exts: "avx", vex: true},
		{name: "vaddss evex", hex: "62 e1 76 08 58 c2", len: 6, exts: "avx512f", evex: true},
		{name: "evex ymm masked", hex: "62 f1 6d 29 fe c3", len: 6, exts: "avx512f avx512vl", evex: true},
		{name: "evex sib disp8", hex: "62 f1 75 48 fe 44 d8 fe", len: 8, exts: "avx512f", evex: true},
		{name: "evex disp8*N", hex: "62 f1 fd 48 73 54 24 01 03", len: 9, exts: "avx512f", evex: true},
		{name: "vex W1 on WIG vpaddd ymm", hex: "c4 41 c5 fe 5e cd", len: 6, exts: "avx avx2", vex: true},
		{name: "evex W1 on WIG vpavgw", hex: "62 41 ad c4 e3 3a", len: 6, exts: "avx512bw avx512f", evex: true},
		{name: "evex L'L=1 on LIG vreducesh", hex: "62 f3 64 27 57 67 60 86", len: 8, exts: "avx512f avx512fp16", evex: true},
		{name: "vex L=1 on LIG vaddss", hex: "c5 f6 58 c2", len: 4, exts: "avx", vex: true},
		{name: "sha256rnds2", hex: "0f 38 cb ca", len: 4, exts: "sha"},
		{name: "adcx", hex: "66 48 0f 38 f6 c3", len: 6, exts: "adx"},
		{name: "rdseed", hex: "48 0f c7 f8", len: 4, exts: "rdseed"},
		{name: "rdpid", hex: "f3 0f c7 f8", len: 4, exts: "rdpid"},
		{name: "rdrand", hex: "0f c7 f0", len: 3, exts: "rdrand"},
		{name: "clwb", hex: "66 0f ae 30", len: 4, exts: "clwb"},
		{name: "clflushopt", hex: "66 0f ae 38", len: 4, exts: "clflushopt"},
		{name: "lzcnt", hex: "f3 48 0f bd c3", len: 5, exts: "lzcnt"},
		{name: "tzcnt", hex: "f3 48 0f bc c3", len: 5, exts: "bmi1"},
		{name: "bsr", hex: "48 0f bd c3", len: 4},
		{name: "popcnt", hex: "f3 48 0f b8 c3", len: 5, exts: "popcnt"},
		{name: "vpaddw zmm", hex: "62 f1 75 48 fd c2", len: 6, exts: "avx512bw avx512f", evex: true},
		{name: "vaes ymm", hex: "c4 e2 75 dc c2", len: 5, exts: "avx vaes", vex: true},
		{name: "vaesenc xmm", hex: "c4 e2 71 dc c2", len: 5, exts: "aes avx", vex: true},
		{name: "vaes zmm", hex: "62 f2 75 48 dc c2", len: 6, exts: "avx512f vaes", evex: true},
		{name: "vpdpbusd evex", hex: "62 f2 75 48 50 c2", len: 6, exts: "avx512f avx512vnni", evex: true},
		{name: "vpdpbusd vex", hex: "c4 e2 75 50 c2", len: 5, exts: "avx avx_vnni", vex: true},
		{name: "vpopcntb", hex: "62 f2 7d 48 54 c1", len: 6, exts: "avx512bitalg avx512f", evex: true},
		{name: "vaddph map5", hex: "62 f5 74 48 58 c2", len: 6, exts: "avx512f avx512fp16", evex: true},
		{name: "vaddsh map5", hex: "62 f5 76 08 58 c2", len: 6, exts: "avx512f avx512fp16", evex: true},
		{name: "vfmadd132sh map6", hex: "62 f6 75 08 99 c2", len: 6, exts: "avx512f avx512fp16", evex: true},
		{name: "vcvtsi2sh map5 scalar", hex: "62 c5 76 a9 2a a2 42 93 2a 3c", len: 10, exts: "avx512f avx512fp16", evex: true},
		{name: "vrcpsh map6 scalar", hex: "62 96 7d 29 4d 7e 09", len: 7, exts: "avx512f avx512fp16", evex: true},
		{name: "vmovhpd evex 128-only", hex: "62 d1 2d 8b 16 31", len: 6, exts: "avx512f", evex: true},
		{name: "evex vpclmulqdq xmm", hex: "62 b3 cd 08 44 56 ad d7", len: 8, exts: "avx512f avx512vl vpclmulqdq", evex: true},
		{name: "cmpbexadd (no listed ext)", hex: "c4 c2 c9 e6 9a 7e 05 d8 a0", len: 9, vex: true},
		{name: "data16 rex.w imm32", hex: "66 48 1d d3 b3 9e 13", len: 7},
		{name: "fwait+x87 joined", hex: "9b dd 7d fe", len: 4},
		{name: "movabs imm64", hex: "48 b8 88 77 66 55 44 33 22 11", len: 10},
		{name: "moffs64", hex: "a0 88 77 66 55 44 33 22 11", len: 9},
		{name: "gf2p8mulb", hex: "66 0f 38 cf c1", len: 5, exts: "gfni"},
		{name: "extrq imm", hex: "66 0f 78 c0 03 04", len: 6, exts: "sse4a"},
		{name: "xacquire lock add", hex: "f2 f0 01 00", len: 4, exts: "hle"},
		{name: "vpbroadcastd xmm", hex: "c4 e2 79 58 c1", len: 5, exts: "avx avx2", vex: true},
		{name: "vextracti128", hex: "c4 e3 7d 39 c8 01", len: 6, exts: "avx avx2", vex: true},
		{name: "vcvtph2ps", hex: "c4 e2 7d 13 c1", len: 5, exts: "avx f16c", vex: true},
		{name: "vpmullq", hex: "62 f2 f5 48 40 c2", len: 6, exts: "avx512dq avx512f", evex: true},
		{name: "vpermb", hex: "62 f2 75 48 8d c2", len: 6, exts: "avx512f avx512vbmi", evex: true},
		{name: "crc32", hex: "f2 0f 38 f0 00", len: 5, exts: "sse4_2"},
		{name: "xbegin", hex: "c7 f8 5e 00 00 00", len: 6, exts: "rtm"},
		{name: "mov cr0", hex: "0f 22 c0", len: 3},
		{name: "enter", hex: "c8 10 00 01", len: 4},
		{name: "test imm16", hex: "66 f7 00 01 00", len: 5},
		{name: "test rip imm32", hex: "f7 05 10 00 00 00 01 00 00 00", len: 10},
		{name: "not", hex: "48 f7 10", len: 3},
		{name: "pextrw sse4.1", hex: "66 0f 3a 15 00 01", len: 6, exts: "sse4_1"},
		{name: "pextrw sse2", hex: "66 0f c5 c0 01", len: 5},
		{name: "67 legacy", hex: "67 8b 04 48", len: 4},
		{name: "endbr64", hex: "f3 0f 1e fa", len: 4},

		{name: "REX before VEX", hex: "48 c5 f1 fe c2", isErr: true},
		{name: "66 before VEX", hex: "66 c5 f1 fe c2", isErr: true},
		{name: "F3 before EVEX", hex: "f3 62 f1 6d 48 fe c2", isErr: true},
		{name: "lock before VEX3", hex: "f0 c4 e2 75 b8 c2", isErr: true},
		{name: "evex P1.2 clear", hex: "62 f1 69 48 fe c2", isErr: true},
		{name: "evex P0.3 set", hex: "62 f9 6d 48 fe c2", isErr: true},
		{name: "evex map 4", hex: "62 f4 6d 48 fe c2", isErr: true},
		{name: "vex map 4", hex: "c4 e4 6d 0f cb 05", isErr: true},
		{name: "empty", hex: "", isErr: true},
		{name: "prefix only", hex: "66 48", isErr: true},
		{name: "truncated vex2", hex: "c5 f1 fe", isErr: true},
		{name: "truncated evex disp8", hex: "62 f1 6d 48 fe 48", isErr: true},
		{name: "truncated imm8", hex: "c4 e3 6d 0f cb", isErr: true},
		{name: "truncated 0F", hex: "0f", isErr: true},
		{name: "truncated imm64", hex: "48 b8 88 77 66 55", isErr: true},
		{name: "truncated sib", hex: "8b 04", isErr: true},
		{name: "invalid 06", hex: "06", isErr: true},
		{name: "max length", hex: "66 66 66 66 66 66 66 66 66 66 66 66 66 66 90", len: 15},
		{name: "too long", hex: "66 66 66 66 66 66 66 66 66 66 66 66 66 66 66 90", isErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in, err := Decode(decHex(t, tc.hex))
			if tc.isErr {
				if err == nil {
					t.Fatalf("Decode(%s) = %+v, want error", tc.hex, in)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode(%s): %v", tc.hex, err)
			}
			if in.Len != tc.len || strings.Join(in.Exts, " ") != tc.exts || in.VEX != tc.vex || in.EVEX != tc.evex {
				t.Errorf("Decode(%s) = {Len %d Exts %q Op %s VEX %v EVEX %v}, want Len %d Exts %q VEX %v EVEX %v",
					tc.hex, in.Len, in.Exts, in.Op, in.VEX, in.EVEX, tc.len, tc.exts, tc.vex, tc.evex)
			}
		})
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{"c5f1fec2", "c4e36d0fcb05", "62f16d48fe4801", "62f5744858c2", "f3480fbdc3",
		"48b88877665544332211", "c5f877", "670f38f0c0", "66f70001 00", "0f0fc0b4"} {
		f.Add(decHex(f, s))
	}
	f.Fuzz(func(t *testing.T, code []byte) {
		in, err := Decode(code)
		if err != nil {
			return
		}
		if in.Len < 1 || in.Len > decMaxLen || in.Len > len(code) {
			t.Fatalf("Decode(% x): Len %d out of range", code, in.Len)
		}
		if !slices.IsSorted(in.Exts) || len(slices.Compact(slices.Clone(in.Exts))) != len(in.Exts) {
			t.Fatalf("Decode(% x): Exts %q not sorted/unique", code, in.Exts)
		}
	})
}

// decODInsn is one instruction as objdump prints it.
type decODInsn struct {
	off  int
	raw  []byte
	text string // mnemonic and operands
}

// decODFunc is one symbol's code, rebuilt from objdump's raw bytes.
type decODFunc struct {
	name  string
	code  []byte
	insns []decODInsn
	bad   bool // objdump could not decode part of it
}

var (
	decODHeader = regexp.MustCompile(`^[0-9a-f]+ <(.*)>:$`)
	decODLine   = regexp.MustCompile(`^\s*[0-9a-f]+:\t([0-9a-f ]+)\t(.*)$`)
)

// decObjdump disassembles the .text of an object or executable.
func decObjdump(t *testing.T, path string) []decODFunc {
	t.Helper()
	out, err := exec.Command("objdump", "-d", "-w", "-z", "-M", "intel", "-j", ".text", path).Output()
	if err != nil {
		t.Fatalf("objdump %s: %v", path, err)
	}
	var funcs []decODFunc
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := decODHeader.FindStringSubmatch(line); m != nil {
			funcs = append(funcs, decODFunc{name: m[1]})
			continue
		}
		m := decODLine.FindStringSubmatch(line)
		if m == nil || len(funcs) == 0 {
			continue
		}
		f := &funcs[len(funcs)-1]
		raw, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(m[1]), " ", ""))
		if err != nil {
			t.Fatalf("objdump line %q: %v", line, err)
		}
		text := strings.TrimSpace(m[2])
		if strings.Contains(text, "(bad)") {
			f.bad = true
		}
		f.insns = append(f.insns, decODInsn{off: len(f.code), raw: raw, text: text})
		f.code = append(f.code, raw...)
	}
	return funcs
}

// decCheckBoundaries decodes every instruction objdump found and reports
// length and VEX/EVEX disagreements.
func decCheckBoundaries(t *testing.T, what string, funcs []decODFunc) (n, skipped int) {
	t.Helper()
	mismatches := 0
	for _, f := range funcs {
		if f.bad {
			skipped++
			continue
		}
		for _, od := range f.insns {
			n++
			in, err := Decode(f.code[od.off:])
			evex, vex := decRawEncoding(od.raw)
			if err == nil && in.Len == len(od.raw) && in.EVEX == evex && in.VEX == vex {
				continue
			}
			mismatches++
			if mismatches <= 25 {
				t.Errorf("%s %s+%#x: % x %q: got Len %d VEX %v EVEX %v Op %s err %v",
					what, f.name, od.off, od.raw, od.text, in.Len, in.VEX, in.EVEX, in.Op, err)
			}
		}
	}
	t.Logf("%s: %d instructions compared with objdump, %d mismatches, %d functions skipped for (bad)",
		what, n, mismatches, skipped)
	return n, skipped
}

// decRawEncoding tells VEX/EVEX from the raw bytes objdump printed.
func decRawEncoding(raw []byte) (evex, vex bool) {
	for _, b := range raw {
		switch b {
		case 0x67, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65:
			continue
		case 0x62:
			return true, false
		case 0xc4, 0xc5:
			return false, true
		}
		return false, false
	}
	return false, false
}

// decExpect gives the extensions an instruction should report, from
// objdump's mnemonic and operands alone.
func decExpect(text string, evex, vex bool) []string {
	fields := strings.Fields(text)
	var want []string
	hle := false
	for len(fields) > 0 {
		switch fields[0] {
		case "xacquire", "xrelease":
			hle = true
		case "lock", "rep", "repz", "repnz", "data16", "cs", "ds", "es", "fs", "gs", "ss", "addr32", "notrack", "bnd", "{vex}", "{evex}":
		default:
			goto done
		}
		fields = fields[1:]
	}
done:
	if len(fields) == 0 {
		return nil
	}
	mn := fields[0]
	ops := strings.Join(fields[1:], " ")
	if hle {
		want = append(want, "hle")
	}
	has := func(s string) bool { return strings.Contains(ops, s) }
	hasPrefix := func(ps ...string) bool {
		for _, p := range ps {
			if strings.HasPrefix(mn, p) {
				return true
			}
		}
		return false
	}
	in := func(list string) bool { return slices.Contains(strings.Fields(list), mn) }
	switch {
	case in("andn bextr blsi blsr blsmsk"):
		return append(want, "bmi1")
	case in("bzhi pdep pext mulx rorx sarx shlx shrx"):
		return append(want, "bmi2")
	case vex && strings.HasPrefix(mn, "k"):
		want = append(want, "avx512f")
		switch {
		case in("kaddw ktestw") || strings.HasSuffix(mn, "b") && mn != "kunpckbw":
			want = append(want, "avx512dq")
		case strings.HasSuffix(mn, "d") || strings.HasSuffix(mn, "q"):
			want = append(want, "avx512bw")
		}
	case vex:
		want = append(want, "avx")
		ymm := has("ymm")
		switch {
		case hasPrefix("vfmadd", "vfmsub", "vfnmadd", "vfnmsub"):
			want = append(want, "fma")
		case in("vcvtph2ps vcvtps2ph"):
			want = append(want, "f16c")
		case hasPrefix("vaes") && ymm:
			want = append(want, "vaes")
		case hasPrefix("vaes"):
			want = append(want, "aes")
		case hasPrefix("vpclmul") && ymm:
			want = append(want, "vpclmulqdq")
		case hasPrefix("vpclmul"):
			want = append(want, "pclmulqdq")
		case hasPrefix("vgf2p8"):
			want = append(want, "gfni")
		case in("vpdpbusd vpdpbusds vpdpwssd vpdpwssds"):
			want = append(want, "avx_vnni")
		case hasPrefix("vpbroadcast", "vpgather", "vgather", "vpmaskmov", "vpsllv", "vpsrlv", "vpsrav") ||
			in("vpermd vpermq vpermps vpermpd vperm2i128 vinserti128 vextracti128 vpblendd vbroadcasti128"):
			want = append(want, "avx2")
		case in("vbroadcastss vbroadcastsd") && !has("PTR"):
			want = append(want, "avx2")
		case ymm && (hasPrefix("vp") && !in("vpermilps vpermilpd vperm2f128 vptest") || in("vmpsadbw vmovntdqa")):
			want = append(want, "avx2")
		}
	case evex:
		want = append(want, "avx512f")
		scalar := !hasPrefix("vp") && (strings.HasSuffix(mn, "ss") || strings.HasSuffix(mn, "sd") || strings.HasSuffix(mn, "sh") ||
			strings.Contains(mn, "si")) ||
			in("vmovd vmovq vmovw vpextrb vpextrw vpextrd vpextrq vpinsrb vpinsrw vpinsrd vpinsrq vextractps vinsertps "+
				"vmovhps vmovlps vmovhpd vmovlpd vmovhlps vmovlhps")
		if !has("zmm") && !scalar && !has("sae}") {
			want = append(want, "avx512vl")
		}
		bw := "vpabsb vpabsw vpacksswb vpackssdw vpackuswb vpackusdw vpaddb vpaddw vpaddsb vpaddsw vpaddusb vpaddusw " +
			"vpalignr vpavgb vpavgw vpblendmb vpblendmw vpbroadcastb vpbroadcastw vpcmpeqb vpcmpeqw vpcmpgtb vpcmpgtw " +
			"vdbpsadbw vmovdqu8 vmovdqu16 vpermw vpermi2w vpermt2w vpextrb vpextrw vpinsrb vpinsrw vpmaddubsw vpmaddwd " +
			"vpmaxsb vpmaxsw vpmaxub vpmaxuw vpminsb vpminsw vpminub vpminuw vpmovb2m vpmovw2m vpmovm2b vpmovm2w " +
			"vpmovswb vpmovuswb vpmovwb vpmovsxbw vpmovzxbw vpmulhrsw vpmulhuw vpmulhw vpmullw vpsadbw vpshufb " +
			"vpshufhw vpshuflw vpslldq vpsrldq vpsllvw vpsravw vpsrlvw vpsllw vpsraw vpsrlw vpsubb vpsubw vpsubsb " +
			"vpsubsw vpsubusb vpsubusw vptestmb vptestmw vptestnmb vptestnmw vpunpckhbw vpunpckhwd vpunpcklbw vpunpcklwd"
		switch {
		case in(bw):
			want = append(want, "avx512bw")
		case hasPrefix("vpcmp") && !hasPrefix("vpcmpeq", "vpcmpgt") && (strings.HasSuffix(mn, "b") || strings.HasSuffix(mn, "w")):
			want = append(want, "avx512bw") // vpcmp[u]{b,w} and their predicate aliases
		case in("vpmullq vandps vandpd vandnps vandnpd vorps vorpd vxorps vxorpd vcvtps2qq vcvtpd2qq vcvtqq2pd vcvtqq2ps " +
			"vcvtuqq2ps vcvtuqq2pd vcvttps2qq vextracti64x2 vextractf64x2 vinserti64x2 vinsertf64x2 vextracti32x8 " +
			"vinserti32x8 vpmovm2d vpmovm2q vpmovd2m vpmovq2m vfpclassps vfpclasspd vrangeps vrangepd vrangess vrangesd " +
			"vreduceps vreducepd vreducess vreducesd vbroadcasti32x2 vpextrd vpextrq vpinsrd vpinsrq"):
			want = append(want, "avx512dq")
		case in("vpconflictd vpconflictq vplzcntd vplzcntq vpbroadcastmb2q vpbroadcastmw2d"):
			want = append(want, "avx512cd")
		case in("vpermb vpermi2b vpermt2b vpmultishiftqb"):
			want = append(want, "avx512vbmi")
		case hasPrefix("vpshld", "vpshrd") || in("vpcompressb vpcompressw vpexpandb vpexpandw"):
			want = append(want, "avx512vbmi2")
		case in("vpdpbusd vpdpbusds vpdpwssd vpdpwssds"):
			want = append(want, "avx512vnni")
		case in("vpopcntb vpopcntw vpshufbitqmb"):
			want = append(want, "avx512bitalg")
		case in("vpopcntd vpopcntq"):
			want = append(want, "avx512vpopcntdq")
		case in("vpmadd52luq vpmadd52huq"):
			want = append(want, "avx512ifma")
		case in("vcvtne2ps2bf16 vcvtneps2bf16 vdpbf16ps"):
			want = append(want, "avx512bf16")
		case hasPrefix("vaes"):
			want = append(want, "vaes")
		case hasPrefix("vpclmul"):
			want = append(want, "vpclmulqdq")
		case hasPrefix("vgf2p8"):
			want = append(want, "gfni")
		case (strings.HasSuffix(mn, "ph") || strings.HasSuffix(mn, "sh") || strings.Contains(mn, "ph2") ||
			strings.Contains(mn, "2ph")) && !in("vcvtps2ph vcvtph2ps") || mn == "vmovw":
			want = append(want, "avx512fp16")
		}
	default:
		if e := decLegacyWant[mn]; e != "" {
			want = append(want, e)
		}
		if mn == "pextrw" && has("PTR") {
			want = append(want, "sse4_1")
		}
	}
	sort.Strings(want)
	return want
}

// decLegacyWant lists, in objdump's spelling, the legacy mnemonics the
// test corpora contain that need an extension.
var decLegacyWant = func() map[string]string {
	m := map[string]string{}
	for ext, list := range map[string]string{
		"sha":        "sha1rnds4 sha1nexte sha1msg1 sha1msg2 sha256rnds2 sha256msg1 sha256msg2",
		"aes":        "aesenc aesenclast aesdec aesdeclast aesimc aeskeygenassist",
		"pclmulqdq":  "pclmulqdq pclmullqlqdq pclmullqhqdq pclmulhqlqdq pclmulhqhqdq",
		"ssse3":      "pshufb palignr pmaddubsw phaddd phaddw pabsb pabsw pabsd psignb pmulhrsw",
		"sse4_1":     "pblendvb ptest pmaxsd pminsd pmaxud pminud pmovzxbw pmovsxbw pmovzxwd roundps roundss roundsd pextrd pextrq pextrb pinsrd pinsrq pinsrb pmulld pcmpeqq packusdw blendps blendvps insertps extractps",
		"sse4_2":     "crc32 pcmpestri pcmpistri pcmpgtq",
		"sse3":       "haddps haddpd lddqu movshdup movsldup movddup fisttp addsubps",
		"gfni":       "gf2p8mulb gf2p8affineqb",
		"sse4a":      "extrq insertq movntsd movntss",
		"popcnt":     "popcnt",
		"lzcnt":      "lzcnt",
		"bmi1":       "tzcnt",
		"movbe":      "movbe",
		"adx":        "adcx adox",
		"lahf_lm":    "lahf sahf",
		"rdrand":     "rdrand",
		"rdseed":     "rdseed",
		"rdpid":      "rdpid",
		"rdtscp":     "rdtscp",
		"xsave":      "xgetbv xsave xsaveopt xrstor xsavec",
		"rtm":        "xbegin xend xabort xtest",
		"fsgsbase":   "rdfsbase wrgsbase",
		"clwb":       "clwb",
		"clflushopt": "clflushopt",
		"prefetchw":  "prefetchw",
		"cx16":       "cmpxchg16b",
	} {
		for _, mn := range strings.Fields(list) {
			m[mn] = ext
		}
	}
	return m
}()

// decCheckExts compares Exts with decExpect for every instruction.
func decCheckExts(t *testing.T, what string, funcs []decODFunc) {
	t.Helper()
	n, bad := 0, 0
	seen := map[string]bool{}
	for _, f := range funcs {
		if f.bad {
			continue
		}
		for _, od := range f.insns {
			in, err := Decode(f.code[od.off:])
			if err != nil {
				continue // reported by decCheckBoundaries
			}
			evex, vex := decRawEncoding(od.raw)
			want := decExpect(od.text, evex, vex)
			n++
			seen[strings.Join(in.Exts, "+")] = true
			if !slices.Equal(in.Exts, want) {
				bad++
				t.Errorf("%s %s: % x %q: Exts %q (Op %s), want %q", what, f.name, od.raw, od.text, in.Exts, in.Op, want)
			}
		}
	}
	var sets []string
	for s := range seen {
		sets = append(sets, s)
	}
	sort.Strings(sets)
	t.Logf("%s: %d instructions' Exts checked, %d wrong; ext sets seen: %q", what, n, bad, sets)
}

func TestDecodeGCC(t *testing.T) {
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed: skipping the comparison with real compiler output")
	}
	if _, err := exec.LookPath("objdump"); err != nil {
		t.Skip("objdump (GNU binutils) not installed: skipping the comparison with real compiler output")
	}
	dir := t.TempDir()
	builds := []struct {
		src   string
		flags []string
	}{
		{"dec_avx2.c", []string{"-O2", "-mavx2", "-mfma", "-mbmi", "-mbmi2", "-mlzcnt", "-mpopcnt", "-mf16c", "-mmovbe"}},
		{"dec_avx2.c", []string{"-O3", "-march=haswell"}},
		{"dec_avx512.c", []string{"-O2", "-march=sapphirerapids", "-mavx512vbmi2", "-mgfni", "-mvaes", "-mvpclmulqdq"}},
		{"dec_avx512.c", []string{"-O3", "-march=sapphirerapids", "-mavx512vbmi2", "-mgfni", "-mvaes", "-mvpclmulqdq", "-mprefer-vector-width=512"}},
		{"dec_legacy.c", []string{"-O2", "-msha", "-maes", "-mpclmul", "-msse4.2", "-mgfni", "-mrdrnd", "-mrdseed", "-mrtm", "-mxsave",
			"-mfsgsbase", "-mrdpid", "-mclflushopt", "-mclwb", "-mprfchw", "-mcx16", "-mmovbe", "-msse4a"}},
		{"dec_tricky.s", nil},
	}
	for i, b := range builds {
		src, err := filepath.Abs(filepath.Join("testdata", b.src))
		if err != nil {
			t.Fatal(err)
		}
		obj := filepath.Join(dir, strconv.Itoa(i)+".o")
		args := append(append([]string{"-c", "-w"}, b.flags...), "-o", obj, src)
		if out, err := exec.Command("gcc", args...).CombinedOutput(); err != nil {
			t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		funcs := decObjdump(t, obj)
		what := b.src + " " + strings.Join(b.flags, " ")
		if n, _ := decCheckBoundaries(t, what, funcs); n == 0 {
			t.Errorf("%s: objdump printed no instructions", what)
		}
		decCheckExts(t, what, funcs)
	}
}

// TestDecodeGoBinary checks instruction boundaries over all of a Go
// binary's .text: the runtime and crypto packages carry hand-written
// AVX2 and AVX-512 assembly.
func TestDecodeGoBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Go program")
	}
	if _, err := exec.LookPath("objdump"); err != nil {
		t.Skip("objdump (GNU binutils) not installed")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not in PATH")
	}
	dir := t.TempDir()
	prog := `package main

import (
	"bytes"
	"crypto/aes"
	"crypto/sha256"
	"crypto/sha512"
	"fmt"
	"hash/crc32"
	"math/big"
	"os"
	"strings"
)

func main() {
	b, _ := aes.NewCipher(make([]byte, 16))
	fmt.Println(sha256.Sum256(nil), sha512.Sum512(nil), crc32.ChecksumIEEE(nil), b.BlockSize(),
		bytes.Index([]byte(os.Args[0]), []byte("x")), strings.Count(os.Args[0], "a"), new(big.Int).Exp(big.NewInt(3), big.NewInt(99), nil))
}
`
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module dectest\n\ngo 1.26\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "prog")
	cmd := exec.Command(goTool, "build", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOAMD64=v3", "GOOS=linux", "GOARCH=amd64", "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	funcs := decObjdump(t, bin)
	n, _ := decCheckBoundaries(t, "go binary (GOAMD64=v3)", funcs)
	if n < 10000 {
		t.Errorf("only %d instructions in the Go binary's .text", n)
	}
	// Everything VEX/EVEX that objdump names should report some extension.
	counts := map[string]int{}
	for _, f := range funcs {
		if f.bad {
			continue
		}
		for _, od := range f.insns {
			in, err := Decode(f.code[od.off:])
			if err != nil {
				continue
			}
			for _, e := range in.Exts {
				counts[e]++
			}
			if (in.VEX || in.EVEX) && len(in.Exts) == 0 {
				t.Errorf("%s: % x %q: VEX/EVEX with no extension (Op %s)", f.name, od.raw, od.text, in.Op)
			}
		}
	}
	t.Logf("go binary extension counts: %v", counts)
}
