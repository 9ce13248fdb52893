/*
 * Real-mode serial echo guest: prints "echo ready\n", then copies every byte it receives on
 * COM1 back to COM1 until it receives 'q', and then ends the VM (i8042 reset).
 * Exercises the host -> guest direction of the console (receive FIFO, LSR.DR).
 *
 * Flat binary at 0x10000, entered with CS=DS=ES=SS=0x1000, IP=0, SP=0xFFF0.
 */
    .code16
    .text
    .globl _start
_start:
    cli
    cld
    mov     %cs, %ax
    mov     %ax, %ds
    mov     $ready, %si
print:
    lodsb
    test    %al, %al
    jz      receive
    mov     $0x3F8, %dx
    out     %al, %dx
    jmp     print
receive:
    mov     $0x3FD, %dx         /* line status: bit 0 = data ready */
wait_data:
    in      %dx, %al
    test    $0x01, %al
    jz      wait_data
    mov     $0x3F8, %dx
    in      %dx, %al
    cmp     $'q', %al
    je      done
    out     %al, %dx
    jmp     receive
done:
    mov     $0xFE, %al
    out     %al, $0x64
halt:
    cli
    hlt
    jmp     halt

ready:
    .asciz  "echo ready\n"
