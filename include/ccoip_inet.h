/*
 * ccoip_inet.h: PCCL programs include this header for the address types
 * (ccoip_socket_address_t, ccoip_inet_address_t, ...). They are defined in pccl.h, which
 * this includes.
 */
#ifndef CCOIP_INET_H
#define CCOIP_INET_H

#include "pccl.h"

#endif /* CCOIP_INET_H */
