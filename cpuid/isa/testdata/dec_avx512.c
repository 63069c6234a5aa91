#include <immintrin.h>
__m512i g1(__m512i a, __m512i b, __m512i c, const int *p) {
  __m512i x = _mm512_add_epi32(a, b);
  x = _mm512_add_epi16(x, b);
  x = _mm512_mullo_epi64(x, b);
  x = _mm512_conflict_epi32(x);
  x = _mm512_lzcnt_epi64(x);
  x = _mm512_permutexvar_epi8(x, a);
  x = _mm512_popcnt_epi32(x);
  x = _mm512_popcnt_epi8(x);
  x = _mm512_dpbusd_epi32(x, a, b);
  x = _mm512_madd52lo_epu64(x, a, b);
  x = _mm512_shldi_epi32(x, a, 3);
  x = _mm512_maskz_compress_epi8(0x5555555555555555ULL, x);
  x = _mm512_aesenc_epi128(x, b);
  x = _mm512_clmulepi64_epi128(x, b, 0x11);
  x = _mm512_gf2p8mul_epi8(x, c);
  x = _mm512_add_epi32(x, _mm512_loadu_si512(p + 48));
  x = _mm512_mask_blend_epi8(_mm512_cmpeq_epi8_mask(x, a), x, c);
  x = _mm512_add_epi32(x, _mm512_i32gather_epi32(a, p, 4));
  x = _mm512_inserti64x2(x, _mm512_extracti64x2_epi64(b, 2), 1);
  return _mm512_shuffle_epi8(x, c);
}
__m512 g2(__m512 a, __m512 b, __m512 c) {
  __m512 x = _mm512_add_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm512_fmadd_ps(x, b, c);
  x = _mm512_and_ps(x, c);
  return _mm512_add_ps(x, _mm512_castpd_ps(_mm512_cvtepi64_pd(_mm512_cvtps_epi64(_mm512_castps512_ps256(x)))));
}
__m256i g3(__m256i a, __m256i b, __mmask8 m, __mmask16 m16) {
  __m256i x = _mm256_mask_add_epi32(a, m, a, b);
  x = _mm256_mask_add_epi16(x, m16, x, b);
  x = _mm256_maskz_mullo_epi64(m, x, b);
  return _mm256_mask_permutexvar_epi32(x, m, a, x);
}
__m128 g4(__m128 a, __m128 b, __mmask8 m) { return _mm_mask_add_ss(a, m, a, b); }
__m512h g5(__m512h a, __m512h b) { return _mm512_add_ph(a, b); }
__m512bh g6(__m512 a, __m512 b) { return _mm512_cvtne2ps_pbh(a, b); }
unsigned long long g7(__m512i a, __m512i b) { return _cvtmask64_u64(_mm512_cmpeq_epi8_mask(a, b)) + _mm512_cmplt_epi32_mask(a, b); }
__m256i g8(__m256i a, __m256i b) { return _mm256_aesenc_epi128(a, b); }
