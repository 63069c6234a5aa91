package isa

import "strings"

// Extension classification. Legacy instructions go by x86asm's mnemonic,
// plus a few decoded here from the bytes because x86asm does not know them.
// VEX/EVEX instructions go by opcode where the SDM groups them cheaply (GPR
// BMI ops, mask ops, FMA, F16C) and otherwise by x86asm's mnemonic (its AVX
// tables come from Intel XED).

// legSpecial classifies legacy instructions that x86asm v0.32 does not
// decode. It returns their name, or "" to fall back to x86asm.
func legSpecial(code []byte, mapID int, op byte, p decPrefixes, modrmPos int, mod, reg byte, exts *decExtSet) string {
	pp := p.pp()
	switch mapID {
	case decMap0F:
		switch op {
		case 0xC7: // group 9
			if mod != 3 {
				return ""
			}
			switch {
			case reg == 7 && pp == decPPF3:
				exts.add("rdpid")
				return "RDPID"
			case reg == 7 && pp != decPPF2:
				exts.add("rdseed")
				return "RDSEED"
			case reg == 6 && pp != decPPF2 && pp != decPPF3:
				exts.add("rdrand")
				return "RDRAND"
			}
		case 0xAE: // group 15
			if mod != 3 && pp == decPP66 {
				switch reg {
				case 6:
					exts.add("clwb")
					return "CLWB"
				case 7:
					exts.add("clflushopt")
					return "CLFLUSHOPT"
				}
			}
			if mod == 3 && pp == decPPF3 && reg < 4 {
				exts.add("fsgsbase")
				return [...]string{"RDFSBASE", "RDGSBASE", "WRFSBASE", "WRGSBASE"}[reg]
			}
		case 0x78, 0x79:
			switch pp {
			case decPP66:
				exts.add("sse4a")
				return "EXTRQ"
			case decPPF2:
				exts.add("sse4a")
				return "INSERTQ"
			}
		case 0x0D:
			if reg == 1 {
				exts.add("prefetchw")
				return "PREFETCHW"
			}
		case 0x01:
			if modrmPos >= 0 && modrmPos < len(code) {
				switch code[modrmPos] {
				case 0xD0, 0xD1:
					exts.add("xsave")
					return [...]string{"XGETBV", "XSETBV"}[code[modrmPos]&1]
				case 0xD5, 0xD6:
					exts.add("rtm")
					return [...]string{"XEND", "XTEST"}[code[modrmPos]-0xD5]
				case 0xF9:
					exts.add("rdtscp")
					return "RDTSCP"
				}
			}
		}
	case decMap0F38:
		switch {
		case op >= 0xC8 && op <= 0xCD && pp == decPPNone:
			exts.add("sha")
			return [...]string{"SHA1NEXTE", "SHA1MSG1", "SHA1MSG2", "SHA256RNDS2", "SHA256MSG1", "SHA256MSG2"}[op-0xC8]
		case op == 0xCF && pp == decPP66:
			exts.add("gfni")
			return "GF2P8MULB"
		case op == 0xF6 && pp == decPP66:
			exts.add("adx")
			return "ADCX"
		case op == 0xF6 && pp == decPPF3:
			exts.add("adx")
			return "ADOX"
		}
	case decMap0F3A:
		switch {
		case op == 0xCC && pp == decPPNone:
			exts.add("sha")
			return "SHA1RNDS4"
		case (op == 0xCE || op == 0xCF) && pp == decPP66:
			exts.add("gfni")
			return [...]string{"GF2P8AFFINEQB", "GF2P8AFFINEINVQB"}[op-0xCE]
		case op == 0x15 && pp == decPP66:
			// x86asm calls both this and SSE2's 66 0F C5 PEXTRW.
			exts.add("sse4_1")
			return "PEXTRW"
		}
	}
	return ""
}

// legOpExt maps x86asm legacy mnemonics to extensions. Baseline (x87, MMX,
// SSE, SSE2, CMOV, CX8, FXSR) and system instructions are absent.
var legOpExt = legBuildOpExt()

