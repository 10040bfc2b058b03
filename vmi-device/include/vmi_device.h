/*
 * vmi_device.h — the vmi device plugin ABI, for devices written in C.
 *
 * A device is a shared object that exports one `vmi_device_descriptor` under the symbol
 * `vmi_device_<type>`, where <type> is the `type=` a specfile gives (default: the device's
 * name). The host owns every IRB; a device holds one only between returning VMI_PENDING and
 * calling services->pass or services->complete. Nothing Rust-specific crosses this boundary.
 *
 * This header mirrors vmi-device/src/abi.rs; keep both in step. ABI 1.8.
 *
 * Versioning: structs only grow at the end, and every table says its own size. A host reads a
 * device built for an older minor (shorter tables: the missing entries count as NULL) and one
 * built for a newer minor (it reads the part it knows). A device that calls a service newer
 * than 1.0 checks services->size first, e.g.
 *     if (svc->size > VMI_HOST_SERVICES_SIZE_1_0) n = svc->irb_available(host);
 * History: 1.0 first edition; 1.1 adds vtable.poll_budget and services.irb_available;
 * 1.2 adds vtable.send_inline and vtable.poll_direct; 1.3 adds vtable.rdma_access;
 * 1.4 adds vtable.register_conn; 1.5 adds the IRB operation VMI_OP_ABORT; from 1.6 on
 * (services->abi_minor >= 6) the budget the host passes to poll_budget and poll_direct is
 * already at most what irb_available would return, so a device need not ask at every poll;
 * 1.7 adds services.lend_rings (a transport lends the host its receive rings: see
 * vmi_ring_set); 1.8 adds services.lend_streams (a byte-stream transport lends the host its
 * sockets: see vmi_stream_set).
 *
 * Threads: the host calls a device instance from one thread at a time, and the services the
 * device calls during a call run on that thread. The thread may change between calls (an
 * application may move its Vmi to another thread), so a device keeps nothing tied to the
 * calling thread across calls. Its own threads use only complete_from_thread and wake.
 * See devices/skeleton/README.md for a walk-through, and tests/c/ for a complete C device.
 */
#ifndef VMI_DEVICE_H
#define VMI_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VMI_DEVICE_MAGIC 0x44494d56u /* "VMID" little-endian */
#define VMI_ABI_MAJOR 1
#define VMI_ABI_MINOR 8
/* Sizes of the 1.0 tables (x86-64 and aarch64 Linux): the smallest a 1.x host accepts. */
#define VMI_DESCRIPTOR_SIZE_1_0 88u
#define VMI_VTABLE_SIZE_1_0 104u
#define VMI_VTABLE_SIZE_1_1 112u
#define VMI_HOST_SERVICES_SIZE_1_0 128u
#define VMI_HOST_SERVICES_SIZE_1_1 136u /* 1.1 to 1.6 */
#define VMI_HOST_SERVICES_SIZE_1_7 144u
#define VMI_IRB_MAX_SEGS 16
#define VMI_MAX_FRAME_ALIGN 64

#define VMI_KIND_FILTER 1u
#define VMI_KIND_TRANSPORT 2u

/* Descriptor flag: the filter does not change wire bytes; left out of the filter signature. */
#define VMI_DEVICE_WIRE_NEUTRAL 1u

/* What submit/receive did with the IRB. */
#define VMI_PASS 0
#define VMI_COMPLETE 1 /* irb->status holds the status */
#define VMI_PENDING 2

/* Operations. */
#define VMI_OP_SEND 1u
#define VMI_OP_CONNECT 2u
#define VMI_OP_ACCEPT 3u
#define VMI_OP_REJECT 4u
#define VMI_OP_DISCONNECT 5u
/* ABI 1.5: close at once; IRBs held for the connection complete with the abort IRB's
 * status (set on submit); the abort itself completes OK. Older devices answer INVALID. */
#define VMI_OP_ABORT 6u
#define VMI_OP_RECV 16u
#define VMI_OP_CONNECT_REQUEST 17u
#define VMI_OP_PEER_DISCONNECT 18u

