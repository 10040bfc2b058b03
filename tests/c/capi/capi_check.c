/*
 * capi_check.c: exercises libvmi's C API between two processes.
 *
 *   capi_check server KEY                    accepts one connection, checks what arrives
 *   capi_check client KEY PEERKEY HOST       connects with connect data, sends, checks
 *   capi_check reject KEY PEERKEY HOST       connects with a wrong cookie; must be rejected
 *
 * The server accepts only the cookie 42 in the connect data, keeps (grabs) the first
 * message's slab and reads it after the next message arrived, answers "ping" with an inline
 * "pong:N" sent from inside its receive function, and ends when the client disconnects.
 * Each side prints "... OK" at the end only if every check passed; a failed check prints
 * "FAIL: ..." and exits 1.
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vmi.h>

#include "check.h"

/* ---- server ------------------------------------------------------------------------------ */

static int context_cookie = 1234;
static volatile int peer_closed;
static int messages;
static char message[4096];
static size_t message_len;
static PVMI_SLAB grabbed;
static int grabbed_checked;

/* Reads the rest of a slab: Try_Read must not move the cursor, Read must, and Copy_Bytes
 * after a restore must see the same bytes. */
static void read_slab(PVMI_SLAB slab)
{
    ULONG left = VMI_SLAB_BYTES_REMAINING(slab), want = left, peek = left;
    PVMI_SLAB_STATE start;
    PVOID p, q;
    char copy[4096];

    CHECK(message_len + left < sizeof message, "message too long");
    OK(VMI_Slab_Save_State(slab, &start));
    OK(VMI_Slab_Try_Read(slab, &peek, &q));
    CHECK(VMI_SLAB_BYTES_REMAINING(slab) == left, "Try_Read moved the cursor");
    OK(VMI_Slab_Read(slab, &want, &p));
    CHECK(want == 0, "Read left %lu bytes unread", want);
    CHECK(VMI_SLAB_BYTES_REMAINING(slab) == 0, "Read did not consume the slab");
    CHECK(left == 0 || memcmp(p, q, left) == 0, "Try_Read and Read disagree");
    OK(VMI_Slab_Restore_State(slab, start));
    CHECK(VMI_SLAB_BYTES_REMAINING(slab) == left, "Restore_State did not rewind");
    OK(VMI_Slab_Copy_Bytes(slab, left, copy));
    CHECK(left == 0 || memcmp(copy, p, left) == 0, "Copy_Bytes differs from Read");
    CHECK(VMI_Slab_Copy_Bytes(slab, 1, copy) == VMI_STATUS_SHORT_SLAB,
          "Copy_Bytes past the end must fail");
    memcpy(message + message_len, p, left);
    message_len += left;
}

static VMI_CONNECT_RESPONSE server_accept(PVMI_CONNECT conn, PVMI_SLAB data, ULONG size)
{
    UINT32 cookie;
    CHECK(size == sizeof cookie, "connect data of %lu bytes", size);
    OK(VMI_Slab_Copy_Bytes(data, sizeof cookie, &cookie));
    if (ntohl(cookie) != 42) {
        printf("REFUSED cookie %u\n", ntohl(cookie));
        fflush(stdout);
        return VMI_CONNECT_RESPONSE_REJECT;
    }
    OK(VMI_CONNECT_SET_RECEIVE_CONTEXT(conn, &context_cookie));
    CHECK(VMI_CONNECT_GET_RECEIVE_CONTEXT(conn) == &context_cookie, "receive context");
    printf("ACCEPTED cookie 42\n");
    return VMI_CONNECT_RESPONSE_ACCEPT;
}

