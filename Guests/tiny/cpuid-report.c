/*
 * Tiny 64-bit guest that reports what its `cpuid` instruction returns for the KVM paravirtual
 * leaves and the topology leaves, one leaf per line, then "done":
 *
 *   cpuid: leaf=40000000 sub=0 eax=40000001 ebx=4b4d564b ecx=564b4d56 edx=0000004d sig=KVMKVMKVM
 *   cpuid: leaf=40000001 sub=0 eax=01007efb ebx=00000000 ecx=00000000 edx=00000000
 *   cpuid: leaf=00000001 sub=0 eax=... ebx=... ecx=... edx=...
 *   cpuid: leaf=00000004 sub=0 ...
 *   cpuid: leaf=0000000b sub=0 ...                 (and sub=1)
 *   cpuid: leaf=80000001 sub=0 ...
 *   cpuid: leaf=80000008 sub=0 ...
 *   cpuid: leaf=8000001e sub=0 ...
 *   done
 *
 * Register values are eight lowercase hex digits without a prefix. `sig=` is the 12-byte
 * hypervisor signature of leaf 0x40000000 (EBX, ECX, EDX), NUL bytes left out and other
 * non-printable bytes as '.'.
 * Leaves above the maximum the processor reports (leaf 0 / 0x80000000 EAX) are printed as
 * "cpuid: leaf=XXXXXXXX sub=N absent". On the development host only the KVM leaves
 * (0x40000000-) follow the VMM's KVM_SET_CPUID2 table; the others are the host's values.
 */
#include "serial.h"

struct cpuid_regs {
    uint32_t eax, ebx, ecx, edx;
};

static struct cpuid_regs cpuid(uint32_t leaf, uint32_t subleaf)
{
    struct cpuid_regs r;
    __asm__ volatile("cpuid"
                     : "=a"(r.eax), "=b"(r.ebx), "=c"(r.ecx), "=d"(r.edx)
                     : "a"(leaf), "c"(subleaf));
    return r;
}

static void put_register(const char *label, uint32_t value)
{
    serial_puts(label);
    serial_puthex32(value);
}

static void put_signature_bytes(uint32_t word)
{
    for (int i = 0; i < 4; i++) {
        char c = (char)(word >> (8 * i));
        if (c != 0)
            serial_putc(c >= 0x20 && c < 0x7F ? c : '.');
    }
}

/* Prints one leaf; returns its registers. `max` is the highest leaf of its range, or 0. */
static struct cpuid_regs report(uint32_t leaf, uint32_t subleaf, uint32_t max)
{
    struct cpuid_regs r = {0, 0, 0, 0};
    put_register("cpuid: leaf=", leaf);
    serial_puts(" sub=");
    serial_putdec32(subleaf);
    if (max != 0 && leaf > max) {
        serial_puts(" absent\n");
        return r;
    }
    r = cpuid(leaf, subleaf);
    put_register(" eax=", r.eax);
    put_register(" ebx=", r.ebx);
    put_register(" ecx=", r.ecx);
    put_register(" edx=", r.edx);
    if (leaf == 0x40000000) {
        serial_puts(" sig=");
        put_signature_bytes(r.ebx);
        put_signature_bytes(r.ecx);
        put_signature_bytes(r.edx);
    }
    serial_putc('\n');
    return r;
}

void guest_main(void)
{
    uint32_t max_basic = cpuid(0, 0).eax;
    uint32_t max_extended = cpuid(0x80000000, 0).eax;

    struct cpuid_regs signature = report(0x40000000, 0, 0);
    report(0x40000001, 0, signature.eax >= 0x40000001 ? 0 : 0x40000000);
    report(0x00000001, 0, max_basic);
    report(0x00000004, 0, max_basic);
    report(0x0000000B, 0, max_basic);
    report(0x0000000B, 1, max_basic);
    report(0x80000001, 0, max_extended);
    report(0x80000008, 0, max_extended);
    report(0x8000001E, 0, max_extended);
    serial_puts("done\n");
}
