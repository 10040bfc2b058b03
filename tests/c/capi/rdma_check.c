/*
 * rdma_check.c: VMI 2.1's RDMA calls between two processes, through libvmi.
 *
 *   rdma_check server KEY                 accepts; on the client's "publish" message, publishes
 *                                         1000 bytes at offset 100 of an allocated buffer
 *   rdma_check client KEY PEERKEY HOST    puts into it and gets from it with gather and
 *                                         scatter lists, checks every byte and the callbacks
 *
 * Each side prints "... OK" at the end only if every check passed; a failed check prints
 * "FAIL: ..." and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vmi.h>

#include "check.h"

static unsigned char pattern(int i) { return (unsigned char) (i * 7 + 3); }

/* ---- server (the publisher) -------------------------------------------------------------- */

static volatile int peer_closed, put_notified, get_notified;
static PVMI_BUFFER exposed;
static UINT32 put_size;

static void server_put_notified(PVMI_CONNECT conn, UINT32 rdma_size, UINT32 ctx, VMI_STATUS s)
{
    (void) conn;
    CHECK(VMI_SUCCESS(s) && ctx == 7, "put notification: status %d ctx %u", (int) s, ctx);
    put_size = rdma_size;
    put_notified++;
}

static void server_get_notified(PVMI_CONNECT conn, UINT32 ctx, VMI_STATUS s)
{
    (void) conn;
    CHECK(VMI_SUCCESS(s) && ctx == 7, "get notification: status %d ctx %u", (int) s, ctx);
    get_notified++;
}

static VMI_CONNECT_RESPONSE server_accept(PVMI_CONNECT conn, PVMI_SLAB data, ULONG size)
{
    (void) data;
    (void) size;
    OK(VMI_RDMA_Set_Put_Notification_Callback(conn, server_put_notified));
    OK(VMI_RDMA_Set_Get_Notification_Callback(conn, server_get_notified));
    return VMI_CONNECT_RESPONSE_ACCEPT;
}

static VMI_RECV_STATUS server_receive(PVMI_CONNECT conn, PVMI_STREAM_RECV stream,
                                      VMI_STREAM_COMMAND command, PVOID context,
                                      PVMI_SLAB slab)
{
    unsigned char *mem;
    int i;
    (void) stream;
    (void) command;
    (void) context;
    (void) slab;
    OK(VMI_Buffer_Allocate(4096, &exposed));
    mem = VMI_BUFFER_ADDRESS(exposed);
    for (i = 0; i < 4096; i++) {
        mem[i] = pattern(i);
    }
    /* Outside the buffer, and registered application memory: refused. */
    CHECK(VMI_RDMA_Publish_Buffer(conn, exposed, (VMI_virt_addr_t) (mem + 4000), 200, 1, 7,
                                  NULL, 0) == VMI_STATUS_INVALID_PARAMETER,
          "a range past the buffer");
    {
        static char app[64];
        PVMI_BUFFER reg;
        OK(VMI_Buffer_Register(app, sizeof app, &reg));
        CHECK(VMI_RDMA_Publish_Buffer(conn, reg, (VMI_virt_addr_t) app, 64, 1, 7, NULL, 0) ==
                  VMI_STATUS_INVALID_PARAMETER,
              "registered application memory");
        OK(VMI_Buffer_Deregister(reg));
    }
    OK(VMI_RDMA_Publish_Buffer(conn, exposed, (VMI_virt_addr_t) (mem + 100), 1000,
                               0xABCDEF0123ULL, 7, "hello", 5));
    return VMI_SLAB_DONE;
}

static void server_peer_closed(PVMI_CONNECT conn)
{
    (void) conn;
    peer_closed = 1;
}

