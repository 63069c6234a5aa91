/* A static C program that only writes and exits. */
#include <unistd.h>

int main(void) {
	static const char msg[] = "hello from C\n";
	write(1, msg, sizeof msg - 1);
	_exit(0);
}
