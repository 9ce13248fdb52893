/* Serial output and VM exit helpers for Swiftlet's tiny 64-bit test guests. */
#ifndef SWIFTLET_GUEST_SERIAL_H
#define SWIFTLET_GUEST_SERIAL_H

#include <stdint.h>

#define COM1_PORT     0x3F8            /* 8250 UART data register */
#define COM1_LSR      (COM1_PORT + 5)  /* line status register */
#define LSR_THRE      0x20             /* transmitter holding register empty */
#define I8042_PORT    0x64             /* i8042 command port */
#define I8042_RESET   0xFE             /* pulse reset line: ends the VM */

static inline void outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port) : "memory");
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port) : "memory");
    return value;
}

void serial_putc(char c);
void serial_puts(const char *s);
/* Eight lowercase hex digits, no prefix. */
void serial_puthex32(uint32_t value);
/* Unsigned decimal, no leading zeros. */
void serial_putdec32(uint32_t value);

/* The label, then the value in unsigned decimal. */
void serial_put_labelled(const char *label, uint32_t value);

/* Prints "FAIL: <what>" and a newline, then ends the VM. */
__attribute__((noreturn)) void guest_fail(const char *what);

/* Writes 0xFE to port 0x64; never returns. */
__attribute__((noreturn)) void guest_exit(void);

#endif
