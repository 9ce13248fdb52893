/*
 * Real-mode guest that spins forever without exiting to the VMM: used to test that the host
 * can stop a guest that never ends by itself (Machine.stop, deadlines, Ctrl-A x).
 */
    .code16
    .text
    .globl _start
_start:
    cli
spin:
    jmp     spin
