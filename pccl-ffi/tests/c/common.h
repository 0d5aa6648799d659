/* Helpers shared by the C test programs (C99; also valid C++). */
#ifndef PCCL_TEST_COMMON_H
#define PCCL_TEST_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pccl.h"

/* Aborts the program (exit 1) when `expr` does not return `want`. */
#define EXPECT(expr, want)                                                              \
    do {                                                                                \
        pcclResult_t got_ = (expr);                                                     \
        if (got_ != (want)) {                                                           \
            fprintf(stderr, "%s:%d: %s returned %d, expected %d\n", __FILE__, __LINE__, \
                    #expr, (int)got_, (int)(want));                                     \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

#define CHECK(expr) EXPECT(expr, pcclSuccess)

#define FAIL_IF(cond, ...)                                          \
    do {                                                            \
        if (cond) {                                                 \
            fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);         \
            fprintf(stderr, __VA_ARGS__);                           \
            fprintf(stderr, "\n");                                  \
            exit(1);                                                \
        }                                                           \
    } while (0)

/* 127.0.0.1:port */
static inline ccoip_socket_address_t loopback(unsigned port) {
    ccoip_socket_address_t a;
    memset(&a, 0, sizeof a);
    a.inet.protocol = inetIPv4;
    a.inet.ipv4.data[0] = 127;
    a.inet.ipv4.data[3] = 1;
    a.port = (uint16_t)port;
    return a;
}

static inline unsigned port_arg(int argc, char **argv, int i) {
    FAIL_IF(argc <= i, "usage: %s PORT ...", argv[0]);
    return (unsigned)strtoul(argv[i], NULL, 10);
}

/* CRC-32 (IEEE), bitwise: the digest peers print so the harness can compare bits. */
static inline uint32_t crc32_of(const void *data, size_t len) {
    const unsigned char *p = (const unsigned char *)data;
    uint32_t crc = 0xFFFFFFFFu;
    size_t i;
    int k;
    for (i = 0; i < len; i++) {
        crc ^= p[i];
        for (k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static inline pcclReduceDescriptor_t reduce_desc(size_t count, pcclDataType_t type, pcclRedOp_t op,
                                          uint64_t tag) {
    pcclReduceDescriptor_t d;
    memset(&d, 0, sizeof d);
    d.count = count;
    d.op = op;
    d.tag = tag;
    d.src_descriptor.datatype = type;
    d.src_descriptor.distribution_hint = pcclDistributionNone;
    d.quantization_options.quantized_datatype = type;
    d.quantization_options.algorithm = pcclQuantNone;
    return d;
}

static inline int world_size(const pcclComm_t *comm) {
    int n = 0;
    CHECK(pcclGetAttribute(comm, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, &n));
    return n;
}

/* Connects and waits until `world` peers are accepted, admitting newcomers meanwhile.
 * The p2p listener binds 127.0.0.1 (any free port), as every test's does. A non-NULL
 * `secret` is set with pcclCommSetRunSecret (otherwise PCCL_RUN_SECRET{,_FILE} apply), and
 * `encrypt` with pcclCommSetEncrypt. */
static inline pcclComm_t *join_secret(unsigned master_port, int world, const char *secret,
                                      bool encrypt) {
    pcclCommCreateParams_t params;
    pcclComm_t *comm = NULL;
    ccoip_socket_address_t bind = loopback(0);
    memset(&params, 0, sizeof params);
    params.master_address = loopback(master_port);
    params.peer_group = 0;
    params.p2p_connection_pool_size = 2;
    CHECK(pcclCreateCommunicator(&params, &comm));
    CHECK(pcclCommSetBindAddress(comm, &bind));
    if (secret != NULL) CHECK(pcclCommSetRunSecret(comm, secret));
    if (encrypt) CHECK(pcclCommSetEncrypt(comm, true));
    CHECK(pcclConnect(comm));
    while (world_size(comm) < world) {
        pcclResult_t r = pcclUpdateTopology(comm);
        FAIL_IF(r != pcclSuccess && r != pcclUpdateTopologyFailed, "update topology: %d", (int)r);
    }
    return comm;
}

static inline pcclComm_t *join(unsigned master_port, int world) {
    return join_secret(master_port, world, NULL, false);
}

#endif