static VMI_RECV_STATUS server_receive(PVMI_CONNECT conn, PVMI_STREAM_RECV stream,
                                      VMI_STREAM_COMMAND command, PVOID context,
                                      PVMI_SLAB slab)
{
    VMI_RECV_STATUS answer = VMI_SLAB_DONE;
    PVMI_SLAB_STATE at;
    (void) stream;
    CHECK(context == &context_cookie, "the receive context did not arrive");
    CHECK(VMI_Poll() == VMI_STATUS_REENTRANT, "VMI_Poll inside a callback must be refused");
    OK(VMI_Slab_Save_State(slab, &at));
    read_slab(slab);
    if (command != VMI_STREAM_END) {
        return VMI_SLAB_DONE;
    }
    messages++;
    message[message_len] = 0;
    printf("MSG %d: %s\n", messages, message);
    if (messages == 1) {
        /* Keep this slab; read it again when the next message arrives. */
        grabbed = slab;
        OK(VMI_Slab_Restore_State(slab, at));
        answer = VMI_SLAB_GRAB;
    } else if (grabbed) {
        char again[64] = {0};
        ULONG n = VMI_SLAB_BYTES_REMAINING(grabbed);
        CHECK(n == strlen("alpha|beta|gamma"), "grabbed slab holds %lu bytes", n);
        OK(VMI_Slab_Copy_Bytes(grabbed, n, again));
        CHECK(strcmp(again, "alpha|beta|gamma") == 0, "grabbed slab reads '%s'", again);
        OK(VMI_Release_Slab(grabbed));
        CHECK(VMI_Release_Slab(grabbed) == VMI_STATUS_INVALID_HANDLE,
              "a second release must be refused");
        CHECK(VMI_SLAB_BYTES_REMAINING(grabbed) == 0, "a released slab reads as empty");
        grabbed = NULL;
        grabbed_checked = 1;
        printf("GRABBED OK\n");
    }
    if (strcmp(message, "ping") == 0) {
        char pong[32];
        PVOID addrs[1];
        ULONG sizes[1];
        int n = snprintf(pong, sizeof pong, "pong:%d", messages);
        addrs[0] = pong;
        sizes[0] = (ULONG) n + 1;
        /* Queued: it runs when this function returns. */
        OK(VMI_Stream_Send_Inline(conn, addrs, sizes, 1, sizes[0]));
    }
    message_len = 0;
    fflush(stdout);
    return answer;
}

static void server_peer_closed(PVMI_CONNECT conn)
{
    (void) conn;
    printf("PEER CLOSED\n");
    peer_closed = 1;
}

static int server(int argc, char **argv)
{
    OK(VMI_Init(argc, argv));
    OK(VMI_STREAM_SET_RECV_FUNCTION(server_receive));
    OK(VMI_Connection_Accept_Fn(server_accept));
    OK(VMI_Connection_Disconnect_Fn(server_peer_closed));
    printf("READY\n");
    fflush(stdout);
    poll_until(&peer_closed, "the client to disconnect");
    CHECK(messages == 4, "%d messages arrived, not 4", messages);
    CHECK(grabbed_checked, "the grabbed slab was not checked");
    OK(VMI_Terminate(0));
    CHECK(VMI_Poll() == VMI_STATUS_NOT_INITIALIZED, "VMI_Poll after VMI_Terminate");
    printf("SERVER OK\n");
    return 0;
}

/* ---- client ----------------------------------------------------------------------------- */

static volatile int answered, gather_done, stream_done, pong, disconnected;
static VMI_CONNECT_RESPONSE answer;

static void connect_done(PVOID context, PVOID response, USHORT size, PVOID handle,
                         VMI_CONNECT_RESPONSE status)
{
    (void) response;
    CHECK(context == (PVOID) &answer, "the connect context did not come back");
    CHECK(handle != NULL, "no connection handle");
    CHECK(size == 0, "unexpected reply data");
    answer = status;
    answered = 1;
}

static void gather_sent(PVOID context, VMI_STATUS status)
{
    CHECK(context == (PVOID) &gather_done, "gather context");
    CHECK(VMI_SUCCESS(status), "gather send failed: %u", status);
    gather_done = 1;
}

static void stream_sent(PVOID context, VMI_STATUS status)
{
    CHECK(context == (PVOID) &stream_done, "stream context");
    CHECK(VMI_SUCCESS(status), "stream failed: %u", status);
    stream_done = 1;
}

