/*
 * The churn test's peer: each step runs K async all-reduces with distinct tags (retrying
 * the failed ones) and M more through pcclAllReduceMultipleWithRetry, while the harness
 * SIGKILLs one peer. Peer s contributes (1 << s) * (j + 1) * m to element j, so a sum
 * tells exactly which peers took part. Stops EXTRA steps after the group has shrunk.
 *
 * usage: async_peer MASTER_PORT SEED WORLD EXTRA MAX_STEPS
 */
#include "common.h"

#define N 4096
#define K 4
#define M 4

static uint32_t bufs_a[K][2][N], bufs_m[M][2][N];

static int popcount(uint32_t v) {
    int n = 0;
    for (; v; v &= v - 1) n++;
    return n;
}

static void fill(uint32_t *buf, int seed, int step, int k) {
    int j;
    for (j = 0; j < N; j++) buf[j] = (1u << seed) * (uint32_t)(j + 1) * (uint32_t)(step % 3 + k + 1);
}

/* Checks a result and returns the mask of the peers that took part. */
static uint32_t check(const uint32_t *res, int seed, int step, int k) {
    uint32_t mult = (uint32_t)(step % 3 + k + 1), mask = res[0] / mult;
    int j;
    FAIL_IF(!(mask & (1u << seed)), "step %d op %d: own contribution missing (%x)", step, k, mask);
    for (j = 0; j < N; j++)
        FAIL_IF(res[j] != mask * (uint32_t)(j + 1) * mult, "step %d op %d: res[%d] = %u", step, k,
                j, res[j]);
    return mask;
}

int main(int argc, char **argv) {
    unsigned port = port_arg(argc, argv, 1);
    int seed = atoi(argv[2]), world = atoi(argv[3]), extra = atoi(argv[4]);
    int max_steps = atoi(argv[5]), shrunk_at = -1, step, k;
    pcclComm_t *comm;

    CHECK(pcclInit());
    comm = join(port, world);
    for (step = 0; step < max_steps; step++) {
        pcclReduceOpDescriptor_t descs[M];
        pcclAsyncReduceOp_t handles[K];
        pcclReduceInfo_t info;
        pcclReduceDescriptor_t desc;
        int pending[K], any = 1;
        uint32_t digest = 0, mask = 0;
        pcclResult_t r;

        if (step > 0) {
            while ((r = pcclUpdateTopology(comm)) != pcclSuccess)
                FAIL_IF(r != pcclUpdateTopologyFailed, "update topology: %d", (int)r);
        }

        /* K async ops in flight at once, distinct tags; retry those that failed. */
        for (k = 0; k < K; k++) pending[k] = 1;
        while (any) {
            for (k = 0; k < K; k++) {
                if (!pending[k]) continue;
                fill(bufs_a[k][0], seed, step, k);
                desc = reduce_desc(N, pcclUint32, pcclSum, (uint64_t)step * 100 + (uint64_t)k);
                CHECK(pcclAllReduceAsync(bufs_a[k][0], bufs_a[k][1], &desc, comm, &handles[k]));
            }
            any = 0;
            for (k = 0; k < K; k++) {
                if (!pending[k]) continue;
                r = pcclAwaitAsyncReduce(&handles[k], &info);
                if (r == pcclSuccess) {
                    pending[k] = 0;
                    mask = check(bufs_a[k][1], seed, step, k);
                    FAIL_IF(popcount(mask) != (int)info.local_world_size, "mask %x, world %u",
                            mask, info.local_world_size);
                } else {
                    FAIL_IF(r != pcclRankConnectionLost, "await: %d", (int)r);
                    any = 1;
                }
            }
            FAIL_IF(any && world_size(comm) < 2, "alone");
        }
        for (k = 0; k < K; k++) digest ^= crc32_of(bufs_a[k][1], sizeof bufs_a[k][1]) + (uint32_t)k;

        /* M more through the library's own retry loop; the odd ones in place. */
        for (k = 0; k < M; k++) {
            int in_place = k % 2;
            fill(bufs_m[k][0], seed, step, k);
            descs[k].sendbuf = bufs_m[k][0];
            descs[k].recvbuf = bufs_m[k][in_place ? 0 : 1];
            descs[k].descriptor = reduce_desc(N, pcclUint32, pcclSum, (uint64_t)step * 100 + 50 + (uint64_t)k);
        }
        CHECK(pcclAllReduceMultipleWithRetry(descs, M, comm, &info, 2));
        for (k = 0; k < M; k++) {
            const uint32_t *res = (const uint32_t *)descs[k].recvbuf;
            mask = check(res, seed, step, k);
            digest ^= crc32_of(res, sizeof bufs_m[k][0]) + (uint32_t)(K + k);
        }

        /* `mask` (from the last op, the same on every survivor) says who took part. */
        printf("STEP %d %d %08lx\n", step, popcount(mask), (unsigned long)digest);
        fflush(stdout);
        if (shrunk_at < 0 && popcount(mask) < world) shrunk_at = step;
        if (shrunk_at >= 0 && step >= shrunk_at + extra) break;
    }
    FAIL_IF(shrunk_at < 0, "the group never shrank");
    CHECK(pcclDestroyCommunicator(comm));
    return 0;
}
