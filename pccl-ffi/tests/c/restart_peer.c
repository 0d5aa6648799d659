/*
 * The master-restart test's peer (issue #13, ARCHITECTURE.md §14), in two modes.
 *
 * loop: STEPS steps of the typical loop while the harness kills the master with SIGKILL
 *   and starts a new one on the same port: update topology, a shared-state sync whose
 *   counter advances by one, then a blocking all-reduce (tag 1) with an async one (tag 2)
 *   in flight. A failed op is retried (with its partner) and must heal; each step prints
 *   "STEP s world digest tries" for the harness to compare across peers bit for bit.
 * gone: joins, prints JOINED, waits for a line on stdin (sent once the master is dead for
 *   good), then an all-reduce and an update topology must both return
 *   pcclMasterConnectionFailed (the harness times the first against
 *   PCCL_MASTER_RECONNECT_TIMEOUT_S); prints FAILED after the first.
 *
 * usage: restart_peer MASTER_PORT SEED WORLD (loop STEPS | gone)
 */
#include "common.h"

#define N 4096

static float grads[N], sums[N];
static uint32_t ints[N], maxes[N];

static void one_step(pcclComm_t *comm, int seed, int world, int step, int *tries) {
    pcclAsyncReduceOp_t handle;
    pcclReduceDescriptor_t d1, d2;
    pcclReduceInfo_t info;
    pcclResult_t r1, r2;
    int j, s;

    for (j = 0; j < N; j++) grads[j] = (float)((seed * 7 + j + step) % 13) * 0.25f;
    d1 = reduce_desc(N, pcclFloat, pcclSum, 1);
    d2 = reduce_desc(N, pcclUint32, pcclMax, 2);
    for (;;) {
        ++*tries;
        for (j = 0; j < N; j++) ints[j] = (uint32_t)(seed * j + step);
        CHECK(pcclAllReduceAsync(ints, maxes, &d2, comm, &handle));
        r1 = pcclAllReduce(grads, sums, &d1, comm, &info);
        r2 = pcclAwaitAsyncReduce(&handle, NULL);
        if (r1 == pcclSuccess && r2 == pcclSuccess) break;
        FAIL_IF(r1 != pcclSuccess && r1 != pcclRankConnectionLost, "all-reduce: %d", (int)r1);
        FAIL_IF(r2 != pcclSuccess && r2 != pcclRankConnectionLost, "async: %d", (int)r2);
        FAIL_IF(*tries > 1000, "step %d: no op healed", step);
    }
    FAIL_IF(info.local_world_size != (uint32_t)world, "reduced by %u", info.local_world_size);
    for (j = 0; j < N; j++) {
        float want = 0.0f;
        for (s = 1; s <= world; s++) want += (float)((s * 7 + j + step) % 13) * 0.25f;
        FAIL_IF(sums[j] != want, "step %d: sum[%d] = %f, want %f", step, j, sums[j], want);
        FAIL_IF(maxes[j] != (uint32_t)(world * j + step), "step %d: max[%d] = %u", step, j,
                maxes[j]);
    }
}

static int loop(pcclComm_t *comm, int seed, int world, int steps) {
    static uint64_t counters[2];
    pcclTensorInfo_t info;
    pcclSharedState_t state;
    int step;

    memset(&info, 0, sizeof info);
    info.name = "counters";
    info.data = counters;
    info.count = 2;
    info.datatype = pcclUint64;
    info.device_type = pcclDeviceCpu;
    state.revision = 0;
    state.count = 1;
    state.infos = &info;
    for (step = 0; step < steps; step++) {
        pcclResult_t r;
        int tries = 0, size;

        if (step > 0) {
            while ((r = pcclUpdateTopology(comm)) != pcclSuccess)
                FAIL_IF(r != pcclUpdateTopologyFailed, "update topology: %d", (int)r);
        }
        /* The sync: the revision and the counter go on, never back. */
        counters[0] = (uint64_t)step;
        while ((r = pcclSynchronizeSharedState(comm, &state,
                                               PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR,
                                               NULL)) != pcclSuccess)
            FAIL_IF(r != pcclRankConnectionLost, "sync: %d", (int)r);
        FAIL_IF(state.revision != (uint64_t)step, "revision %lu", (unsigned long)state.revision);
        FAIL_IF(counters[0] != (uint64_t)step, "counter %lu", (unsigned long)counters[0]);

        /* Read before the step: once a peer has finished its last step it leaves, so a
         * peer still printing its own last step would see the world shrink. */
        size = world_size(comm);
        one_step(comm, seed, world, step, &tries);
        state.revision++;
        printf("STEP %d %d %08lx %08lx %d\n", step, size,
               (unsigned long)crc32_of(sums, sizeof sums),
               (unsigned long)crc32_of(maxes, sizeof maxes), tries);
        fflush(stdout);
    }
    return 0;
}

static int gone(pcclComm_t *comm) {
    float x[64], y[64];
    pcclReduceDescriptor_t d = reduce_desc(64, pcclFloat, pcclSum, 3);
    int j;

    for (j = 0; j < 64; j++) x[j] = 1.0f;
    printf("JOINED\n");
    fflush(stdout);
    FAIL_IF(getchar() == EOF, "stdin closed early");
    EXPECT(pcclAllReduce(x, y, &d, comm, NULL), pcclMasterConnectionFailed);
    printf("FAILED\n");
    fflush(stdout);
    EXPECT(pcclUpdateTopology(comm), pcclMasterConnectionFailed);
    return 0;
}

int main(int argc, char **argv) {
    unsigned port = port_arg(argc, argv, 1);
    int seed, world, rc;
    pcclComm_t *comm;

    FAIL_IF(argc < 5, "usage: %s MASTER_PORT SEED WORLD (loop STEPS | gone)", argv[0]);
    seed = atoi(argv[2]);
    world = atoi(argv[3]);
    CHECK(pcclInit());
    comm = join(port, world);
    if (strcmp(argv[4], "loop") == 0) {
        FAIL_IF(argc < 6, "loop needs STEPS");
        rc = loop(comm, seed, world, atoi(argv[5]));
    } else {
        rc = gone(comm);
    }
    CHECK(pcclDestroyCommunicator(comm));
    return rc;
}
