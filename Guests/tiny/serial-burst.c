/*
 * Tiny 64-bit guest: writes exactly PATTERN_BURST_BYTES (512 KiB) to COM1, byte k being
 * 'a' + k % 26, 4 KiB per `rep outsb`, then ends the VM. Tests that a slow but live console
 * reader receives every byte.
 */
#include "serial.h"
#include "pattern.h"

void guest_main(void)
{
    pattern_fill();
    for (uint64_t block = 0; block < PATTERN_BURST_BYTES / PATTERN_BLOCK; block++)
        pattern_write_block(block);
    guest_exit();
}
