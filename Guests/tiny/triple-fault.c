/*
 * 64-bit guest that triple-faults on purpose: it loads an empty IDT (limit 0) and executes an
 * undefined instruction. The #UD cannot be delivered, nor can the #GP and #DF that follow, so
 * the CPU shuts down (KVM_EXIT_SHUTDOWN), which Swiftlet reports as a triple fault.
 */
#include "serial.h"

void guest_main(void)
{
    static const struct __attribute__((packed)) {
        unsigned short limit;
        unsigned long base;
    } empty_idt = {0, 0};

    serial_puts("triple-fault: faulting now\n");
    __asm__ volatile("lidt %0\n\tud2" : : "m"(empty_idt));
}
