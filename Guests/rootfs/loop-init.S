/*
 * The init of the end-to-end root filesystem: it never makes a system call, it only loops.
 *
 * On a KVM that emulates guest kernel code but cannot return from user-mode system calls
 * (the development host, ../shared/HOST.md), any real init dies at its first system call and
 * the kernel panics. An init that only loops keeps the kernel alive, so the kernel's own
 * network stack still answers ping and the VM can be stopped from the host.
 * `pause` keeps the emulated loop cheap.
 */
    .text
    .globl _start
_start:
    pause
    jmp     _start
