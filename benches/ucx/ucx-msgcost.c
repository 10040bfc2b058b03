/*
 * ucx-msgcost: UCX driven the way vmi-msgcost drives vmi, so that callgrind counts the two
 * the same way (benches/instructions.sh).
 *
 * Two UCP contexts, each with one worker, in one process and one thread, connected to each
 * other (with UCX_TLS=sm, through UCX's shared-memory transports). Each turn of the loop
 * progresses both workers once, as vmi-msgcost polls both vmi instances once: no thread
 * scheduling and no busy-wait loop of varying length, so every run of the same case executes
 * the same instructions, and (I(2N) - I(N)) / N is UCX's cost of one message.
 *
 * ucx-msgcost CASE N, CASE one of:
 *   tag-stream    N one-way 8-byte tag messages, a window of 64 in flight (ucx_perftest's
 *                 tag_bw: the receiver posts a receive per message)
 *   tag-pingpong  N round trips of 8 bytes through tag send/receive (counted as 2N hops)
 *   am-stream     N one-way 8-byte active messages, a window of 64 (a receive callback per
 *                 message, as vmi's Handler::receive)
 *   am-pingpong   N round trips of 8 bytes through active messages (2N hops)
 *   idle          N progress calls of a worker with one connected endpoint and nothing to do
 *                 (vmi-msgcost's idle-shmem)
 *
 * The streams keep at most WINDOW messages in flight: UCX's shared-memory FIFO holds 64
 * elements and frees them in batches, so a window of 64 overflows it into UCX's pending
 * queue (each send then tried about three times: 1,188 instructions per active message
 * against 460 at 32, counted with this driver).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ucp/api/ucp.h>

#define TAG 0x5eedULL
#define AM_ID 7
#define WINDOW 32
#define MSG 8

typedef struct side {
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_ep_h ep;
    uint64_t received;
    char rbuf[MSG];
} side_t;

static void die(const char *what, ucs_status_t status)
{
    fprintf(stderr, "ucx-msgcost: %s: %s\n", what, ucs_status_string(status));
    exit(1);
}

static void usage(void)
{
    fprintf(stderr, "usage: ucx-msgcost tag-stream|tag-pingpong|am-stream|am-pingpong|idle N\n"
                    "UCX's instructions per message, counted the way vmi-msgcost counts vmi's\n"
                    "(run it under valgrind --tool=callgrind; see benches/instructions.sh)\n");
    exit(2);
}

static void side_init(side_t *s)
{
    ucp_config_t *config;
    ucs_status_t st = ucp_config_read(NULL, NULL, &config);
    if (st != UCS_OK)
        die("ucp_config_read", st);
    ucp_params_t params = {
        .field_mask = UCP_PARAM_FIELD_FEATURES,
        .features = UCP_FEATURE_TAG | UCP_FEATURE_AM,
    };
    st = ucp_init(&params, config, &s->ctx);
    ucp_config_release(config);
    if (st != UCS_OK)
        die("ucp_init", st);
    ucp_worker_params_t wp = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    st = ucp_worker_create(s->ctx, &wp, &s->worker);
    if (st != UCS_OK)
        die("ucp_worker_create", st);
    s->received = 0;
}

/* An endpoint on `from` that reaches `to`'s worker. */
static void connect_to(side_t *from, side_t *to)
{
    ucp_address_t *addr;
    size_t len;
    ucs_status_t st = ucp_worker_get_address(to->worker, &addr, &len);
    if (st != UCS_OK)
        die("ucp_worker_get_address", st);
    ucp_ep_params_t ep = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS,
        .address = addr,
    };
    st = ucp_ep_create(from->worker, &ep, &from->ep);
    ucp_worker_release_address(to->worker, addr);
    if (st != UCS_OK)
        die("ucp_ep_create", st);
}

static void send_done(void *request, ucs_status_t status, void *user)
{
    (void)user;
    if (status != UCS_OK)
        die("send", status);
    ucp_request_free(request);
}

static const char payload[MSG] = {7, 7, 7, 7, 7, 7, 7, 7};

static void tag_send(side_t *s)
{
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK,
        .cb.send = send_done,
    };
    ucs_status_ptr_t r = ucp_tag_send_nbx(s->ep, payload, MSG, TAG, &prm);
    if (UCS_PTR_IS_ERR(r))
        die("ucp_tag_send_nbx", UCS_PTR_STATUS(r));
}

static void am_send(side_t *s)
{
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK,
        .cb.send = send_done,
    };
    ucs_status_ptr_t r = ucp_am_send_nbx(s->ep, AM_ID, NULL, 0, payload, MSG, &prm);
    if (UCS_PTR_IS_ERR(r))
        die("ucp_am_send_nbx", UCS_PTR_STATUS(r));
}

static void recv_done(void *request, ucs_status_t status, const ucp_tag_recv_info_t *info,
                      void *user)
{
    (void)info;
    if (status != UCS_OK)
        die("receive", status);
    ((side_t *)user)->received++;
    ucp_request_free(request);
}

