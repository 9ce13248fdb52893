/*
 * Tiny SMP guest: every vCPU reports its local APIC ID.
 *
 * The BSP (entered in 64-bit long mode like every tiny ELF guest):
 *  1. reads its APIC ID from the local APIC (MMIO 0xFEE00020, bits 31:24);
 *  2. finds the processors in the Intel MultiProcessor Specification 1.4 tables: the MP floating
 *     pointer ("_MP_", 16-byte aligned, 16-byte checksum) in the first KiB of the EBDA (the BDA
 *     word at 0x40E, then 0x9FC00) or in 0xF0000-0xFFFFF, then the configuration table it
 *     points at ("PCMP", checksum over the base table length), whose type-0 entries are the
 *     processors (APIC ID at byte 1, flags at byte 3: bit 0 enabled, bit 1 BSP);
 *     prints "mptable: cpus=N bsp=ID", or "mptable: missing" / "mptable: bad checksum" and ends;
 *  3. prints "cpu: apic-id=ID (bsp)";
 *  4. copies the real-mode AP trampoline below to 0x10000 and starts every other enabled
 *     processor with INIT, INIT de-assert, SIPI, SIPI (vector 0x10: CS:IP = 1000:0000);
 *  5. waits (bounded, about 2 s of polling) until every AP has checked in, then prints
 *     "smp: all N cpus reported" (or "smp: timeout checked-in=K", K = APs checked in) and ends
 *     the VM (0xFE to port 0x64 ends the whole VM, halted APs included).
 *
 * Each AP runs the trampoline: real mode -> 32-bit protected mode (flat GDT inside the
 * trampoline page, no paging), reads its APIC ID, takes the print spinlock (lock xchg), prints
 * "cpu: apic-id=ID" on COM1, releases the lock, increments the check-in counter (lock incl) and
 * halts with interrupts off forever.
 *
 * MMIO goes through register-indirect accesses only (see mmio.h).
 */
#include "physmem.h"
#include "serial.h"
#include "mmio.h"

#define LAPIC_BASE        0xFEE00000UL
#define LAPIC_ID          (LAPIC_BASE + 0x020)
#define LAPIC_ICR_LOW     (LAPIC_BASE + 0x300)
#define LAPIC_ICR_HIGH    (LAPIC_BASE + 0x310)
#define ICR_INIT_ASSERT   0x00004500u      /* INIT, level assert, edge */
#define ICR_INIT_DEASSERT 0x00008500u      /* INIT, level de-assert, level triggered */
#define ICR_STARTUP       0x00004600u      /* Start-up IPI | vector */
#define ICR_BUSY          (1u << 12)       /* delivery status: send pending */

#define TRAMPOLINE_ADDR   0x10000          /* must equal SIPI_VECTOR << 12 */
#define SIPI_VECTOR       0x10

#define BDA_EBDA_SEGMENT  0x40E
#define DEFAULT_EBDA      0x9FC00
#define BIOS_ROM_START    0xF0000
#define BIOS_ROM_END      0x100000

#define MAX_CPUS          256              /* APIC IDs in the MP table are 8 bits */

/* Polling budgets (guest code is emulated on the development host: ~5 us per iteration). */
#define ICR_POLL_LIMIT    1000
#define STEP_DELAY        200              /* pause iterations between the IPIs (~1 ms) */
#define CHECKIN_POLLS     300000           /* ~1.2-2 s measured, depending on host load */
#define LOCK_SPIN_LIMIT   400000

/* Shared with the AP trampoline (which uses their absolute addresses). */
volatile uint32_t smp_print_lock;
volatile uint32_t smp_checked_in;
uint8_t smp_ap_stack[256] __attribute__((aligned(16)));   /* used only under smp_print_lock */

extern const uint8_t ap_trampoline_start[], ap_trampoline_end[];

/*
 * The AP trampoline, copied to TRAMPOLINE_ADDR by the BSP and entered by the SIPI in real
 * mode at 1000:0000. Position-dependent references inside the copy are written as
 * TRAMPOLINE_ADDR + (label - ap_trampoline_start); everything else it touches (the lock, the
 * counter, the stack, the message) is at its absolute link address in the guest image, which
 * flat 32-bit segments without paging reach directly.
 */
