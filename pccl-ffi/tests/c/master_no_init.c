/*
 * A master run the way PCCL 1.0's own master program and Getting Started guide run one:
 * without pcclInit. Creating, running, interrupting, awaiting and destroying it succeed,
 * and none of them initialises the library as a side effect: a communicator function
 * still returns pcclNotInitialized before and after. Runs on 127.0.0.1:PORT, prints
 * READY once serving, stops when stdin closes, prints DONE after the last check.
 *
 * usage: master_no_init PORT
 */
#include "common.h"

static void communicator_not_initialized(void) {
    pcclCommCreateParams_t params;
    pcclComm_t *comm = NULL;
    memset(&params, 0, sizeof params);
    params.master_address = loopback(1);
    EXPECT(pcclCreateCommunicator(&params, &comm), pcclNotInitialized);
    EXPECT(pcclConnect(NULL), pcclNotInitialized);
    FAIL_IF(comm != NULL, "an output was written");
}

int main(int argc, char **argv) {
    pcclMasterInstance_t *master = NULL;
    pcclBuildInfo_t build;
    unsigned port = port_arg(argc, argv, 1);

    communicator_not_initialized();
    CHECK(pcclGetBuildInfo(&build));
    CHECK(pcclCreateMaster(loopback(port), &master));
    FAIL_IF(master == NULL, "no master");
    communicator_not_initialized();
    CHECK(pcclRunMaster(master));
    printf("READY\n");
    fflush(stdout);
    while (getchar() != EOF) {
    }
    CHECK(pcclInterruptMaster(master));
    CHECK(pcclMasterAwaitTermination(master));
    CHECK(pcclDestroyMaster(master));
    communicator_not_initialized();
    printf("DONE\n");
    return 0;
}
