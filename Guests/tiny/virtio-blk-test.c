/*
 * Tiny 64-bit guest: a polling virtio-blk driver for the virtio-mmio device in slot 0
 * (0xD0000000). It checks the device's identity, negotiates features, sets up queue 0 and
 * moves 48 MiB through the device in a few large requests:
 *
 *   1. reads the disk's first 16 MiB into guest memory at 32 MiB (one request, 4 segments);
 *   2. writes those 16 MiB back to the disk at offset 16 MiB (one request, indirect table);
 *   3. reads the copy back into guest memory at 48 MiB (one request);
 * then GET_ID, FLUSH, a read past the end of the disk and an unknown request type.
 *
 * Guest kernel code is emulated ~1000x slower on the development host, so the guest never
 * touches the bulk data: it checksums (FNV-1a) 512 bytes of every MiB of what it read and
 * compares the same samples of the copy. The host test recomputes them from the image.
 * Every value printed is one the guest read from the device or from memory the device wrote.
 */
#include "mmio.h"
#include "serial.h"

#define VIRTIO_BASE 0xD0000000UL
#define REG(offset) (VIRTIO_BASE + (offset))
#define MAGIC 0x000
#define VERSION 0x004
#define DEVICE_ID 0x008
#define DEVICE_FEATURES 0x010
#define DEVICE_FEATURES_SEL 0x014
#define DRIVER_FEATURES 0x020
#define DRIVER_FEATURES_SEL 0x024
#define QUEUE_SEL 0x030
#define QUEUE_NUM_MAX 0x034
#define QUEUE_NUM 0x038
#define QUEUE_READY 0x044
#define QUEUE_NOTIFY 0x050
#define INTERRUPT_STATUS 0x060
#define INTERRUPT_ACK 0x064
#define STATUS 0x070
#define QUEUE_DESC_LOW 0x080
#define QUEUE_DESC_HIGH 0x084
#define QUEUE_DRIVER_LOW 0x090
#define QUEUE_DRIVER_HIGH 0x094
#define QUEUE_DEVICE_LOW 0x0a0
#define QUEUE_DEVICE_HIGH 0x0a4
#define CONFIG 0x100

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_NEEDS_RESET 0x40

/* Feature bits: low word (blk), high word (bit 32 = VERSION_1). */
#define BLK_F_SIZE_MAX (1u << 1)
#define BLK_F_SEG_MAX (1u << 2)
#define BLK_F_RO (1u << 5)
#define BLK_F_BLK_SIZE (1u << 6)
#define BLK_F_FLUSH (1u << 9)
#define F_INDIRECT_DESC (1u << 28)
#define F_EVENT_IDX (1u << 29)
#define F_VERSION_1_HIGH 1u

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8

#define DESC_F_NEXT 1
#define DESC_F_WRITE 2
#define DESC_F_INDIRECT 4

#define QUEUE_SIZE 16
#define MIB (1024UL * 1024UL)
#define TRANSFER (16 * MIB)
#define SOURCE_BUFFER (32 * MIB)  /* guest physical, identity-mapped */
#define COPY_BUFFER (48 * MIB)
#define COPY_SECTOR (TRANSFER / 512)
#define SAMPLE 512
#define SAMPLES (TRANSFER / MIB)
#define POLL_LIMIT 4000000        /* ~20 s of emulated polling */

struct desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
};

struct avail {
    uint16_t flags;
    uint16_t idx;
    uint16_t ring[QUEUE_SIZE];
    uint16_t used_event;
};

struct used {
    uint16_t flags;
    uint16_t idx;
    struct {
        uint32_t id;
        uint32_t len;
    } ring[QUEUE_SIZE];
    uint16_t avail_event;
};

struct request_header {
    uint32_t type;
    uint32_t reserved;
    uint64_t sector;
};

static struct desc descriptors[QUEUE_SIZE] __attribute__((aligned(4096)));
static struct avail available __attribute__((aligned(4096)));
static struct used used_ring __attribute__((aligned(4096)));
static struct desc indirect_table[8] __attribute__((aligned(16)));
static struct request_header header;
static volatile uint8_t status_byte;
static char identifier[24];
static uint16_t next_available;
static uint16_t used_seen;

#define barrier() __asm__ volatile("" ::: "memory")

static uint32_t reg_read(uint32_t offset) { return mmio_read32(REG(offset)); }
static void reg_write(uint32_t offset, uint32_t value) { mmio_write32(REG(offset), value); }

static void set_descriptor(struct desc *table, int index, uint64_t addr, uint32_t len, uint16_t flags)
{
    table[index].addr = addr;
    table[index].len = len;
    table[index].flags = flags;
    table[index].next = (uint16_t)(index + 1);
}

/* Publishes the chain at descriptor 0, notifies queue 0 and polls for its completion.
 * Returns the used length; the status byte is in status_byte. */
