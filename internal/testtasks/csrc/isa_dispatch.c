/* AVX2 only behind __builtin_cpu_supports: the extension is optional. */
#include <stdio.h>

#define N 4096
static int a[N], c[N];

__attribute__((target("avx2"), noinline)) static long sum_avx2(int k) {
	for (int i = 0; i < N; i++)
		c[i] = a[i] * k + (a[i] >> 3);
	long s = 0;
	for (int i = 0; i < N; i++)
		s += c[i];
	return s;
}

__attribute__((noinline)) static long sum_plain(int k) {
	long s = 0;
	for (int i = 0; i < N; i++)
		s += (long)a[i] * k;
	return s;
}

int main(int argc, char **argv) {
	for (int i = 0; i < N; i++)
		a[i] = i;
	__builtin_cpu_init();
	long s = __builtin_cpu_supports("avx2") ? sum_avx2(argc) : sum_plain(argc);
	printf("%ld\n", s);
	return 0;
}
