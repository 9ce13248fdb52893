// CGuestAtomics: atomic loads and stores of 16-bit fields in guest memory.
//
// The split virtqueue's ring indices and event-index fields (avail->idx, used->idx, used_event,
// avail_event) are shared with the guest's driver, which reads and writes them concurrently.
// Swift's `Atomic` (Synchronization) owns its storage and cannot be laid over foreign memory, so
// the device side reaches those fields through these functions: C11-style atomic accesses with
// acquire and release ordering on a pointer into the guest RAM mapping. On x86-64 both compile
// to a plain 16-bit `mov` (the orderings only constrain the compiler); on AArch64 to `ldarh` and
// `stlrh`.
//
// The caller passes a pointer it has bounds-checked against guest RAM and found 2-byte aligned
// (Virtqueue does both and reports a failure as a ring error): a misaligned atomic access is
// undefined behaviour. Values are in the guest's byte order (little-endian for virtio 1.x).
//
// This target depends on nothing but <stdint.h>, not on the KVM layer (CKVM): device code uses it.
#ifndef SWIFTLET_CGUESTATOMICS_H
#define SWIFTLET_CGUESTATOMICS_H

#include <stdint.h>

/// Loads the 16-bit value at `field` with acquire ordering: loads and stores that follow in
/// program order are not performed before it.
static inline uint16_t swl_guest_load_acquire_u16(const uint16_t *field) {
    return __atomic_load_n(field, __ATOMIC_ACQUIRE);
}

/// Stores `value` at `field` with release ordering: loads and stores that precede it in program
/// order are performed before it.
static inline void swl_guest_store_release_u16(uint16_t *field, uint16_t value) {
    __atomic_store_n(field, value, __ATOMIC_RELEASE);
}

#endif
