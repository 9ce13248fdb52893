/*
 * Tiny 64-bit guest that reports the Linux zero page (struct boot_params) the VMM passed in RSI:
 * the setup-header fields a loader writes, the e820 table, the command line and the initrd
 * (address, size and 32-bit FNV-1a hash of its bytes). One item per line, then "done":
 *
 *   zeropage: rsi=0x7000
 *   header: boot_flag=0xaa55 magic=0x53726448 version=0x20f type_of_loader=0xff loadflags=0x81
 *   e820: count=N                                  (decimal)
 *   e820: addr=0x0 size=0x9fc00 type=1             (one per entry, table order; type decimal)
 *   cmdline: ptr=0x20000 size=LEN text=...         (LEN = strlen, decimal; text as is)
 *   initrd: addr=0x... size=0x... fnv1a=XXXXXXXX   (hash: 8 lowercase hex digits, no prefix)
 *   done
 *
 * Addresses and sizes are lowercase hex, 0x-prefixed, without leading zeros. Offsets follow
 * Linux's Documentation/arch/x86/zero-page.rst and boot.rst. Every loop is bounded (garbage in
 * the zero page must not hang or fault the guest): at most 128 e820 entries are printed, the
 * command line's length is searched for over at most 64 KiB (the VMM's command line area) and
 * at most its first 4096 bytes are printed, and nothing outside the VMM's 4 GiB identity map is
 * touched.
 */
#include "physmem.h"
#include "serial.h"

#define BP_EXT_RAMDISK_IMAGE  0x0C0
#define BP_EXT_RAMDISK_SIZE   0x0C4
#define BP_EXT_CMD_LINE_PTR   0x0C8
#define BP_E820_ENTRIES       0x1E8
#define BP_BOOT_FLAG          0x1FE
#define BP_HEADER_MAGIC       0x202
#define BP_VERSION            0x206
#define BP_TYPE_OF_LOADER     0x210
#define BP_LOADFLAGS          0x211
#define BP_RAMDISK_IMAGE      0x218
#define BP_RAMDISK_SIZE       0x21C
#define BP_CMD_LINE_PTR       0x228
#define BP_E820_TABLE         0x2D0
#define BP_SIZE               0x1000

#define E820_ENTRY_SIZE       20
#define E820_MAX_ENTRIES      128
#define CMDLINE_MAX_PRINT     4096
#define CMDLINE_MAX_SCAN      0x10000          /* strlen bound: the VMM's command line area */
#define IDENTITY_MAP_END      0x100000000ULL   /* the VMM maps the first 4 GiB */

#define FNV1A_BASIS           0x811c9dc5u
#define FNV1A_PRIME           0x01000193u


/* "0x" and lowercase hex digits without leading zeros ("0x0" for zero). */
static void put_hex(uint64_t value)
{
    static const char digits[16] = "0123456789abcdef";
    int shift = 60;
    serial_puts("0x");
    while (shift > 0 && ((value >> shift) & 0xF) == 0)
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        serial_putc(digits[(value >> shift) & 0xF]);
}

/* True if [addr, addr + size) lies inside the identity-mapped first 4 GiB. */
static int mapped(uint64_t addr, uint64_t size)
{
    return addr < IDENTITY_MAP_END && size <= IDENTITY_MAP_END - addr;
}

static void report_header(uint64_t bp)
{
    serial_puts("header: boot_flag=");
    put_hex(rd16(bp + BP_BOOT_FLAG));
    serial_puts(" magic=");
    put_hex(rd32(bp + BP_HEADER_MAGIC));
    serial_puts(" version=");
    put_hex(rd16(bp + BP_VERSION));
    serial_puts(" type_of_loader=");
    put_hex(rd8(bp + BP_TYPE_OF_LOADER));
    serial_puts(" loadflags=");
    put_hex(rd8(bp + BP_LOADFLAGS));
    serial_putc('\n');
}

