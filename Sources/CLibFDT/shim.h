// libfdt (Debian: libfdt-dev) for Swift. The functions and FDT_ERR_* codes import directly;
// only the header accessors, which are function-like macros, are re-exported as functions.
#ifndef SWIFTLET_CLIBFDT_SHIM_H
#define SWIFTLET_CLIBFDT_SHIM_H

#include <libfdt.h>

/// The blob's `totalsize` header field (fdt_totalsize), in host byte order.
static inline uint32_t swiftlet_fdt_totalsize(const void *fdt) { return fdt_totalsize(fdt); }

#endif
