/*
 * Tiny 64-bit guest: a polling virtio-net driver. It finds the network device among the
 * virtio-mmio slots, negotiates VERSION_1 + MAC + STATUS (no offloads), reads its MAC and
 * link status, offers RX_BUFFERS receive buffers of RX_BUFFER_SIZE bytes, and then:
 *
 *   1. sends one broadcast Ethernet frame of type 0x88b5 (local experimental) whose payload
 *      starts with "swiftlet-net-test hello";
 *   2. echoes every 0x88b5 frame it receives back to its sender (destination and source
 *      swapped, payload untouched), straight from the receive buffer, and gives the buffer
 *      back to the device once the echo has been sent;
 *   3. stops after a 0x88b5 frame whose payload starts with "BYE".
 *
 * Frames of other types are counted and not echoed. With only RX_BUFFERS buffers, a burst of
 * frames from the host has to wait in the tap until the guest returns buffers. Every value
 * printed was read from the device or from memory the device wrote.
 */
#include "serial.h"
#include "virtio.h"

#define NET_F_MAC (1u << 5)
#define NET_F_STATUS (1u << 16)
#define NET_S_LINK_UP 1

#define ETHERTYPE_TEST 0x88b5
#define HEADER_SIZE 12 /* struct virtio_net_hdr_v1 */
#define RX_BUFFERS 4
#define RX_BUFFER_SIZE 1536 /* header + a 1514-byte frame, and a little more */
#define RX_QUEUE 0
#define TX_QUEUE 1

static struct virtq rx_queue;
static struct virtq tx_queue;
static uint8_t rx_buffers[RX_BUFFERS][RX_BUFFER_SIZE] __attribute__((aligned(64)));
static uint8_t tx_buffer[HEADER_SIZE + 128] __attribute__((aligned(64)));
static uint8_t mac[6];
static uintptr_t base;



static void put_hex8(uint8_t value)
{
    static const char digits[] = "0123456789abcdef";
    serial_putc(digits[value >> 4]);
    serial_putc(digits[value & 15]);
}

static void put_mac(const uint8_t *bytes)
{
    for (int i = 0; i < 6; i++) {
        if (i)
            serial_putc(':');
        put_hex8(bytes[i]);
    }
}

static int starts_with(const volatile uint8_t *bytes, uint32_t length, const char *prefix)
{
    uint32_t i = 0;
    for (; prefix[i]; i++) {
        if (i >= length || bytes[i] != (uint8_t)prefix[i])
            return 0;
    }
    return 1;
}

/* Sends the `length` bytes (header included) at `buffer` and waits until the device has
 * taken them. Returns the used length. */
static uint32_t transmit(uint8_t *buffer, uint32_t length)
{
    virtq_set(&tx_queue, 0, (uint64_t)buffer, length, 0, 0);
    virtq_publish(&tx_queue, 0);
    virtq_notify(base, &tx_queue);
    uint32_t id, used;
    if (virtq_wait_used(&tx_queue, &id, &used) != 0)
        guest_fail("transmit timed out");
    if (id != 0)
        guest_fail("transmit returned the wrong chain");
    return used;
}

static void give_rx_buffer(uint16_t index)
{
    virtq_set(&rx_queue, index, (uint64_t)rx_buffers[index], RX_BUFFER_SIZE, VIRTQ_DESC_F_WRITE, 0);
    virtq_publish(&rx_queue, index);
}

