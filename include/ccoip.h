/*
 * ccoip.h: PCCL programs include this header for the protocol's port constants
 * (CCOIP_PROTOCOL_PORT_MASTER, ...). They are defined in pccl.h, which this includes.
 */
#ifndef CCOIP_H
#define CCOIP_H

#include "pccl.h"

#endif /* CCOIP_H */