#define VMI_FLAG_END 1u
#define VMI_FLAG_FILTER_MASK 0xffff0000u
#define VMI_FLAG_HOST 0x80000000u /* host-to-host message; filters leave this bit alone */
#define VMI_FLAG_MSG 0x40000000u /* host message passing (request, reply, pulse); filters leave this bit alone */

/* Statuses (vmi_core::Status). */
#define VMI_STATUS_OK 0
#define VMI_STATUS_REJECTED 1
#define VMI_STATUS_UNREACHABLE 2
#define VMI_STATUS_MISMATCH 3
#define VMI_STATUS_TIMEOUT 4
#define VMI_STATUS_CONNECTION_LOST 5
#define VMI_STATUS_PROTOCOL 6
#define VMI_STATUS_CORRUPT 7
#define VMI_STATUS_CANCELLED 8
#define VMI_STATUS_TOO_LARGE 9
#define VMI_STATUS_INVALID 10
#define VMI_STATUS_NO_RESOURCES 11
#define VMI_STATUS_INTERNAL 12
#define VMI_STATUS_LOST 13

#define VMI_PARAM_BOOL 1u
#define VMI_PARAM_UINT 2u
#define VMI_PARAM_INT 3u
#define VMI_PARAM_STRING 4u

#define VMI_LOG_ERROR 1u
#define VMI_LOG_WARN 2u
#define VMI_LOG_INFO 3u
#define VMI_LOG_DEBUG 4u
#define VMI_LOG_TRACE 5u

#define VMI_CREATE_OK 0
#define VMI_CREATE_FAILED 1
#define VMI_CREATE_PANICKED 2

typedef struct vmi_str {
    const uint8_t *ptr; /* not NUL-terminated */
    size_t len;
} vmi_str;

typedef struct vmi_seg {
    uint8_t *base;
    size_t len;
} vmi_seg;

/* ABI 1.3: the peer's memory object behind a published address (see rdma_access). */
typedef struct vmi_rdma_key {
    int32_t fd;        /* descriptor number of the sealed memfd in the peer */
    uint32_t remote_key; /* the peer transport's rkey for the buffer, 0: none */
    uint64_t inode;    /* its inode number */
    uint64_t offset;   /* offset in it of the first byte accessed */
} vmi_rdma_key;

typedef struct vmi_irb {
    uint32_t op;
    uint32_t flags;
    int32_t status;
    uint32_t nseg;
    uint64_t conn;
    vmi_seg segs[VMI_IRB_MAX_SEGS];
    vmi_str peer_host;
    vmi_str peer_key;
} vmi_irb;

typedef struct vmi_capabilities {
    uint64_t max_fragment;
    uint32_t headroom;
    uint32_t tailroom;
    uint32_t max_connect_data;
} vmi_capabilities;

typedef struct vmi_param {
    vmi_str name;
    vmi_str value;
} vmi_param;

typedef struct vmi_param_spec {
    const char *name;
    uint32_t kind;
    const char *default_value;
    const char *doc;
} vmi_param_spec;

/* Lent receive rings (ABI 1.7, services.lend_rings). A ring is a single-producer
 * single-consumer byte ring the peer writes: *head is the producer's free-running byte
 * position (peer-written, untrusted), *tail the consumer's (written by this process), data
 * holds cap bytes (a power of two) and position p lies at data[p % cap]. Records follow one
 * another with no padding and may wrap: a 16-byte header (0 kind u8, 1 zero, 2 filter flags
 * u16, 4 payload length u32, 8 id u64, little-endian), then for kinds VMI_RING_DATA and
 * VMI_RING_DATA_END the payload. The host takes whole data records of at most max_len bytes
 * and stops at anything else, which the transport's own poll reads; it checks every
 * position it reads. While busy is 0 the host may read the rings itself and skip up to
 * `skips` of the transport's polls (counting skips down); it adds what it read to `taken`
 * and keeps the consumer positions in each ring's cursor, which the transport reads its
 * rings through. The transport sets busy before anything that could change a ring or its
 * connection (a connection ended or unmapped, a record half read, sends queued, a sleep),
 * and keeps the set, the rings and the cursors valid until it sets busy or ends the loan
 * (lend_rings(host, NULL)). Both sides touch the set only on the polling thread. */
