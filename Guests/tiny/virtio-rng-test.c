/*
 * Tiny 64-bit guest: a polling virtio-rng driver. It finds the entropy device (type 4) among
 * the virtio-mmio slots, negotiates VERSION_1, and makes three requests on its one queue:
 *
 *   1. one 64-byte buffer;
 *   2. a chain of two 32-byte buffers (the device fills across buffers);
 *   3. one 128 KiB buffer (the device fills at most 64 KiB per request and says so).
 *
 * It reports the used lengths, whether the first two reads differ and whether any of them is
 * all zeros. Every value printed was read from the device or from memory the device wrote.
 */
#include "serial.h"
#include "virtio.h"

#define BIG (128u * 1024u)

static struct virtq queue;
static uint8_t first[64] __attribute__((aligned(64)));
static uint8_t second[64] __attribute__((aligned(64)));
static uint8_t big[BIG] __attribute__((aligned(4096)));
static uintptr_t base;



/* Publishes the chain at descriptor 0 and waits for it; returns the used length. */
static uint32_t request(void)
{
    virtq_publish(&queue, 0);
    virtq_notify(base, &queue);
    uint32_t id, length;
    if (virtq_wait_used(&queue, &id, &length) != 0)
        guest_fail("request timed out");
    if (id != 0)
        guest_fail("wrong chain returned");
    return length;
}

static int all_zero(const volatile uint8_t *bytes, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++) {
        if (bytes[i])
            return 0;
    }
    return 1;
}

void guest_main(void)
{
    uint32_t slot;
    base = virtio_find(4, &slot);
    if (!base)
        guest_fail("no virtio-rng device");
    serial_put_labelled("virtio-rng-test: slot=", slot);
    serial_put_labelled(" device=", virtio_read(base, VIRTIO_DEVICE_ID));
    serial_putc('\n');

    uint32_t offered;
    if (virtio_negotiate(base, 0, &offered) < 0)
        guest_fail("feature negotiation");
    if (virtio_setup_queue(base, 0, &queue) != 0)
        guest_fail("queue setup");
    if (virtio_driver_ok(base) != 0)
        guest_fail("device needs reset after DRIVER_OK");

    virtq_set(&queue, 0, (uint64_t)first, sizeof first, VIRTQ_DESC_F_WRITE, 0);
    uint32_t first_length = request();
    virtq_set(&queue, 0, (uint64_t)second, 32, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
    virtq_set(&queue, 1, (uint64_t)second + 32, 32, VIRTQ_DESC_F_WRITE, 0);
    uint32_t second_length = request();
    virtq_set(&queue, 0, (uint64_t)big, BIG, VIRTQ_DESC_F_WRITE, 0);
    uint32_t big_length = request();

    int differ = 0;
    for (uint32_t i = 0; i < sizeof first; i++)
        differ |= first[i] != second[i];
    int zero = all_zero(first, sizeof first) || all_zero(second, sizeof second) || all_zero(second + 32, 32) ||
               all_zero(big, 64) || all_zero(big + big_length - 64, 64);
    serial_put_labelled("rng: first=", first_length);
    serial_put_labelled(" second=", second_length);
    serial_put_labelled(" differ=", differ);
    serial_put_labelled(" zero=", zero);
    serial_putc('\n');
    serial_put_labelled("big: len=", big_length);
    serial_put_labelled(" untouched_after=", all_zero(big + big_length, BIG - big_length));
    serial_putc('\n');
    serial_puts("done\n");
}