func legBuildOpExt() map[string]string {
	m := map[string]string{}
	add := func(ext, ops string) {
		for _, op := range strings.Fields(ops) {
			m[op] = ext
		}
	}
	add("sse3", "ADDSUBPD ADDSUBPS HADDPD HADDPS HSUBPD HSUBPS LDDQU MOVDDUP MOVSHDUP MOVSLDUP FISTTP")
	add("ssse3", "PSHUFB PALIGNR PHADDW PHADDD PHADDSW PHSUBW PHSUBD PHSUBSW PMADDUBSW PMULHRSW PSIGNB PSIGNW PSIGND PABSB PABSW PABSD")
	add("sse4_1", "PBLENDVB PBLENDW BLENDPS BLENDPD BLENDVPS BLENDVPD PTEST PMINSB PMINSD PMINUW PMINUD PMAXSB PMAXSD PMAXUW PMAXUD "+
		"PMOVSXBW PMOVSXBD PMOVSXBQ PMOVSXWD PMOVSXWQ PMOVSXDQ PMOVZXBW PMOVZXBD PMOVZXBQ PMOVZXWD PMOVZXWQ PMOVZXDQ "+
		"ROUNDPS ROUNDPD ROUNDSS ROUNDSD INSERTPS EXTRACTPS PEXTRB PEXTRD PEXTRQ PINSRB PINSRD PINSRQ DPPS DPPD MPSADBW "+
		"PACKUSDW PCMPEQQ PMULDQ PMULLD PHMINPOSUW MOVNTDQA")
	add("sse4_2", "PCMPESTRI PCMPESTRM PCMPISTRI PCMPISTRM PCMPGTQ CRC32")
	add("sse4a", "EXTRQ INSERTQ MOVNTSD MOVNTSS")
	add("popcnt", "POPCNT")
	add("lzcnt", "LZCNT")
	add("bmi1", "TZCNT")
	add("cx16", "CMPXCHG16B")
	add("lahf_lm", "LAHF SAHF")
	add("movbe", "MOVBE")
	add("aes", "AESENC AESENCLAST AESDEC AESDECLAST AESIMC AESKEYGENASSIST")
	add("pclmulqdq", "PCLMULQDQ")
	add("sha", "SHA1RNDS4 SHA1NEXTE SHA1MSG1 SHA1MSG2 SHA256RNDS2 SHA256MSG1 SHA256MSG2")
	add("rdrand", "RDRAND")
	add("xsave", "XSAVE XSAVE64 XSAVEC XSAVEC64 XSAVEOPT XSAVEOPT64 XSAVES XSAVES64 XRSTOR XRSTOR64 XRSTORS XRSTORS64 XGETBV XSETBV")
	add("rtm", "XBEGIN XEND XABORT XTEST")
	add("rdtscp", "RDTSCP")
	add("fsgsbase", "RDFSBASE RDGSBASE WRFSBASE WRGSBASE")
	add("prefetchw", "PREFETCHW")
	return m
}

func legExtsByOp(name string, exts *decExtSet) {
	if e, ok := legOpExt[name]; ok {
		exts.add(e)
	}
}

