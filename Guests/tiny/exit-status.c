/*
 * Tiny guest: reports exit status 42 on the exit-status port (0x441,
 * X86Layout.exitStatusPort) after a first report of 3 (the last write counts),
 * then ends the VM with an i8042 reset, as Swiftlet's Linux init does.
 */
#include "serial.h"

#define EXIT_STATUS_PORT 0x441

void guest_main(void)
{
    outb(EXIT_STATUS_PORT, 3);
    outb(EXIT_STATUS_PORT, 42);
    serial_puts("exit-status: reported 42\n");
}
