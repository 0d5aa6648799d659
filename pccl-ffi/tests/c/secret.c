/*
 * The run-secret extensions (SECURITY.md §6) from C.
 *
 * usage: secret args MASTER_PORT
 *   The setters' argument checks (no master needed; connects nowhere): NULL handles and
 *   strings, secrets too short or too long, encryption without a secret, and a refused
 *   setting leaving the previous ones in place. What the environment holds
 *   (PCCL_RUN_SECRET, ...) is taken as given: the harness runs this with a clean one.
 * usage: secret env-refused
 *   With a bad PCCL_RUN_SECRET* / PCCL_ENCRYPT in the environment (the harness sets it),
 *   pcclCreateCommunicator and pcclCreateMaster both fail with pcclInvalidArgument.
 * usage: secret refused MASTER_PORT SECRET
 *   A peer with SECRET ("-": none) connects to the master on MASTER_PORT and must get
 *   pcclMasterConnectionFailed; prints "REFUSED <milliseconds>".
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <time.h>

#include "common.h"

#define IA pcclInvalidArgument

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static pcclComm_t *create(unsigned port) {
    pcclCommCreateParams_t params;
    pcclComm_t *comm = NULL;
    ccoip_socket_address_t bind = loopback(0);
    memset(&params, 0, sizeof params);
    params.master_address = loopback(port);
    CHECK(pcclCreateCommunicator(&params, &comm));
    CHECK(pcclCommSetBindAddress(comm, &bind));
    return comm;
}

static void args(unsigned port) {
    static char long_secret[5000];
    pcclMasterInstance_t *master = NULL;
    pcclComm_t *comm;
    const char *good = "0123456789abcdef0123456789abcdef";

    /* Before pcclInit: the communicator setters say so; the master ones need no init. */
    EXPECT(pcclCommSetRunSecret(NULL, good), pcclNotInitialized);
    EXPECT(pcclCommSetEncrypt(NULL, true), pcclNotInitialized);
    EXPECT(pcclMasterSetRunSecret(NULL, good), IA);
    EXPECT(pcclMasterSetEncrypt(NULL, true), IA);
    CHECK(pcclInit());

    memset(long_secret, 'x', sizeof long_secret - 1);
    comm = create(port);
    EXPECT(pcclCommSetRunSecret(NULL, good), IA);
    EXPECT(pcclCommSetRunSecret(comm, NULL), IA);
    EXPECT(pcclCommSetRunSecret(comm, ""), IA);
    EXPECT(pcclCommSetRunSecret(comm, "too short"), IA);
    /* 15 characters plus whitespace: whitespace does not count. */
    EXPECT(pcclCommSetRunSecret(comm, " 0123456789abcde\n"), IA);
    EXPECT(pcclCommSetRunSecret(comm, long_secret), IA);
    EXPECT(pcclCommSetEncrypt(NULL, true), IA);
    EXPECT(pcclCommSetEncrypt(comm, true), IA); /* no secret yet */
    CHECK(pcclCommSetEncrypt(comm, false));
    CHECK(pcclCommSetRunSecret(comm, good));
    CHECK(pcclCommSetEncrypt(comm, true));
    /* A refused secret leaves the previous settings (the good secret, encryption on). */
    EXPECT(pcclCommSetRunSecret(comm, "short"), IA);
    CHECK(pcclCommSetEncrypt(comm, true));
    CHECK(pcclDestroyCommunicator(comm));

    EXPECT(pcclMasterSetRunSecret(NULL, good), IA);
    CHECK(pcclCreateMaster(loopback(0), &master));
    EXPECT(pcclMasterSetRunSecret(master, NULL), IA);
    EXPECT(pcclMasterSetRunSecret(master, "too short"), IA);
    EXPECT(pcclMasterSetRunSecret(master, long_secret), IA);
    EXPECT(pcclMasterSetEncrypt(master, true), IA); /* no secret yet */
    CHECK(pcclMasterSetRunSecret(master, good));
    CHECK(pcclMasterSetEncrypt(master, true));
    CHECK(pcclRunMaster(master));
    /* Too late once it runs. */
    EXPECT(pcclMasterSetRunSecret(master, good), pcclInvalidUsage);
    EXPECT(pcclMasterSetEncrypt(master, false), pcclInvalidUsage);
    CHECK(pcclInterruptMaster(master));
    CHECK(pcclMasterAwaitTermination(master));
    CHECK(pcclDestroyMaster(master));
}

static void env_refused(void) {
    pcclCommCreateParams_t params;
    pcclComm_t *comm = NULL;
    pcclMasterInstance_t *master = NULL;
    CHECK(pcclInit());
    memset(&params, 0, sizeof params);
    params.master_address = loopback(48148);
    EXPECT(pcclCreateCommunicator(&params, &comm), IA);
    EXPECT(pcclCreateMaster(loopback(0), &master), IA);
    FAIL_IF(comm != NULL || master != NULL, "an output was written");
}

static void refused(unsigned port, const char *secret) {
    pcclComm_t *comm;
    double start;
    pcclResult_t r;
    CHECK(pcclInit());
    comm = create(port);
    if (strcmp(secret, "-") != 0) CHECK(pcclCommSetRunSecret(comm, secret));
    start = now_ms();
    r = pcclConnect(comm);
    FAIL_IF(r != pcclMasterConnectionFailed, "connect returned %d, expected %d", (int)r,
            (int)pcclMasterConnectionFailed);
    printf("REFUSED %.0f\n", now_ms() - start);
    fflush(stdout);
    /* Settings cannot change after pcclConnect, even a failed one. */
    EXPECT(pcclCommSetRunSecret(comm, "0123456789abcdef0123456789abcdef"), pcclInvalidUsage);
    CHECK(pcclDestroyCommunicator(comm));
}

int main(int argc, char **argv) {
    FAIL_IF(argc < 2, "usage: %s args|env-refused|refused ...", argv[0]);
    if (strcmp(argv[1], "args") == 0) {
        args(port_arg(argc, argv, 2));
    } else if (strcmp(argv[1], "env-refused") == 0) {
        env_refused();
    } else if (strcmp(argv[1], "refused") == 0) {
        FAIL_IF(argc < 4, "usage: %s refused MASTER_PORT SECRET", argv[0]);
        refused(port_arg(argc, argv, 2), argv[3]);
    } else {
        FAIL_IF(1, "unknown mode %s", argv[1]);
    }
    printf("OK\n");
    return 0;
}