// vexExts classifies a VEX instruction.
func vexExts(f vexFields, name string, exts *decExtSet) {
	// GPR instructions (BMI1/BMI2) are VEX-encoded but need no AVX.
	if e := vexGPRExt(f); e != "" {
		if e != "-" {
			exts.add(e)
		}
		return
	}
	// Mask-register instructions (VEX map 0F 41-4B, 90-93, 98-99).
	if f.mapID == decMap0F && (f.op >= 0x41 && f.op <= 0x4B || f.op >= 0x90 && f.op <= 0x93 || f.op == 0x98 || f.op == 0x99) {
		exts.add("avx512f")
		if e := vexMaskExt(name); e != "" {
			exts.add(e)
		}
		return
	}
	exts.add("avx")
	switch {
	case f.mapID == decMap0F38 && f.pp == decPP66 && (f.op >= 0x96 && f.op <= 0x9F || f.op >= 0xA6 && f.op <= 0xAF || f.op >= 0xB6 && f.op <= 0xBF):
		exts.add("fma")
		return
	case f.mapID == decMap0F38 && f.op == 0x13 && f.pp == decPP66, f.mapID == decMap0F3A && f.op == 0x1D && f.pp == decPP66:
		exts.add("f16c")
		return
	}
	switch {
	case strings.HasPrefix(name, "VAES"):
		if f.l == 1 {
			exts.add("vaes")
		} else {
			exts.add("aes")
		}
		return
	case name == "VPCLMULQDQ":
		if f.l == 1 {
			exts.add("vpclmulqdq")
		} else {
			exts.add("pclmulqdq")
		}
		return
	case strings.HasPrefix(name, "VGF2P8"):
		exts.add("gfni")
		return
	case name == "VPDPBUSD" || name == "VPDPBUSDS" || name == "VPDPWSSD" || name == "VPDPWSSDS":
		exts.add("avx_vnni")
		return
	case strings.HasPrefix(name, "VPDP") || strings.HasPrefix(name, "VPMADD52") || strings.HasPrefix(name, "VSHA512") ||
		strings.HasPrefix(name, "VSM3") || strings.HasPrefix(name, "VSM4") || strings.Contains(name, "BF16") || strings.Contains(name, "NEE") ||
		strings.Contains(name, "NEO") || name == "VBCSTNESH2PS":
		// AVX-VNNI-INT8/INT16, AVX-IFMA, SHA512, SM3/SM4, AVX-NE-CONVERT:
		// no name in our list, so only avx.
		return
	}
	if vexAVX2Only[name] || (name == "VBROADCASTSS" || name == "VBROADCASTSD") && f.mod == 3 {
		exts.add("avx2")
		return
	}
	// 256-bit integer forms are AVX2; the float-ish VP* ones stay AVX.
	if f.l == 1 && (strings.HasPrefix(name, "VP") && !vexAVXOnlyVP[name] || name == "VMPSADBW" || name == "VMOVNTDQA") {
		exts.add("avx2")
	}
}

// vexAVX2Only lists AVX2 instructions that exist at 128 bits too.
var vexAVX2Only = decSet("VPBROADCASTB VPBROADCASTW VPBROADCASTD VPBROADCASTQ VBROADCASTI128 VPERMD VPERMQ VPERMPS VPERMPD " +
	"VPERM2I128 VINSERTI128 VEXTRACTI128 VPMASKMOVD VPMASKMOVQ VPSLLVD VPSLLVQ VPSRLVD VPSRLVQ VPSRAVD " +
	"VPGATHERDD VPGATHERDQ VPGATHERQD VPGATHERQQ VGATHERDPS VGATHERDPD VGATHERQPS VGATHERQPD VPBLENDD")

// vexAVXOnlyVP lists VP-prefixed VEX.256 instructions that AVX1 has.
var vexAVXOnlyVP = decSet("VPERMILPS VPERMILPD VPERM2F128 VPTEST VPCLMULQDQ")

func decSet(s string) map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(s) {
		m[w] = true
	}
	return m
}

// vexGPRExt classifies the VEX-encoded GPR instructions by opcode. It
// returns "-" for GPR instructions with no extension in our list.
func vexGPRExt(f vexFields) string {
	switch {
	case f.mapID == decMap0F38 && f.pp == decPP66 && f.op >= 0xE0 && f.op <= 0xEF && f.mod != 3: // CMPccXADD
		return "-"
	case f.mapID == decMap0F3A && f.op == 0xF0 && f.pp == decPPF2: // RORX
		return "bmi2"
	case f.mapID != decMap0F38:
		return ""
	}
	switch f.op {
	case 0xF2: // ANDN
		if f.pp == decPPNone {
			return "bmi1"
		}
	case 0xF3: // BLSR/BLSMSK/BLSI
		if f.pp == decPPNone && f.reg >= 1 && f.reg <= 3 {
			return "bmi1"
		}
	case 0xF5: // BZHI, PEXT, PDEP
		if f.pp != decPP66 {
			return "bmi2"
		}
	case 0xF6: // MULX
		if f.pp == decPPF2 {
			return "bmi2"
		}
	case 0xF7: // BEXTR; SHLX, SARX, SHRX
		if f.pp == decPPNone {
			return "bmi1"
		}
		return "bmi2"
	}
	return ""
}

// vexMaskExt gives the extension beyond AVX512F of a K* instruction: byte
// forms are DQ, dword/qword forms BW, and KADDW/KTESTW are DQ too.
func vexMaskExt(name string) string {
	switch {
	case name == "KADDW" || name == "KTESTW":
		return "avx512dq"
	case name == "KUNPCKBW":
		return ""
	case name == "KUNPCKWD" || name == "KUNPCKDQ":
		return "avx512bw"
	case strings.HasSuffix(name, "B"):
		return "avx512dq"
	case strings.HasSuffix(name, "D") || strings.HasSuffix(name, "Q"):
		return "avx512bw"
	}
	return ""
}

