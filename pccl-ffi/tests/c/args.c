/*
 * Every function with NULL and invalid arguments returns the right code; communicator
 * calls before pcclInit return pcclNotInitialized, while the master functions and
 * pcclGetBuildInfo check their arguments as usual (PCCL 1.0 does not require pcclInit for
 * them; master_no_init.c runs a master that way); the master's and a lone communicator's
 * life cycle.
 * Compiled as C99 and as C++ (so it sticks to their common subset).
 *
 * usage: args FREE_PORT DEAD_PORT   (DEAD_PORT: nobody listens there)
 */
#include "ccoip.h"
#include "ccoip_inet.h"
#include "common.h"

#define IA pcclInvalidArgument

static void not_initialized(void) {
    pcclCommCreateParams_t params;
    pcclComm_t *comm = NULL;
    pcclBuildInfo_t build;
    pcclReduceDescriptor_t desc = reduce_desc(1, pcclFloat, pcclSum, 0);
    pcclAsyncReduceOp_t handle;
    pcclSharedState_t state;
    float x = 0;
    int v = 0;
    bool b = false;
    memset(&params, 0, sizeof params);
    memset(&handle, 0, sizeof handle);
    memset(&state, 0, sizeof state);
    params.master_address = loopback(1);
    EXPECT(pcclCreateCommunicator(&params, &comm), pcclNotInitialized);
    EXPECT(pcclCreateCommunicator(NULL, NULL), pcclNotInitialized);
    EXPECT(pcclGetAttribute(NULL, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, &v), pcclNotInitialized);
    EXPECT(pcclDestroyCommunicator(NULL), pcclNotInitialized);
    EXPECT(pcclConnect(NULL), pcclNotInitialized);
    EXPECT(pcclCommSetBindAddress(NULL, NULL), pcclNotInitialized);
    EXPECT(pcclUpdateTopology(NULL), pcclNotInitialized);
    EXPECT(pcclArePeersPending(NULL, &b), pcclNotInitialized);
    EXPECT(pcclOptimizeTopology(NULL), pcclNotInitialized);
    EXPECT(pcclAllReduce(&x, &x, &desc, NULL, NULL), pcclNotInitialized);
    EXPECT(pcclAllReduceAsync(&x, &x, &desc, NULL, &handle), pcclNotInitialized);
    EXPECT(pcclAwaitAsyncReduce(&handle, NULL), pcclNotInitialized);
    EXPECT(pcclAllReduceMultipleWithRetry(NULL, 0, NULL, NULL, 1), pcclNotInitialized);
    EXPECT(pcclSynchronizeSharedState(NULL, &state, PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR,
                                      NULL),
           pcclNotInitialized);
    FAIL_IF(comm != NULL, "an output was written");
    /* No pcclInit needed: these check their arguments. */
    EXPECT(pcclGetBuildInfo(NULL), IA);
    build.has_cuda_support = true;
    CHECK(pcclGetBuildInfo(&build));
    FAIL_IF(build.has_cuda_support, "CUDA support claimed");
    EXPECT(pcclCreateMaster(loopback(0), NULL), IA);
    EXPECT(pcclRunMaster(NULL), IA);
    EXPECT(pcclInterruptMaster(NULL), IA);
    EXPECT(pcclMasterAwaitTermination(NULL), IA);
    EXPECT(pcclDestroyMaster(NULL), IA);
}

static pcclComm_t *create(unsigned port) {
    pcclCommCreateParams_t params;
    pcclComm_t *comm = NULL;
    ccoip_socket_address_t bind = loopback(0);
    memset(&params, 0, sizeof params);
    params.master_address = loopback(port);
    CHECK(pcclCreateCommunicator(&params, &comm));
    FAIL_IF(comm == NULL, "no communicator");
    CHECK(pcclCommSetBindAddress(comm, &bind));
    return comm;
}

