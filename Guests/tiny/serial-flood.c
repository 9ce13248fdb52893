/*
 * Tiny 64-bit guest: writes to COM1 forever, 4 KiB per `rep outsb` (one port-I/O exit each),
 * never reading the line status. Tests that a stalled console reader cannot keep the VM from
 * stopping. The bytes are the pattern of serial-burst: byte k is 'a' + k % 26.
 */
#include "serial.h"
#include "pattern.h"

void guest_main(void)
{
    pattern_fill();
    for (uint64_t block = 0;; block++)
        pattern_write_block(block);
}
