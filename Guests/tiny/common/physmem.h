/* Little-endian reads of guest physical memory for Swiftlet's tiny 64-bit test guests, which run
 * on the VMM's identity map (virtual == physical for the first 4 GiB). For RAM only: MMIO goes
 * through mmio.h. */
#ifndef SWIFTLET_GUEST_PHYSMEM_H
#define SWIFTLET_GUEST_PHYSMEM_H

#include <stdint.h>

/* The empty asm hides the constant address from gcc, which otherwise warns about small
 * constant pointers (e.g. the BIOS data area at 0x40E). */
static inline uint8_t rd8(uint64_t addr)
{
    __asm__("" : "+r"(addr));
    return *(const volatile uint8_t *)addr;
}

static inline uint16_t rd16(uint64_t addr)
{
    return (uint16_t)(rd8(addr) | (uint16_t)rd8(addr + 1) << 8);
}

static inline uint32_t rd32(uint64_t addr)
{
    return (uint32_t)rd16(addr) | (uint32_t)rd16(addr + 2) << 16;
}

static inline uint64_t rd64(uint64_t addr)
{
    return (uint64_t)rd32(addr) | (uint64_t)rd32(addr + 4) << 32;
}

#endif