static void create_args(void) {
    pcclCommCreateParams_t params;
    pcclComm_t *comm = NULL;
    memset(&params, 0, sizeof params);
    params.master_address = loopback(48148);
    EXPECT(pcclCreateCommunicator(NULL, &comm), IA);
    EXPECT(pcclCreateCommunicator(&params, NULL), IA);
    params.master_address.inet.protocol = (ccoip_inet_protocol_t)7;
    EXPECT(pcclCreateCommunicator(&params, &comm), IA);
    params.master_address = loopback(0);
    EXPECT(pcclCreateCommunicator(&params, &comm), IA);
    params.master_address = loopback(48148);
    params.p2p_connection_pool_size = 5000;
    EXPECT(pcclCreateCommunicator(&params, &comm), IA);
    FAIL_IF(comm != NULL, "an output was written");
    params.p2p_connection_pool_size = 0; /* means 1 */
    params.master_address.inet.protocol = inetIPv6;
    params.master_address.inet.ipv6.data[15] = 1;
    CHECK(pcclCreateCommunicator(&params, &comm));
    CHECK(pcclDestroyCommunicator(comm));
    EXPECT(pcclDestroyCommunicator(NULL), IA);
}

/* Argument checks of the calls on a communicator, connected or not. `connected_code` is
 * what a call with valid arguments returns: pcclInvalidUsage before pcclConnect. */
