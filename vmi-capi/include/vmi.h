/*
 * vmi.h: the VMI 2.1 application API of vmi (libvmi).
 *
 * C and C++ programs written for NCSA's Virtual Machine Interface 2.1 build against this
 * header and libvmi unchanged:
 *
 *     cc -o vmisend vmisend.c $(pkg-config --cflags --libs vmi)
 *     export VMI_SPECFILE=<prefix>/share/vmi/specfiles/tcp.xml
 *     ./vmirecv recvkey &  ./vmisend sendkey recvkey localhost
 *
 * Rules:
 *  - Every call returns a VMI_STATUS (test it with VMI_SUCCESS(status), print it with
 *    VMI_perror), the set-callback calls included.
 *  - One thread: the thread that called VMI_Init makes every call (others get
 *    VMI_STATUS_WRONG_THREAD).
 *  - Callbacks run only inside VMI_Poll or VMI_Wait: never inside the call that caused them
 *    (a connect's response never fires inside VMI_Connection_Issue) and never re-entrantly.
 *    VMI calls made from a callback are checked at once and run when it returns; VMI_Poll,
 *    VMI_Wait and VMI_Terminate there return VMI_STATUS_REENTRANT.
 *  - Handles (PVMI_CONNECT, PVMI_BUFFER, PVMI_STREAM, PVMI_SLAB) are checked: a stale or
 *    made-up one is refused with VMI_STATUS_INVALID_HANDLE.
 *  - Sends copy the bytes when they are issued: a buffer may be changed or sent again at
 *    once, even while earlier sends of it are in flight.
 *
 * The key of this process is argv[1] when VMI_Init gets arguments (the tutorial's
 * "vmirecv recvkey"), else the VMI_KEY environment variable. VMI_SPECFILE names the
 * specfile. VMI_LOG (error, warn, info, debug, trace) sets how much vmi logs to stderr.
 */
#ifndef VMI_H
#define VMI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- The VMI 2.1 types ---------------------------------------------------------------- */

typedef void VOID;
typedef void *PVOID;
typedef unsigned long ULONG;
typedef unsigned short USHORT;
typedef uint32_t UINT32;
typedef unsigned char UCHAR;
typedef unsigned char BOOLEAN;
typedef unsigned char *PUCHAR;
typedef const char *PCSTR;
typedef char **PPSTR;

#ifndef TRUE
#define TRUE 1
#endif
#ifndef FALSE
#define FALSE 0
#endif

/* ---- Status ------------------------------------------------------------------------------ */

typedef uint32_t VMI_STATUS;

#define VMI_SUCCESS(status) ((status) == VMI_STATUS_OK)
#define SET_VMI_SUCCESS(status) ((status) = VMI_STATUS_OK)

/* 0-13: how an operation ended in the transports (the same values as vmi_device.h). */
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
/* 100-: the C API's own. */
#define VMI_STATUS_NOT_INITIALIZED 100
#define VMI_STATUS_ALREADY_INITIALIZED 101
#define VMI_STATUS_INVALID_HANDLE 102
#define VMI_STATUS_INVALID_PARAMETER 103
#define VMI_STATUS_BUSY 104
#define VMI_STATUS_REENTRANT 105
#define VMI_STATUS_WRONG_THREAD 106
#define VMI_STATUS_CONFIGURATION 107
#define VMI_STATUS_NOT_CONNECTED 108
#define VMI_STATUS_SHORT_SLAB 109

/* ---- Handles and addresses ---------------------------------------------------------------- */

typedef struct VMI_CONNECT *PVMI_CONNECT;
typedef struct VMI_BUFFER *PVMI_BUFFER;
typedef struct VMI_STREAM *PVMI_STREAM;
typedef struct VMI_STREAM_RECV *PVMI_STREAM_RECV;
typedef struct VMI_SLAB *PVMI_SLAB;
typedef struct VMI_SLAB_STATE *PVMI_SLAB_STATE;
typedef struct VMI_BUFFER_POOL *PVMI_BUFFER_POOL;

#define VMI_HOST_MAX 256
#define VMI_KEY_MAX 256
#define VMI_USER_MAX 64

/* A process's address: a host and a key (VMI addresses processes by key, not port). */
typedef struct VMI_NETADDRESS {
    char host[VMI_HOST_MAX];
    char key[VMI_KEY_MAX];
    char user[VMI_USER_MAX];
    USHORT port; /* 0: find the process by its key */
} VMI_NETADDRESS, *PVMI_NETADDRESS;

