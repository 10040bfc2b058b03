/*
 * timeout_check.c: vmi's timeouts and abort from C, between two processes, through libvmi.
 *
 *   timeout_check server KEY                accepts; on a "sleep" message stops polling for
 *                                           3 s (a receiver that does not read), then serves
 *                                           until both clients' connections are gone
 *   timeout_check client KEY PEERKEY HOST   aborts one connection; lets a send timeout end
 *                                           another whose receiver sleeps
 *
 * Each side prints "... OK" at the end only if every check passed; a failed check prints
 * "FAIL: ..." and exits 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <vmi.h>

#include "check.h"

/* ---- server ------------------------------------------------------------------------------ */

static volatile int gone, sleep_asked;

static VMI_CONNECT_RESPONSE server_accept(PVMI_CONNECT conn, PVMI_SLAB data, ULONG size)
{
    (void) conn;
    (void) data;
    (void) size;
    return VMI_CONNECT_RESPONSE_ACCEPT;
}

static VMI_RECV_STATUS server_receive(PVMI_CONNECT conn, PVMI_STREAM_RECV stream,
                                      VMI_STREAM_COMMAND command, PVOID context,
                                      PVMI_SLAB slab)
{
    char text[8] = {0};
    (void) conn;
    (void) stream;
    (void) command;
    (void) context;
    if (VMI_SLAB_BYTES_REMAINING(slab) == 5) {
        OK(VMI_Slab_Copy_Bytes(slab, 5, text));
        if (memcmp(text, "sleep", 5) == 0) {
            sleep_asked = 1;
        }
    }
    return VMI_SLAB_DONE;
}

static void server_peer_gone(PVMI_CONNECT conn)
{
    (void) conn;
    gone++;
}

static int server(int argc, char **argv)
{
    int i;
    OK(VMI_Init(argc, argv));
    OK(VMI_STREAM_SET_RECV_FUNCTION(server_receive));
    OK(VMI_Connection_Accept_Fn(server_accept));
    OK(VMI_Connection_Disconnect_Fn(server_peer_gone));
    for (i = 0; i < 3000 && gone < 2; i++) {
        OK(VMI_Wait(10));
        if (sleep_asked) {
            /* A receiver that stops reading: the client's sends pile up, then time out. */
            sleep_asked = 0;
            sleep(3);
        }
    }
    CHECK(gone == 2, "%d connection(s) ended, not 2", gone);
    OK(VMI_Terminate(0));
    printf("SERVER OK\n");
    return 0;
}

/* ---- client ------------------------------------------------------------------------------ */

static volatile int answered, aborted, ended, ok_sends, timed_out_sends, other_sends;
static VMI_STATUS abort_status;

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

static volatile int refused;

static void connect_refused(PVOID ctx, PVOID data, USHORT size, PVOID conn,
                            VMI_CONNECT_RESPONSE response)
{
    (void) ctx;
    (void) data;
    (void) size;
    (void) conn;
    CHECK(response != VMI_CONNECT_RESPONSE_ACCEPT, "a cancelled connect was accepted");
    refused = 1;
}

static void abort_done(PVMI_CONNECT conn, PVOID ctx, VMI_STATUS s)
{
    (void) conn;
    CHECK(ctx == &aborted, "the abort's context");
    abort_status = s;
    aborted = 1;
}

static void send_done(PVOID ctx, VMI_STATUS s)
{
    (void) ctx;
    if (s == VMI_STATUS_OK) {
        ok_sends++;
    } else if (s == VMI_STATUS_TIMEOUT) {
        timed_out_sends++;
    } else {
        other_sends++;
    }
}

static void client_conn_ended(PVMI_CONNECT conn)
{
    (void) conn;
    ended = 1;
}

static PVMI_CONNECT open_conn(char **argv)
{
    PVMI_CONNECT conn;
    PVMI_NETADDRESS addr;
    OK(VMI_Connection_Create(&conn));
    OK(VMI_Connection_Allocate_IPV4_Address(argv[4], 0, "tester", argv[3], &addr));
    OK(VMI_Connection_Bind(*localAddress, *addr, conn));
    OK(VMI_Connection_Deallocate_Address(addr));
    answered = 0;
    OK(VMI_Connection_Issue(conn, NULL, connect_done, NULL));
    poll_until(&answered, "the connect answer");
    return conn;
}

