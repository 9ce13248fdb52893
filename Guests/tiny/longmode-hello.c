/* Tiny 64-bit guest: prints one line on COM1 and ends the VM. */
#include "serial.h"

void guest_main(void)
{
    serial_puts("Hello from 64-bit long mode\n");
}