/* This process's address, set by VMI_Init. */
extern PVMI_NETADDRESS localAddress;

/* ---- Callbacks ------------------------------------------------------------------------------ */

typedef uint32_t VMI_CONNECT_RESPONSE;
#define VMI_CONNECT_RESPONSE_ACCEPT 1
#define VMI_CONNECT_RESPONSE_REJECT 2
#define VMI_CONNECT_RESPONSE_ERROR 3

typedef uint32_t VMI_RECV_STATUS;
#define VMI_SLAB_DONE 0
#define VMI_SLAB_GRAB 1

typedef uint32_t VMI_STREAM_COMMAND;
#define VMI_STREAM_FRAGMENT 0
#define VMI_STREAM_END 1

/* A connect finished: (context, reply data, its size, the connection, the outcome). On
 * VMI_CONNECT_RESPONSE_ERROR, VMI_Last_Error() says why. */
typedef void (*VMIConnectIssue)(PVOID, PVOID, USHORT, PVOID, VMI_CONNECT_RESPONSE);
/* A peer asks to connect: (the new connection, its connect data, the data's size). Return
 * VMI_CONNECT_RESPONSE_ACCEPT, or _REJECT / _ERROR to refuse (the peer sees a rejection). */
typedef VMI_CONNECT_RESPONSE (*VMIConnectAccept)(PVMI_CONNECT, PVMI_SLAB, ULONG);
/* A disconnect this process issued finished: (the connection, context, status). */
typedef void (*VMIConnectDisconnect)(PVMI_CONNECT, PVOID, VMI_STATUS);
/* The peer closed the connection, or it failed (VMI_Last_Error() says why). */
typedef void (*VMIDisconnectNotification)(PVMI_CONNECT);
/* A fragment arrived: (connection, its stream, VMI_STREAM_FRAGMENT or VMI_STREAM_END, the
 * connection's receive context, the slab). Return VMI_SLAB_DONE, or VMI_SLAB_GRAB to keep the
 * slab until VMI_Release_Slab. */
typedef VMI_RECV_STATUS (*VMIStreamRecv)(PVMI_CONNECT, PVMI_STREAM_RECV, VMI_STREAM_COMMAND, PVOID, PVMI_SLAB);
/* A send finished: (context, status). */
typedef void (*VMIStreamNotification)(PVOID, VMI_STATUS);

/* ---- Start, progress, shutdown ------------------------------------------------------------- */

/* Reads VMI_SPECFILE, loads the devices, builds the chains. */
VMI_STATUS VMI_Init(int argc, PPSTR argv);
/* Makes progress; every callback runs inside it. Never blocks. */
VMI_STATUS VMI_Poll(void);
/* Like VMI_Poll, but sleeps until something happens or timeout_ms pass (vmi's addition). */
VMI_STATUS VMI_Wait(ULONG timeout_ms);
/* Closes every connection in order (sends in flight are delivered first, for at most
 * VMI_TERMINATE_TIMEOUT seconds, 10 by default), then unloads the devices. */
VMI_STATUS VMI_Terminate(VMI_STATUS status);
/* Prints "msg: what status means" and, if it is the last failure, its reason and remedy. */
void VMI_perror(PCSTR msg, VMI_STATUS status);
/* What a status means (vmi's addition). */
PCSTR VMI_Status_String(VMI_STATUS status);
/* The last failure's full message on this thread (vmi's addition). */
PCSTR VMI_Last_Error(void);

/* ---- Connections ------------------------------------------------------------------------------ */

VMI_STATUS VMI_Connection_Create(PVMI_CONNECT *out);
/* The address of key at host; port 0 finds the process by its key. */
VMI_STATUS VMI_Connection_Allocate_IPV4_Address(PCSTR host, USHORT port, PCSTR user, PCSTR key, PVMI_NETADDRESS *out);
/* Frees an address from VMI_Connection_Allocate_IPV4_Address (vmi's addition). */
VMI_STATUS VMI_Connection_Deallocate_Address(PVMI_NETADDRESS addr);
VMI_STATUS VMI_Connection_Bind(VMI_NETADDRESS local, VMI_NETADDRESS remote, PVMI_CONNECT conn);
/* Starts connecting with optional connect data (the whole buffer, or NULL). */
VMI_STATUS VMI_Connection_Issue(PVMI_CONNECT conn, PVMI_BUFFER data, VMIConnectIssue done, PVOID context);
/* Without an accept function every incoming connection is refused. */
VMI_STATUS VMI_Connection_Accept_Fn(VMIConnectAccept fn);
VMI_STATUS VMI_Connection_Disconnect(PVMI_CONNECT conn, VMIConnectDisconnect done, PVOID context);
VMI_STATUS VMI_Connection_Disconnect_Fn(VMIDisconnectNotification fn);
/* vmi's additions (Globus XIO's timeouts and cancel). The orderly close of
 * VMI_Connection_Disconnect, given at most timeout_ms (1 ms to a day): past it the connection
 * is aborted, its waiting sends complete with VMI_STATUS_TIMEOUT, and done gets
 * VMI_STATUS_TIMEOUT. */
