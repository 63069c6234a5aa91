#include <immintrin.h>
#include <stdint.h>
__m256i f1(__m256i a, __m256i b, const int *p, __m256i idx) {
  __m256i x = _mm256_add_epi32(a, b);
  x = _mm256_shuffle_epi8(x, b);
  x = _mm256_permutevar8x32_epi32(x, idx);
  x = _mm256_add_epi32(x, _mm256_i32gather_epi32(p, idx, 4));
  x = _mm256_add_epi32(x, _mm256_broadcastd_epi32(_mm256_castsi256_si128(a)));
  x = _mm256_blend_epi32(x, a, 0x55);
  x = _mm256_sllv_epi32(x, b);
  x = _mm256_add_epi32(x, _mm256_maskload_epi32(p + 8, b));
  x = _mm256_permute2x128_si256(x, a, 0x21);
  x = _mm256_inserti128_si256(x, _mm256_extracti128_si256(b, 1), 0);
  x = _mm256_add_epi64(x, _mm256_permute4x64_epi64(x, 0x1b));
  return _mm256_add_epi32(x, _mm256_loadu_si256((const __m256i *)(p + 17)));
}
__m256 f2(__m256 a, __m256 b, __m256 c, __m128i h) {
  __m256 x = _mm256_fmadd_ps(a, b, c);
  x = _mm256_fmsub_ps(x, b, _mm256_cvtph_ps(h));
  x = _mm256_add_ps(x, a);
  return x;
}
__m128i f3(__m256 a) { return _mm256_cvtps_ph(a, 0); }
float f4(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
uint64_t f5(uint64_t a, uint64_t b, unsigned c) {
  unsigned long long hi;
  uint64_t r = _pdep_u64(a, b) ^ _pext_u64(a, b) ^ _bzhi_u64(a, c) ^ _mulx_u64(a, b, &hi);
  r ^= _andn_u64(a, b) ^ _bextr_u64(a, c, 4) ^ _blsr_u64(a) ^ _blsi_u64(b) ^ _blsmsk_u64(a);
  r ^= _tzcnt_u64(a) ^ _lzcnt_u64(b) ^ _mm_popcnt_u64(a ^ b);
  r ^= (a << (c & 63)) ^ (b >> (c & 63)) ^ ((int64_t)a >> (c & 63));
  r ^= (a >> 13) | (a << 51);
  return r + hi;
}
uint32_t f6(const uint32_t *p) { return __builtin_bswap32(*p); }