__asm__(
    ".pushsection .rodata.ap_trampoline, \"a\", @progbits\n"
    ".balign 16\n"
    ".globl ap_trampoline_start\n"
    ".globl ap_trampoline_end\n"
    ".code16\n"
    "ap_trampoline_start:\n"
    "    cli\n"
    "    cld\n"
    "    movw %cs, %ax\n"
    "    movw %ax, %ds\n"
    "    lgdtl ap_gdtr - ap_trampoline_start\n"
    "    movl %cr0, %eax\n"
    "    orl $1, %eax\n"                          /* CR0.PE */
    "    movl %eax, %cr0\n"
    "    ljmpl $0x08, $(0x10000 + ap_pm32 - ap_trampoline_start)\n"
    ".code32\n"
    "ap_pm32:\n"
    "    movl $0x10, %eax\n"
    "    movw %ax, %ds\n"
    "    movw %ax, %es\n"
    "    movw %ax, %ss\n"
    "    movw %ax, %fs\n"
    "    movw %ax, %gs\n"
    "    movl $0xFEE00020, %esi\n"                /* LAPIC ID register */
    "    movl (%esi), %ebx\n"
    "    shrl $24, %ebx\n"
    /* Take the print lock. */
    "1:  movl $1, %eax\n"
    "    lock xchgl %eax, smp_print_lock\n"
    "    testl %eax, %eax\n"
    "    jz 2f\n"
    "    pause\n"
    "    jmp 1b\n"
    "2:  movl $(smp_ap_stack + 256), %esp\n"
    "    movl $ap_message, %esi\n"
    "    call ap_puts\n"
    /* APIC ID in decimal: push the digits, then print them. */
    "    movl %ebx, %eax\n"
    "    xorl %ecx, %ecx\n"
    "    movl $10, %edi\n"
    "3:  xorl %edx, %edx\n"
    "    divl %edi\n"
    "    addl $0x30, %edx\n"
    "    pushl %edx\n"
    "    incl %ecx\n"
    "    testl %eax, %eax\n"
    "    jnz 3b\n"
    "4:  popl %eax\n"
    "    call ap_putc\n"
    "    loop 4b\n"
    "    movb $0x0A, %al\n"
    "    call ap_putc\n"
    /* Release the lock, then check in. */
    "    movl $0, %eax\n"
    "    xchgl %eax, smp_print_lock\n"
    "    lock incl smp_checked_in\n"
    "5:  cli\n"
    "    hlt\n"
    "    jmp 5b\n"
    /* ap_puts: prints the NUL-terminated string at %esi. Clobbers %eax, %esi. */
    "ap_puts:\n"
    "    movb (%esi), %al\n"
    "    testb %al, %al\n"
    "    jz 6f\n"
    "    call ap_putc\n"
    "    incl %esi\n"
    "    jmp ap_puts\n"
    "6:  ret\n"
    /* ap_putc: writes %al to COM1 (short LSR.THRE poll, as serial_putc). Keeps %eax's low byte. */
    "ap_putc:\n"
    "    pushl %ecx\n"
    "    pushl %edx\n"
    "    movb %al, %ah\n"
    "    movl $16, %ecx\n"
    "    movw $0x3FD, %dx\n"
    "7:  inb %dx, %al\n"
    "    testb $0x20, %al\n"
    "    jnz 8f\n"
    "    decl %ecx\n"
    "    jnz 7b\n"
    "8:  movb %ah, %al\n"
    "    movw $0x3F8, %dx\n"
    "    outb %al, %dx\n"
    "    popl %edx\n"
    "    popl %ecx\n"
    "    ret\n"
    ".balign 8\n"
    "ap_gdt:\n"
    "    .quad 0\n"
    "    .quad 0x00cf9a000000ffff\n"              /* 0x08: flat 32-bit code */
    "    .quad 0x00cf92000000ffff\n"              /* 0x10: flat 32-bit data */
    "ap_gdtr:\n"
    "    .word ap_gdtr - ap_gdt - 1\n"
    "    .long 0x10000 + ap_gdt - ap_trampoline_start\n"
    "ap_trampoline_end:\n"
    ".code64\n"
    ".popsection\n"
    ".pushsection .rodata.ap_message, \"a\", @progbits\n"
    "ap_message:\n"
    "    .asciz \"cpu: apic-id=\"\n"
    ".popsection\n");

_Static_assert(TRAMPOLINE_ADDR == 0x10000 && TRAMPOLINE_ADDR == SIPI_VECTOR << 12,
               "the trampoline asm hard-codes 0x10000");

static inline void cpu_relax(void)
{
    __asm__ volatile("pause" ::: "memory");
}

static void delay(int iterations)
{
    for (int i = 0; i < iterations; i++)
        cpu_relax();
}


static uint8_t checksum(uint64_t addr, uint32_t length)
{
    uint8_t sum = 0;
    for (uint32_t i = 0; i < length; i++)
        sum = (uint8_t)(sum + rd8(addr + i));
    return sum;
}

/* Print lock shared with the APs; bounded so a wedged AP cannot hang the BSP. */
static void lock_print(void)
{
    for (int i = 0; i < LOCK_SPIN_LIMIT; i++) {
        if (__atomic_exchange_n(&smp_print_lock, 1u, __ATOMIC_ACQUIRE) == 0)
            return;
        cpu_relax();
    }
}

static void unlock_print(void)
{
    __atomic_store_n(&smp_print_lock, 0u, __ATOMIC_RELEASE);
}

/* Address of a "_MP_" floating pointer (16-byte aligned) in [start, end), or 0. */
static uint64_t scan_mp(uint64_t start, uint64_t end)
{
    for (uint64_t p = start & ~0xFULL; p + 16 <= end; p += 16) {
        if (rd32(p) == 0x5F504D5Fu)   /* "_MP_" */
            return p;
    }
    return 0;
}

