/*
 * A minimal polling virtio-mmio (version 2) driver for the tiny guests: find a device by
 * type among Swiftlet's slots, negotiate features, set up split virtqueues of VQ_SIZE
 * entries, publish chains and wait for them to come back. Interrupts stay off; the guest
 * polls the used ring.
 *
 * Slot i of the x86 layout sits at 0xD0000000 + i * 0x1000 (X86Layout.virtioMMIOBase);
 * unclaimed MMIO reads return all ones.
 */
#ifndef SWIFTLET_GUEST_VIRTIO_H
#define SWIFTLET_GUEST_VIRTIO_H

#include <stdint.h>

#include "mmio.h"

#define VIRTIO_MMIO_BASE 0xD0000000UL
#define VIRTIO_MMIO_STRIDE 0x1000UL
#define VIRTIO_MMIO_SLOTS 19

#define VIRTIO_MAGIC 0x000
#define VIRTIO_VERSION 0x004
#define VIRTIO_DEVICE_ID 0x008
#define VIRTIO_DEVICE_FEATURES 0x010
#define VIRTIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_DRIVER_FEATURES 0x020
#define VIRTIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_QUEUE_SEL 0x030
#define VIRTIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_QUEUE_NUM 0x038
#define VIRTIO_QUEUE_READY 0x044
#define VIRTIO_QUEUE_NOTIFY 0x050
#define VIRTIO_STATUS 0x070
#define VIRTIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_CONFIG 0x100

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40

/* VIRTIO_F_VERSION_1 is bit 32: bit 0 of the high feature word. */
#define VIRTIO_F_VERSION_1_HIGH 1u

#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

#define VQ_SIZE 16
#define VIRTIO_POLL_LIMIT 4000000u /* ~20 s of emulated polling on the development host */

struct virtq_desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

/* One split virtqueue's rings and the driver's position in them. */
struct virtq {
    struct virtq_desc desc[VQ_SIZE] __attribute__((aligned(16)));
    struct {
        uint16_t flags;
        uint16_t idx;
        uint16_t ring[VQ_SIZE];
        uint16_t used_event;
    } avail __attribute__((aligned(2)));
    struct {
        uint16_t flags;
        uint16_t idx;
        struct {
            uint32_t id;
            uint32_t len;
        } ring[VQ_SIZE];
        uint16_t avail_event;
    } used __attribute__((aligned(4)));
    uint16_t next_avail;
    uint16_t used_seen;
    uint32_t index;
};

#define virtio_barrier() __asm__ volatile("" ::: "memory")

static inline uint8_t mmio_read8(uintptr_t addr)
{
    uint8_t value;
    __asm__ volatile("movb (%1), %0" : "=q"(value) : "r"(addr) : "memory");
    return value;
}

static inline uint32_t virtio_read(uintptr_t base, uint32_t offset) { return mmio_read32(base + offset); }
static inline void virtio_write(uintptr_t base, uint32_t offset, uint32_t value) { mmio_write32(base + offset, value); }

/* The base address of the first slot holding a virtio-mmio v2 device of type `device_id`,
 * or 0; its slot number goes to *slot. */
static uintptr_t virtio_find(uint32_t device_id, uint32_t *slot)
{
    for (uint32_t i = 0; i < VIRTIO_MMIO_SLOTS; i++) {
        uintptr_t base = VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE;
        if (virtio_read(base, VIRTIO_MAGIC) == 0x74726976 && virtio_read(base, VIRTIO_VERSION) == 2 &&
            virtio_read(base, VIRTIO_DEVICE_ID) == device_id) {
            *slot = i;
            return base;
        }
    }
    return 0;
}

/* Reset, ACKNOWLEDGE, DRIVER, then accept VERSION_1 and the offered low feature bits in
 * `wanted_low`, and FEATURES_OK. Returns the accepted low bits, or -1 if the device refused. */