static uint32_t submit(void)
{
    status_byte = 0xff;
    available.ring[next_available % QUEUE_SIZE] = 0;
    barrier();
    next_available++;
    *(volatile uint16_t *)&available.idx = next_available;
    barrier();
    reg_write(QUEUE_NOTIFY, 0);
    for (uint32_t spins = 0; *(volatile uint16_t *)&used_ring.idx == used_seen; spins++) {
        if (spins == POLL_LIMIT)
            guest_fail("request timed out");
    }
    barrier();
    uint32_t length = used_ring.ring[used_seen % QUEUE_SIZE].len;
    used_seen++;
    return length;
}

/* A request with the header in descriptor 0, `segments` data buffers of `segment` bytes
 * from `buffer`, and the status byte. */
static uint32_t transfer(uint32_t type, uint64_t sector, uint64_t buffer, uint32_t segments, uint32_t segment)
{
    header.type = type;
    header.reserved = 0;
    header.sector = sector;
    uint16_t data_flags = type == BLK_T_OUT ? DESC_F_NEXT : DESC_F_NEXT | DESC_F_WRITE;
    set_descriptor(descriptors, 0, (uint64_t)&header, sizeof header, DESC_F_NEXT);
    for (uint32_t i = 0; i < segments; i++)
        set_descriptor(descriptors, 1 + i, buffer + (uint64_t)i * segment, segment, data_flags);
    set_descriptor(descriptors, 1 + segments, (uint64_t)&status_byte, 1, DESC_F_WRITE);
    return submit();
}

static uint32_t fnv1a(const volatile uint8_t *bytes, uint32_t count)
{
    uint32_t hash = 0x811c9dc5u;
    for (uint32_t i = 0; i < count; i++)
        hash = (hash ^ bytes[i]) * 0x01000193u;
    return hash;
}