static void comm_args(pcclComm_t *comm) {
    pcclReduceDescriptor_t desc = reduce_desc(4, pcclFloat, pcclSum, 7), bad;
    pcclReduceOpDescriptor_t ops[2];
    pcclAsyncReduceOp_t handle;
    pcclReduceInfo_t info;
    pcclTensorInfo_t infos[2];
    pcclSharedState_t state;
    float a[8], b[8];
    int v = -1;
    bool pending;
    memset(a, 0, sizeof a);
    memset(&handle, 0, sizeof handle);

    EXPECT(pcclGetAttribute(NULL, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, &v), IA);
    EXPECT(pcclGetAttribute(comm, (pcclAttribute_t)0, &v), IA);
    EXPECT(pcclGetAttribute(comm, (pcclAttribute_t)5, &v), IA);
    EXPECT(pcclGetAttribute(comm, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, NULL), IA);
    EXPECT(pcclConnect(NULL), IA);
    EXPECT(pcclUpdateTopology(NULL), IA);
    EXPECT(pcclArePeersPending(NULL, &pending), IA);
    EXPECT(pcclArePeersPending(comm, NULL), IA);
    EXPECT(pcclOptimizeTopology(NULL), IA);
    {
        pcclCommStats_t stats;
        EXPECT(pcclGetCommStats(NULL, &stats), IA);
        EXPECT(pcclGetCommStats(comm, NULL), IA);
        CHECK(pcclGetCommStats(comm, &stats));
    }

    /* pccl extensions: reduce-scatter, all-gather, broadcast, rank */
    EXPECT(pcclReduceScatter(NULL, b, &desc, comm, &info), IA);
    EXPECT(pcclReduceScatter(a, NULL, &desc, comm, &info), IA);
    EXPECT(pcclReduceScatter(a, b, NULL, comm, &info), IA);
    EXPECT(pcclReduceScatter(a, b, &desc, NULL, &info), IA);
    EXPECT(pcclAllGather(NULL, b, 1, pcclFloat, 0, comm, NULL), IA);
    EXPECT(pcclAllGather(a, NULL, 1, pcclFloat, 0, comm, NULL), IA);
    EXPECT(pcclAllGather(a, b, 0, pcclFloat, 0, comm, NULL), IA);
    EXPECT(pcclAllGather(a, b, 1, (pcclDataType_t)12, 0, comm, NULL), IA);
    EXPECT(pcclAllGather(a, b, 1, pcclFloat, 0, NULL, NULL), IA);
    EXPECT(pcclBroadcast(NULL, 1, pcclFloat, 0, 0, comm, NULL), IA);
    EXPECT(pcclBroadcast(a, 0, pcclFloat, 0, 0, comm, NULL), IA);
    EXPECT(pcclBroadcast(a, 1, pcclFloat, -1, 0, comm, NULL), IA);
    EXPECT(pcclBroadcast(a, 1, (pcclDataType_t)-1, 0, 0, comm, NULL), IA);
    EXPECT(pcclBroadcast(a, 1, pcclFloat, 0, 0, NULL, NULL), IA);
    EXPECT(pcclGetRank(NULL, &v), IA);
    EXPECT(pcclGetRank(comm, NULL), IA);

    /* pcclAllReduce */
    EXPECT(pcclAllReduce(NULL, b, &desc, comm, &info), IA);
    EXPECT(pcclAllReduce(a, NULL, &desc, comm, &info), IA);
    EXPECT(pcclAllReduce(a, b, NULL, comm, &info), IA);
    EXPECT(pcclAllReduce(a, b, &desc, NULL, &info), IA);
    EXPECT(pcclAllReduce(a, a + 1, &desc, comm, &info), IA); /* overlapping, not equal */
    bad = desc;
    bad.count = 0;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    bad = desc;
    bad.count = (size_t)-1;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    bad = desc;
    bad.op = (pcclRedOp_t)5;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    bad = desc;
    bad.src_descriptor.datatype = (pcclDataType_t)12;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    bad = desc;
    bad.src_descriptor.datatype = (pcclDataType_t)-1;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    bad = desc;
    bad.src_descriptor.distribution_hint = (pcclDistributionHint_t)3;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    bad = desc;
    bad.quantization_options.algorithm = (pcclQuantizationAlgorithm_t)3;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    bad = desc;
    bad.quantization_options.quantized_datatype = (pcclDataType_t)99;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    /* Quantization: only float sources, into u8/i8/u16/f16/bf16, not for prod. */
    bad = desc;
    bad.quantization_options.algorithm = pcclQuantMinMax;
    bad.quantization_options.quantized_datatype = pcclFloat;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);
    bad.quantization_options.quantized_datatype = pcclUint8;
    bad.op = pcclProd;
    EXPECT(pcclAllReduce(a, b, &bad, comm, &info), IA);

    /* pcclAllReduceAsync and pcclAwaitAsyncReduce */
    EXPECT(pcclAllReduceAsync(a, b, &desc, comm, NULL), IA);
    EXPECT(pcclAllReduceAsync(NULL, b, &desc, comm, &handle), IA);
    EXPECT(pcclAllReduceAsync(a, b, NULL, comm, &handle), IA);
    EXPECT(pcclAllReduceAsync(a, b, &desc, NULL, &handle), IA);
    EXPECT(pcclAllReduceAsync(a, b, &bad, comm, &handle), IA);
    FAIL_IF(handle.comm != NULL, "an output was written");
    EXPECT(pcclAwaitAsyncReduce(NULL, &info), IA);
    EXPECT(pcclAwaitAsyncReduce(&handle, &info), IA); /* handle.comm is NULL */
    handle.comm = comm;
    handle.tag = 12345;
    EXPECT(pcclAwaitAsyncReduce(&handle, &info), IA); /* no such op */

    /* pcclAllReduceMultipleWithRetry */
    ops[0].sendbuf = a;
    ops[0].recvbuf = b;
    ops[0].descriptor = desc;
    ops[1].sendbuf = a + 4;
    ops[1].recvbuf = a + 4;
    ops[1].descriptor = reduce_desc(4, pcclFloat, pcclSum, 8);
    EXPECT(pcclAllReduceMultipleWithRetry(NULL, 2, comm, &info, 1), IA);
    EXPECT(pcclAllReduceMultipleWithRetry(ops, 2, NULL, &info, 1), IA);
    EXPECT(pcclAllReduceMultipleWithRetry(ops, 2, comm, &info, 0), IA);
    EXPECT(pcclAllReduceMultipleWithRetry(ops, 2, comm, &info, -1), IA);
    ops[1].descriptor.tag = 7; /* duplicate tag */
    EXPECT(pcclAllReduceMultipleWithRetry(ops, 2, comm, &info, 1), IA);
    ops[1].descriptor.tag = 8;
    ops[1].recvbuf = b + 2; /* writes memory op 0 writes */
    ops[1].sendbuf = b + 2;
    EXPECT(pcclAllReduceMultipleWithRetry(ops, 2, comm, &info, 1), IA);
    ops[1].sendbuf = a;
    ops[1].recvbuf = a; /* writes memory op 0 reads */
    EXPECT(pcclAllReduceMultipleWithRetry(ops, 2, comm, &info, 1), IA);
    ops[1].recvbuf = a + 4; /* reads memory op 0 reads: fine */
    ops[1].descriptor.op = (pcclRedOp_t)-3;
    EXPECT(pcclAllReduceMultipleWithRetry(ops, 2, comm, &info, 1), IA);
    memset(&info, 0xff, sizeof info);
    CHECK(pcclAllReduceMultipleWithRetry(ops, 0, comm, &info, 1));
    FAIL_IF(info.local_world_size != 0 || info.tx_bytes != 0, "info not zeroed");

    /* pcclSynchronizeSharedState */
    infos[0].name = "a";
    infos[0].data = a;
    infos[0].count = 4;
    infos[0].datatype = pcclFloat;
    infos[0].device_type = pcclDeviceCpu;
    infos[0].allow_content_inequality = false;
    infos[1] = infos[0];
    infos[1].name = "b";
    infos[1].data = b;
    state.revision = 0;
    state.count = 2;
    state.infos = infos;
