/* A master for the tests: runs on 127.0.0.1:PORT, prints READY, stops when stdin closes. */
#include "common.h"

int main(int argc, char **argv) {
    pcclMasterInstance_t *master = NULL;
    CHECK(pcclInit());
    CHECK(pcclCreateMaster(loopback(port_arg(argc, argv, 1)), &master));
    CHECK(pcclRunMaster(master));
    printf("READY\n");
    fflush(stdout);
    while (getchar() != EOF) {
    }
    CHECK(pcclInterruptMaster(master));
    CHECK(pcclMasterAwaitTermination(master));
    CHECK(pcclDestroyMaster(master));
    return 0;
}