static int client(char **argv)
{
    PVMI_CONNECT conn;
    PVMI_BUFFER big;
    ULONG size = 256 * 1024;
    int i;

    OK(VMI_Init(2, argv + 1));
    OK(VMI_Connection_Disconnect_Fn(client_conn_ended));

    /* An abort while connecting (to a key nobody holds; connects keep trying): the connect
     * ends not accepted, and the abort's done runs. */
    {
        PVMI_NETADDRESS addr;
        OK(VMI_Connection_Create(&conn));
        OK(VMI_Connection_Allocate_IPV4_Address(argv[4], 0, "tester", "nobody-holds-this-key",
                                                &addr));
        OK(VMI_Connection_Bind(*localAddress, *addr, conn));
        OK(VMI_Connection_Deallocate_Address(addr));
        OK(VMI_Connection_Issue(conn, NULL, connect_refused, NULL));
        OK(VMI_Connection_Abort(conn, abort_done, (PVOID) &aborted));
        poll_until(&aborted, "the abort of a connect in progress");
        poll_until(&refused, "the cancelled connect's callback");
        aborted = 0;
    }

    /* An abort: done runs with success, the handle is stale afterwards. */
    conn = open_conn(argv);
    for (i = 0; i < 5; i++) {
        OK(VMI_Stream_Send_Inline(conn, (PVOID[]) {"hello"}, (ULONG[]) {5}, 1, 5));
    }
    OK(VMI_Connection_Abort(conn, abort_done, (PVOID) &aborted));
    poll_until(&aborted, "the abort");
    CHECK(abort_status == VMI_STATUS_OK, "the abort ended with %d", (int) abort_status);
    CHECK(VMI_Connection_Abort(conn, NULL, NULL) != VMI_STATUS_OK, "a second abort");

    /* A send timeout against a receiver that stops reading. */
    conn = open_conn(argv);
    CHECK(VMI_Connection_Set_Send_Timeout(conn, 100000000) == VMI_STATUS_INVALID_PARAMETER,
          "a timeout over a day");
    CHECK(VMI_Connection_Disconnect_Timeout(conn, 0, NULL, NULL) ==
              VMI_STATUS_INVALID_PARAMETER,
          "a disconnect timeout of 0");
    OK(VMI_Connection_Set_Send_Timeout(conn, 300));
    OK(VMI_Stream_Send_Inline(conn, (PVOID[]) {"sleep"}, (ULONG[]) {5}, 1, 5));
    OK(VMI_Buffer_Allocate(size, &big));
    for (i = 0; i < 3000 && !ended; i++) {
        VMI_STATUS s = VMI_Stream_Send(conn, &big, (PVOID[]) {VMI_BUFFER_ADDRESS(big)}, &size, 1,
                                       send_done, NULL, TRUE);
        if (s == VMI_STATUS_NOT_CONNECTED) {
            break; /* timed out: the connection is closing */
        }
        CHECK(VMI_SUCCESS(s) || s == VMI_STATUS_BUSY || ended, "send %d: %d", i, (int) s);
        OK(VMI_Wait(1));
    }
    poll_until(&ended, "the send timeout to end the connection");
    CHECK(strstr(VMI_Last_Error(), "no send completed") != NULL, "the reason: %s",
          VMI_Last_Error());
    for (i = 0; i < 50; i++) {
        OK(VMI_Wait(10));
    }
    CHECK(timed_out_sends > 0, "%d send(s) timed out, %d succeeded", timed_out_sends, ok_sends);
    CHECK(other_sends == 0, "%d send(s) ended otherwise", other_sends);
    OK(VMI_Buffer_Deallocate(big));
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
    fprintf(stderr, "usage: timeout_check server KEY | timeout_check client KEY PEERKEY HOST\n");
    return 2;
}