static uint64_t find_mp_floating_pointer(void)
{
    uint64_t ebda = (uint64_t)rd16(BDA_EBDA_SEGMENT) << 4;
    uint64_t found = 0;
    if (ebda >= 0x400 && ebda < BIOS_ROM_START)
        found = scan_mp(ebda, ebda + 1024);
    if (!found && ebda != DEFAULT_EBDA)
        found = scan_mp(DEFAULT_EBDA, DEFAULT_EBDA + 1024);
    if (!found)
        found = scan_mp(BIOS_ROM_START, BIOS_ROM_END);
    return found;
}

struct cpu_list {
    uint32_t count;              /* enabled processors */
    int bsp_id;                  /* APIC ID flagged BSP in the table, or -1 */
    uint8_t ids[MAX_CPUS];
};

/* Returns 0 with `cpus` filled, or prints the mptable failure line and returns -1. */
static int read_mp_table(struct cpu_list *cpus)
{
    cpus->count = 0;
    cpus->bsp_id = -1;

    uint64_t fp = find_mp_floating_pointer();
    if (fp == 0) {
        serial_puts("mptable: missing\n");
        return -1;
    }
    if (checksum(fp, 16) != 0) {
        serial_puts("mptable: bad checksum\n");
        return -1;
    }
    uint64_t table = rd32(fp + 4);
    if (table == 0 || table >= 0xFFFF0000u || rd32(table) != 0x504D4350u) {   /* "PCMP" */
        serial_puts("mptable: missing\n");
        return -1;
    }
    uint32_t length = rd16(table + 4);
    if (length < 44 || checksum(table, length) != 0) {
        serial_puts("mptable: bad checksum\n");
        return -1;
    }
    uint32_t entries = rd16(table + 34);
    uint64_t p = table + 44, end = table + length;
    for (uint32_t i = 0; i < entries && p < end; i++) {
        uint8_t type = rd8(p);
        if (type == 0) {                          /* processor */
            if (p + 20 > end)
                break;
            uint8_t id = rd8(p + 1), flags = rd8(p + 3);
            if (flags & 1) {
                if (cpus->count < MAX_CPUS)
                    cpus->ids[cpus->count++] = id;
                if (flags & 2)
                    cpus->bsp_id = id;
            }
            p += 20;
        } else if (type <= 4) {                   /* bus, IOAPIC, I/O and local interrupt */
            p += 8;
        } else {
            break;                                /* unknown entry: its length is unknown */
        }
    }
    return 0;
}

static void icr_wait(void)
{
    for (int i = 0; i < ICR_POLL_LIMIT; i++) {
        if (!(mmio_read32(LAPIC_ICR_LOW) & ICR_BUSY))
            return;
        cpu_relax();
    }
}

static void send_ipi(uint32_t apic_id, uint32_t command)
{
    mmio_write32(LAPIC_ICR_HIGH, apic_id << 24);
    mmio_write32(LAPIC_ICR_LOW, command);
    icr_wait();
}

static void start_ap(uint32_t apic_id)
{
    send_ipi(apic_id, ICR_INIT_ASSERT);
    delay(STEP_DELAY);
    send_ipi(apic_id, ICR_INIT_DEASSERT);
    delay(STEP_DELAY);
    send_ipi(apic_id, ICR_STARTUP | SIPI_VECTOR);
    delay(STEP_DELAY);
    send_ipi(apic_id, ICR_STARTUP | SIPI_VECTOR);
    delay(STEP_DELAY);
}

static void copy_trampoline(void)
{
    uint64_t length = (uint64_t)(ap_trampoline_end - ap_trampoline_start);
    void *dst = (void *)TRAMPOLINE_ADDR;
    const void *src = ap_trampoline_start;
    __asm__ volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(length) : : "memory");
}

void guest_main(void)
{
    static struct cpu_list cpus;
    uint32_t bsp_id = mmio_read32(LAPIC_ID) >> 24;

    if (read_mp_table(&cpus) != 0)
        return;
    serial_puts("mptable: cpus=");
    serial_putdec32(cpus.count);
    serial_puts(" bsp=");
    if (cpus.bsp_id >= 0)
        serial_putdec32((uint32_t)cpus.bsp_id);
    else
        serial_puts("none");
    serial_putc('\n');

    serial_puts("cpu: apic-id=");
    serial_putdec32(bsp_id);
    serial_puts(" (bsp)\n");

    copy_trampoline();
    uint32_t started = 0;
    for (uint32_t i = 0; i < cpus.count; i++) {
        if (cpus.ids[i] == bsp_id)
            continue;
        start_ap(cpus.ids[i]);
        started++;
    }

    uint32_t checked_in = 0;
    for (int i = 0; i < CHECKIN_POLLS; i++) {
        checked_in = __atomic_load_n(&smp_checked_in, __ATOMIC_ACQUIRE);
        if (checked_in >= started)
            break;
        cpu_relax();
    }

    lock_print();
    if (checked_in >= started) {
        serial_puts("smp: all ");
        serial_putdec32(started + 1);
        serial_puts(" cpus reported\n");
    } else {
        serial_puts("smp: timeout checked-in=");
        serial_putdec32(checked_in);
        serial_putc('\n');
    }
    unlock_print();
}