static VMI_RECV_STATUS client_receive(PVMI_CONNECT conn, PVMI_STREAM_RECV stream,
                                      VMI_STREAM_COMMAND command, PVOID context,
                                      PVMI_SLAB slab)
{
    char text[32] = {0};
    ULONG n = VMI_SLAB_BYTES_REMAINING(slab);
    (void) conn;
    (void) stream;
    (void) context;
    CHECK(command == VMI_STREAM_END, "the pong is one fragment");
    CHECK(n < sizeof text, "pong too long");
    OK(VMI_Slab_Copy_Bytes(slab, n, text));
    printf("REPLY %s\n", text);
    CHECK(strcmp(text, "pong:4") == 0, "expected pong:4");
    pong = 1;
    return VMI_SLAB_DONE;
}

static void disconnect_done(PVMI_CONNECT conn, PVOID context, VMI_STATUS status)
{
    (void) conn;
    CHECK(context == (PVOID) &disconnected, "disconnect context");
    CHECK(VMI_SUCCESS(status), "disconnect failed: %u", status);
    disconnected = 1;
}

/* Another thread's calls are refused: VMI belongs to the thread that called VMI_Init. */
static void *other_thread(void *arg)
{
    (void) arg;
    CHECK(VMI_Poll() == VMI_STATUS_WRONG_THREAD, "VMI_Poll from another thread");
    CHECK(VMI_Connection_Accept_Fn(NULL) == VMI_STATUS_WRONG_THREAD, "Accept_Fn from another thread");
    return NULL;
}

static PVMI_CONNECT open_connection(const char *key, const char *host, UINT32 cookie)
{
    PVMI_CONNECT conn;
    PVMI_NETADDRESS remote;
    PVMI_BUFFER data;

    OK(VMI_Connection_Create(&conn));
    OK(VMI_Connection_Allocate_IPV4_Address(host, 0, "tester", key, &remote));
    OK(VMI_Connection_Bind(*localAddress, *remote, conn));
    OK(VMI_Connection_Deallocate_Address(remote));
    OK(VMI_Buffer_Allocate(sizeof cookie, &data));
    CHECK(VMI_Buffer_Size(data) == sizeof cookie, "buffer size");
    *(UINT32 *) VMI_BUFFER_ADDRESS(data) = htonl(cookie);
    OK(VMI_Connection_Issue(conn, data, connect_done, &answer));
    CHECK(!answered, "the connect callback ran inside VMI_Connection_Issue");
    OK(VMI_Buffer_Deallocate(data));
    CHECK(VMI_Buffer_Deallocate(data) == VMI_STATUS_INVALID_HANDLE, "double deallocate");
    poll_until(&answered, "the connect answer");
    return conn;
}

/* Buffer pools: aligned, distinct, growing, handles that follow the buffers, and misuse
 * refused with a reason. */