// evexExts classifies an EVEX instruction. Everything needs AVX512F;
// which other AVX-512 subsets go by mnemonic.
func evexExts(f vexFields, name string, exts *decExtSet) {
	exts.add("avx512f")
	scalar := evexNoVL(name)
	if f.mapID == decMap5 || f.mapID == decMap6 {
		// x86asm has no FP16 maps; the scalar (LIG) ones are listed here
		// from the SDM.
		exts.add("avx512fp16")
		scalar = evexFP16Scalar(f)
	}
	// With b=1 on a register form, L'L is rounding control and the
	// vector length is 512.
	if f.l < 2 && !scalar && !(f.b && f.mod == 3) {
		exts.add("avx512vl")
	}
	if e, ok := evexOpExt[name]; ok {
		exts.add(e)
		return
	}
	switch {
	case strings.HasPrefix(name, "VAES"):
		exts.add("vaes")
	case name == "VPCLMULQDQ":
		exts.add("vpclmulqdq")
	case strings.HasPrefix(name, "VGF2P8"):
		exts.add("gfni")
	case (strings.HasSuffix(name, "PH") || strings.HasSuffix(name, "SH")) && name != "VCVTPS2PH":
		exts.add("avx512fp16") // the FP16 ops in map 0F3A
	}
}

// evexNoVL reports whether an EVEX mnemonic is scalar or 128-bit only and
// so needs no AVX512VL at L'L<2.
func evexNoVL(name string) bool {
	switch {
	case name == "":
		return false
	case evexLIG[name]:
		return true
	case strings.HasPrefix(name, "VP"):
		return false
	case strings.HasSuffix(name, "SS") || strings.HasSuffix(name, "SD") || strings.HasSuffix(name, "SH"):
		return true
	case strings.HasSuffix(name, "2SI") || strings.HasSuffix(name, "2USI"):
		return true
	}
	return false
}

var evexLIG = decSet("VMOVD VMOVQ VPEXTRB VPEXTRW VPEXTRW_C5 VPEXTRD VPEXTRQ VPINSRB VPINSRW VPINSRD VPINSRQ " +
	"VEXTRACTPS VINSERTPS VMOVHPS VMOVLPS VMOVHPD VMOVLPD VMOVHLPS VMOVLHPS")

// evexOpExt maps EVEX mnemonics to their AVX-512 subset beyond AVX512F.
var evexOpExt = evexBuildOpExt()

