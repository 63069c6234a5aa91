/* AVX-512F intrinsics in main: the extension is required. */
#include <immintrin.h>
#include <stdio.h>

int main(int argc, char **argv) {
	float x[16], y[16];
	for (int i = 0; i < 16; i++)
		x[i] = (float)(i + argc);
	__m512 v = _mm512_loadu_ps(x);
	v = _mm512_add_ps(v, _mm512_set1_ps(1.5f));
	_mm512_storeu_ps(y, v);
	printf("%f\n", y[3]);
	return 0;
}
