/*
 * Tiny 64-bit guest: prints a Linux-style panic line on COM1 and then resets, as a Linux
 * guest booted with panic=N does. Swiftlet reports that as a guest panic (exit status 8).
 */
#include "serial.h"

void guest_main(void)
{
    serial_puts("Kernel panic - not syncing: tiny guest test panic\n");
    guest_exit();
}