#define VMI_RING_DATA 1u
#define VMI_RING_DATA_END 2u
#define VMI_RING_RECORD_LEN 16u

typedef struct vmi_ring_cursor {
    uint64_t own;  /* this side's position: what was read (receive) or written (send) */
    uint64_t seen; /* the other side's position as last read and checked */
} vmi_ring_cursor;

typedef struct vmi_ring {
    uint64_t conn;
    const uint64_t *head;
    uint64_t *tail;
    const uint8_t *data;
    uint64_t cap;
    uint64_t max_len;
    vmi_ring_cursor *cursor;
} vmi_ring;

/* A lent send ring: the host writes a small whole message as one record (kind
 * VMI_RING_DATA_END or VMI_RING_DATA by VMI_FLAG_END, the filter flags, the length, id 0,
 * the payload), publishes *head (release), fences (sequentially consistent; a compiler
 * barrier only when flags has VMI_TX_LIGHT_BARRIER) and, when *sleeping is nonzero, writes
 * 1 (8 bytes) to the eventfd bell. It reads *tail only when the cached position leaves too
 * little room, and checks it (never behind the last seen, never past head); too little room
 * or a bad position and the message goes to send_inline. VMI_TX_LIGHT_BARRIER: the ring's
 * consumer issues membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED), which reaches this process
 * (the transport registered it), between setting *sleeping and its last look before a sleep.
 * ABI 1.7 hosts read flags as reserved and always fence, which stays correct. */
#define VMI_TX_LIGHT_BARRIER 1u
typedef struct vmi_tx_ring {
    uint64_t conn;
    uint64_t *head;
    const uint64_t *tail;
    const uint64_t *sleeping;
    uint8_t *data;
    uint64_t cap;
    uint64_t max_len;
    vmi_ring_cursor *cursor;
    int32_t bell; /* -1: none */
    uint32_t flags; /* VMI_TX_LIGHT_BARRIER or 0 */
} vmi_tx_ring;

typedef struct vmi_ring_set {
    uint32_t busy;
    uint32_t skips;
    uint64_t taken;
    const vmi_ring *rings;
    size_t count;
    uint64_t sent;          /* messages the host wrote into the send rings */
    const vmi_tx_ring *tx;  /* sorted by conn, at most one per connection */
    size_t tx_count;
} vmi_ring_set;

/* Lent stream sockets (ABI 1.8, services.lend_streams). Each stream is a connected,
 * non-blocking socket whose bytes are frames: an 8-byte header (0 kind u8, 1 ignored, 2 filter
 * flags u16, 4 payload length u32, little-endian: the first 8 bytes of a ring record header)
 * and the payload. While busy is 0 and skips is not, the host may, at a poll, read each stream
 * whose rest is VMI_REST_NONE once into its buf (cap bytes), and take from the start of what
 * it read every whole data frame (kind VMI_RING_DATA or VMI_RING_DATA_END, at most max_len
 * payload bytes, VMI_FLAG_HOST not in its flags), as the transport would have offered it to
 * the host's receiver; it counts skips down and adds what it took to `taken`. Everything else
 * the read produced is the transport's, written to the stream's rest: the bytes from the first
 * frame not taken on (also when the read filled buf, or the budget ran out: off == len then
 * possible), the end of the stream, or an error (errno; EAGAIN is not one). Streams may share
 * one buffer: after writing a rest the host reads no other stream and calls the transport's
 * poll at once, which takes the rest (kind back to VMI_REST_NONE) before anything else. The
 * transport sets busy before anything that could change a stream or its connection (a
 * socket closed, a frame half read, bytes parked, sends queued, a sleep) and keeps the set,
 * the sockets, the buffers and the rests valid until it sets busy or ends the loan
 * (lend_streams(host, NULL)). Both sides touch the set only on the polling thread. */