VMI_STATUS VMI_Connection_Disconnect_Timeout(PVMI_CONNECT conn, ULONG timeout_ms, VMIConnectDisconnect done, PVOID context);
/* Closes at once: unfinished sends complete with VMI_STATUS_CANCELLED, the peer sees the
 * connection lost; done gets VMI_STATUS_OK. Also ends a disconnect in progress. On a
 * connection still connecting (as VMI_Connection_Disconnect there), the connect callback
 * reports VMI_CONNECT_RESPONSE_ERROR first, then done runs. */
VMI_STATUS VMI_Connection_Abort(PVMI_CONNECT conn, VMIConnectDisconnect done, PVOID context);
/* When sends wait and none completes for timeout_ms (0 clears; at most a day), the connection
 * is aborted: its sends complete with VMI_STATUS_TIMEOUT and the disconnect function runs
 * (VMI_Last_Error says why). */
VMI_STATUS VMI_Connection_Set_Send_Timeout(PVMI_CONNECT conn, ULONG timeout_ms);
VMI_STATUS VMI_Connection_Set_Receive_Context(PVMI_CONNECT conn, PVOID context);
PVOID VMI_Connection_Get_Receive_Context(PVMI_CONNECT conn);
/* The connection's measured one-way latency in microseconds (half a round trip between the two
 * VMI engines, measured when the connection opens and again when asked, at most every 5 s);
 * 0 before the first measurement or for an invalid or closed connection. */
ULONG VMI_Connection_Get_One_Way_Latency(PVMI_CONNECT conn);

#define VMI_CONNECT_SET_RECEIVE_CONTEXT(conn, context) VMI_Connection_Set_Receive_Context((conn), (context))
#define VMI_CONNECT_GET_RECEIVE_CONTEXT(conn) VMI_Connection_Get_Receive_Context(conn)
#define VMI_CONNECT_ONE_WAY_LATENCY(conn) VMI_Connection_Get_One_Way_Latency(conn)

/* ---- Buffers ------------------------------------------------------------------------------------ */

VMI_STATUS VMI_Buffer_Register(PVOID addr, ULONG size, PVMI_BUFFER *out);

/* The registration cache (VMI 2.1): VMI_Cache_Register registers size bytes at addr, or finds
 * a registration of the same memory kept from before; entry->bufferHandle is the registration
 * (it covers the whole pages around the range), usable where a PVMI_BUFFER is. Give the entry
 * back with VMI_Cache_Deregister: the registration stays cached for the next register of the
 * same memory. Memory unmapped, released (MADV_DONTNEED) or moved drops its registration at
 * once, so other memory mapped later at the same address is never served by it. Where memory
 * cannot be watched, or with VMI_DISABLE_REGCACHE=1, every registration is for one use.
 * VMI_Cache_Stats prints the statistics; VMI_Cache_Get_Stats (vmi's addition) returns them. */
typedef struct VMI_CACHE_ENTRY {
    PVMI_BUFFER bufferHandle;
    PVOID addr;
    ULONG size;
} VMI_CACHE_ENTRY, *PVMI_CACHE_ENTRY;
typedef struct VMI_CACHE_STATS {
    uint64_t hits, misses, invalidated, evicted, uncached, entries, bytes;
} VMI_CACHE_STATS;
VMI_STATUS VMI_Cache_Register(PVOID addr, ULONG size, PVMI_CACHE_ENTRY *out);
VMI_STATUS VMI_Cache_Deregister(PVMI_CACHE_ENTRY entry);
VMI_STATUS VMI_Cache_Stats(void);
VMI_STATUS VMI_Cache_Get_Stats(VMI_CACHE_STATS *out);
VMI_STATUS VMI_Buffer_Deregister(PVMI_BUFFER buffer);
VMI_STATUS VMI_Buffer_Allocate(ULONG size, PVMI_BUFFER *out);
VMI_STATUS VMI_Buffer_Deallocate(PVMI_BUFFER buffer);
PVOID VMI_Buffer_Address(PVMI_BUFFER buffer);
ULONG VMI_Buffer_Size(PVMI_BUFFER buffer);

