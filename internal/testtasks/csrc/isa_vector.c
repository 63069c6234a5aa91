/* A loop gcc vectorises with whatever -m flags allow: built with -mavx2
 * it uses AVX2 in main, with no CPU-feature check in front of it. */
#include <stdio.h>
#include <stdlib.h>

#define N 4096
static int a[N], b[N], c[N];

int main(int argc, char **argv) {
	int k = argc > 1 ? atoi(argv[1]) : 3;
	for (int i = 0; i < N; i++) {
		a[i] = i * k;
		b[i] = i ^ k;
	}
	for (int i = 0; i < N; i++)
		c[i] = a[i] * b[i] + (a[i] >> 3);
	long s = 0;
	for (int i = 0; i < N; i++)
		s += c[i];
	printf("%ld\n", s);
	return 0;
}
