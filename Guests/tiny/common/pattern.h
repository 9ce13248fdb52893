/* The serial-flood / serial-burst byte pattern: byte k of the output is 'a' + k % 26. */
#ifndef SWIFTLET_GUEST_PATTERN_H
#define SWIFTLET_GUEST_PATTERN_H

#include <stdint.h>
#include "serial.h"

#define PATTERN_BLOCK       4096u
#define PATTERN_PERIOD      26u
#define PATTERN_BURST_BYTES (512u << 10)

/* One block plus a period, so a block starting at any phase is a plain slice of it. */
static char pattern_buffer[PATTERN_BLOCK + PATTERN_PERIOD];

static inline void pattern_fill(void)
{
    for (unsigned i = 0; i < sizeof pattern_buffer; i++)
        pattern_buffer[i] = (char)('a' + i % PATTERN_PERIOD);
}

/* Writes block `block` (bytes block * 4096 ...) with one string-I/O instruction. */
static inline void pattern_write_block(uint64_t block)
{
    const char *source = pattern_buffer + (block * PATTERN_BLOCK) % PATTERN_PERIOD;
    uint64_t count = PATTERN_BLOCK;
    __asm__ volatile("rep outsb"
                     : "+S"(source), "+c"(count)
                     : "d"((uint16_t)COM1_PORT)
                     : "memory");
}

#endif
