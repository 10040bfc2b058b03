/*
 * vmisend.c: the sender of NCSA's "VMI 2 Send/Receive Tutorial", assembled from the
 * tutorial's code fragments (main, openConnection, processConnectResponse, createMessage,
 * sendMessage) with the declarations around them that the tutorial's archive held.
 *
 *     cc -o vmisend vmisend.c $(pkg-config --cflags --libs vmi)
 *     VMI_SPECFILE=.../tcp.xml ./vmisend sendkey recvkey recvhost
 *
 * One change to the tutorial's text: createMessage ended with ((PUCHAR)msg)[msgSize-1] =
 * '\0', which writes past the caller's pointer variable; it is (*msg) here.
 */
#include <arpa/inet.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <vmi.h>

#define CONNECT_DATA
#define FRAGS_PER_MSG 4
#define MSG_SIZE 256

#ifdef DEBUG
#define DEBUG_PRINT(...) fprintf(stderr, __VA_ARGS__)
#else
#define DEBUG_PRINT(...)
#endif

typedef struct {
    UINT32 cookie;
} CONNECT_MESSAGE;

static volatile BOOLEAN connected = FALSE;
static PVMI_CONNECT connection;

static void processConnectResponse(PVOID context, PVOID response, USHORT size, PVOID handle,
                                   VMI_CONNECT_RESPONSE status)
{
    (void) response;
    (void) size;
    (void) handle;

    switch (status)
    {
      case VMI_CONNECT_RESPONSE_ACCEPT:
        DEBUG_PRINT ("Our peer accepted our connect request.\n");
        connected = TRUE;
        break;

      case VMI_CONNECT_RESPONSE_REJECT:
        fprintf (stderr, "Our peer rejected our connect request.\n");
        exit (1);
        break;

      default:
        fprintf (stderr, "Error occurred while establishing connection.\n");
        exit (1);
        break;
    }

    /* Free our resources. */
    if (context) {
      (void) VMI_Buffer_Deallocate ((PVMI_BUFFER) context);
    }
}

static void openConnection (char *remoteKey, char *remoteHost)
{
  VMI_STATUS status;
  char *userName;
  PVMI_NETADDRESS remoteAddress;
#ifdef CONNECT_DATA
  PVMI_BUFFER conn_data_buffer;
  CONNECT_MESSAGE *conn_data;
#endif

  /* Get a connection handle. */
  status = VMI_Connection_Create (&connection);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Connection_Create()", status);
  }

  /* Get our username. */
  if (!getpwuid (getuid())) {
    fprintf (stderr, "Unable to get username.\n");
    exit (1);
  }
  userName = getpwuid(getuid())->pw_name;

  /* Allocate a remote IPv4 NETADDRESS. */
  status = VMI_Connection_Allocate_IPV4_Address (remoteHost,
                                                 0,
                                                 userName,
                                                 remoteKey,
                                                 &remoteAddress);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Connection_Allocate_IPV4_Address()", status);
  }

  /* Now bind the local and remote addresses. */
  status = VMI_Connection_Bind (*localAddress, *remoteAddress, connection);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Connection_Bind()", status);
  }

#ifdef CONNECT_DATA
  /* Allocate and initialize some connection data. */
  status = VMI_Buffer_Allocate (sizeof (CONNECT_MESSAGE), &conn_data_buffer);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Buffer_Allocate()", status);
  }
  conn_data = (CONNECT_MESSAGE *) VMI_BUFFER_ADDRESS (conn_data_buffer);
  conn_data->cookie = htonl (42);

  /* Establish a connection. */
  status = VMI_Connection_Issue (connection,
				 conn_data_buffer,
                                 processConnectResponse,
				 (PVOID) conn_data_buffer);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Connection_Issue()", status);
  }
#else
  /* Establish a connection. */
  status = VMI_Connection_Issue (connection, NULL,
                                 processConnectResponse, NULL);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Connection_Issue()", status);
  }
#endif
}

static VMI_STATUS createMessage (PVOID *msg, ULONG msgSize, PVMI_BUFFER *msgBuffer)
{
  VMI_STATUS status;
  char *msgPtr;
  long bytesRemaining;
  long bytesWritten;
  unsigned long iter;

  *msg = malloc (msgSize);
  if (*msg == NULL) {
    fprintf (stderr, "malloc() failed\n");
    exit (1);
  }

  msgPtr = (char *) *msg;
  bytesRemaining = msgSize;
  iter = 0;
  while (bytesRemaining > 0) {
    bytesWritten = snprintf (msgPtr, bytesRemaining,
        "All work and no play makes Jack a dull boy #%lu.  ", ++iter);
    if (bytesWritten <= 0 || bytesWritten >= bytesRemaining) {
      break;
    }
    msgPtr += bytesWritten;
    bytesRemaining -= bytesWritten;
  }
  ((PUCHAR)*msg)[msgSize-1] = '\0';

  status = VMI_Buffer_Register (*msg, msgSize, msgBuffer);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Buffer_Register()", status);
  }
  return status;
}

static VMI_STATUS sendMessage (PVOID msg, ULONG msgSize, PVMI_BUFFER msgBuffer)
{
  VMI_STATUS status;
  PVMI_STREAM stream;
  int i;

  /* Send the first fragment of a message. */
  status = VMI_Stream_Begin (connection,
                             NULL,
                             NULL,
                             0,
                             NULL,
                             NULL,
                             FALSE,
                             &stream);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Stream_Begin()", status);
  }

  /* Send the message repeatedly as fragments. */
  if (FRAGS_PER_MSG > 1) {
    for (i = 0; i < FRAGS_PER_MSG-1; i++) {          /* -1 for end */
      status = VMI_Stream_Send_Fragment (stream,
                                         msgBuffer,
                                         msg,
                                         msgSize,
                                         FALSE);
      if (!VMI_SUCCESS (status)) {
        VMI_perror ("VMI_Stream_Send_Fragment()", status);
      }
    }
  }

  /* Send the last fragment of the message. */
  status = VMI_Stream_End (stream,
                           msgBuffer,
                           msg,
                           msgSize,
                           FALSE);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Stream_End()", status);
  }

  return status;
}

int main (int argc, char *argv[])
{
  VMI_STATUS status;
  PVOID msg;
  PVMI_BUFFER msgBuffer;

  if (argc != 4) {
    fprintf (stderr, "usage: %s sendkey recvkey recvhost\n", argv[0]);
    exit (2);
  }

  /* Initialize VMI. */
  status = VMI_Init (argc, argv);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Init()", status);
    exit (1);
  }

  /* Connect to our peer. */
  openConnection (argv[2], argv[3]);
  while (!connected) {
    status = VMI_Poll();
    if (!VMI_SUCCESS (status)) {
      VMI_perror("VMI_Poll()", status);
    }
  }

  createMessage (&msg, MSG_SIZE, &msgBuffer);
  status = sendMessage (msg, MSG_SIZE, msgBuffer);

  /* VMI_Terminate delivers what is in flight, then closes the connection in order. */
  status = VMI_Terminate (status);
  if (!VMI_SUCCESS (status)) {
    VMI_perror ("VMI_Terminate()", status);
    exit (1);
  }
  free (msg);
  return 0;
}