/* Posts one tag receive on `s` (counted at once if the message is there already). */
static void tag_post(side_t *s)
{
    ucp_request_param_t prm = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.recv = recv_done,
        .user_data = s,
    };
    ucs_status_ptr_t r = ucp_tag_recv_nbx(s->worker, s->rbuf, MSG, TAG, (ucp_tag_t)-1, &prm);
    if (r == NULL)
        s->received++;
    else if (UCS_PTR_IS_ERR(r))
        die("ucp_tag_recv_nbx", UCS_PTR_STATUS(r));
}

static ucs_status_t am_arrived(void *arg, const void *header, size_t header_length, void *data,
                               size_t length, const ucp_am_recv_param_t *param)
{
    (void)header;
    (void)header_length;
    (void)param;
    if (length != MSG || data == NULL) {
        fprintf(stderr, "ucx-msgcost: an active message of %zu bytes, expected %d\n", length,
                MSG);
        exit(1);
    }
    ((side_t *)arg)->received++;
    return UCS_OK;
}

static void am_listen(side_t *s)
{
    ucp_am_handler_param_t p = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG,
        .id = AM_ID,
        .cb = am_arrived,
        .arg = s,
    };
    ucs_status_t st = ucp_worker_set_am_recv_handler(s->worker, &p);
    if (st != UCS_OK)
        die("ucp_worker_set_am_recv_handler", st);
}

/* Closes `s`'s endpoint (flushing it, both workers progressed meanwhile). */
static void close_ep(side_t *s, side_t *other)
{
    ucp_request_param_t prm = {.op_attr_mask = 0};
    ucs_status_ptr_t r = ucp_ep_close_nbx(s->ep, &prm);
    if (UCS_PTR_IS_ERR(r))
        die("ucp_ep_close_nbx", UCS_PTR_STATUS(r));
    if (r == NULL)
        return;
    time_t until = time(NULL) + 10;
    while (ucp_request_check_status(r) == UCS_INPROGRESS) {
        ucp_worker_progress(s->worker);
        ucp_worker_progress(other->worker);
        if (time(NULL) > until) {
            fprintf(stderr, "ucx-msgcost: an endpoint did not close in 10 s\n");
            exit(1);
        }
    }
    ucp_request_free(r);
}

static void side_fini(side_t *s)
{
    ucp_worker_destroy(s->worker);
    ucp_cleanup(s->ctx);
}

static uint64_t pumps;
static time_t deadline;

/* One turn: each worker progressed once (the clock is read rarely, so it adds nothing
 * measurable per message). Always inlined, as vmi-msgcost's turn is, so neither harness
 * counts a call of its own per turn (GCC -O2 left it out of line). */
static inline __attribute__((always_inline)) void pump(side_t *a, side_t *b)
{
    ucp_worker_progress(a->worker);
    ucp_worker_progress(b->worker);
    if ((++pumps & 0xffff) == 0 && time(NULL) > deadline) {
        fprintf(stderr, "ucx-msgcost: no progress in 120 s\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3)
        usage();
    char *end;
    uint64_t n = strtoull(argv[2], &end, 10);
    if (*end != '\0' || n == 0)
        usage();
    const char *c = argv[1];
    int idle = strcmp(c, "idle") == 0;
    int am = idle || strncmp(c, "am-", 3) == 0;
    if (!am && strncmp(c, "tag-", 4) != 0)
        usage();
    const char *kind = idle ? "stream" : c + (am ? 3 : 4);
    int pingpong = strcmp(kind, "pingpong") == 0;
    if (!pingpong && strcmp(kind, "stream") != 0)
        usage();
    deadline = time(NULL) + 120;

    side_t a, b;
    side_init(&a);
    side_init(&b);
    connect_to(&a, &b);
    connect_to(&b, &a);
    if (am) {
        am_listen(&a);
        am_listen(&b);
    }
    void (*send)(side_t *) = am ? am_send : tag_send;

    if (idle) {
        /* One message each way first, so that both endpoints are wired up. */
        send(&a);
        send(&b);
        while (a.received < 1 || b.received < 1)
            pump(&a, &b);
        for (uint64_t i = 0; i < n; i++)
            ucp_worker_progress(a.worker);
    } else if (pingpong) {
        /* b echoes each message it gets; a sends the next when the echo is in. */
        uint64_t echoed = 0;
        for (uint64_t i = 0; i < n; i++) {
            if (!am)
                tag_post(&a);
            if (!am && i == 0)
                tag_post(&b);
            send(&a);
            while (a.received <= i) {
                pump(&a, &b);
                if (b.received > echoed) {
                    echoed++;
                    if (!am && echoed < n)
                        tag_post(&b); /* for the next message, if one comes */
                    send(&b);
                }
            }
        }
    } else {
        uint64_t sent = 0;
        while (b.received < n) {
            while (sent < n && sent - b.received < WINDOW) {
                if (!am)
                    tag_post(&b);
                send(&a);
                sent++;
            }
            pump(&a, &b);
        }
    }
    close_ep(&a, &b);
    close_ep(&b, &a);
    side_fini(&a);
    side_fini(&b);
    printf("%s: %llu messages\n", c, (unsigned long long)n);
    return 0;
}