#define VMI_BUFFER_ADDRESS(buffer) VMI_Buffer_Address(buffer)

/* ---- RDMA --------------------------------------------------------------------------------- */

/* Publish memory from VMI_Buffer_Allocate or a pool to a peer; the peer puts into it and gets
 * from it with ops it fills in. Over shared memory the bytes move straight into and out of the
 * publisher's memory; elsewhere as messages its vmi answers in VMI_Poll. Callbacks run only
 * inside VMI_Poll. A PVMI_REMOTE_BUFFER and a PVMI_RDMA_OP are libvmi's: a made-up or freed
 * one is refused with VMI_STATUS_INVALID_HANDLE. */
typedef unsigned long long VMI_virt_addr_t;
#define VMI_RDMA_MAX_BUFS 16
typedef struct VMI_REMOTE_BUFFER {
    ULONG rsz;                /* its size in bytes */
    unsigned long long lctxt; /* the publisher's remoteCtx */
    UINT32 ctx;               /* the publisher's ctx */
    PVMI_CONNECT conn;        /* the connection it came on */
} VMI_REMOTE_BUFFER, *PVMI_REMOTE_BUFFER;
typedef struct VMI_RDMA_OP {
    ULONG numBufs;                          /* entries used */
    PVMI_BUFFER buffers[VMI_RDMA_MAX_BUFS]; /* each entry's buffer (a get lands in vmi's memory) */
    PVOID addr[VMI_RDMA_MAX_BUFS];          /* each entry's address */
    ULONG sz[VMI_RDMA_MAX_BUFS];            /* each entry's size */
    PVMI_REMOTE_BUFFER rbuffer;             /* the remote buffer */
    ULONG roffset;                          /* the offset in it */
    BOOLEAN notify;                         /* tell the publisher */
} VMI_RDMA_OP, *PVMI_RDMA_OP;
typedef void (*VMIRDMACompleteNotification)(PVMI_RDMA_OP op, PVOID ctx, VMI_STATUS status);
typedef void (*VMIRDMAPublishNotification)(PVMI_CONNECT conn, PVMI_REMOTE_BUFFER rb, PVMI_SLAB payload, ULONG payloadSize);
typedef void (*VMIRDMAPutNotification)(PVMI_CONNECT conn, UINT32 rdmaSize, UINT32 ctx, VMI_STATUS status);
typedef void (*VMIRDMAGetNotification)(PVMI_CONNECT conn, UINT32 ctx, VMI_STATUS status);
VMI_STATUS VMI_RDMA_Publish_Buffer(PVMI_CONNECT conn, PVMI_BUFFER buffer, VMI_virt_addr_t addr, UINT32 size, VMI_virt_addr_t remoteCtx, UINT32 ctx, PVOID payload, ULONG payloadSize);
VMI_STATUS VMI_RDMA_Set_Publish_Callback(PVMI_CONNECT conn, VMIRDMAPublishNotification fn);
VMI_STATUS VMI_RDMA_Set_Put_Notification_Callback(PVMI_CONNECT conn, VMIRDMAPutNotification fn);
VMI_STATUS VMI_RDMA_Set_Get_Notification_Callback(PVMI_CONNECT conn, VMIRDMAGetNotification fn);
VMI_STATUS VMI_RDMA_Alloc_Op(PVMI_RDMA_OP *op);
VMI_STATUS VMI_RDMA_Dealloc_Op(PVMI_RDMA_OP op);
VMI_STATUS VMI_RDMA_Put(PVMI_CONNECT conn, PVMI_RDMA_OP op, PVOID ctx, VMIRDMACompleteNotification cb);
VMI_STATUS VMI_RDMA_Get(PVMI_CONNECT conn, PVMI_RDMA_OP op, PVOID ctx, VMIRDMACompleteNotification cb);
VMI_STATUS VMI_RDMA_Dealloc_Buffer(PVMI_REMOTE_BUFFER rb);

/* ---- Buffer pools ------------------------------------------------------------------------ */

