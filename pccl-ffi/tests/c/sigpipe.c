/* A write to a socket whose other end has gone raises SIGPIPE, which ends a C program
 * that left it at its default. A peer dying must cost an op, never the program: the
 * library ignores SIGPIPE from the first function a program calls (`pcclInit`, or a
 * master function without it), unless the program handles SIGPIPE itself.
 *
 * usage: sigpipe init|master|handler PORT
 *   init:    pcclInit, then a write to a closed socket fails with EPIPE;
 *   master:  pcclCreateMaster / pcclDestroyMaster without pcclInit, then the same;
 *   handler: the program's own handler, installed first, stays and runs.
 * Prints OK; dies of SIGPIPE (or exits 1) otherwise. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"

static volatile sig_atomic_t handled = 0;

static void on_pipe(int sig) {
    (void)sig;
    handled = 1;
}

/* errno of a one-byte write to a stream socket whose other end is closed. */
static int write_to_closed(void) {
    int sv[2];
    FAIL_IF(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0, "socketpair failed");
    close(sv[1]);
    ssize_t n = write(sv[0], "x", 1);
    int e = errno;
    close(sv[0]);
    FAIL_IF(n != -1, "a write to a closed socket succeeded");
    return e;
}

int main(int argc, char **argv) {
    FAIL_IF(argc != 3, "usage: sigpipe init|master|handler PORT");
    const char *mode = argv[1];
    struct sigaction now;
    if (strcmp(mode, "handler") == 0) {
        struct sigaction mine;
        memset(&mine, 0, sizeof mine);
        mine.sa_handler = on_pipe;
        sigemptyset(&mine.sa_mask);
        FAIL_IF(sigaction(SIGPIPE, &mine, NULL) != 0, "sigaction failed");
        CHECK(pcclInit());
        FAIL_IF(sigaction(SIGPIPE, NULL, &now) != 0 || now.sa_handler != on_pipe,
                "the program's SIGPIPE handler was replaced");
        FAIL_IF(write_to_closed() != EPIPE, "expected EPIPE");
        FAIL_IF(!handled, "the program's SIGPIPE handler did not run");
    } else {
        if (strcmp(mode, "init") == 0) {
            CHECK(pcclInit());
        } else {
            pcclMasterInstance_t *master = NULL;
            CHECK(pcclCreateMaster(loopback((unsigned)atoi(argv[2])), &master));
            CHECK(pcclDestroyMaster(master));
        }
        FAIL_IF(sigaction(SIGPIPE, NULL, &now) != 0 || now.sa_handler != SIG_IGN,
                "SIGPIPE is not ignored after %s", mode);
        FAIL_IF(write_to_closed() != EPIPE, "expected EPIPE");
    }
    printf("OK\n");
    return 0;
}
