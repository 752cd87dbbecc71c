/* Writes a status byte to Ferry's exit port (0xf4): Ferry exits with it. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

#define FERRY_EXIT_PORT 0xf4

int main(int argc, char **argv)
{
    int status = argc > 1 ? atoi(argv[1]) : 0;

    if (ioperm(FERRY_EXIT_PORT, 1, 1) != 0) {
        perror("ferry-exit: ioperm");
        return 1;
    }
    outb((unsigned char)status, FERRY_EXIT_PORT);
    return 0;
}
