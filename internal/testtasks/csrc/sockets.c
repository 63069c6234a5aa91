/* A dynamically linked C program that uses TCP/IP and Unix sockets. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int main(void) {
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons(8080);
	if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 16) < 0) {
		perror("listen");
		return 1;
	}
	int u = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un ua;
	memset(&ua, 0, sizeof ua);
	ua.sun_family = AF_UNIX;
	strcpy(ua.sun_path, "/tmp/kindling-test.sock");
	connect(u, (struct sockaddr *)&ua, sizeof ua);
	int c = accept(s, NULL, NULL);
	char buf[64];
	ssize_t n = recv(c, buf, sizeof buf, 0);
	if (n > 0)
		send(c, buf, (size_t)n, 0);
	printf("served %zd bytes\n", n);
	close(c);
	close(u);
	close(s);
	return 0;
}
