/*
 * Tiny 64-bit guest: streams reads through the virtio-blk device (the rate-limit test). It
 * finds the block device, sets up queue 0 and reads the disk's first 8 MiB as 128 requests of
 * 64 KiB, keeping 4 requests in flight so that the device always has one waiting: the time the
 * stream takes is the device's (its rate limiter's), not the guest's. Interrupts stay off; the
 * guest polls the used ring. It reports the requests completed, the bytes the device said it
 * wrote and the requests that did not answer OK, then `done`.
 */
#include "serial.h"
#include "virtio.h"

#define BLK_T_IN 0
#define REQUEST (64u * 1024u)
#define REQUESTS 128u
#define IN_FLIGHT 4u
#define BUFFERS (32ul * 1024 * 1024) /* guest physical, identity-mapped */

struct request_header {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct virtq queue;
static struct request_header headers[IN_FLIGHT];
static volatile uint8_t statuses[IN_FLIGHT];
static uintptr_t base;

/* Publishes request `number` in slot `slot` (descriptors 3*slot .. 3*slot+2). */
static void publish(uint32_t slot, uint32_t number)
{
    uint16_t head = (uint16_t)(3 * slot);
    headers[slot].type = BLK_T_IN;
    headers[slot].reserved = 0;
    headers[slot].sector = (uint64_t)number * (REQUEST / 512);
    statuses[slot] = 0xff;
    virtq_set(&queue, head, (uint64_t)&headers[slot], sizeof headers[slot], VIRTQ_DESC_F_NEXT, head + 1);
    virtq_set(&queue, head + 1, BUFFERS + (uint64_t)slot * REQUEST, REQUEST, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT,
              head + 2);
    virtq_set(&queue, head + 2, (uint64_t)&statuses[slot], 1, VIRTQ_DESC_F_WRITE, 0);
    virtq_publish(&queue, head);
    virtq_notify(base, &queue);
}

void guest_main(void)
{
    uint32_t slot;
    base = virtio_find(2, &slot);
    if (!base)
        guest_fail("no virtio-blk device");
    uint32_t offered;
    if (virtio_negotiate(base, 0, &offered) < 0)
        guest_fail("feature negotiation");
    if (virtio_setup_queue(base, 0, &queue) != 0)
        guest_fail("queue setup");
    if (virtio_driver_ok(base) != 0)
        guest_fail("device needs reset after DRIVER_OK");
    serial_put_labelled("virtio-blk-stream: slot=", slot);
    serial_putc('\n');

    uint32_t next = 0, completed = 0, failures = 0, bytes = 0;
    for (; next < IN_FLIGHT; next++)
        publish(next, next);
    while (completed < REQUESTS) {
        uint32_t id, length;
        if (virtq_wait_used(&queue, &id, &length) != 0)
            guest_fail("request timed out");
        uint32_t done = id / 3;
        if (id % 3 != 0 || done >= IN_FLIGHT)
            guest_fail("wrong chain returned");
        failures += statuses[done] != 0;
        bytes += length - 1;
        completed++;
        if (next < REQUESTS)
            publish(done, next++);
    }
    serial_put_labelled("stream: requests=", completed);
    serial_put_labelled(" bytes=", bytes);
    serial_put_labelled(" failures=", failures);
    serial_putc('\n');
    serial_puts("done\n");
}
