/*
 * Exit-cost guest, port I/O: EXITS writes to the UART scratch register (port 0x3FF),
 * each a separate KVM_EXIT_IO, then the VM ends (0xFE to port 0x64).
 *
 * EXITS is fixed at build time (-DEXITS=N). The writes are unrolled (`.rept`): on a KVM that
 * emulates guest kernel code every loop instruction would cost emulation time, so the guest
 * executes nothing between two exits but the `out` itself. The harness times a run with
 * EXITS=0 and one with EXITS=N; (T(N) - T(0)) / N is the cost of one exit, with process start,
 * VM set-up and tear-down cancelled out.
 */
#include "serial.h"

#ifndef EXITS
#error "build with -DEXITS=N"
#endif

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

#define UART_SCRATCH_PORT (COM1_PORT + 7) /* 0x3FF: a real register, no side effects */

void guest_main(void)
{
    __asm__ volatile(".rept " STRINGIFY(EXITS) "\n\t"
                     "outb %%al, %%dx\n\t"
                     ".endr"
                     : : "a"(0x5A), "d"(UART_SCRATCH_PORT) : "memory");
}