#define VMI_STREAM_HEADER_LEN 8u
#define VMI_REST_NONE 0u
#define VMI_REST_BYTES 1u
#define VMI_REST_END 2u
#define VMI_REST_ERROR 3u

typedef struct vmi_stream_rest {
    uint32_t kind;  /* VMI_REST_*: written by the host, cleared by the transport */
    int32_t error;  /* errno of a VMI_REST_ERROR */
    uint64_t off;   /* VMI_REST_BYTES: buf[off..len] is the transport's */
    uint64_t len;   /* what the read returned */
    uint64_t heard; /* bytes the host read since the transport last cleared it */
} vmi_stream_rest;

typedef struct vmi_stream {
    uint64_t conn;
    int32_t fd;        /* connected, non-blocking; its bytes are the peer's: untrusted */
    uint32_t reserved;
    uint8_t *buf;      /* may be shared by the set's streams */
    uint64_t cap;      /* > 0 */
    uint64_t max_len;
    vmi_stream_rest *rest;
} vmi_stream;

typedef struct vmi_stream_set {
    uint32_t busy;
    uint32_t skips;
    uint64_t taken;
    const vmi_stream *streams;
    size_t count;
} vmi_stream_set;

typedef struct vmi_host_services {
    uint32_t size;
    uint32_t abi_minor;
    void (*pass)(void *host, vmi_irb *irb);
    void (*complete)(void *host, vmi_irb *irb, int32_t status);
    void (*complete_from_thread)(void *host, vmi_irb *irb, int32_t status);
    vmi_irb *(*irb_alloc)(void *host, uint32_t op, uint64_t conn);
    uint8_t *(*irb_frame)(void *host, vmi_irb *irb);
    int32_t (*irb_attach)(void *host, vmi_irb *irb, const uint8_t *data, size_t len);
    void (*irb_set_peer)(void *host, vmi_irb *irb, vmi_str peer_host, vmi_str peer_key);
    void (*irb_set_detail)(void *host, vmi_irb *irb, vmi_str detail);
    uint64_t (*conn_new)(void *host);
    vmi_str (*local_key)(void *host);
    vmi_str (*signature)(void *host);
    void (*log)(void *host, uint32_t level, vmi_str target, vmi_str msg);
    void (*wake)(void *host);
    uint32_t max_log_level;
    const uint8_t *host_marker;
    /* ABI 1.1 (check size first): receive IRBs the device may still allocate before
     * irb_alloc returns NULL; stop reading at 0 and go on at a later poll (back-pressure). */
    uint32_t (*irb_available)(void *host);
    /* ABI 1.7 (check size > VMI_HOST_SERVICES_SIZE_1_1 first): lends the host the calling
     * transport's receive rings (see vmi_ring_set), or ends the loan (NULL). Only a
     * transport with poll_direct benefits; a host may ignore the loan. */
    void (*lend_rings)(void *host, vmi_ring_set *set);
    /* ABI 1.8 (check size > VMI_HOST_SERVICES_SIZE_1_7 first): lends the host the calling
     * transport's stream sockets (see vmi_stream_set), or ends the loan (NULL). Only a
     * transport with poll_direct benefits; a host may ignore the loan. */
    void (*lend_streams)(void *host, vmi_stream_set *set);
} vmi_host_services;

typedef int32_t (*vmi_create_fn)(const vmi_host_services *services, void *host, const vmi_param *params,
                                 size_t nparams, void **out, char *err, size_t err_len);

