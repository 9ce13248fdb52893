/*
 * Tiny 64-bit guest exercising the VMM's MMIO test device at 0xC0000000:
 *   +0x0  ID register (read-only, 0x53574C54)
 *   +0x8  scratch register (read/write)
 *   +0x10 count of writes received (read-only)
 * Every value printed is the value actually read from the device: the
 * registers as 8 lowercase hex digits, the write count in decimal.
 */
#include "serial.h"
#include "mmio.h"

#define TESTDEV_BASE     0xC0000000UL
#define TESTDEV_ID       (TESTDEV_BASE + 0x0)
#define TESTDEV_SCRATCH  (TESTDEV_BASE + 0x8)
#define TESTDEV_WRITES   (TESTDEV_BASE + 0x10)

void guest_main(void)
{
    uint32_t id = mmio_read32(TESTDEV_ID);
    mmio_write32(TESTDEV_SCRATCH, 0xA5A5F00Du);
    uint32_t scratch1 = mmio_read32(TESTDEV_SCRATCH);
    mmio_write32(TESTDEV_SCRATCH, 0x12345678u);
    uint32_t scratch2 = mmio_read32(TESTDEV_SCRATCH);
    uint32_t writes = mmio_read32(TESTDEV_WRITES);

    serial_puts("mmio-test: id=");
    serial_puthex32(id);
    serial_puts(" scratch1=");
    serial_puthex32(scratch1);
    serial_puts(" scratch2=");
    serial_puthex32(scratch2);
    serial_puts(" writes=");
    serial_putdec32(writes);
    serial_putc('\n');
}