static int server(int argc, char **argv)
{
    unsigned char *mem;
    int i;
    OK(VMI_Init(argc, argv));
    OK(VMI_STREAM_SET_RECV_FUNCTION(server_receive));
    OK(VMI_Connection_Accept_Fn(server_accept));
    OK(VMI_Connection_Disconnect_Fn(server_peer_closed));
    printf("READY\n");
    fflush(stdout);
    poll_until(&peer_closed, "the client to disconnect");
    CHECK(put_notified == 1 && put_size == 7, "%d put notice(s), size %u", put_notified,
          put_size);
    CHECK(get_notified == 1, "%d get notice(s)", get_notified);
    mem = VMI_BUFFER_ADDRESS(exposed);
    /* The client's put: "abc" + "defg" at offset 10 of the published range (100). */
    CHECK(memcmp(mem + 110, "abcdefg", 7) == 0, "the put landed");
    for (i = 0; i < 4096; i++) {
        if (i < 110 || i >= 117) {
            CHECK(mem[i] == pattern(i), "byte %d changed", i);
        }
    }
    OK(VMI_Terminate(0));
    printf("SERVER OK\n");
    return 0;
}

/* ---- client (the initiator) -------------------------------------------------------------- */

static volatile int answered, published, done;
static VMI_STATUS done_status;
static PVMI_REMOTE_BUFFER remote;
static char payload[16];

static void connect_done(PVOID ctx, PVOID data, USHORT size, PVOID conn,
                         VMI_CONNECT_RESPONSE response)
{
    (void) ctx;
    (void) data;
    (void) size;
    (void) conn;
    CHECK(response == VMI_CONNECT_RESPONSE_ACCEPT, "the connection was not accepted");
    answered = 1;
}

static void client_published(PVMI_CONNECT conn, PVMI_REMOTE_BUFFER rb, PVMI_SLAB data,
                             ULONG size)
{
    CHECK(rb->conn == conn, "the remote buffer's connection");
    CHECK(size == 5, "a payload of %lu bytes", size);
    OK(VMI_Slab_Copy_Bytes(data, size, payload));
    remote = rb;
    published = 1;
}

static void op_done(PVMI_RDMA_OP op, PVOID ctx, VMI_STATUS s)
{
    CHECK(ctx == &done, "the op's context");
    CHECK(op != NULL, "the op");
    done_status = s;
    done = 1;
}

static void run_op(PVMI_CONNECT conn, PVMI_RDMA_OP op, int get, VMI_STATUS want)
{
    done = 0;
    if (get) {
        OK(VMI_RDMA_Get(conn, op, &done, op_done));
    } else {
        OK(VMI_RDMA_Put(conn, op, &done, op_done));
    }
    poll_until(&done, get ? "the get" : "the put");
    CHECK(done_status == want, "the op ended with %d, not %d", (int) done_status, (int) want);
}

