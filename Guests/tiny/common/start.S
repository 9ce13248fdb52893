/*
 * Entry stub for the tiny 64-bit guests.
 *
 * Entered in 64-bit long mode (flat CS 0x10, DS/ES/SS 0x18, interrupts off,
 * identity-mapped low 4 GiB). The guest uses its own stack in the image's
 * bss rather than the VMM's RSP, clears its bss, calls guest_main() and
 * ends the VM with guest_exit().
 *
 * RSI at entry (the zero page address, Linux boot_params) is passed on as
 * guest_main's first argument: guest_main(uint64_t boot_params). Guests that
 * declare guest_main(void) simply ignore it.
 */
    .code64
    .section .text.start, "ax", @progbits
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    mov     %rsi, %rbx                  /* boot_params address from the VMM */
    lea     stack_top(%rip), %rsp       /* 16-byte aligned */

    /* Zero .bss (normally empty or a few bytes; the stack is excluded). */
    lea     __bss_start(%rip), %rdi
    lea     __bss_end(%rip), %rcx
    sub     %rdi, %rcx
    xor     %eax, %eax
    rep stosb

    xor     %ebp, %ebp
    mov     %rbx, %rdi                  /* guest_main(boot_params) */
    call    guest_main
    call    guest_exit                  /* does not return */
1:  cli
    hlt
    jmp     1b
    .size _start, . - _start

    .section .stack, "aw", @nobits
    .balign 16
stack_bottom:
    .skip 16384
stack_top:

    .section .note.GNU-stack, "", @progbits