static int64_t virtio_negotiate(uintptr_t base, uint32_t wanted_low, uint32_t *offered_low)
{
    virtio_write(base, VIRTIO_STATUS, 0);
    virtio_write(base, VIRTIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    virtio_write(base, VIRTIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);
    virtio_write(base, VIRTIO_DEVICE_FEATURES_SEL, 0);
    uint32_t low = virtio_read(base, VIRTIO_DEVICE_FEATURES);
    virtio_write(base, VIRTIO_DEVICE_FEATURES_SEL, 1);
    uint32_t high = virtio_read(base, VIRTIO_DEVICE_FEATURES);
    *offered_low = low;
    if (!(high & VIRTIO_F_VERSION_1_HIGH))
        return -1;
    uint32_t accepted = low & wanted_low;
    virtio_write(base, VIRTIO_DRIVER_FEATURES_SEL, 0);
    virtio_write(base, VIRTIO_DRIVER_FEATURES, accepted);
    virtio_write(base, VIRTIO_DRIVER_FEATURES_SEL, 1);
    virtio_write(base, VIRTIO_DRIVER_FEATURES, VIRTIO_F_VERSION_1_HIGH);
    virtio_write(base, VIRTIO_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    if (!(virtio_read(base, VIRTIO_STATUS) & VIRTIO_STATUS_FEATURES_OK))
        return -1;
    return accepted;
}

/* Programs queue `index` with `q`'s rings and enables it. Returns 0, or -1 if the device's
 * queue is smaller than VQ_SIZE or would not enable. */
static int virtio_setup_queue(uintptr_t base, uint32_t index, struct virtq *q)
{
    q->index = index;
    q->next_avail = 0;
    q->used_seen = 0;
    virtio_write(base, VIRTIO_QUEUE_SEL, index);
    if (virtio_read(base, VIRTIO_QUEUE_NUM_MAX) < VQ_SIZE)
        return -1;
    virtio_write(base, VIRTIO_QUEUE_NUM, VQ_SIZE);
    virtio_write(base, VIRTIO_QUEUE_DESC_LOW, (uint32_t)(uint64_t)q->desc);
    virtio_write(base, VIRTIO_QUEUE_DESC_HIGH, (uint32_t)((uint64_t)q->desc >> 32));
    virtio_write(base, VIRTIO_QUEUE_DRIVER_LOW, (uint32_t)(uint64_t)&q->avail);
    virtio_write(base, VIRTIO_QUEUE_DRIVER_HIGH, (uint32_t)((uint64_t)&q->avail >> 32));
    virtio_write(base, VIRTIO_QUEUE_DEVICE_LOW, (uint32_t)(uint64_t)&q->used);
    virtio_write(base, VIRTIO_QUEUE_DEVICE_HIGH, (uint32_t)((uint64_t)&q->used >> 32));
    virtio_write(base, VIRTIO_QUEUE_READY, 1);
    return virtio_read(base, VIRTIO_QUEUE_READY) == 1 ? 0 : -1;
}

/* Sets DRIVER_OK; returns 0, or -1 if the device asks for a reset. */
static int virtio_driver_ok(uintptr_t base)
{
    virtio_write(base, VIRTIO_STATUS,
                 VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
    return virtio_read(base, VIRTIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET ? -1 : 0;
}

/* Writes descriptor `index` of `q`. */
static void virtq_set(struct virtq *q, uint16_t index, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
    q->desc[index].addr = addr;
    q->desc[index].len = len;
    q->desc[index].flags = flags;
    q->desc[index].next = next;
}

/* Makes the chain starting at descriptor `head` available (without notifying). */
static void virtq_publish(struct virtq *q, uint16_t head)
{
    q->avail.ring[q->next_avail % VQ_SIZE] = head;
    virtio_barrier();
    q->next_avail++;
    *(volatile uint16_t *)&q->avail.idx = q->next_avail;
    virtio_barrier();
}

static void virtq_notify(uintptr_t base, struct virtq *q) { virtio_write(base, VIRTIO_QUEUE_NOTIFY, q->index); }

/* Whether the device has returned a chain the driver has not looked at. */
static int virtq_has_used(struct virtq *q) { return *(volatile uint16_t *)&q->used.idx != q->used_seen; }

/* Waits for the next used entry; returns 0 with its head and length, or -1 after
 * VIRTIO_POLL_LIMIT spins. */
static int virtq_wait_used(struct virtq *q, uint32_t *id, uint32_t *len)
{
    for (uint32_t spins = 0; !virtq_has_used(q); spins++) {
        if (spins == VIRTIO_POLL_LIMIT)
            return -1;
    }
    virtio_barrier();
    *id = q->used.ring[q->used_seen % VQ_SIZE].id;
    *len = q->used.ring[q->used_seen % VQ_SIZE].len;
    q->used_seen++;
    return 0;
}

#endif
