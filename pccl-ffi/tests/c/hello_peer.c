/*
 * The hello-world test's peer: the typical PCCL loop (update topology, sync the shared
 * state, all-reduce with retry, advance the revision) for STEPS steps. Checks every
 * result and prints a digest line per step, which the harness compares across peers.
 *
 * usage: hello_peer MASTER_PORT SEED WORLD STEPS [SECRET [encrypt]]
 *   (peers take seeds 1..WORLD; SECRET, unless "-", is set with pcclCommSetRunSecret, and
 *   "encrypt" turns on pcclCommSetEncrypt; otherwise the environment decides)
 */
#include "common.h"

#define N 1000

int main(int argc, char **argv) {
    unsigned port = port_arg(argc, argv, 1);
    int seed = atoi(argv[2]), world = atoi(argv[3]), steps = atoi(argv[4]);
    static float weights[N], grads[N], sum[N];
    static uint64_t counters[4];
    static uint32_t ints[N];
    pcclTensorInfo_t infos[2];
    pcclSharedState_t state;
    pcclComm_t *comm;
    int step, j, s;

    CHECK(pcclInit());
    {
        const char *secret = argc > 5 && strcmp(argv[5], "-") != 0 ? argv[5] : NULL;
        bool encrypt = argc > 6 && strcmp(argv[6], "encrypt") == 0;
        comm = join_secret(port, world, secret, encrypt);
    }

    /* Every peer starts from the same weights except the last, whose differ: the first
     * sync must replace them with the popular content. */
    for (j = 0; j < N; j++) weights[j] = seed == world ? -1.0f : (float)j * 0.5f;
    memset(counters, 0, sizeof counters);
    infos[0].name = "weights";
    infos[0].data = weights;
    infos[0].count = N;
    infos[0].datatype = pcclFloat;
    infos[0].device_type = pcclDeviceCpu;
    infos[0].allow_content_inequality = false;
    infos[1] = infos[0];
    infos[1].name = "counters";
    infos[1].data = counters;
    infos[1].count = 4;
    infos[1].datatype = pcclUint64;
    state.revision = 0;
    state.count = 2;
    state.infos = infos;

    for (step = 0; step < steps; step++) {
        pcclSharedStateSyncInfo_t sync_info;
        pcclReduceInfo_t info;
        pcclReduceDescriptor_t desc;
        pcclResult_t r;

        if (step > 0) {
            while ((r = pcclUpdateTopology(comm)) != pcclSuccess)
                FAIL_IF(r != pcclUpdateTopologyFailed, "update topology: %d", (int)r);
        }
        FAIL_IF(world_size(comm) != world, "world size %d", world_size(comm));

        CHECK(pcclSynchronizeSharedState(comm, &state, PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR,
                                         &sync_info));
        FAIL_IF(state.revision != (uint64_t)step, "revision %lu", (unsigned long)state.revision);
        FAIL_IF(step == 0 && seed == world && sync_info.rx_bytes == 0, "nothing received");
        FAIL_IF(counters[0] != (uint64_t)step, "counter %lu", (unsigned long)counters[0]);

        /* All-reduce into a separate buffer, retrying while a peer is lost. */
        for (j = 0; j < N; j++) grads[j] = (float)((seed * 7 + j + step) % 13);
        desc = reduce_desc(N, pcclFloat, pcclSum, 1);
        while ((r = pcclAllReduce(grads, sum, &desc, comm, &info)) != pcclSuccess) {
            FAIL_IF(r != pcclRankConnectionLost, "all-reduce: %d", (int)r);
            FAIL_IF(world_size(comm) < 2, "alone");
        }
        FAIL_IF(info.local_world_size != (uint32_t)world, "reduced by %u", info.local_world_size);
        for (j = 0; j < N; j++) {
            float want = 0.0f;
            for (s = 1; s <= world; s++) want += (float)((s * 7 + j + step) % 13);
            FAIL_IF(sum[j] != want, "sum[%d] = %f, want %f", j, sum[j], want);
        }

        /* And one in place. */
        for (j = 0; j < N; j++) ints[j] = (uint32_t)(seed * j + step);
        desc = reduce_desc(N, pcclUint32, pcclMax, 2);
        CHECK(pcclAllReduce(ints, ints, &desc, comm, NULL));
        for (j = 0; j < N; j++)
            FAIL_IF(ints[j] != (uint32_t)(world * j + step), "max[%d] = %u", j, ints[j]);

        /* The optimiser step: identical inputs, so identical weights on every peer. */
        for (j = 0; j < N; j++) weights[j] -= 0.01f * sum[j] / (float)world;
        counters[0]++;
        counters[1] += sync_info.rx_bytes;
        state.revision++;
        printf("STEP %d %08lx %08lx %08lx %08lx\n", step, (unsigned long)crc32_of(sum, sizeof sum),
               (unsigned long)crc32_of(ints, sizeof ints),
               (unsigned long)crc32_of(weights, sizeof weights),
               (unsigned long)crc32_of(counters, sizeof(uint64_t)));
        fflush(stdout);
    }
    {
        /* pccl extension: the communicator counted what it did. */
        pcclCommStats_t stats;
        CHECK(pcclGetCommStats(comm, &stats));
        FAIL_IF(stats.all_reduce_completed != 2 * (uint64_t)steps, "%lu all-reduces counted",
                (unsigned long)stats.all_reduce_completed);
        FAIL_IF(stats.shared_state_syncs_completed != (uint64_t)steps, "%lu syncs counted",
                (unsigned long)stats.shared_state_syncs_completed);
        FAIL_IF(world > 1 && (stats.tx_bytes == 0 || stats.last_busbw <= 0.0), "no bytes counted");
    }
    CHECK(pcclDestroyCommunicator(comm));
    return 0;
}
