/*
 * hello.c: a complete pccl peer, in the shape of every PCCL training loop.
 *
 * Build against an installed pccl (`./scripts/install --prefix DIR`, see the README):
 *   export PKG_CONFIG_PATH=DIR/lib/pkgconfig     # not needed for /usr/local
 *   gcc -std=c99 examples/c/hello.c $(pkg-config --cflags --libs pccl) \
 *       -Wl,-rpath,DIR/lib -o hello
 * Run a master, then two or more peers in other terminals:
 *   DIR/bin/pccl-master --listen 127.0.0.1:48148
 *   ./hello            # usage: hello [MASTER_PORT [PEERS_TO_WAIT_FOR]]
 */
#include <stdio.h>
#include <stdlib.h>

#include "pccl.h"

/* Every pccl call returns a pcclResult_t; stop at the first unexpected one. */
#define PCCL_CHECK(call)                                                      \
    do {                                                                      \
        pcclResult_t r_ = (call);                                             \
        if (r_ != pcclSuccess) {                                              \
            fprintf(stderr, "%s failed with code %d\n", #call, (int)r_);      \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

#define N 1024
#define STEPS 10

static int world_size(const pcclComm_t *comm) {
    int n = 0;
    PCCL_CHECK(pcclGetAttribute(comm, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, &n));
    return n;
}

int main(int argc, char **argv) {
    static float weights[N], grads[N], avg[N];
    int port = argc > 1 ? atoi(argv[1]) : CCOIP_PROTOCOL_PORT_MASTER;
    int peers = argc > 2 ? atoi(argv[2]) : 2;
    /* Where the master listens; peer group 0; one connection per neighbour. */
    pcclCommCreateParams_t params = {
        .master_address = {.inet = {.protocol = inetIPv4, .ipv4 = {{127, 0, 0, 1}}}},
        .peer_group = 0,
        .p2p_connection_pool_size = 1,
    };
    /* The shared state: tensors every peer keeps identical, plus a revision. */
    pcclTensorInfo_t tensor = {.name = "weights", .data = weights, .count = N,
                               .datatype = pcclFloat, .device_type = pcclDeviceCpu};
    pcclSharedState_t state = {.revision = 0, .count = 1, .infos = &tensor};
    /* Where this peer's p2p listener binds: loopback, any free port. A run across hosts
     * binds an address the other peers can reach (a private or VPN interface); without
     * this call the listener binds 0.0.0.0 from port 48150 on, as in PCCL 1.0. */
    ccoip_socket_address_t bind = {.inet = {.protocol = inetIPv4, .ipv4 = {{127, 0, 0, 1}}},
                                   .port = 0};
    pcclComm_t *comm = NULL;
    int step, i;

    /* 1. Initialise the library, create a communicator and join the run. */
    PCCL_CHECK(pcclInit());
    params.master_address.port = (uint16_t)port;
    PCCL_CHECK(pcclCreateCommunicator(&params, &comm));
    PCCL_CHECK(pcclCommSetBindAddress(comm, &bind)); /* a pccl extension */
    PCCL_CHECK(pcclConnect(comm));

    /* Wait for company: accepted peers admit newcomers in pcclUpdateTopology. */
    while (world_size(comm) < peers) {
        pcclResult_t r = pcclUpdateTopology(comm);
        if (r != pcclSuccess && r != pcclUpdateTopologyFailed) PCCL_CHECK(r);
    }

    for (step = 0; step < STEPS; step++) {
        pcclReduceDescriptor_t desc = {.count = N, .op = pcclAvg, .tag = 0,
                                       .src_descriptor = {.datatype = pcclFloat},
                                       .quantization_options = {.algorithm = pcclQuantNone}};
        pcclReduceInfo_t info;
        pcclResult_t r;

        /* 2. Admit peers that are waiting to join (a failed update is simply retried). */
        if (step > 0) {
            while ((r = pcclUpdateTopology(comm)) != pcclSuccess)
                if (r != pcclUpdateTopologyFailed) PCCL_CHECK(r);
        }

        /* 3. Make the shared state (weights and revision) identical on every peer: a
         *    newcomer receives it here. */
        PCCL_CHECK(pcclSynchronizeSharedState(
            comm, &state, PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR, NULL));

        /* 4. "Compute gradients", then average them over all peers. When a peer dies the
         *    op fails everywhere with pcclRankConnectionLost: retry on the smaller ring. */
        for (i = 0; i < N; i++) grads[i] = (float)((i + step) % 7) - weights[i] * 0.1f;
        while ((r = pcclAllReduce(grads, avg, &desc, comm, &info)) != pcclSuccess) {
            if (r != pcclRankConnectionLost || world_size(comm) < 2) PCCL_CHECK(r);
        }

        /* 5. Apply the update and advance the revision: one per step. */
        for (i = 0; i < N; i++) weights[i] -= 0.5f * avg[i];
        state.revision++;
        printf("step %d: %u peers, weights[1] = %f\n", step, info.local_world_size,
               (double)weights[1]);
    }

    PCCL_CHECK(pcclDestroyCommunicator(comm));
    return 0;
}
