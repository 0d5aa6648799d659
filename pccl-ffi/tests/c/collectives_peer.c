/*
 * The collectives test's peer (pccl extensions beyond PCCL 1.0): reads its rank, then
 * per step reduce-scatters, all-gathers and broadcasts (from every root), checks each
 * result against what it must be, and prints a digest line per step, which the harness
 * compares across peers.
 *
 * usage: collectives_peer MASTER_PORT WORLD STEPS
 */
#include "common.h"

#define B 500 /* elements per rank */

int main(int argc, char **argv) {
    unsigned port = port_arg(argc, argv, 1);
    int world = atoi(argv[2]), steps = atoi(argv[3]);
    static float send[16 * B], block[B];
    static uint64_t mine[B], all[16 * B];
    static double buf[3 * B];
    pcclComm_t *comm;
    int rank, step, j, q, root;

    FAIL_IF(world < 2 || world > 16, "world %d", world);
    CHECK(pcclInit());
    comm = join(port, world);
    CHECK(pcclGetRank(comm, &rank));
    FAIL_IF(rank < 0 || rank >= world, "rank %d", rank);
    EXPECT(pcclGetRank(comm, NULL), pcclInvalidArgument);

    for (step = 0; step < steps; step++) {
        pcclReduceDescriptor_t desc;
        pcclReduceInfo_t info;

        /* Reduce-scatter: rank r gets block r summed over the ranks. */
        for (j = 0; j < world * B; j++) send[j] = (float)((j + rank + step) % 11);
        desc = reduce_desc(B, pcclFloat, pcclSum, 1);
        CHECK(pcclReduceScatter(send, block, &desc, comm, &info));
        FAIL_IF(info.local_world_size != (uint32_t)world, "reduce-scatter by %u",
                info.local_world_size);
        for (j = 0; j < B; j++) {
            float want = 0.0f;
            for (q = 0; q < world; q++) want += (float)((rank * B + j + q + step) % 11);
            FAIL_IF(block[j] != want, "block[%d] = %f, want %f", j, block[j], want);
        }
        /* The receive buffer must not overlap the send buffer. */
        EXPECT(pcclReduceScatter(send, send + 1, &desc, comm, NULL), pcclInvalidArgument);

        /* All-gather: block q is rank q's input, bit for bit. */
        for (j = 0; j < B; j++) mine[j] = ((uint64_t)rank << 48) ^ (uint64_t)(j * 2654435761u + step);
        CHECK(pcclAllGather(mine, all, B, pcclUint64, 2, comm, NULL));
        for (q = 0; q < world; q++)
            for (j = 0; j < B; j++)
                FAIL_IF(all[q * B + j] != (((uint64_t)q << 48) ^ (uint64_t)(j * 2654435761u + step)),
                        "all[%d][%d]", q, j);

        /* Broadcast from every root. */
        for (root = 0; root < world; root++) {
            for (j = 0; j < 3 * B; j++) buf[j] = (double)(j * (rank + 1) + step) / 3.0;
            CHECK(pcclBroadcast(buf, 3 * B, pcclDouble, root, 3, comm, NULL));
            for (j = 0; j < 3 * B; j++)
                FAIL_IF(buf[j] != (double)(j * (root + 1) + step) / 3.0, "from %d: buf[%d]", root, j);
        }
        /* A root that is not a rank fails on every peer, before any data moves. */
        EXPECT(pcclBroadcast(buf, 3 * B, pcclDouble, world, 4, comm, NULL), pcclInvalidArgument);
        EXPECT(pcclBroadcast(buf, 3 * B, pcclDouble, -1, 4, comm, NULL), pcclInvalidArgument);

        printf("STEP %d %08lx %08lx\n", step, (unsigned long)crc32_of(all, world * B * sizeof *all),
               (unsigned long)crc32_of(buf, sizeof buf));
        fflush(stdout);
    }
    {
        /* pccl extension: each kind of collective is counted apart. */
        pcclCommStats_t stats;
        CHECK(pcclGetCommStats(comm, &stats));
        FAIL_IF(stats.reduce_scatter_completed != (uint64_t)steps, "%lu reduce-scatters counted",
                (unsigned long)stats.reduce_scatter_completed);
        FAIL_IF(stats.all_gather_completed != (uint64_t)steps || stats.all_gather_failed != 0,
                "%lu all-gathers counted (%lu failed)", (unsigned long)stats.all_gather_completed,
                (unsigned long)stats.all_gather_failed);
        FAIL_IF(stats.broadcast_completed != (uint64_t)(steps * world), "%lu broadcasts counted",
                (unsigned long)stats.broadcast_completed);
        FAIL_IF(stats.all_reduce_completed != 0, "%lu all-reduces counted",
                (unsigned long)stats.all_reduce_completed);
        FAIL_IF(stats.tx_bytes == 0 || stats.rx_bytes == 0, "no bytes counted");
    }
    CHECK(pcclDestroyCommunicator(comm));
    return 0;
}