func evexBuildOpExt() map[string]string {
	m := map[string]string{}
	add := func(ext, ops string) {
		for _, op := range strings.Fields(ops) {
			m[op] = ext
		}
	}
	add("avx512bw", "VPABSB VPABSW VPACKSSDW VPACKSSWB VPACKUSDW VPACKUSWB VPADDB VPADDW VPADDSB VPADDSW VPADDUSB VPADDUSW "+
		"VPALIGNR VPAVGB VPAVGW VPBLENDMB VPBLENDMW VPBROADCASTB VPBROADCASTW VPCMPB VPCMPUB VPCMPW VPCMPUW "+
		"VPCMPEQB VPCMPEQW VPCMPGTB VPCMPGTW VDBPSADBW VMOVDQU8 VMOVDQU16 VPERMW VPERMI2W VPERMT2W "+
		"VPEXTRB VPEXTRW VPEXTRW_C5 VPINSRB VPINSRW VPMADDUBSW VPMADDWD VPMAXSB VPMAXSW VPMAXUB VPMAXUW "+
		"VPMINSB VPMINSW VPMINUB VPMINUW VPMOVB2M VPMOVW2M VPMOVM2B VPMOVM2W VPMOVSWB VPMOVUSWB VPMOVWB "+
		"VPMOVSXBW VPMOVZXBW VPMULHRSW VPMULHUW VPMULHW VPMULLW VPSADBW VPSHUFB VPSHUFHW VPSHUFLW "+
		"VPSLLDQ VPSRLDQ VPSLLVW VPSRAVW VPSRLVW VPSLLW VPSRAW VPSRLW VPSUBB VPSUBW VPSUBSB VPSUBSW "+
		"VPSUBUSB VPSUBUSW VPTESTMB VPTESTMW VPTESTNMB VPTESTNMW VPUNPCKHBW VPUNPCKHWD VPUNPCKLBW VPUNPCKLWD")
	add("avx512dq", "VANDPS VANDPD VANDNPS VANDNPD VORPS VORPD VXORPS VXORPD VBROADCASTF32X2 VBROADCASTI32X2 "+
		"VBROADCASTF32X8 VBROADCASTI32X8 VBROADCASTF64X2 VBROADCASTI64X2 VCVTPD2QQ VCVTPD2UQQ VCVTPS2QQ VCVTPS2UQQ "+
		"VCVTQQ2PD VCVTQQ2PS VCVTTPD2QQ VCVTTPD2UQQ VCVTTPS2QQ VCVTTPS2UQQ VCVTUQQ2PD VCVTUQQ2PS "+
		"VEXTRACTF32X8 VEXTRACTF64X2 VEXTRACTI32X8 VEXTRACTI64X2 VINSERTF32X8 VINSERTF64X2 VINSERTI32X8 VINSERTI64X2 "+
		"VFPCLASSPD VFPCLASSPS VFPCLASSSD VFPCLASSSS VPEXTRD VPEXTRQ VPINSRD VPINSRQ VPMOVD2M VPMOVQ2M VPMOVM2D VPMOVM2Q "+
		"VPMULLQ VRANGEPD VRANGEPS VRANGESD VRANGESS VREDUCEPD VREDUCEPS VREDUCESD VREDUCESS")
	add("avx512cd", "VPCONFLICTD VPCONFLICTQ VPLZCNTD VPLZCNTQ VPBROADCASTMB2Q VPBROADCASTMW2D")
	add("avx512vbmi", "VPERMB VPERMI2B VPERMT2B VPMULTISHIFTQB")
	add("avx512vbmi2", "VPCOMPRESSB VPCOMPRESSW VPEXPANDB VPEXPANDW VPSHLDW VPSHLDD VPSHLDQ VPSHLDVW VPSHLDVD VPSHLDVQ "+
		"VPSHRDW VPSHRDD VPSHRDQ VPSHRDVW VPSHRDVD VPSHRDVQ")
	add("avx512vnni", "VPDPBUSD VPDPBUSDS VPDPWSSD VPDPWSSDS")
	add("avx512bitalg", "VPOPCNTB VPOPCNTW VPSHUFBITQMB")
	add("avx512vpopcntdq", "VPOPCNTD VPOPCNTQ")
	add("avx512ifma", "VPMADD52LUQ VPMADD52HUQ")
	add("avx512bf16", "VCVTNE2PS2BF16 VCVTNEPS2BF16 VDPBF16PS")
	return m
}

// evexFP16Scalar reports whether an EVEX map 5/6 instruction is one of the
// AVX512-FP16 scalar (or 128-bit-only VMOVW) forms, per the SDM.
func evexFP16Scalar(f vexFields) bool {
	op := f.op
	if f.mapID == decMap5 {
		switch f.pp {
		case decPPF3: // VMOVSH, VCVT(T)SH2(U)SI, VCVT(U)SI2SH, arithmetic SH, VCVTSH2SD
			switch op {
			case 0x10, 0x11, 0x2A, 0x2C, 0x2D, 0x51, 0x58, 0x59, 0x5A, 0x5C, 0x5D, 0x5E, 0x5F, 0x78, 0x79, 0x7B:
				return true
			}
		case decPPF2: // VCVTSD2SH
			return op == 0x5A
		case decPPNone: // VCVTSS2SH, VUCOMISH, VCOMISH
			return op == 0x1D || op == 0x2E || op == 0x2F
		case decPP66: // VMOVW
			return op == 0x6E || op == 0x7E
		}
		return false
	}
	switch f.pp {
	case decPP66: // VSCALEFSH, VGETEXPSH, VRCPSH, VRSQRTSH, FMA *SH (odd opcodes)
		return op == 0x2D || op == 0x43 || op == 0x4D || op == 0x4F || op >= 0x99 && op <= 0xBF && op&1 == 1
	case decPPNone: // VCVTSH2SS
		return op == 0x13
	default: // VF[C]MADDCSH, VF[C]MULCSH
		return op == 0x57 || op == 0xD7
	}
}
