/*
 * "First instruction" guest: the VMM start benchmark.
 *
 * Its very first instructions write the byte 123 to port 0x440 (Swiftlet's boot timer), then
 * 0 to port 0xF4 (QEMU's isa-debug-exit device, which ends QEMU at once; Swiftlet has nothing
 * there and ignores it), then 0xFE to port 0x64 (the i8042 reset that ends Swiftlet).
 *
 * The same bytes are the entry of two boot protocols:
 * - Swiftlet (and the C floor) load the ELF64 at its physical address and enter e_entry in
 *   64-bit long mode;
 * - QEMU's microvm machine (through its qboot firmware) enters the PVH entry point named by
 *   the XEN_ELFNOTE_PHYS32_ENTRY note in 32-bit protected mode, paging off.
 * `mov $imm16, %dx` with an operand-size prefix (66 ba lo hi), `mov $imm8, %al` (b0 ib),
 * `out %al, %dx` (ee) and `out %al, $imm8` (e6 ib) decode identically in 32- and 64-bit mode,
 * so one entry point serves both. After the writes the vCPU halts for good.
 *
 * Built with -DHALT_ONLY (first-instruction-halt.elf) it writes only the boot timer and then
 * halts, so the VMM keeps running: the harness reads the VMM's memory from /proc meanwhile.
 */
    .section .text.start, "ax", @progbits
    .code32                         /* valid in both modes: see above */
    .globl _start
    .type _start, @function
_start:
    mov     $0x440, %dx             /* 66 ba 40 04 */
    mov     $123, %al               /* b0 7b: boot timer mark */
    out     %al, %dx                /* ee */
#ifndef HALT_ONLY
    mov     $0xf4, %dx              /* 66 ba f4 00: QEMU isa-debug-exit */
    mov     $0, %al                 /* b0 00: QEMU exits with status (0 << 1) | 1 = 1 */
    out     %al, %dx
    mov     $0xfe, %al              /* b0 fe */
    out     %al, $0x64              /* e6 64: i8042 reset pulse, ends Swiftlet */
#endif
1:  cli
    hlt
    jmp     1b
    .size _start, . - _start

/*
 * PVH entry note (Xen ELF note type 18, XEN_ELFNOTE_PHYS32_ENTRY): a 32-bit physical entry
 * address. QEMU reads it from the PT_NOTE segment (see first-instruction.ld).
 */
    .section .note.Xen, "a", @note
    .balign 4
    .long   2f - 1f                 /* namesz */
    .long   4f - 3f                 /* descsz */
    .long   18                      /* type: XEN_ELFNOTE_PHYS32_ENTRY */
1:  .asciz  "Xen"
2:  .balign 4
3:  .long   _start
4:  .balign 4

    .section .note.GNU-stack, "", @progbits