/* Every entry may be NULL: submit/receive then pass through, the others are skipped. */
typedef struct vmi_device_vtable {
    uint32_t size; /* sizeof(vmi_device_vtable) */
    void (*destroy)(void *dev);
    void (*capabilities)(void *dev, vmi_capabilities *caps);
    /* submit and receive: irb is a live IRB, never NULL; frame is the device's own. */
    int32_t (*submit)(void *dev, vmi_irb *irb, uint8_t *frame);
    int32_t (*receive)(void *dev, vmi_irb *irb, uint8_t *frame);
    void (*complete)(void *dev, vmi_irb *irb, uint8_t *frame);
    int32_t (*poll)(void *dev);
    void (*wait_fd)(void *dev, int32_t *fd, int64_t *timeout_ms);
    int32_t (*reach)(void *dev, vmi_str host, vmi_str key, char *why, size_t why_len);
    uint64_t (*register_memory)(void *dev, uint8_t *base, size_t len);
    void (*deregister_memory)(void *dev, uint64_t handle);
    /* Runtime attributes: get returns the value's full length (or -1: no such attribute). */
    int64_t (*get_attr)(void *dev, vmi_str name, char *out, size_t out_len);
    int32_t (*set_attr)(void *dev, vmi_str name, vmi_str value, char *err, size_t err_len);
    /* ABI 1.1: as poll, handing at most `budget` IRBs up; preferred to poll when present.
     * From host 1.6 on, budget <= irb_available at the time of the call. */
    int32_t (*poll_budget)(void *dev, uint32_t budget);
    /* ABI 1.2, transports: send a small whole message (flags: VMI_FLAG_END) at once with no
     * IRB, copying the bytes; VMI_COMPLETE when sent, VMI_PASS when not now (the host then
     * sends it as an IRB). Called only when no device above has a submit step. */
    int32_t (*send_inline)(void *dev, uint64_t conn, uint32_t flags, const uint8_t *data, size_t len);
    /* ABI 1.2, transports: as poll_budget, but received fragments go to deliver(ctx, conn,
     * flags, data, len) with no IRB (bytes valid for the call). deliver returns VMI_COMPLETE
     * (taken) or VMI_PASS: then that fragment and the rest of this call's go up as IRBs.
     * Called instead of poll_budget only when no device above has a receive step. */
    int32_t (*poll_direct)(void *dev, uint32_t budget,
                           int32_t (*deliver)(void *ctx, uint64_t conn, uint32_t flags, const uint8_t *data, size_t len),
                           void *ctx);
    /* ABI 1.3, transports: one-sided access to the peer's memory on conn (RDMA put/get):
     * write (write = 1) the nsegs local segments one after another to the peer's addresses
     * from `remote` on, or read them from there (write = 0), before returning. VMI_COMPLETE
     * with *status set (0: every byte moved), or VMI_PASS when this connection cannot now
     * (the host then moves the bytes as messages). key, when not NULL, names the peer's sealed
     * memfd behind `remote` (descriptor number in the peer, inode, offset of `remote` in it)
     * for a transport that attaches it instead of copying through the kernel. */
    int32_t (*rdma_access)(void *dev, uint64_t conn, uint32_t write, uint64_t remote,
                           const vmi_rdma_key *key, const vmi_seg *segs, size_t nsegs,
                           int32_t *status);
    /* ABI 1.4, transports with rdma_access: register len bytes at base, a buffer published
     * to the peer of conn alone, for that peer's one-sided reads and writes; a handle for
     * deregister (0: none) whose low 32 bits are the key the peer names the memory by. */
    uint64_t (*register_conn)(void *dev, uint64_t conn, uint8_t *base, size_t len);
} vmi_device_vtable;

typedef struct vmi_device_descriptor {
    uint32_t magic;       /* VMI_DEVICE_MAGIC */
    uint16_t abi_major;   /* VMI_ABI_MAJOR */
    uint16_t abi_minor;   /* VMI_ABI_MINOR */
    uint32_t struct_size; /* sizeof(vmi_device_descriptor) */
    uint32_t kind;        /* VMI_KIND_* */
    uint32_t flags;       /* VMI_DEVICE_* */
    const char *name;     /* the type name; the symbol is vmi_device_<name> */
    const char *version;
    const char *description;
    uint32_t frame_size; /* per-IRB scratch bytes, zeroed at allocation */
    uint32_t frame_align;
    const vmi_param_spec *params;
    size_t nparams;
    vmi_create_fn create;
    const vmi_device_vtable *vtable;
} vmi_device_descriptor;

#ifdef __cplusplus
}
#endif

#endif /* VMI_DEVICE_H */