static void report_e820(uint64_t bp)
{
    uint32_t count = rd8(bp + BP_E820_ENTRIES);
    serial_puts("e820: count=");
    serial_putdec32(count);
    serial_putc('\n');
    if (count > E820_MAX_ENTRIES)
        count = E820_MAX_ENTRIES;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t entry = bp + BP_E820_TABLE + (uint64_t)i * E820_ENTRY_SIZE;
        serial_puts("e820: addr=");
        put_hex(rd64(entry));
        serial_puts(" size=");
        put_hex(rd64(entry + 8));
        serial_puts(" type=");
        serial_putdec32(rd32(entry + 16));
        serial_putc('\n');
    }
}

static void report_cmdline(uint64_t bp)
{
    uint64_t ptr = (uint64_t)rd32(bp + BP_CMD_LINE_PTR) | (uint64_t)rd32(bp + BP_EXT_CMD_LINE_PTR) << 32;
    serial_puts("cmdline: ptr=");
    put_hex(ptr);
    if (ptr == 0) {
        /* No command line. */
        serial_puts(" size=0 text=\n");
        return;
    }
    if (!mapped(ptr, CMDLINE_MAX_SCAN)) {
        serial_puts(" size=0 text=<unmapped>\n");
        return;
    }
    uint32_t len = 0;
    while (len < CMDLINE_MAX_SCAN && rd8(ptr + len) != 0)
        len++;
    serial_puts(" size=");
    serial_putdec32(len);
    serial_puts(" text=");
    for (uint32_t i = 0; i < len && i < CMDLINE_MAX_PRINT; i++)
        serial_putc((char)rd8(ptr + i));
    serial_putc('\n');
}

/*
 * 32-bit FNV-1a over [addr, addr + size). Every guest instruction is emulated on the
 * development host, so the bulk goes 8 bytes per (unaligned) load, unrolled: fewer
 * instructions and far fewer emulated memory reads per byte than a byte loop.
 */
static uint32_t fnv1a(uint64_t addr, uint64_t size)
{
    uint32_t hash = FNV1A_BASIS;
    uint64_t i = 0;
    for (; size - i >= 8; i += 8) {
        uint64_t w;
        __asm__ volatile("movq (%1), %0" : "=r"(w) : "r"(addr + i) : "memory");
        hash = (hash ^ (uint8_t)(w)) * FNV1A_PRIME;
        hash = (hash ^ (uint8_t)(w >> 8)) * FNV1A_PRIME;
        hash = (hash ^ (uint8_t)(w >> 16)) * FNV1A_PRIME;
        hash = (hash ^ (uint8_t)(w >> 24)) * FNV1A_PRIME;
        hash = (hash ^ (uint8_t)(w >> 32)) * FNV1A_PRIME;
        hash = (hash ^ (uint8_t)(w >> 40)) * FNV1A_PRIME;
        hash = (hash ^ (uint8_t)(w >> 48)) * FNV1A_PRIME;
        hash = (hash ^ (uint8_t)(w >> 56)) * FNV1A_PRIME;
    }
    for (; i < size; i++)
        hash = (hash ^ rd8(addr + i)) * FNV1A_PRIME;
    return hash;
}

static void report_initrd(uint64_t bp)
{
    uint64_t addr = (uint64_t)rd32(bp + BP_RAMDISK_IMAGE) | (uint64_t)rd32(bp + BP_EXT_RAMDISK_IMAGE) << 32;
    uint64_t size = (uint64_t)rd32(bp + BP_RAMDISK_SIZE) | (uint64_t)rd32(bp + BP_EXT_RAMDISK_SIZE) << 32;
    serial_puts("initrd: addr=");
    put_hex(addr);
    serial_puts(" size=");
    put_hex(size);
    serial_puts(" fnv1a=");
    if (!mapped(addr, size)) {
        serial_puts("<unmapped>\n");
        return;
    }
    serial_puthex32(fnv1a(addr, size));
    serial_putc('\n');
}

void guest_main(uint64_t boot_params)
{
    serial_puts("zeropage: rsi=");
    put_hex(boot_params);
    serial_putc('\n');
    if (!mapped(boot_params, BP_SIZE)) {
        serial_puts("zeropage: unmapped\n");
        return;
    }
    report_header(boot_params);
    report_e820(boot_params);
    report_cmdline(boot_params);
    report_initrd(boot_params);
    serial_puts("done\n");
}
