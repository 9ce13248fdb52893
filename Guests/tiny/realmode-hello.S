/*
 * Tiny real-mode guest: prints one line on COM1 and ends the VM.
 *
 * Flat binary linked at offset 0, loaded at guest physical 0x10000 and
 * entered with CS=DS=ES=SS=0x1000, IP=0, SP=0xFFF0.
 */
    .code16
    .text
    .globl _start
_start:
    cli
    cld
    mov     %cs, %ax            /* don't rely on DS: derive it from CS */
    mov     %ax, %ds
    mov     $message, %si
next_char:
    lodsb
    test    %al, %al
    jz      done
    mov     %al, %bl
    mov     $0x3FD, %dx         /* line status register */
    mov     $16, %cx            /* short poll: THRE always reads as set */
wait_thre:
    in      %dx, %al
    test    $0x20, %al
    jnz     send
    loop    wait_thre
send:
    mov     $0x3F8, %dx         /* data register */
    mov     %bl, %al
    out     %al, %dx
    jmp     next_char
done:
    mov     $0xFE, %al          /* i8042 reset: ends the VM */
    out     %al, $0x64
halt:
    cli
    hlt
    jmp     halt

message:
    .asciz  "Hello from real mode\n"
