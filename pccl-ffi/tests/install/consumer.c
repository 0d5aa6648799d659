/*
 * A program built against an installed pccl as a user builds one: found by pkg-config or
 * CMake's find_package, compiled as C99 or as C++17/C++20, linked shared or static (see
 * pccl-ffi/scripts/test-install.sh). Valid C99 and C++.
 *
 * usage: consumer [MASTER_PORT]
 * Checks that the header's version macros agree with each other and with the version the
 * build system found (PCCL_EXPECTED_VERSION, a string macro it defines), that the library
 * answers, and, given the port of a master on 127.0.0.1, that a communicator joins the
 * run there. Prints OK.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pccl.h>

#ifndef PCCL_EXPECTED_VERSION
#error "define PCCL_EXPECTED_VERSION to the version the build system found"
#endif

#define CHECK(call)                                                                       \
    do {                                                                                  \
        pcclResult_t r_ = (call);                                                         \
        if (r_ != pcclSuccess) {                                                          \
            fprintf(stderr, "consumer: %s returned %d\n", #call, (int)r_);               \
            return 1;                                                                     \
        }                                                                                 \
    } while (0)

int main(int argc, char **argv) {
    char numbers[64];
    pcclBuildInfo_t build;
    pcclCommCreateParams_t params;
    ccoip_socket_address_t bind;
    pcclComm_t *comm = NULL;
    int world = 0;

    snprintf(numbers, sizeof numbers, "%d.%d.%d", PCCL_VERSION_MAJOR, PCCL_VERSION_MINOR,
             PCCL_VERSION_PATCH);
    if (strcmp(numbers, PCCL_VERSION) != 0 || strcmp(PCCL_VERSION, PCCL_EXPECTED_VERSION) != 0) {
        fprintf(stderr, "consumer: header %s (numbers %s), build system found %s\n", PCCL_VERSION,
                numbers, PCCL_EXPECTED_VERSION);
        return 1;
    }
    if (pcclCreateCommunicator(NULL, NULL) != pcclNotInitialized) {
        fprintf(stderr, "consumer: communicator calls work before pcclInit\n");
        return 1;
    }
    CHECK(pcclInit());
    CHECK(pcclGetBuildInfo(&build));

    if (argc > 1) {
        memset(&params, 0, sizeof params);
        params.master_address.inet.protocol = inetIPv4;
        params.master_address.inet.ipv4.data[0] = 127;
        params.master_address.inet.ipv4.data[3] = 1;
        params.master_address.port = (uint16_t)atoi(argv[1]);
        params.p2p_connection_pool_size = 1;
        bind = params.master_address;
        bind.port = 0;
        CHECK(pcclCreateCommunicator(&params, &comm));
        CHECK(pcclCommSetBindAddress(comm, &bind));
        CHECK(pcclConnect(comm));
        CHECK(pcclGetAttribute(comm, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, &world));
        if (world < 1) {
            fprintf(stderr, "consumer: world size %d\n", world);
            return 1;
        }
        CHECK(pcclDestroyCommunicator(comm));
    }
    printf("OK\n");
    return 0;
}
