/*
 * kvm-floor: the smallest KVM_RUN loop that runs Swiftlet's benchmark guests, the floor
 * Swiftlet's exit cost is compared with (Benchmarks/run.py).
 *
 *   kvm-floor [-v] [-m MiB] guest.elf
 *
 * It builds the VM the way Swiftlet does (in-kernel irqchip and PIT, TSS and identity-map
 * pages at the same addresses, guest RAM from 0 as one anonymous MAP_NORESERVE mapping),
 * copies each PT_LOAD segment of the ELF64 to its physical address and enters e_entry in
 * 64-bit long mode exactly as Swiftlet does (X86Layout, BootGDT, IdentityPageTables,
 * X86VCPUSetup): GDT at 0x500 (null, null, code 0x10, data 0x18), empty IDT at 0x520, PML4 at
 * 0x9000, PDPT at 0xA000, four page directories of 2 MiB pages from 0xB000 mapping 4 GiB,
 * CR0 = 0x80050033, CR4.PAE, EFER = LME | LMA, RSP = RBP = 0x8FF0, RSI = 0x7000, RFLAGS = 2.
 *
 * Exits: port I/O and MMIO are counted and otherwise ignored, except a write of 0xFE to port
 * 0x64 (i8042 reset), which ends the VM with status 0. Any other exit ends it with status 1.
 * -v prints on stderr, at the end: the exit counts; the boot time, from main() to the guest's
 * first write of 123 to port 0x440 (as Swiftlet's boot timer measures it); and the guest
 * memory resident in the process (mincore) next to the process's peak RSS.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define GDT_ADDRESS 0x500
#define IDT_ADDRESS 0x520
#define ZERO_PAGE_ADDRESS 0x7000
#define STACK_POINTER 0x8FF0
#define PML4_ADDRESS 0x9000
#define PDPT_ADDRESS 0xA000
#define PAGE_DIRECTORY_ADDRESS 0xB000
#define IDENTITY_MAP_PAGE 0xFFFBC000
#define TSS_ADDRESS 0xFFFBD000

#define PTE_PRESENT (1ULL << 0)
#define PTE_WRITABLE (1ULL << 1)
#define PTE_LARGE (1ULL << 7)

static uint64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "kvm-floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *message)
{
    fprintf(stderr, "kvm-floor: %s\n", message);
    exit(1);
}

/* Copies the PT_LOAD segments of the ELF64 at `path` into guest RAM; returns e_entry. */
static uint64_t load_elf(const char *path, uint8_t *ram, uint64_t ram_size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die(path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    size_t size = (size_t)st.st_size;
    if (size < sizeof(Elf64_Ehdr))
        fail("not an ELF64 file");
    uint8_t *file = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (file == MAP_FAILED)
        die("mmap kernel");
    close(fd);
    const Elf64_Ehdr *eh = (const Elf64_Ehdr *)file;
    if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
        eh->e_machine != EM_X86_64 || eh->e_phentsize != sizeof(Elf64_Phdr) ||
        eh->e_phoff + (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > size)
        fail("not an ELF64 x86-64 executable");
    const Elf64_Phdr *ph = (const Elf64_Phdr *)(file + eh->e_phoff);
    for (int i = 0; i < eh->e_phnum; i++) {
        if (ph[i].p_type != PT_LOAD)
            continue;
        if (ph[i].p_filesz > ph[i].p_memsz || ph[i].p_offset + ph[i].p_filesz > size ||
            ph[i].p_paddr + ph[i].p_memsz > ram_size)
            fail("a PT_LOAD segment does not fit");
        memcpy(ram + ph[i].p_paddr, file + ph[i].p_offset, ph[i].p_filesz);
        /* RAM is fresh anonymous memory: the rest of p_memsz is already zero. */
    }
    uint64_t entry = eh->e_entry;
    munmap(file, size);
    return entry;
}

static void write_boot_structures(uint8_t *ram)
{
    uint64_t *gdt = (uint64_t *)(ram + GDT_ADDRESS);
    gdt[0] = 0;
    gdt[1] = 0;
    gdt[2] = 0x00AF9B000000FFFFULL; /* 0x10: flat 64-bit code (access 0x9B, flags 0xA) */
    gdt[3] = 0x00CF93000000FFFFULL; /* 0x18: flat data (access 0x93, flags 0xC) */
    *(uint64_t *)(ram + IDT_ADDRESS) = 0;

    uint64_t *pml4 = (uint64_t *)(ram + PML4_ADDRESS);
    uint64_t *pdpt = (uint64_t *)(ram + PDPT_ADDRESS);
    pml4[0] = PDPT_ADDRESS | PTE_PRESENT | PTE_WRITABLE;
    for (uint64_t d = 0; d < 4; d++) {
        uint64_t directory = PAGE_DIRECTORY_ADDRESS + d * 0x1000;
        pdpt[d] = directory | PTE_PRESENT | PTE_WRITABLE;
        uint64_t *pd = (uint64_t *)(ram + directory);
        for (uint64_t e = 0; e < 512; e++)
            pd[e] = ((d << 30) + (e << 21)) | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE;
    }
}

static struct kvm_segment segment(uint16_t selector, uint8_t type, uint8_t db, uint8_t l)
{
    struct kvm_segment s = {
        .base = 0, .limit = 0xFFFFFFFF, .selector = selector, .type = type, .present = 1,
        .dpl = 0, .db = db, .s = 1, .l = l, .g = 1, .avl = 0, .unusable = 0,
    };
    return s;
}

static void enter_long_mode(int vcpu, uint64_t entry)
{
    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    sregs.gdt.base = GDT_ADDRESS;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_ADDRESS;
    sregs.idt.limit = 7;
    sregs.cs = segment(0x10, 0xB, 0, 1);
    struct kvm_segment data = segment(0x18, 0x3, 1, 0);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data;
    sregs.cr3 = PML4_ADDRESS;
    sregs.cr4 |= 1 << 5;            /* PAE */
    sregs.cr0 = 0x80050033;         /* PE MP ET NE WP AM PG */
    sregs.efer |= (1 << 8) | (1 << 10); /* LME LMA */
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");

    struct kvm_regs regs = {0};
    regs.rflags = 0x2;
    regs.rip = entry;
    regs.rsp = regs.rbp = STACK_POINTER;
    regs.rsi = ZERO_PAGE_ADDRESS;
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
}

/* Bytes of guest RAM resident in this process (pages the guest or the loader touched). */
static uint64_t resident_bytes(uint8_t *ram, uint64_t ram_size)
{
    long page = sysconf(_SC_PAGESIZE);
    size_t pages = ram_size / (uint64_t)page;
    unsigned char *status = malloc(pages);
    if (status == NULL || mincore(ram, ram_size, status) < 0)
        return 0;
    uint64_t resident = 0;
    for (size_t i = 0; i < pages; i++)
        resident += (status[i] & 1) ? (uint64_t)page : 0;
    free(status);
    return resident;
}

static void report(uint64_t start_ns, uint64_t boot_ns, unsigned long pio_exits,
                   unsigned long mmio_exits, uint8_t *ram, uint64_t ram_size)
{
    fprintf(stderr, "kvm-floor: reset after %lu PIO and %lu MMIO exits\n", pio_exits, mmio_exits);
    if (boot_ns)
        fprintf(stderr, "kvm-floor: boot time %.3f ms (boot-timer write)\n", (double)(boot_ns - start_ns) / 1e6);
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    fprintf(stderr, "kvm-floor: guest resident %llu KiB, process peak RSS %ld KiB\n",
            (unsigned long long)(resident_bytes(ram, ram_size) / 1024), usage.ru_maxrss);
}

int main(int argc, char **argv)
{
    uint64_t start_ns = monotonic_ns(), boot_ns = 0;
    int verbose = 0;
    uint64_t ram_size = 128ULL << 20;
    int opt;
    while ((opt = getopt(argc, argv, "vm:")) != -1) {
        switch (opt) {
        case 'v': verbose = 1; break;
        case 'm': ram_size = strtoull(optarg, NULL, 0) << 20; break;
        default: fail("usage: kvm-floor [-v] [-m MiB] guest.elf");
        }
    }
    if (optind + 1 != argc || ram_size == 0 || ram_size > 0xC0000000ULL)
        fail("usage: kvm-floor [-v] [-m MiB] guest.elf  (MiB at most 3072)");

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    if (ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &(uint64_t){IDENTITY_MAP_PAGE}) < 0)
        die("KVM_SET_IDENTITY_MAP_ADDR");
    if (ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)TSS_ADDRESS) < 0)
        die("KVM_SET_TSS_ADDR");
    if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0)
        die("KVM_CREATE_IRQCHIP");
    struct kvm_pit_config pit = {0};
    if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0)
        die("KVM_CREATE_PIT2");

    uint8_t *ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap guest memory");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = ram_size, .userspace_addr = (uint64_t)ram,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    uint64_t entry = load_elf(argv[optind], ram, ram_size);
    write_boot_structures(ram);

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap kvm_run");
    enter_long_mode(vcpu, entry);

    unsigned long pio_exits = 0, mmio_exits = 0;
    for (;;) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("KVM_RUN");
        }
        switch (run->exit_reason) {
        case KVM_EXIT_IO: {
            pio_exits++;
            uint8_t byte = *((uint8_t *)run + run->io.data_offset);
            if (run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 1)
                break;
            if (run->io.port == 0x440 && byte == 123 && boot_ns == 0)
                boot_ns = monotonic_ns();
            if (run->io.port == 0x64 && byte == 0xFE) {
                if (verbose)
                    report(start_ns, boot_ns, pio_exits, mmio_exits, ram, ram_size);
                return 0;
            }
            break;
        }
        case KVM_EXIT_MMIO:
            mmio_exits++;
            break;
        default:
            fprintf(stderr, "kvm-floor: unexpected exit reason %u after %lu PIO and %lu MMIO exits\n",
                    run->exit_reason, pio_exits, mmio_exits);
            return 1;
        }
    }
}