/* Fixed-size buffers aligned to `align` (a power of two up to the page size; 0 means 8),
 * `prealloc` made now and `grow` more when the pool runs out. A buffer is known by its
 * address; with VMI_POOL_HANDLE it also gets a PVMI_BUFFER (stale once deallocated). Every
 * buffer's memory is zeroed when first made (VMI_POOL_CLEARONCE) and usable by the
 * transports as is (VMI_POOL_REGISTER). Destroying a pool frees the buffers still out. */
#define VMI_POOL_CLEARONCE 1
#define VMI_POOL_REGISTER 2
#define VMI_POOL_HANDLE 4
VMI_STATUS VMI_Pool_Create_Buffer_Pool(ULONG size, ULONG align, ULONG prealloc, ULONG grow, ULONG flags, PVMI_BUFFER_POOL *out);
VMI_STATUS VMI_Pool_Allocate_Buffer(PVMI_BUFFER_POOL pool, PVOID *ptr, PVMI_BUFFER *handle);
VMI_STATUS VMI_Pool_Deallocate_Buffer(PVMI_BUFFER_POOL pool, PVOID ptr);
VMI_STATUS VMI_Pool_Destroy_Buffer_Pool(PVMI_BUFFER_POOL pool);

/* ---- Sending ---------------------------------------------------------------------------------- */

/* Opens a stream; size > 0 sends addr..addr+size as its first fragment. done(context, status)
 * runs once the stream is ended and every fragment sent. The BOOLEAN arguments of the send
 * calls are accepted and ignored (VMI 2.1 never documented them). */
VMI_STATUS VMI_Stream_Begin(PVMI_CONNECT conn, PVMI_BUFFER buffer, PVOID addr, ULONG size, VMIStreamNotification done, PVOID context, BOOLEAN notify, PVMI_STREAM *out);
VMI_STATUS VMI_Stream_Send_Fragment(PVMI_STREAM stream, PVMI_BUFFER buffer, PVOID addr, ULONG size, BOOLEAN notify);
/* The last fragment (size may be 0). A refused end (other than VMI_STATUS_BUSY) ends the stream. */
VMI_STATUS VMI_Stream_End(PVMI_STREAM stream, PVMI_BUFFER buffer, PVOID addr, ULONG size, BOOLEAN notify);
/* A one-fragment message gathered from n segments (buffers may be NULL). */
VMI_STATUS VMI_Stream_Send(PVMI_CONNECT conn, PVMI_BUFFER *buffers, PVOID *addrs, ULONG *sizes, ULONG n, VMIStreamNotification done, PVOID context, BOOLEAN notify);
/* A small message, copied, with no buffer and no completion; total is the sum of sizes. */
VMI_STATUS VMI_Stream_Send_Inline(PVMI_CONNECT conn, PVOID *addrs, ULONG *sizes, ULONG n, ULONG total);

/* ---- Receiving ---------------------------------------------------------------------------------- */

VMI_STATUS VMI_Stream_Set_Recv_Function(VMIStreamRecv fn);
ULONG VMI_Slab_Bytes_Remaining(PVMI_SLAB slab);
VMI_STATUS VMI_Slab_Save_State(PVMI_SLAB slab, PVMI_SLAB_STATE *out);
VMI_STATUS VMI_Slab_Restore_State(PVMI_SLAB slab, PVMI_SLAB_STATE saved);
/* *bytes in: how many are wanted; *out: contiguous memory with the next of them (copied only
 * when they span segments); *bytes out: how many wanted bytes were NOT available (0: all).
 * The memory stays valid until the slab is released. */
VMI_STATUS VMI_Slab_Read(PVMI_SLAB slab, ULONG *bytes, PVOID *out);
/* As VMI_Slab_Read, without moving the cursor. */
VMI_STATUS VMI_Slab_Try_Read(PVMI_SLAB slab, ULONG *bytes, PVOID *out);
/* Copies exactly n bytes, or nothing and VMI_STATUS_SHORT_SLAB when fewer remain. */
VMI_STATUS VMI_Slab_Copy_Bytes(PVMI_SLAB slab, ULONG n, PVOID dst);
/* Releases a slab the receive function grabbed. */
VMI_STATUS VMI_Release_Slab(PVMI_SLAB slab);

#define VMI_STREAM_SET_RECV_FUNCTION(fn) VMI_Stream_Set_Recv_Function(fn)
#define VMI_SLAB_BYTES_REMAINING(slab) VMI_Slab_Bytes_Remaining(slab)

#ifdef __cplusplus
}
#endif

#endif /* VMI_H */
