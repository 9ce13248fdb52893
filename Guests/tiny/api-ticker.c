/*
 * Tiny guest that runs until it is stopped: prints "api-ticker: start", then "tick N" after each
 * short busy wait, forever. The API tests pause it (no new ticks), resume it (ticks again),
 * snapshot it and stop it with a signal.
 */
#include <stdint.h>
#include "serial.h"

void guest_main(void)
{
    serial_puts("api-ticker: start\n");
    for (uint32_t tick = 1;; tick++) {
        for (volatile int spin = 0; spin < 2000; spin++) {
        }
        serial_put_labelled("tick ", tick);
        serial_putc('\n');
    }
}