#define SYNC(st) pcclSynchronizeSharedState(comm, st, PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR, NULL)
    EXPECT(pcclSynchronizeSharedState(NULL, &state, PCCL_SHARED_STATE_SYNC_STRATEGY_RECEIVE_ONLY, NULL), IA);
    EXPECT(SYNC(NULL), IA);
    EXPECT(pcclSynchronizeSharedState(comm, &state, (pcclSharedStateSyncStrategy_t)3, NULL), IA);
    state.infos = NULL;
    EXPECT(SYNC(&state), IA);
    state.infos = infos;
    infos[1].name = NULL;
    EXPECT(SYNC(&state), IA);
    infos[1].name = "a"; /* duplicate */
    EXPECT(SYNC(&state), IA);
    infos[1].name = "\xff\xfe"; /* not UTF-8 */
    EXPECT(SYNC(&state), IA);
    infos[1].name = "b";
    infos[1].data = NULL;
    EXPECT(SYNC(&state), IA);
    infos[1].data = a + 2; /* overlaps "a" */
    EXPECT(SYNC(&state), IA);
    infos[1].data = b;
    infos[1].device_type = pcclDeviceCuda; /* no CUDA support in this build */
    EXPECT(SYNC(&state), IA);
    infos[1].device_type = (pcclDeviceType_t)2;
    EXPECT(SYNC(&state), IA);
    infos[1].device_type = pcclDeviceCpu;
    infos[1].datatype = (pcclDataType_t)42;
    EXPECT(SYNC(&state), IA);
    infos[1].datatype = pcclFloat;
    infos[1].count = (size_t)-1 / 2;
    EXPECT(SYNC(&state), IA);
    infos[1].count = 4;
    FAIL_IF(state.revision != 0, "revision changed");
    (void)v;
}

/* The calls with valid arguments on a communicator that is not connected. */
static void unconnected(pcclComm_t *comm) {
    pcclReduceDescriptor_t desc = reduce_desc(4, pcclFloat, pcclSum, 7);
    pcclAsyncReduceOp_t handle;
    pcclReduceOpDescriptor_t op;
    pcclTensorInfo_t info;
    pcclSharedState_t state;
    float a[4], b[4];
    int v;
    bool pending;
    memset(a, 0, sizeof a);
    EXPECT(pcclGetAttribute(comm, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, &v), pcclInvalidUsage);
    EXPECT(pcclUpdateTopology(comm), pcclInvalidUsage);
    EXPECT(pcclArePeersPending(comm, &pending), pcclInvalidUsage);
    EXPECT(pcclAllReduce(a, b, &desc, comm, NULL), pcclInvalidUsage);
    EXPECT(pcclAllReduceAsync(a, b, &desc, comm, &handle), pcclInvalidUsage);
    op.sendbuf = a;
    op.recvbuf = a;
    op.descriptor = desc;
    EXPECT(pcclAllReduceMultipleWithRetry(&op, 1, comm, NULL, 4), pcclInvalidUsage);
    info.name = "a";
    info.data = a;
    info.count = 4;
    info.datatype = pcclFloat;
    info.device_type = pcclDeviceCpu;
    info.allow_content_inequality = false;
    state.revision = 0;
    state.count = 1;
    state.infos = &info;
    EXPECT(pcclSynchronizeSharedState(comm, &state, PCCL_SHARED_STATE_SYNC_STRATEGY_ENFORCE_POPULAR, NULL),
           pcclInvalidUsage);
}