void guest_main(void)
{
    uint32_t magic = reg_read(MAGIC), version = reg_read(VERSION), device = reg_read(DEVICE_ID);
    serial_puts("virtio-blk-test: magic=");
    serial_puthex32(magic);
    serial_put_labelled(" version=", version);
    serial_put_labelled(" device=", device);
    serial_putc('\n');
    if (magic != 0x74726976 || version != 2 || device != 2)
        guest_fail("not a virtio-mmio v2 block device");

    /* Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK. */
    reg_write(STATUS, 0);
    reg_write(STATUS, STATUS_ACKNOWLEDGE);
    reg_write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    reg_write(DEVICE_FEATURES_SEL, 0);
    uint32_t offered_low = reg_read(DEVICE_FEATURES);
    reg_write(DEVICE_FEATURES_SEL, 1);
    uint32_t offered_high = reg_read(DEVICE_FEATURES);
    if (!(offered_high & F_VERSION_1_HIGH))
        guest_fail("VIRTIO_F_VERSION_1 not offered");
    uint32_t wanted = BLK_F_SIZE_MAX | BLK_F_SEG_MAX | BLK_F_RO | BLK_F_BLK_SIZE | BLK_F_FLUSH | F_INDIRECT_DESC | F_EVENT_IDX;
    uint32_t accepted = offered_low & wanted;
    reg_write(DRIVER_FEATURES_SEL, 0);
    reg_write(DRIVER_FEATURES, accepted);
    reg_write(DRIVER_FEATURES_SEL, 1);
    reg_write(DRIVER_FEATURES, F_VERSION_1_HIGH);
    reg_write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(reg_read(STATUS) & STATUS_FEATURES_OK))
        guest_fail("FEATURES_OK refused");
    int read_only = (accepted & BLK_F_RO) != 0;
    serial_puts("features: ro=");
    serial_putdec32(read_only);
    serial_put_labelled(" indirect=", (accepted & F_INDIRECT_DESC) != 0);
    serial_put_labelled(" event_idx=", (accepted & F_EVENT_IDX) != 0);
    serial_put_labelled(" flush=", (accepted & BLK_F_FLUSH) != 0);
    serial_putc('\n');
    if (!(accepted & F_INDIRECT_DESC))
        guest_fail("indirect descriptors not offered");

    /* Queue 0. */
    reg_write(QUEUE_SEL, 0);
    uint32_t queue_max = reg_read(QUEUE_NUM_MAX);
    if (queue_max < QUEUE_SIZE)
        guest_fail("queue too small");
    reg_write(QUEUE_NUM, QUEUE_SIZE);
    reg_write(QUEUE_DESC_LOW, (uint32_t)(uint64_t)descriptors);
    reg_write(QUEUE_DESC_HIGH, (uint32_t)((uint64_t)descriptors >> 32));
    reg_write(QUEUE_DRIVER_LOW, (uint32_t)(uint64_t)&available);
    reg_write(QUEUE_DRIVER_HIGH, (uint32_t)((uint64_t)&available >> 32));
    reg_write(QUEUE_DEVICE_LOW, (uint32_t)(uint64_t)&used_ring);
    reg_write(QUEUE_DEVICE_HIGH, (uint32_t)((uint64_t)&used_ring >> 32));
    reg_write(QUEUE_READY, 1);
    if (reg_read(QUEUE_READY) != 1)
        guest_fail("queue not ready");
    reg_write(STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    if (reg_read(STATUS) & STATUS_NEEDS_RESET)
        guest_fail("device needs reset after DRIVER_OK");

    uint64_t capacity = (uint64_t)reg_read(CONFIG + 4) << 32 | reg_read(CONFIG);
    uint32_t size_max = reg_read(CONFIG + 8), seg_max = reg_read(CONFIG + 12), blk_size = reg_read(CONFIG + 20);
    serial_put_labelled("config: capacity=", (uint32_t)capacity);
    serial_put_labelled(" size_max=", size_max);
    serial_put_labelled(" seg_max=", seg_max);
    serial_put_labelled(" blk_size=", blk_size);
    serial_put_labelled(" queue_max=", queue_max);
    serial_putc('\n');
    if (capacity < 2 * COPY_SECTOR)
        guest_fail("disk smaller than 32 MiB");

    /* Largest power-of-two segment the device takes, at most 4 MiB. */
    uint32_t segment = 4 * MIB;
    while (segment > size_max)
        segment >>= 1;
    uint32_t segments = TRANSFER / segment;
    if (segments > seg_max || segments + 2 > QUEUE_SIZE)
        guest_fail("segments too small for a 16 MiB request");

    /* 1. Read 16 MiB from sector 0. */
    uint32_t length = transfer(BLK_T_IN, 0, SOURCE_BUFFER, segments, segment);
    serial_put_labelled("read: segments=", segments);
    serial_put_labelled(" status=", status_byte);
    serial_put_labelled(" len=", length);
    serial_putc('\n');
    uint32_t isr = 0;
    for (int spins = 0; spins < 100000 && !(isr & 1); spins++)
        isr = reg_read(INTERRUPT_STATUS);
    reg_write(INTERRUPT_ACK, isr);
    serial_put_labelled("isr=", isr);
    serial_put_labelled(" after_ack=", reg_read(INTERRUPT_STATUS));
    serial_putc('\n');

    uint32_t samples[SAMPLES];
    for (uint32_t i = 0; i < SAMPLES; i++) {
        samples[i] = fnv1a((const volatile uint8_t *)(SOURCE_BUFFER + i * MIB), SAMPLE);
        serial_put_labelled("sample ", i);
        serial_puts(" fnv=");
        serial_puthex32(samples[i]);
        serial_putc('\n');
    }

    /* 2. Write them to sector 32768 through one indirect descriptor. */
    header.type = BLK_T_OUT;
    header.reserved = 0;
    header.sector = COPY_SECTOR;
    set_descriptor(indirect_table, 0, (uint64_t)&header, sizeof header, DESC_F_NEXT);
    for (uint32_t i = 0; i < segments; i++)
        set_descriptor(indirect_table, 1 + i, SOURCE_BUFFER + (uint64_t)i * segment, segment, DESC_F_NEXT);
    set_descriptor(indirect_table, 1 + segments, (uint64_t)&status_byte, 1, DESC_F_WRITE);
    descriptors[0].addr = (uint64_t)indirect_table;
    descriptors[0].len = (2 + segments) * sizeof(struct desc);
    descriptors[0].flags = DESC_F_INDIRECT;
    length = submit();
    serial_put_labelled("write: status=", status_byte);
    serial_put_labelled(" len=", length);
    serial_putc('\n');

    /* 3. Read the copy back and compare the samples. */
    length = transfer(BLK_T_IN, COPY_SECTOR, COPY_BUFFER, segments, segment);
    uint32_t mismatches = 0;
    for (uint32_t i = 0; i < SAMPLES; i++)
        mismatches += fnv1a((const volatile uint8_t *)(COPY_BUFFER + i * MIB), SAMPLE) != samples[i];
    serial_put_labelled("reread: status=", status_byte);
    serial_put_labelled(" len=", length);
    serial_put_labelled(" mismatches=", mismatches);
    serial_putc('\n');

    /* GET_ID: 20 bytes. */
    length = transfer(BLK_T_GET_ID, 0, (uint64_t)identifier, 1, 20);
    identifier[20] = 0;
    serial_put_labelled("getid: status=", status_byte);
    serial_put_labelled(" len=", length);
    serial_puts(" id=");
    serial_puts(identifier);
    serial_putc('\n');

    /* FLUSH, a read past the end, an unknown type. */
    transfer(BLK_T_FLUSH, 0, 0, 0, 0);
    serial_put_labelled("flush: status=", status_byte);
    transfer(BLK_T_IN, capacity, COPY_BUFFER, 1, 512);
    serial_put_labelled(" past_end: status=", status_byte);
    transfer(99, 0, 0, 0, 0);
    serial_put_labelled(" unknown: status=", status_byte);
    serial_putc('\n');

    serial_put_labelled("avail_event=", *(volatile uint16_t *)&used_ring.avail_event);
    serial_put_labelled(" used=", *(volatile uint16_t *)&used_ring.idx);
    serial_put_labelled(" device_status=", reg_read(STATUS));
    serial_putc('\n');
    serial_puts("done\n");
}
