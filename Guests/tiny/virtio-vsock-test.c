/*
 * Tiny 64-bit guest: a polling virtio-vsock driver (virtio 1.2, 5.10).
 *
 * It finds the socket device (type 19), reads its CID, sets up rx (4 buffers of 44 + 64 KiB),
 * tx and event queues, then:
 *   1. connects to the host (CID 2) port OUT_PORT from port OUT_SRC_PORT, sends PATTERN_BYTES
 *      of a known pattern ((i * 31 + 7) & 0xff) and shuts down sending;
 *   2. listens on port LISTEN_PORT: one connection at a time, whose data it copies into a
 *      256 KiB ring (its advertised buf_alloc) and echoes back from there within the host's
 *      credit; every rx buffer goes back at once, so credit updates always find one (holding
 *      rx buffers while waiting for the host's credit would deadlock). A request for any other
 *      port gets RST;
 *   3. reports a transport reset event (after a restore) and drops its connections.
 * It runs until the VM is stopped. Every packet it sends carries its own credit: buf_alloc
 * = the ring's size and fwd_cnt = bytes it has echoed.
 */
#include "serial.h"
#include "virtio.h"

#define HOST_CID 2
#define LISTEN_PORT 5000
#define OUT_PORT 1234
#define OUT_SRC_PORT 2000
#define PATTERN_BYTES 16384
#define PAYLOAD (64u * 1024u)
#define HDR 44
#define NRX 4
#define BUF_ALLOC (256u * 1024u)

enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };

struct hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

struct conn {
    int open, established;
    uint32_t local_port, peer_port;
    uint32_t peer_buf_alloc, peer_fwd_cnt, tx_cnt, fwd_cnt;
};

static struct virtq rxq, txq, evq;
static uint8_t rxbuf[NRX][HDR + PAYLOAD] __attribute__((aligned(4096)));
static uint8_t pattern[PATTERN_BYTES] __attribute__((aligned(64)));
static struct hdr txhdr __attribute__((aligned(64)));
static uint32_t event_buf[2] __attribute__((aligned(8)));
static uintptr_t base;
static uint64_t cid;
static struct conn echo, out;
/* Echo data not yet sent back: ring[ring_head .. ring_head + ring_count), wrapping. */
static uint8_t ring[BUF_ALLOC] __attribute__((aligned(4096)));
static uint32_t ring_head, ring_count;
static uint32_t echoed_total, connections_served;

static void post_rx(uint32_t id)
{
    virtq_set(&rxq, (uint16_t)id, (uint64_t)rxbuf[id], HDR + PAYLOAD, VIRTQ_DESC_F_WRITE, 0);
    virtq_publish(&rxq, (uint16_t)id);
    virtq_notify(base, &rxq);
}

static void post_event(void)
{
    virtq_set(&evq, 0, (uint64_t)event_buf, sizeof event_buf, VIRTQ_DESC_F_WRITE, 0);
    virtq_publish(&evq, 0);
    virtq_notify(base, &evq);
}

/* Takes the next used entry of `q` if there is one (no waiting). */
static int take_used(struct virtq *q, uint32_t *id, uint32_t *len)
{
    if (!virtq_has_used(q))
        return 0;
    virtio_barrier();
    *id = q->used.ring[q->used_seen % VQ_SIZE].id;
    *len = q->used.ring[q->used_seen % VQ_SIZE].len;
    q->used_seen++;
    return 1;
}

/* Sends one packet (and `len` payload bytes at `payload`) and waits for the device to take it. */
static void send_packet(uint32_t src_port, uint32_t dst_port, uint16_t op, uint32_t flags, const void *payload,
                        uint32_t len, const struct conn *c)
{
    txhdr.src_cid = cid;
    txhdr.dst_cid = HOST_CID;
    txhdr.src_port = src_port;
    txhdr.dst_port = dst_port;
    txhdr.len = len;
    txhdr.type = 1;
    txhdr.op = op;
    txhdr.flags = flags;
    txhdr.buf_alloc = BUF_ALLOC;
    txhdr.fwd_cnt = c ? c->fwd_cnt : 0;
    virtq_set(&txq, 0, (uint64_t)&txhdr, HDR, len ? VIRTQ_DESC_F_NEXT : 0, 1);
    if (len)
        virtq_set(&txq, 1, (uint64_t)payload, len, 0, 0);
    virtq_publish(&txq, 0);
    virtq_notify(base, &txq);
    uint32_t id, used;
    if (virtq_wait_used(&txq, &id, &used) != 0)
        guest_fail("tx timed out");
}

static void send_conn(struct conn *c, uint16_t op, uint32_t flags, const void *payload, uint32_t len)
{
    send_packet(c->local_port, c->peer_port, op, flags, payload, len, c);
}

static uint32_t peer_free(const struct conn *c) { return c->peer_buf_alloc - (c->tx_cnt - c->peer_fwd_cnt); }

static void drop_pending(void) { ring_head = ring_count = 0; }

static void copy_bytes(void *to, const void *from, uint64_t count)
{
    __asm__ volatile("rep movsb" : "+D"(to), "+S"(from), "+c"(count) : : "memory");
}

