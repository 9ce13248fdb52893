/*
 * Exit-cost guest, MMIO: EXITS 32-bit writes to the MMIO test device's scratch register
 * (0xC0000008), each a separate KVM_EXIT_MMIO, then the VM ends (0xFE to port 0x64).
 *
 * EXITS is fixed at build time (-DEXITS=N); the stores are unrolled and register-indirect
 * (a `movabs` MMIO store hangs some KVM implementations; see common/mmio.h). See exit-pio.c
 * for how the harness turns two runs into a per-exit cost.
 */
#include <stdint.h>
#include "serial.h"

#ifndef EXITS
#error "build with -DEXITS=N"
#endif

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

#define TESTDEV_SCRATCH 0xC0000008UL

void guest_main(void)
{
    __asm__ volatile(".rept " STRINGIFY(EXITS) "\n\t"
                     "movl %%eax, (%%rdx)\n\t"
                     ".endr"
                     : : "a"(0x5A5A5A5Au), "d"((uintptr_t)TESTDEV_SCRATCH) : "memory");
}
