/*
 * The p2p bind address and the logger. Runs a master on 127.0.0.1:MASTER_PORT without
 * pcclInit first (so the master functions must install the PCCL_LOG logger themselves),
 * checks pcclCommSetBindAddress's arguments, binds the communicator's p2p listener to
 * 127.0.0.1:P2P_PORT and connects. Prints CONNECTED, then waits until stdin closes (the
 * harness inspects the process's listening sockets meanwhile), checks that the address
 * can no longer change, cleans up and prints DONE.
 *
 * usage: bind_log MASTER_PORT P2P_PORT
 */
#include "common.h"

int main(int argc, char **argv) {
    unsigned master_port = port_arg(argc, argv, 1), p2p_port = port_arg(argc, argv, 2);
    pcclMasterInstance_t *master = NULL;
    pcclCommCreateParams_t params;
    pcclComm_t *comm = NULL;
    ccoip_socket_address_t bind = loopback(p2p_port), bad = loopback(0);

    EXPECT(pcclCommSetBindAddress(NULL, &bind), pcclNotInitialized);
    CHECK(pcclCreateMaster(loopback(master_port), &master));
    CHECK(pcclRunMaster(master));

    CHECK(pcclInit());
    memset(&params, 0, sizeof params);
    params.master_address = loopback(master_port);
    CHECK(pcclCreateCommunicator(&params, &comm));
    EXPECT(pcclCommSetBindAddress(NULL, &bind), pcclInvalidArgument);
    EXPECT(pcclCommSetBindAddress(comm, NULL), pcclInvalidArgument);
    bad.inet.protocol = (ccoip_inet_protocol_t)7;
    EXPECT(pcclCommSetBindAddress(comm, &bad), pcclInvalidArgument);
    /* The last address set before pcclConnect counts. */
    bad = loopback(1);
    CHECK(pcclCommSetBindAddress(comm, &bad));
    CHECK(pcclCommSetBindAddress(comm, &bind));
    CHECK(pcclConnect(comm));
    printf("CONNECTED\n");
    fflush(stdout);
    while (getchar() != EOF) {
    }
    EXPECT(pcclCommSetBindAddress(comm, &bind), pcclInvalidUsage);
    CHECK(pcclDestroyCommunicator(comm));
    CHECK(pcclInterruptMaster(master));
    CHECK(pcclMasterAwaitTermination(master));
    CHECK(pcclDestroyMaster(master));
    printf("DONE\n");
    return 0;
}
