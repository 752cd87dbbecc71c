/*
 * ferry-udp: UDP through the guest's network card, for the networking
 * tests (busybox's nc has no UDP).
 *
 *   ferry-udp ping ADDR PORT   send "ping", print `udp-reply=TEXT` (10 s)
 *   ferry-udp recv PORT        print the first datagram to PORT as
 *                              `udp-got=TEXT` (60 s)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int wait_for(int fd, int seconds, const char *label)
{
    struct timeval tv = { .tv_sec = seconds };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[512];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
    if (n < 0) {
        perror("ferry-udp: recv");
        return 1;
    }
    buf[n] = 0;
    printf("%s=%s\n", label, buf);
    return 0;
}

int main(int argc, char **argv)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET };
    if (fd < 0) {
        perror("ferry-udp: socket");
        return 1;
    }
    if (argc == 4 && !strcmp(argv[1], "ping")) {
        sa.sin_port = htons(atoi(argv[3]));
        if (inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
            fprintf(stderr, "ferry-udp: %s: not an address\n", argv[2]);
            return 2;
        }
        if (sendto(fd, "ping", 4, 0, (struct sockaddr *)&sa, sizeof(sa)) != 4) {
            perror("ferry-udp: send");
            return 1;
        }
        return wait_for(fd, 10, "udp-reply");
    }
    if (argc == 3 && !strcmp(argv[1], "recv")) {
        sa.sin_port = htons(atoi(argv[2]));
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa))) {
            perror("ferry-udp: bind");
            return 1;
        }
        printf("udp-listening\n");
        fflush(stdout);
        return wait_for(fd, 60, "udp-got");
    }
    fprintf(stderr, "usage: ferry-udp ping ADDR PORT | recv PORT\n");
    return 2;
}
