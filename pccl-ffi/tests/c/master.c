/* A master for the tests: runs on 127.0.0.1:PORT, prints READY, stops when stdin closes.
 * usage: master PORT [SECRET [encrypt]]: SECRET, unless "-", is set with
 * pcclMasterSetRunSecret, and "encrypt" turns on pcclMasterSetEncrypt; otherwise the
 * environment (PCCL_RUN_SECRET, PCCL_RUN_SECRET_FILE, PCCL_ENCRYPT) decides. */
#include "common.h"

int main(int argc, char **argv) {
    pcclMasterInstance_t *master = NULL;
    CHECK(pcclInit());
    CHECK(pcclCreateMaster(loopback(port_arg(argc, argv, 1)), &master));
    if (argc > 2 && strcmp(argv[2], "-") != 0) CHECK(pcclMasterSetRunSecret(master, argv[2]));
    if (argc > 3 && strcmp(argv[3], "encrypt") == 0) CHECK(pcclMasterSetEncrypt(master, true));
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
