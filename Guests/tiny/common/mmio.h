/*
 * MMIO accessors for the tiny guests.
 *
 * Every access goes through inline asm with the address in a register: an
 * MMIO store encoded as `movabs moffs64, eax` (which gcc emits for constant
 * addresses >= 2 GiB) hangs the development host's KVM.
 */
#ifndef SWIFTLET_GUEST_MMIO_H
#define SWIFTLET_GUEST_MMIO_H

#include <stdint.h>

static inline uint32_t mmio_read32(uintptr_t addr)
{
    uint32_t value;
    __asm__ volatile("movl (%1), %0" : "=r"(value) : "r"(addr) : "memory");
    return value;
}

static inline void mmio_write32(uintptr_t addr, uint32_t value)
{
    __asm__ volatile("movl %0, (%1)" : : "r"(value), "r"(addr) : "memory");
}

#endif