void guest_main(void)
{
    uint32_t slot;
    base = virtio_find(1, &slot);
    if (!base)
        guest_fail("no virtio-net device");
    serial_put_labelled("virtio-net-test: slot=", slot);
    serial_put_labelled(" device=", virtio_read(base, VIRTIO_DEVICE_ID));
    serial_putc('\n');

    uint32_t offered;
    int64_t accepted = virtio_negotiate(base, NET_F_MAC | NET_F_STATUS, &offered);
    if (accepted < 0)
        guest_fail("feature negotiation");
    serial_put_labelled("features: mac=", (accepted & NET_F_MAC) != 0);
    serial_put_labelled(" status=", (accepted & NET_F_STATUS) != 0);
    serial_putc('\n');
    if (!(accepted & NET_F_MAC) || !(accepted & NET_F_STATUS))
        guest_fail("MAC or STATUS not offered");

    for (int i = 0; i < 6; i++)
        mac[i] = mmio_read8(base + VIRTIO_CONFIG + i);
    uint32_t link = mmio_read8(base + VIRTIO_CONFIG + 6) | (uint32_t)mmio_read8(base + VIRTIO_CONFIG + 7) << 8;
    serial_puts("config: mac=");
    put_mac(mac);
    serial_put_labelled(" link=", link & NET_S_LINK_UP);
    serial_putc('\n');

    if (virtio_setup_queue(base, RX_QUEUE, &rx_queue) != 0 || virtio_setup_queue(base, TX_QUEUE, &tx_queue) != 0)
        guest_fail("queue setup");
    if (virtio_driver_ok(base) != 0)
        guest_fail("device needs reset after DRIVER_OK");
    for (uint16_t i = 0; i < RX_BUFFERS; i++)
        give_rx_buffer(i);
    virtq_notify(base, &rx_queue);

    /* 1. Hello: header (all zero), broadcast destination, our source, type, payload. */
    static const char hello[] = "swiftlet-net-test hello";
    uint8_t *frame = tx_buffer + HEADER_SIZE;
    for (int i = 0; i < 6; i++) {
        frame[i] = 0xff;
        frame[6 + i] = mac[i];
    }
    frame[12] = ETHERTYPE_TEST >> 8;
    frame[13] = ETHERTYPE_TEST & 0xff;
    uint32_t payload = 0;
    for (; hello[payload]; payload++)
        frame[14 + payload] = (uint8_t)hello[payload];
    for (; payload < 64; payload++)
        frame[14 + payload] = (uint8_t)payload;
    uint32_t used = transmit(tx_buffer, HEADER_SIZE + 14 + payload);
    serial_put_labelled("hello: len=", 14 + payload);
    serial_put_labelled(" used=", used);
    serial_putc('\n');

    /* 2. Echo until BYE. */
    uint32_t echoed = 0, ignored = 0;
    for (;;) {
        uint32_t id, length;
        if (virtq_wait_used(&rx_queue, &id, &length) != 0)
            guest_fail("no frame arrived");
        if (id >= RX_BUFFERS || length < HEADER_SIZE + 14 || length > RX_BUFFER_SIZE)
            guest_fail("bad receive entry");
        volatile uint8_t *buffer = rx_buffers[id];
        volatile uint8_t *received = buffer + HEADER_SIZE;
        uint32_t frame_length = length - HEADER_SIZE;
        uint32_t type = (uint32_t)received[12] << 8 | received[13];
        if (type != ETHERTYPE_TEST) {
            ignored++;
            give_rx_buffer((uint16_t)id);
            virtq_notify(base, &rx_queue);
            continue;
        }
        /* Without offloads the device must hand over flags 0, gso_type 0, num_buffers 1. */
        uint32_t header_ok = buffer[0] == 0 && buffer[1] == 0 && buffer[10] == 1 && buffer[11] == 0;
        if (starts_with(received + 14, frame_length - 14, "BYE")) {
            serial_put_labelled("bye: len=", frame_length);
            serial_put_labelled(" header=", header_ok);
            serial_putc('\n');
            break;
        }
        for (int i = 0; i < 6; i++) {
            received[i] = received[6 + i];
            received[6 + i] = mac[i];
        }
        for (int i = 0; i < HEADER_SIZE; i++)
            buffer[i] = 0;
        used = transmit((uint8_t *)buffer, length);
        echoed++;
        serial_put_labelled("echo ", echoed);
        serial_put_labelled(": len=", frame_length);
        serial_put_labelled(" header=", header_ok);
        serial_put_labelled(" used=", used);
        serial_putc('\n');
        give_rx_buffer((uint16_t)id);
        virtq_notify(base, &rx_queue);
    }
    serial_put_labelled("done: echoed=", echoed);
    serial_put_labelled(" ignored=", ignored);
    serial_putc('\n');
}