static void check_pools(void)
{
    PVMI_BUFFER_POOL pool;
    PVOID p[3], stray = NULL;
    PVMI_BUFFER h[3];
    int i;

    CHECK(VMI_Pool_Create_Buffer_Pool(100, 48, 1, 1, 0, &pool) == VMI_STATUS_INVALID_PARAMETER,
          "an alignment that is not a power of two");
    CHECK(VMI_Pool_Create_Buffer_Pool(100, 64, 1, 1, 0x100, &pool) == VMI_STATUS_INVALID_PARAMETER,
          "an unknown flag");
    OK(VMI_Pool_Create_Buffer_Pool(100, 64, 2, 1, VMI_POOL_HANDLE | VMI_POOL_CLEARONCE, &pool));
    for (i = 0; i < 3; i++) { /* the third grows the pool */
        OK(VMI_Pool_Allocate_Buffer(pool, &p[i], &h[i]));
        CHECK(((unsigned long)p[i] & 63) == 0, "buffer %d at %p is not 64-aligned", i, p[i]);
        CHECK(((unsigned char *)p[i])[0] == 0 && ((unsigned char *)p[i])[99] == 0,
              "new pool memory is zeroed");
        CHECK(VMI_Buffer_Address(h[i]) == p[i] && VMI_Buffer_Size(h[i]) == 100,
              "the handle names the buffer");
        memset(p[i], 'a' + i, 100);
    }
    CHECK(p[0] != p[1] && p[1] != p[2] && p[0] != p[2], "distinct buffers");
    CHECK(((unsigned char *)p[0])[99] == 'a' && ((unsigned char *)p[1])[0] == 'b',
          "no overlap");
    OK(VMI_Pool_Deallocate_Buffer(pool, p[1]));
    CHECK(VMI_Buffer_Size(h[1]) == 0, "the handle went stale with its buffer");
    CHECK(VMI_Pool_Deallocate_Buffer(pool, p[1]) == VMI_STATUS_INVALID_PARAMETER,
          "a second deallocation");
    CHECK(VMI_Pool_Deallocate_Buffer(pool, &stray) == VMI_STATUS_INVALID_PARAMETER,
          "memory that is not the pool's");
    OK(VMI_Pool_Allocate_Buffer(pool, &p[1], NULL)); /* reused, no handle asked */
    OK(VMI_Pool_Destroy_Buffer_Pool(pool));
    CHECK(VMI_Pool_Destroy_Buffer_Pool(pool) == VMI_STATUS_INVALID_HANDLE, "a destroyed pool");
    CHECK(VMI_Buffer_Size(h[0]) == 0, "handles go with the pool");
    {
        /* Many small allocations share regions: no descriptor or mapping per buffer. */
        static PVMI_BUFFER many[3000];
        for (i = 0; i < 3000; i++) {
            OK(VMI_Buffer_Allocate(16, &many[i]));
            CHECK(((unsigned char *) VMI_BUFFER_ADDRESS(many[i]))[15] == 0, "zeroed");
            memset(VMI_BUFFER_ADDRESS(many[i]), 0xEE, 16);
        }
        for (i = 0; i < 3000; i++) {
            OK(VMI_Buffer_Deallocate(many[i]));
        }
        OK(VMI_Buffer_Allocate(16, &many[0]));
        CHECK(((unsigned char *) VMI_BUFFER_ADDRESS(many[0]))[0] == 0, "zeroed when reused");
        OK(VMI_Buffer_Deallocate(many[0]));
    }
    printf("POOLS OK\n");
}