/* A single peer: connected, but alone in its group. */
static void alone(pcclComm_t *comm) {
    pcclReduceDescriptor_t desc = reduce_desc(4, pcclFloat, pcclSum, 3);
    pcclAsyncReduceOp_t handle;
    pcclReduceOpDescriptor_t op;
    pcclResult_t r;
    float a[4], b[4];
    int v = 0;
    bool pending = true;
    memset(a, 0, sizeof a);
    EXPECT(pcclConnect(comm), pcclInvalidUsage); /* second call */
    CHECK(pcclGetAttribute(comm, PCCL_ATTRIBUTE_GLOBAL_WORLD_SIZE, &v));
    FAIL_IF(v != 1, "world %d", v);
    CHECK(pcclGetAttribute(comm, PCCL_ATTRIBUTE_PEER_GROUP_WORLD_SIZE, &v));
    FAIL_IF(v != 1, "group %d", v);
    CHECK(pcclGetAttribute(comm, PCCL_ATTRIBUTE_NUM_DISTINCT_PEER_GROUPS, &v));
    FAIL_IF(v != 1, "groups %d", v);
    CHECK(pcclGetAttribute(comm, PCCL_ATTRIBUTE_LARGEST_PEER_GROUP_WORLD_SIZE, &v));
    FAIL_IF(v != 1, "largest %d", v);
    CHECK(pcclArePeersPending(comm, &pending));
    FAIL_IF(pending, "peers pending");
    CHECK(pcclUpdateTopology(comm));
    EXPECT(pcclAllReduce(a, b, &desc, comm, NULL), pcclTooFewPeers);
    r = pcclAllReduceAsync(a, b, &desc, comm, &handle);
    if (r == pcclSuccess) {
        FAIL_IF(handle.comm != comm || handle.tag != 3, "bad handle");
        r = pcclAwaitAsyncReduce(&handle, NULL);
        EXPECT(pcclAwaitAsyncReduce(&handle, NULL), IA); /* already awaited */
    }
    EXPECT(r, pcclTooFewPeers);
    op.sendbuf = a;
    op.recvbuf = b;
    op.descriptor = desc;
    EXPECT(pcclAllReduceMultipleWithRetry(&op, 1, comm, NULL, 4), pcclTooFewPeers);
}

int main(int argc, char **argv) {
    unsigned port = port_arg(argc, argv, 1), dead_port = port_arg(argc, argv, 2);
    pcclMasterInstance_t *master = NULL, *unused = NULL;
    pcclBuildInfo_t build;
    pcclComm_t *comm;
    ccoip_socket_address_t addr;

    not_initialized();
    CHECK(pcclInit());
    CHECK(pcclInit()); /* idempotent */

    EXPECT(pcclGetBuildInfo(NULL), IA);
    build.has_cuda_support = true;
    CHECK(pcclGetBuildInfo(&build));
    FAIL_IF(build.has_cuda_support, "CUDA support claimed");

    create_args();

    /* Master life cycle and arguments. */
    EXPECT(pcclCreateMaster(loopback(port), NULL), IA);
    addr = loopback(port);
    addr.inet.protocol = (ccoip_inet_protocol_t)2;
    EXPECT(pcclCreateMaster(addr, &master), IA);
    FAIL_IF(master != NULL, "an output was written");
    EXPECT(pcclRunMaster(NULL), IA);
    EXPECT(pcclInterruptMaster(NULL), IA);
    EXPECT(pcclMasterAwaitTermination(NULL), IA);
    EXPECT(pcclDestroyMaster(NULL), IA);
    CHECK(pcclCreateMaster(loopback(port), &unused));
    EXPECT(pcclMasterSetHttpAddress(NULL, &addr), IA);
    EXPECT(pcclMasterSetHttpAddress(unused, NULL), IA);
    EXPECT(pcclMasterSetHttpAddress(unused, &addr), IA); /* unknown protocol */
    {
        ccoip_socket_address_t http = loopback(0);
        CHECK(pcclMasterSetHttpAddress(unused, &http));
    }
    EXPECT(pcclInterruptMaster(unused), pcclInvalidUsage); /* never run */
    EXPECT(pcclMasterAwaitTermination(unused), pcclInvalidUsage);
    CHECK(pcclDestroyMaster(unused));
    CHECK(pcclCreateMaster(loopback(port), &master));
    CHECK(pcclRunMaster(master));
    EXPECT(pcclRunMaster(master), IA); /* running twice */

    /* A communicator before and after pcclConnect. */
    comm = create(port);
    comm_args(comm);
    unconnected(comm);
    CHECK(pcclConnect(comm));
    comm_args(comm);
    alone(comm);
    CHECK(pcclDestroyCommunicator(comm));

    CHECK(pcclInterruptMaster(master));
    CHECK(pcclInterruptMaster(master)); /* idempotent */
    CHECK(pcclMasterAwaitTermination(master));
    CHECK(pcclDestroyMaster(master));

    /* No master there: the connection fails (after the library's retries). */
    comm = create(dead_port);
    EXPECT(pcclConnect(comm), pcclMasterConnectionFailed);
    CHECK(pcclDestroyCommunicator(comm));

    printf("OK\n");
    return 0;
}
