/*
 * vmirecv.c: the receiver of NCSA's "VMI 2 Send/Receive Tutorial", assembled from the
 * tutorial's code fragments (main, connectAccept, receiveMessage) with the declarations
 * around them that the tutorial's archive held.
 *
 *     cc -o vmirecv vmirecv.c $(pkg-config --cflags --libs vmi)
 *     VMI_SPECFILE=.../tcp.xml ./vmirecv recvkey
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <vmi.h>

#define CONNECT_DATA

#ifdef DEBUG
#define DEBUG_PRINT(...) fprintf(stderr, __VA_ARGS__)
#else
#define DEBUG_PRINT(...)
#endif

typedef struct {
    UINT32 cookie;
} CONNECT_MESSAGE;

static volatile BOOLEAN connected = FALSE;
static volatile BOOLEAN finished = FALSE;
static PVMI_CONNECT connection;

static VMI_CONNECT_RESPONSE connectAccept (PVMI_CONNECT newConnection, PVMI_SLAB slab,
                                           ULONG size)
{
#ifdef CONNECT_DATA
  VMI_STATUS status;
  PVMI_SLAB_STATE slabState;
  ULONG bytesRemaining = sizeof (CONNECT_MESSAGE);
  CONNECT_MESSAGE *conn_data;

  /* Read the connection data. */
  if (size != bytesRemaining) {
    return VMI_CONNECT_RESPONSE_ERROR;
  }
  status = VMI_Slab_Save_State (slab, &slabState);
  if (!VMI_SUCCESS (status)) {
    DEBUG_PRINT ("VMI_Slab_Save_State() returned error code 0x%08X.\n",
                 status);
    return VMI_CONNECT_RESPONSE_ERROR;
  }
  status = VMI_Slab_Read (slab,
                          &bytesRemaining,
                          (PVOID) &conn_data);
  if (!VMI_SUCCESS (status)) {
    DEBUG_PRINT ("VMI_Slab_Read() returned error code 0x%08X.\n", status);
    return VMI_CONNECT_RESPONSE_ERROR;
  }
  status = VMI_Slab_Restore_State (slab, slabState);
  if (!VMI_SUCCESS (status)) {
    return VMI_CONNECT_RESPONSE_ERROR;
  }
  if (bytesRemaining) {
    DEBUG_PRINT ("%lu leftover bytes were found.\n", bytesRemaining);
    return VMI_CONNECT_RESPONSE_ERROR;
  }

  /* At this point, we could read conn_data->cookie if we cared to. */
  if (ntohl (conn_data->cookie) != 42) {
    fprintf (stderr, "Connect data has the wrong cookie; rejecting.\n");
    return VMI_CONNECT_RESPONSE_REJECT;
  }
#else
  (void) slab;
  (void) size;
#endif

  connection = newConnection;
  connected = TRUE;

  DEBUG_PRINT ("We have accepted our peer's connection.\n");

  return VMI_CONNECT_RESPONSE_ACCEPT;
}

static VMI_RECV_STATUS receiveMessage (PVMI_CONNECT conn, PVMI_STREAM_RECV stream,
                                       VMI_STREAM_COMMAND command, PVOID context,
                                       PVMI_SLAB slab)
{
  VMI_STATUS status;
  PVMI_SLAB_STATE slabState;
  ULONG sz;
  PVOID buffer;

  (void) conn;
  (void) stream;
  (void) context;

  sz = VMI_SLAB_BYTES_REMAINING (slab);

  /* Save the slab state. */
  status = VMI_Slab_Save_State (slab, &slabState);
  if (!VMI_SUCCESS(status)) {
    VMI_perror ("VMI_Slab_Save_State()", status);
  }

  status = VMI_Slab_Read (slab, &sz, &buffer);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Slab_Save_State()", status);
  }

  printf("%s\n", (PUCHAR) buffer);

  if (command != VMI_STREAM_END) {
    return (VMI_SLAB_DONE);
  }

  DEBUG_PRINT ("Completed receiving message.\n");

  finished = TRUE;

  return VMI_SLAB_DONE;
}

int main (int argc, char *argv[])
{
  VMI_STATUS status;

  if (argc != 2) {
    fprintf (stderr, "usage: %s recvkey\n", argv[0]);
    exit (2);
  }

  /* Initialize VMI. */
  status = VMI_Init (argc, argv);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Init()", status);
    exit (1);
  }

  status = VMI_STREAM_SET_RECV_FUNCTION (receiveMessage);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_STREAM_SET_RECV_FUNCTION()", status);
  }

  /* Wait for a connection from our peer. */
  status = VMI_Connection_Accept_Fn (connectAccept);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Connection_Accept_Fn()", status);
  }
  while (!connected) {
    sleep (0);
    status = VMI_Poll();
    if (!VMI_SUCCESS (status)) {
      VMI_perror ("VMI_Poll()", status);
    }
  }

  /* Poll VMI to receive the message. */
  while (!finished) {
    status = VMI_Poll();
    if (!VMI_SUCCESS (status)) {
      VMI_perror ("VMI_Poll()", status);
    }
  }

  fflush (stdout);
  VMI_Terminate (status);
  return 0;
}