static int client(int argc, char **argv, int reject)
{
    PVMI_CONNECT conn;
    PVMI_BUFFER b1, b2, inbuf[3];
    PVMI_STREAM stream;
    static char mem1[] = "alpha|beta|";
    static char mem2[] = "gamma";
    PVOID addrs[3];
    ULONG sizes[3];

    OK(VMI_Init(2, argv + 1)); /* argv[2] is this process's key */
    CHECK(VMI_Init(2, argv + 1) == VMI_STATUS_ALREADY_INITIALIZED, "second VMI_Init");
    CHECK(strcmp(localAddress->key, argv[2]) == 0, "localAddress key '%s'", localAddress->key);
    if (!reject) {
        check_pools();
    }
    {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, other_thread, NULL) == 0, "pthread_create");
        CHECK(pthread_join(t, NULL) == 0, "pthread_join");
    }
    OK(VMI_STREAM_SET_RECV_FUNCTION(client_receive));
    conn = open_connection(argv[3], argv[4], reject ? 7 : 42);
    if (reject) {
        CHECK(answer == VMI_CONNECT_RESPONSE_REJECT, "expected a rejection, got %u", answer);
        CHECK(VMI_Stream_Send_Inline(conn, NULL, NULL, 0, 0) == VMI_STATUS_INVALID_HANDLE,
              "a rejected connection's handle must be stale");
        OK(VMI_Terminate(0));
        printf("REJECTED OK\n");
        return 0;
    }
    CHECK(answer == VMI_CONNECT_RESPONSE_ACCEPT, "expected acceptance, got %u", answer);
    (void) argc;

    /* A gather send of three segments: two registered buffers and unregistered memory. */
    OK(VMI_Buffer_Register(mem1, sizeof mem1 - 1, &b1));
    OK(VMI_Buffer_Register(mem2, sizeof mem2 - 1, &b2));
    inbuf[0] = b1; addrs[0] = mem1;     sizes[0] = 6; /* alpha| */
    inbuf[1] = b1; addrs[1] = mem1 + 6; sizes[1] = 5; /* beta|  */
    inbuf[2] = b2; addrs[2] = mem2;     sizes[2] = 5; /* gamma  */
    OK(VMI_Stream_Send(conn, inbuf, addrs, sizes, 3, gather_sent, (PVOID) &gather_done, TRUE));
    /* A range outside its buffer is refused. */
    sizes[2] = 6;
    CHECK(VMI_Stream_Send(conn, inbuf, addrs, sizes, 3, NULL, NULL, TRUE) ==
              VMI_STATUS_INVALID_PARAMETER, "a range outside the buffer must be refused");
    /* The buffer may be changed at once: the send copied it. */
    mem1[0] = 'X';
    mem1[0] = 'a';

    /* An inline send of two segments. */
    addrs[0] = "inline-"; sizes[0] = 7;
    addrs[1] = "one";     sizes[1] = 3;
    CHECK(VMI_Stream_Send_Inline(conn, addrs, sizes, 2, 11) == VMI_STATUS_INVALID_PARAMETER,
          "a wrong total must be refused");
    OK(VMI_Stream_Send_Inline(conn, addrs, sizes, 2, 10));

    /* A stream of three fragments; the same buffer is sent while earlier sends fly. */
    OK(VMI_Stream_Begin(conn, NULL, "s1", 2, stream_sent, (PVOID) &stream_done, FALSE, &stream));
    OK(VMI_Stream_Send_Fragment(stream, NULL, "s2", 2, FALSE));
    OK(VMI_Stream_End(stream, NULL, "s3", 2, FALSE));
    CHECK(VMI_Stream_End(stream, NULL, "s4", 2, FALSE) != VMI_STATUS_OK,
          "a stream cannot end twice");

    /* Ask for the reply, sent by the server from inside its receive function. */
    addrs[0] = "ping"; sizes[0] = 4;
    OK(VMI_Stream_Send_Inline(conn, addrs, sizes, 1, 4));
    poll_until(&gather_done, "the gather completion");
    poll_until(&stream_done, "the stream completion");
    poll_until(&pong, "the pong");

    /* The connection's one-way latency was measured when it opened (the pong is in by now,
     * or soon). */
    {
        ULONG us = 0;
        for (int i = 0; i < 200000 && (us = VMI_CONNECT_ONE_WAY_LATENCY(conn)) == 0; i++) {
            OK(VMI_Poll());
        }
        CHECK(us > 0 && us < 1000000, "one-way latency %lu us", (unsigned long) us);
        printf("LATENCY OK %lu us\n", (unsigned long) us);
        CHECK(VMI_CONNECT_ONE_WAY_LATENCY((PVMI_CONNECT) (uintptr_t) 0x1234) == 0,
              "a made-up connection has no latency");
    }

    /* Bogus handles are refused, not followed. */
    CHECK(VMI_Stream_Send_Inline((PVMI_CONNECT) (uintptr_t) 0x1234, addrs, sizes, 1, 4) ==
              VMI_STATUS_INVALID_HANDLE, "a made-up connection must be refused");
    CHECK(VMI_Buffer_Address((PVMI_BUFFER) (uintptr_t) 0x99) == NULL, "made-up buffer");
    CHECK(VMI_Release_Slab((PVMI_SLAB) (uintptr_t) 0x77) == VMI_STATUS_INVALID_HANDLE,
          "made-up slab");

    OK(VMI_Connection_Disconnect(conn, disconnect_done, (PVOID) &disconnected));
    poll_until(&disconnected, "the disconnect");
    OK(VMI_Buffer_Deregister(b1));
    OK(VMI_Buffer_Deregister(b2));
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
        return client(argc, argv, 0);
    }
    if (argc == 5 && strcmp(argv[1], "reject") == 0) {
        return client(argc, argv, 1);
    }
    fprintf(stderr, "usage: %s server KEY | client KEY PEERKEY HOST | reject KEY PEERKEY HOST\n",
            argv[0]);
    return 2;
}
