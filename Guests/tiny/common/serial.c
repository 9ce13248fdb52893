/* Serial output and VM exit helpers for Swiftlet's tiny 64-bit test guests. */
#include "serial.h"

void serial_putc(char c)
{
    /* LSR.THRE always reads as set on the VMM's UART: keep the poll short. */
    for (int tries = 0; tries < 16; tries++) {
        if (inb(COM1_LSR) & LSR_THRE)
            break;
    }
    outb(COM1_PORT, (uint8_t)c);
}

void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

void serial_puthex32(uint32_t value)
{
    static const char digits[16] = "0123456789abcdef";
    for (int shift = 28; shift >= 0; shift -= 4)
        serial_putc(digits[(value >> shift) & 0xF]);
}

void serial_putdec32(uint32_t value)
{
    char buf[10];
    int n = 0;
    do {
        buf[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value != 0);
    while (n > 0)
        serial_putc(buf[--n]);
}

void guest_exit(void)
{
    outb(I8042_PORT, I8042_RESET);
    for (;;)
        __asm__ volatile("cli; hlt");
}

void serial_put_labelled(const char *label, uint32_t value)
{
    serial_puts(label);
    serial_putdec32(value);
}

void guest_fail(const char *what)
{
    serial_puts("FAIL: ");
    serial_puts(what);
    serial_putc('\n');
    guest_exit();
}