static int client(char **argv)
{
    PVMI_CONNECT conn;
    PVMI_NETADDRESS addr;
    PVMI_BUFFER data, local;
    PVMI_RDMA_OP op;
    unsigned char *mem;
    int i;
    static char p1[] = "abc", p2[] = "defg";

    OK(VMI_Init(2, argv + 1));
    OK(VMI_Connection_Create(&conn));
    OK(VMI_Connection_Allocate_IPV4_Address(argv[4], 0, "tester", argv[3], &addr));
    OK(VMI_Connection_Bind(*localAddress, *addr, conn));
    OK(VMI_Connection_Deallocate_Address(addr));
    OK(VMI_RDMA_Set_Publish_Callback(conn, client_published));
    OK(VMI_Buffer_Allocate(1, &data));
    OK(VMI_Connection_Issue(conn, data, connect_done, NULL));
    poll_until(&answered, "the connect answer");
    OK(VMI_Stream_Send_Inline(conn, (PVOID[]) {"publish"}, (ULONG[]) {7}, 1, 7));
    poll_until(&published, "the publish");
    CHECK(remote->rsz == 1000, "rsz %lu", remote->rsz);
    CHECK(remote->lctxt == 0xABCDEF0123ULL, "lctxt %llx", remote->lctxt);
    CHECK(remote->ctx == 7, "ctx %u", remote->ctx);
    CHECK(memcmp(payload, "hello", 5) == 0, "the payload");

    OK(VMI_RDMA_Alloc_Op(&op));
    /* A put gathered from two parts, at offset 10, with notify. */
    op->numBufs = 2;
    op->buffers[0] = op->buffers[1] = NULL;
    op->addr[0] = p1;
    op->sz[0] = 3;
    op->addr[1] = p2;
    op->sz[1] = 4;
    op->rbuffer = remote;
    op->roffset = 10;
    op->notify = TRUE;
    run_op(conn, op, 0, VMI_STATUS_OK);
    CHECK(VMI_RDMA_Dealloc_Op(op) == VMI_STATUS_OK, "dealloc after completion");

    /* A get scattered into two parts of an allocated buffer, from offset 5. */
    OK(VMI_RDMA_Alloc_Op(&op));
    OK(VMI_Buffer_Allocate(256, &local));
    mem = VMI_BUFFER_ADDRESS(local);
    op->numBufs = 2;
    op->buffers[0] = op->buffers[1] = local;
    op->addr[0] = mem;
    op->sz[0] = 10;
    op->addr[1] = mem + 100;
    op->sz[1] = 20;
    op->rbuffer = remote;
    op->roffset = 5;
    op->notify = TRUE;
    run_op(conn, op, 1, VMI_STATUS_OK);
    /* Offsets 5..35 of the published range, which starts at 100 of the server's buffer; the
     * put wrote "abcdefg" at 10..17. */
    for (i = 0; i < 30; i++) {
        int at = i < 10 ? i : 100 + i - 10;
        int remote_off = 100 + 5 + i;
        unsigned char want = (remote_off >= 110 && remote_off < 117)
                                 ? (unsigned char) "abcdefg"[remote_off - 110]
                                 : pattern(remote_off);
        CHECK(mem[at] == want, "got byte %d: %u, not %u", i, mem[at], want);
    }

    /* Refused at once: past the end, too many entries, a made-up remote buffer. */
    op->numBufs = 1;
    op->roffset = 995;
    CHECK(VMI_RDMA_Get(conn, op, &done, op_done) == VMI_STATUS_INVALID_PARAMETER,
          "a get past the remote buffer's end");
    op->numBufs = VMI_RDMA_MAX_BUFS + 1;
    CHECK(VMI_RDMA_Put(conn, op, &done, op_done) == VMI_STATUS_INVALID_PARAMETER,
          "too many entries");
    op->numBufs = 1;
    op->roffset = 0;
    op->rbuffer = (PVMI_REMOTE_BUFFER) &data;
    CHECK(VMI_RDMA_Put(conn, op, &done, op_done) == VMI_STATUS_INVALID_HANDLE,
          "a made-up remote buffer");
    OK(VMI_RDMA_Dealloc_Op(op));
    CHECK(VMI_RDMA_Dealloc_Op(op) == VMI_STATUS_INVALID_HANDLE, "a freed op");

    OK(VMI_RDMA_Dealloc_Buffer(remote));
    CHECK(VMI_RDMA_Dealloc_Buffer(remote) == VMI_STATUS_INVALID_HANDLE, "a freed remote buffer");
    OK(VMI_Buffer_Deallocate(local));
    OK(VMI_Buffer_Deallocate(data));
    OK(VMI_Connection_Disconnect(conn, NULL, NULL));
    for (i = 0; i < 20; i++) {
        OK(VMI_Wait(10));
    }
    OK(VMI_Terminate(0));
    printf("CLIENT OK\n");
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "server") == 0) {
        return server(2, argv + 1);
    }
    if (argc == 5 && strcmp(argv[1], "client") == 0) {
        return client(argv);
    }
    fprintf(stderr, "usage: rdma_check server KEY | rdma_check client KEY PEERKEY HOST\n");
    return 2;
}