/* Handles the packet in rx buffer `id`; returns whether the buffer is free again (always). */
static int handle(uint32_t id)
{
    struct hdr *h = (struct hdr *)rxbuf[id];
    struct conn *c = 0;
    if (echo.open && h->dst_port == echo.local_port && h->src_port == echo.peer_port)
        c = &echo;
    else if (out.open && h->dst_port == out.local_port && h->src_port == out.peer_port)
        c = &out;
    if (h->op == OP_REQUEST && !c) {
        if (h->dst_port == LISTEN_PORT && !echo.open) {
            echo = (struct conn){1, 1, LISTEN_PORT, h->src_port, h->buf_alloc, h->fwd_cnt, 0, 0};
            connections_served++;
            send_conn(&echo, OP_RESPONSE, 0, 0, 0);
        } else {
            send_packet(h->dst_port, h->src_port, OP_RST, 0, 0, 0, 0);
        }
        return 1;
    }
    if (!c) {
        if (h->op != OP_RST)
            send_packet(h->dst_port, h->src_port, OP_RST, 0, 0, 0, 0);
        return 1;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_RESPONSE:
        c->established = 1;
        return 1;
    case OP_RW:
        if (c == &echo && h->len) {
            if (ring_count + h->len > BUF_ALLOC)
                guest_fail("host sent beyond the credit");
            uint32_t tail = (ring_head + ring_count) % BUF_ALLOC;
            uint32_t first = BUF_ALLOC - tail < h->len ? BUF_ALLOC - tail : h->len;
            copy_bytes(ring + tail, rxbuf[id] + HDR, first);
            copy_bytes(ring, rxbuf[id] + HDR + first, h->len - first);
            ring_count += h->len;
            return 1;
        }
        c->fwd_cnt += h->len;
        return 1;
    case OP_SHUTDOWN:
        send_conn(c, OP_RST, 0, 0, 0);
        c->open = 0;
        if (c == &echo) {
            drop_pending();
            serial_put_labelled("vsock-test: echoed ", echoed_total);
            serial_puts(" bytes\n");
            echoed_total = 0;
        }
        return 1;
    case OP_RST:
        c->open = 0;
        if (c == &echo)
            drop_pending();
        return 1;
    case OP_CREDIT_REQUEST:
        send_conn(c, OP_CREDIT_UPDATE, 0, 0, 0);
        return 1;
    default:
        return 1;
    }
}

/* Echoes ring data while the host's credit allows, at most 64 KiB (and no wrap) per packet. */
static void echo_pending(void)
{
    while (ring_count && echo.open) {
        uint32_t len = ring_count;
        if (len > PAYLOAD)
            len = PAYLOAD;
        if (len > BUF_ALLOC - ring_head)
            len = BUF_ALLOC - ring_head;
        uint32_t credit = peer_free(&echo);
        if (credit == 0)
            return;
        if (len > credit)
            len = credit;
        echo.fwd_cnt += len;
        send_conn(&echo, OP_RW, 0, ring + ring_head, len);
        echo.tx_cnt += len;
        echoed_total += len;
        ring_head = (ring_head + len) % BUF_ALLOC;
        ring_count -= len;
    }
}

/* One pass over the rx and event queues. */
static void poll_once(void)
{
    uint32_t id, len;
    while (take_used(&rxq, &id, &len)) {
        if (len < HDR)
            guest_fail("short rx packet");
        if (handle(id))
            post_rx(id);
    }
    if (take_used(&evq, &id, &len)) {
        serial_put_labelled("vsock-test: event id=", event_buf[0]);
        serial_putc('\n');
        echo.open = out.open = 0;
        drop_pending();
        post_event();
    }
    echo_pending();
}

void guest_main(void)
{
    uint32_t slot;
    base = virtio_find(19, &slot);
    if (!base)
        guest_fail("no virtio-vsock device");
    cid = (uint64_t)virtio_read(base, VIRTIO_CONFIG) | (uint64_t)virtio_read(base, VIRTIO_CONFIG + 4) << 32;
    serial_put_labelled("vsock-test: slot=", slot);
    serial_put_labelled(" cid=", (uint32_t)cid);
    serial_putc('\n');

    uint32_t offered;
    if (virtio_negotiate(base, 0, &offered) < 0)
        guest_fail("feature negotiation");
    if (virtio_setup_queue(base, 0, &rxq) != 0 || virtio_setup_queue(base, 1, &txq) != 0 ||
        virtio_setup_queue(base, 2, &evq) != 0)
        guest_fail("queue setup");
    if (virtio_driver_ok(base) != 0)
        guest_fail("device needs reset after DRIVER_OK");
    for (uint32_t i = 0; i < NRX; i++)
        post_rx(i);
    post_event();

    for (uint32_t i = 0; i < PATTERN_BYTES; i++)
        pattern[i] = (uint8_t)(i * 31 + 7);
    out = (struct conn){1, 0, OUT_SRC_PORT, OUT_PORT, 0, 0, 0, 0};
    send_conn(&out, OP_REQUEST, 0, 0, 0);
    for (uint32_t spins = 0; out.open && !out.established && spins < VIRTIO_POLL_LIMIT; spins++)
        poll_once();
    if (out.open && out.established && peer_free(&out) >= PATTERN_BYTES) {
        send_conn(&out, OP_RW, 0, pattern, PATTERN_BYTES);
        out.tx_cnt += PATTERN_BYTES;
        send_conn(&out, OP_SHUTDOWN, 2, 0, 0);
        serial_put_labelled("vsock-test: sent ", PATTERN_BYTES);
        serial_puts(" bytes to host port 1234\n");
    } else {
        serial_puts("vsock-test: host port 1234 refused\n");
    }
    serial_puts("vsock-test: listening on 5000\n");
    for (;;)
        poll_once();
}
