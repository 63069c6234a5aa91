#include <immintrin.h>
#include <x86intrin.h>
#include <stdint.h>
__m128i h1(__m128i a, __m128i b, __m128i c) {
  a = _mm_sha256rnds2_epu32(a, b, c);
  a = _mm_sha256msg1_epu32(a, b);
  a = _mm_sha256msg2_epu32(a, b);
  a = _mm_sha1rnds4_epu32(a, b, 1);
  a = _mm_sha1nexte_epu32(a, b);
  a = _mm_sha1msg1_epu32(a, b);
  a = _mm_sha1msg2_epu32(a, b);
  a = _mm_aesenc_si128(a, b);
  a = _mm_aesenclast_si128(a, b);
  a = _mm_aesdec_si128(a, b);
  a = _mm_aesdeclast_si128(a, b);
  a = _mm_aesimc_si128(a);
  a = _mm_aeskeygenassist_si128(a, 3);
  a = _mm_clmulepi64_si128(a, b, 0x10);
  a = _mm_shuffle_epi8(a, b);
  a = _mm_alignr_epi8(a, b, 3);
  a = _mm_blendv_epi8(a, b, c);
  a = _mm_max_epi32(a, b);
  a = _mm_cvtepu8_epi16(a);
  a = _mm_insert_epi32(a, _mm_extract_epi32(b, 2), 1);
  a = _mm_cmpgt_epi64(a, b);
  a = _mm_gf2p8mul_epi8(a, b);
  a = _mm_mullo_epi32(a, _mm_lddqu_si128(&c));
  return _mm_add_epi32(a, _mm_set1_epi32(_mm_cmpestri(a, 3, b, 5, 0) + _mm_testz_si128(a, b)));
}
__m128 h2(__m128 a, __m128 b) { return _mm_round_ps(_mm_hadd_ps(a, _mm_movehdup_ps(b)), 1); }
uint32_t h3(uint32_t c, const uint8_t *p, uint64_t v) { return _mm_crc32_u8(c, *p) + _mm_crc32_u64(c, v); }
unsigned long long h4(void) {
  unsigned long long r = 0, s; unsigned int aux;
  _rdrand64_step(&s); r += s;
  _rdseed64_step(&s); r += s;
  r += __rdtscp(&aux) + aux;
  r += _xgetbv(0);
  r += _readfsbase_u64();
  r += _rdpid_u32();
  return r;
}
int h5(int *p) {
  unsigned s = _xbegin();
  if (s == _XBEGIN_STARTED) { if (_xtest()) _xabort(3); _xend(); return 1; }
  _mm_clflushopt(p); _mm_clwb(p + 16);
  __builtin_prefetch(p + 32, 1);
  return (int)s;
}
int h6(__int128 *p, __int128 o, __int128 n) { return __sync_bool_compare_and_swap(p, o, n); }
uint64_t h7(uint64_t a, uint64_t b, uint64_t *out) {
  uint64_t r;
  __asm__("adcx %2, %0\n\tadox %2, %0\n\tlahf\n\tsahf" : "=r"(r) : "0"(a), "r"(b) : "rax", "cc");
  *out = __builtin_bswap64(b);
  return r;
}
int h8(long double x) { return (int)x; }
__m128i h9(__m128i a, __m128i b) { return _mm_insert_si64(_mm_extract_si64(a, b), b); }
void h10(double *p, double v) { _mm_stream_sd(p, _mm_set_sd(v)); }
