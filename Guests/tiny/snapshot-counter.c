/*
 * Tiny guest for snapshot tests: counts from 1 to 40, keeping the count in memory at
 * 0x300000 (COUNTER_ADDRESS) and printing "count N" after each step. At 20 it writes the
 * boot-timer port (0x440), where `swiftlet boot --snapshot-when-ready` takes the snapshot, and
 * prints "ready" at once (the restored guest's first action), then goes on. At the end it
 * prints "snapshot-counter: done at N", reports N as its exit status
 * (port 0x441) and resets. A guest restored from the snapshot prints "ready" and "count 21" first and never
 * "start": the count in memory went on from where it was.
 */
#include <stdint.h>
#include "serial.h"

#define COUNTER_ADDRESS 0x300000UL
#define BOOT_TIMER_PORT 0x440
#define BOOT_TIMER_MAGIC 123
#define EXIT_STATUS_PORT 0x441
#define LAST 40
#define SNAPSHOT_AT 20

void guest_main(void)
{
    volatile uint64_t *counter = (volatile uint64_t *)COUNTER_ADDRESS;
    serial_puts("snapshot-counter: start\n");
    *counter = 0;
    while (*counter < LAST) {
        for (volatile int spin = 0; spin < 2000; spin++) {
        }
        *counter = *counter + 1;
        serial_put_labelled("count ", (uint32_t)*counter);
        serial_putc('\n');
        if (*counter == SNAPSHOT_AT) {
            outb(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC);
            /* The first thing a guest restored from the snapshot does: a port write at once. */
            serial_puts("ready\n");
        }
    }
    serial_put_labelled("snapshot-counter: done at ", (uint32_t)*counter);
    serial_putc('\n');
    outb(EXIT_STATUS_PORT, (uint8_t)*counter);
}
