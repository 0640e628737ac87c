/* loadgen: a WebSocket (and raw TCP) echo load generator, independent of every server under test.
 *
 * Build:  cc -O2 -pthread -o loadgen loadgen.c      (wsbench.h next to it)
 * Usage:  loadgen --port P [--host 127.0.0.1] [--path /] [--mode ws|raw|idle]
 *                 [--conns N] [--inflight K] [--size BYTES] [--duration S] [--warmup S]
 *                 [--count M] [--threads T] [--handshake-window W]
 *
 * ws:   opens N connections, does the RFC 6455 handshake on each (checks the 101 and
 *       Sec-WebSocket-Accept), then keeps K binary messages of SIZE bytes in flight on each
 *       connection (client frames masked). Every echoed message is compared byte for byte with
 *       what was sent; a mismatch fails the run (exit status 2).
 * raw:  the same without handshake or framing: SIZE bytes out, the same SIZE bytes back.
 * idle: opens N connections and handshakes them, prints {"ready": ...} and holds them until
 *       stdin reaches EOF (or SIGTERM), then closes them.
 *
 * After WARMUP seconds the counters are reset and messages completed during DURATION seconds are
 * counted. Then sending stops, in-flight messages are drained, and each connection is closed with
 * the closing handshake (ws). One JSON line on stdout describes the run, with the latency of
 * each message (send to echo) as percentiles of a histogram, and the load generator's own CPU
 * time over the measured window (cpu_pct: percent of one core, above 100 with several threads).
 * With --count M (no warm-up), each connection sends exactly M messages; the run is timed from
 * the first send to the last echo.
 *
 * Cheap to run, so that the server is what a run measures: messages are cut from a pool of
 * pre-masked payloads (4 to 256, each masked with its own random key; the first 8 payload
 * bytes carry the message's sequence number, so no two messages in flight are alike and a
 * duplicated, lost or reordered echo is a mismatch). Messages of 16 KiB or more are not copied
 * at all, not even by the kernel: vmsplice() lends the pool's pages to a pipe and splice() moves
 * them into the socket. --threads T splits the connections over T threads, each
 * with its own epoll (for runs where the load generator may use more than one core).
 * Handshakes are pipelined W at a time (--handshake-window, default 64): connect and send W
 * requests, then read the W responses, so opening thousands of connections is quick.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "wsbench.h"

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "loadgen: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    printf("{\"error\": \"");
    printf(fmt, arg);
    printf("\"}\n");
    fflush(stdout);
    exit(1);
}

enum { MODE_WS, MODE_RAW, MODE_IDLE };

static const char *opt_host = "127.0.0.1", *opt_path = "/";
static int opt_port = 0, opt_mode = MODE_WS, opt_conns = 1, opt_inflight = 1, opt_threads = 1;
static int opt_window = 64;
static size_t opt_size = 32;
static double opt_duration = 2.0, opt_warmup = 0.5;
static uint64_t opt_count = 0;  /* > 0: send exactly this many messages per connection, then stop */

/* ------------------------------------------------------------------ payloads */

/* Message `seq` carries pattern[j .. j + size) with j = seq % pool_n, its first 8 bytes replaced
 * by seq (little endian) when the message is that long. pool[j] holds that payload masked with
 * pool_key[j] (ws mode), so sending a message copies at most its first bytes. */
#define LARGE (16 * 1024)   /* from this size on, payloads are sent from the pool by reference */
/* The pool is kept small (4 MiB, at least 4 payloads) so that the payloads the kernel copies
 * from stay in the CPU's cache; the receive buffer (256 KiB) too, so that the comparison reads
 * what recv() just wrote from the cache. */
#define POOL_BYTES (4u << 20)
#define POOL_MIN 4
#define RBUF_SIZE (256u << 10)
static uint8_t *pattern, *pool;
static uint32_t *pool_key;
static size_t pool_n;

static void make_payloads(uint64_t *rng) {
    pool_n = (size_t)POOL_BYTES / opt_size;
    if (pool_n > 256) pool_n = 256;
    if (pool_n < POOL_MIN) pool_n = POOL_MIN;
    pattern = malloc(opt_size + pool_n);
    for (size_t i = 0; i < opt_size + pool_n; i++) pattern[i] = (uint8_t)(xorshift64s(rng) >> 56);
    if (opt_mode != MODE_WS) return;
    pool = malloc(pool_n * opt_size);
    pool_key = malloc(pool_n * sizeof *pool_key);
    for (size_t j = 0; j < pool_n; j++) {
        pool_key[j] = (uint32_t)xorshift64s(rng);
        memcpy(pool + j * opt_size, pattern + j, opt_size);
        ws_mask(pool + j * opt_size, opt_size, pool_key[j]);
    }
}

static int payload_equal(uint64_t seq, size_t pos, const uint8_t *got, size_t n) {
    size_t i = pos;
    for (; i < 8 && i < pos + n; i++)
        if (got[i - pos] != (uint8_t)(seq >> (8 * i))) return 0;
    return memcmp(got + (i - pos), pattern + seq % pool_n + i, n - (i - pos)) == 0;
}

/* ------------------------------------------------------------------ connections */

typedef struct { const uint8_t *p; size_t n; uint8_t *owned; } seg_t;

struct worker;

typedef struct {
    int fd;
    struct worker *w;
    /* outbound: a ring of segments, written with sendmsg() */
    uint8_t *slots;      /* one slot per message in flight: frame header and copied payload bytes */
    size_t slot_size;
    seg_t *q;
    unsigned qcap, qhead, qlen;
    size_t qoff;         /* bytes of q[qhead] already sent */
    int pipe_r, pipe_w;  /* large payloads: the pipe they are spliced through (else -1) */
    size_t in_pipe;      /* bytes in the pipe, not yet in the socket */
    int want_out;
    uint64_t next_send_seq;
    /* inbound */
    uint8_t *rbuf;
    size_t rcap, rlen, roff;
    uint64_t next_recv_seq;
    size_t msg_pos;      /* bytes of the current inbound message already checked */
    int in_message;      /* inside a fragmented message */
    int have_hdr;        /* frame header parsed, payload streaming */
    uint8_t fr_op, fr_fin;
    uint64_t fr_left;
    uint64_t *stamps;    /* send time of each in-flight message, ring of `inflight` */
    int closing, close_sent, close_received, done;
} conn_t;

typedef struct worker {
    pthread_t tid;
    int epfd;
    conn_t *conns;
    int nconns;
    uint64_t rng;
    uint64_t now;        /* time of the last recv(), stamped on the echoes it completed */
    uint64_t count_measured, count_total, mismatches, errors;
    uint64_t last_echo;  /* --count: time the last message came back */
    int timed_out;
    hist_t lat;
} worker_t;

static int sending = 1;
static uint64_t measure_from, measure_to;
static volatile sig_atomic_t stop_signal;
static int workers_running;
static pthread_mutex_t workers_lock = PTHREAD_MUTEX_INITIALIZER;

static void set_events(conn_t *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

static void q_push(conn_t *c, const uint8_t *p, size_t n, uint8_t *owned) {
    if (c->qlen == c->qcap) {   /* grow, keeping the order */
        unsigned cap = c->qcap * 2;
        seg_t *q = malloc(cap * sizeof *q);
        for (unsigned i = 0; i < c->qlen; i++) q[i] = c->q[(c->qhead + i) % c->qcap];
        free(c->q);
        c->q = q; c->qcap = cap; c->qhead = 0;
    }
    c->q[(c->qhead + c->qlen++) % c->qcap] = (seg_t){p, n, owned};
}

static void queue_control(conn_t *c, uint8_t opcode, const uint8_t *data, size_t n) {
    uint8_t *f = malloc(14 + n);
    uint32_t key = (uint32_t)xorshift64s(&c->w->rng);
    size_t h = ws_frame_header(f, opcode, n, key);
    memcpy(f + h, data, n);
    ws_mask(f + h, n, key);
    q_push(c, f, h + n, f);
}

/* Queue as many new messages as the in-flight limit allows. */
static void fill(conn_t *c) {
    uint64_t t = 0;
    while (sending && !c->closing && c->next_send_seq - c->next_recv_seq < (uint64_t)opt_inflight
           && (!opt_count || c->next_send_seq < opt_count)) {
        uint64_t seq = c->next_send_seq++;
        size_t j = seq % pool_n;
        uint8_t *slot = c->slots + (seq % opt_inflight) * c->slot_size;
        size_t head = 0, copied = opt_size < LARGE ? opt_size : 8;
        const uint8_t *src = pattern + j;
        uint32_t key = 0;
        if (opt_mode != MODE_RAW) {
            key = pool_key[j];
            head = ws_frame_header(slot, 2, opt_size, key);
            src = pool + j * opt_size;
        }
        memcpy(slot + head, src, copied);
        const uint8_t *kb = (const uint8_t *)&key;
        for (size_t i = 0; i < 8 && i < opt_size; i++) slot[head + i] = (uint8_t)(seq >> (8 * i)) ^ kb[i & 3];
        q_push(c, slot, head + copied, NULL);
        if (copied < opt_size) q_push(c, src + copied, opt_size - copied, NULL);
        if (!t) t = now_ns();
        c->stamps[seq % opt_inflight] = t;
    }
}

/* The queued segments from the head on, up to 64 and (with `spliced`) only those of one kind:
 * in the pool or a slot (vmsplice) or owned by the queue (control frames: sendmsg). */
static int gather(conn_t *c, struct iovec *iov, int spliced) {
    int n = 0;
    for (unsigned i = 0; i < c->qlen && n < 64; i++, n++) {
        seg_t *s = &c->q[(c->qhead + i) % c->qcap];
        if (spliced >= 0 && (s->owned == NULL) != spliced) break;
        size_t skip = i == 0 ? c->qoff : 0;
        iov[n] = (struct iovec){(void *)(s->p + skip), s->n - skip};
    }
    return n;
}

static void consumed(conn_t *c, size_t n) {
    while (n) {
        seg_t *s = &c->q[c->qhead];
        size_t rest = s->n - c->qoff;
        if (n < rest) { c->qoff += n; return; }
        n -= rest;
        free(s->owned);
        c->qhead = (c->qhead + 1) % c->qcap; c->qlen--; c->qoff = 0;
    }
}

/* Write what is queued until the socket is full. Large payloads (pipe_w >= 0) go through the
 * connection's pipe: vmsplice() lends the pool's pages to the pipe and splice() moves them to
 * the socket, so the kernel does not copy them on the way out (the server's recv() is the only
 * copy). The pool never changes and a slot is rewritten only once its echo is back, that is,
 * after the server has read it, so lending the pages is safe. */
static void flush(conn_t *c) {
    for (;;) {
        struct iovec iov[64];
        ssize_t w;
        if (c->in_pipe) {
            w = splice(c->pipe_r, NULL, c->fd, NULL, c->in_pipe, SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
            if (w > 0) { c->in_pipe -= (size_t)w; continue; }
        } else if (!c->qlen) {
            break;
        } else if (c->pipe_w >= 0 && c->q[c->qhead].owned == NULL) {
            int n = gather(c, iov, 1);
            w = vmsplice(c->pipe_w, iov, (unsigned long)n, SPLICE_F_NONBLOCK);
            if (w > 0) { c->in_pipe += (size_t)w; consumed(c, (size_t)w); continue; }
        } else {
            struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)gather(c, iov, c->pipe_w >= 0 ? 0 : -1)};
            w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
            if (w > 0) { consumed(c, (size_t)w); continue; }
        }
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (w < 0 && errno == EINTR) continue;
        c->w->errors++;
        c->done = 1;
        return;
    }
    int out = c->qlen > 0 || c->in_pipe > 0;
    if (out != c->want_out) set_events(c, out);
}

static void message_done(conn_t *c) {
    worker_t *w = c->w;
    uint64_t seq = c->next_recv_seq++;
    w->count_total++;
    if (w->now >= measure_from && w->now < measure_to) {
        w->count_measured++;
        hist_add(&w->lat, w->now - c->stamps[seq % opt_inflight]);
    }
    if (opt_count) w->last_echo = w->now;
}

/* Check `n` received payload bytes of the current inbound message. */
static void check_chunk(conn_t *c, const uint8_t *p, size_t n) {
    if (c->next_recv_seq >= c->next_send_seq || c->msg_pos + n > opt_size)
        c->w->mismatches++;
    else if (!payload_equal(c->next_recv_seq, c->msg_pos, p, n))
        c->w->mismatches++;
    c->msg_pos += n;
}

static void end_message(conn_t *c) {
    if (c->msg_pos != opt_size) c->w->mismatches++;
    c->msg_pos = 0;
    message_done(c);
}

static void fail(conn_t *c) { c->w->errors++; c->done = 1; }

/* Consume what is in rbuf. Data payloads are checked as they stream in (no reassembly). */
static void parse(conn_t *c) {
    if (opt_mode == MODE_RAW) {
        uint8_t *p = c->rbuf + c->roff;
        size_t n = c->rlen - c->roff;
        while (n) {
            size_t take = opt_size - c->msg_pos;
            if (take > n) take = n;
            check_chunk(c, p, take);
            p += take; n -= take;
            if (c->msg_pos == opt_size) end_message(c);
        }
        c->roff = c->rlen = 0;
        return;
    }
    for (;;) {
        uint8_t *p = c->rbuf + c->roff;
        size_t n = c->rlen - c->roff;
        if (!c->have_hdr) {
            if (n < 2) break;
            uint8_t b0 = p[0], b1 = p[1];
            size_t hl = 2;
            uint64_t len = b1 & 0x7f;
            if (len == 126) hl = 4;
            else if (len == 127) hl = 10;
            if (b1 & 0x80) { fail(c); return; }   /* server frames are unmasked */
            if (n < hl) break;
            if (len == 126) len = (uint64_t)p[2] << 8 | p[3];
            else if (len == 127) { len = 0; for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i]; }
            if (b0 & 0x70) { fail(c); return; }
            c->fr_op = b0 & 0x0f; c->fr_fin = b0 >> 7; c->fr_left = len;
            c->have_hdr = 1;
            c->roff += hl; p += hl; n -= hl;
            if (c->fr_op >= 8) {
                /* control frame: wait for all of it */
                if (len > 125 || !c->fr_fin) { fail(c); return; }
            } else if (c->fr_op == 2 || c->fr_op == 1) {
                if (c->in_message) { fail(c); return; }
                if (c->fr_op == 1) c->w->mismatches++; /* we only send binary */
                c->in_message = 1;
            } else if (c->fr_op == 0) {
                if (!c->in_message) { fail(c); return; }
            } else { fail(c); return; }
        }
        if (c->fr_op >= 8) {
            if (n < c->fr_left) break;
            if (c->fr_op == 9) queue_control(c, 10, p, c->fr_left);           /* ping -> pong */
            else if (c->fr_op == 8) {
                c->close_received = 1;
                if (!c->close_sent) { queue_control(c, 8, p, c->fr_left >= 2 ? 2 : 0); c->close_sent = 1; }
                if (!c->closing) c->w->errors++;                                /* unexpected close */
                else c->done = 1;  /* closing handshake complete; we close the TCP connection */
            }
            c->roff += c->fr_left;
            c->have_hdr = 0;
            if (c->done) { flush(c); return; }
            continue;
        }
        size_t take = c->fr_left < n ? (size_t)c->fr_left : n;
        if (take) check_chunk(c, p, take);
        c->roff += take; c->fr_left -= take;
        if (c->fr_left) break;
        c->have_hdr = 0;
        if (c->fr_fin) { c->in_message = 0; end_message(c); }
    }
    if (c->roff == c->rlen) c->roff = c->rlen = 0;
    else if (c->rcap - c->rlen < 4096) {
        memmove(c->rbuf, c->rbuf + c->roff, c->rlen - c->roff);
        c->rlen -= c->roff; c->roff = 0;
    }
}

static void on_readable(conn_t *c) {
    for (int rounds = 0; rounds < 4; rounds++) {
        ssize_t r = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            if (errno == EINTR) continue;
            fail(c);
            return;
        }
        if (r == 0) {
            if (!(c->closing && (c->close_received || opt_mode == MODE_RAW))) c->w->errors++;
            c->done = 1;
            return;
        }
        c->w->now = now_ns();
        c->rlen += (size_t)r;
        parse(c);
        if (c->done) return;
        if ((size_t)r < c->rcap / 2) return;
    }
}

/* ------------------------------------------------------------------ opening connections */

static struct addrinfo *server_addr;

static int connect_one(unsigned index) {
    int fd = bench_socket(server_addr, index, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    if (connect(fd, server_addr->ai_addr, server_addr->ai_addrlen) != 0) die("connect: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Blocking read of the response to `hs`; bytes after the response head are left in c->rbuf. */
static void read_response(conn_t *c, const ws_handshake *hs) {
    char head[8192];
    size_t got = 0, head_len = 0;
    while (!head_len) {
        if (got >= sizeof head - 1) die("%s", "handshake response too long");
        ssize_t r = read(c->fd, head + got, sizeof head - 1 - got);
        if (r <= 0) die("handshake read failed: %s", r == 0 ? "EOF" : strerror(errno));
        got += (size_t)r;
        head_len = ws_response_head_len(head, got);
    }
    const char *problem = ws_response_check(hs, head, head_len);
    if (problem) die("%s", problem);
    memcpy(c->rbuf, head + head_len, got - head_len);
    c->rlen = got - head_len;
}

static void init_conn(conn_t *c) {
    c->rcap = opt_mode == MODE_IDLE ? 16384 : RBUF_SIZE;
    c->rbuf = malloc(c->rcap);
    c->slot_size = (opt_size < LARGE ? opt_size : 8) + 14;
    c->slots = malloc(c->slot_size * (size_t)opt_inflight);
    c->qcap = 2 * (unsigned)opt_inflight + 4;
    c->q = malloc(c->qcap * sizeof *c->q);
    c->stamps = calloc((size_t)opt_inflight, sizeof(uint64_t));
    c->pipe_r = c->pipe_w = -1;
    int p[2];
    if (opt_size >= LARGE && opt_mode != MODE_IDLE && pipe2(p, O_NONBLOCK) == 0) {
        c->pipe_r = p[0]; c->pipe_w = p[1];
        fcntl(c->pipe_w, F_SETPIPE_SZ, 1 << 20);   /* fewer round trips; the default 64 KiB works too */
    }
}

/* Connect every connection and handshake it, W handshakes in flight at a time. */
static void open_all(conn_t *conns, uint64_t *rng) {
    ws_handshake *hs = malloc((size_t)opt_window * sizeof *hs);
    for (int base = 0; base < opt_conns; base += opt_window) {
        int n = opt_conns - base < opt_window ? opt_conns - base : opt_window;
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[base + i];
            init_conn(c);
            c->fd = connect_one((unsigned)(base + i));
            if (opt_mode == MODE_RAW) continue;
            ws_handshake_make(&hs[i], rng, opt_host, opt_port, opt_path);
            if (write(c->fd, hs[i].request, (size_t)hs[i].request_len) != hs[i].request_len)
                die("handshake write failed: %s", strerror(errno));
        }
        if (opt_mode != MODE_RAW)
            for (int i = 0; i < n; i++) read_response(&conns[base + i], &hs[i]);
    }
    free(hs);
}

/* ------------------------------------------------------------------ the event loop, per thread */

static void *worker_main(void *arg) {
    worker_t *w = arg;
    for (int i = 0; i < w->nconns; i++) { fill(&w->conns[i]); flush(&w->conns[i]); }
    struct epoll_event evs[512];
    int phase = 0; /* 0 running, 1 draining, 2 closing */
    uint64_t phase_deadline = 0;
    int live = w->nconns;
    while (live > 0) {
        uint64_t t = now_ns();
        int finished = opt_count && w->count_total == opt_count * (uint64_t)w->nconns;
        if (phase == 0 && (t >= measure_to || stop_signal || finished)) {
            phase = 1; phase_deadline = t + 10000000000ULL;
        }
        if (phase == 1) {
            int pending = 0;
            for (int i = 0; i < w->nconns; i++)
                if (!w->conns[i].done && w->conns[i].next_recv_seq < w->conns[i].next_send_seq) pending = 1;
            if (!pending || t >= phase_deadline) {
                if (pending) w->timed_out = 1;
                /* closing handshakes: 5 s, plus 1 ms per connection for a server closing 20,000 */
                phase = 2; phase_deadline = t + 5000000000ULL + 1000000ULL * (uint64_t)w->nconns;
                for (int i = 0; i < w->nconns; i++) {
                    conn_t *c = &w->conns[i];
                    if (c->done) continue;
                    c->closing = 1;
                    if (opt_mode == MODE_RAW) shutdown(c->fd, SHUT_WR);
                    else { uint8_t code[2] = {0x03, 0xe8}; queue_control(c, 8, code, 2); c->close_sent = 1; flush(c); }
                }
            }
        }
        if (phase == 2 && t >= phase_deadline) { w->timed_out = 1; break; }
        int n = epoll_wait(w->epfd, evs, 512, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->done) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (!c->done && phase == 0) fill(c);
            if (!c->done) flush(c);
            if (c->done) {
                epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                if (c->pipe_r >= 0) { close(c->pipe_r); close(c->pipe_w); }
                live--;
            }
        }
    }
    pthread_mutex_lock(&workers_lock);
    workers_running--;
    pthread_mutex_unlock(&workers_lock);
    return NULL;
}

static int running(void) {
    pthread_mutex_lock(&workers_lock);
    int n = workers_running;
    pthread_mutex_unlock(&workers_lock);
    return n;
}

/* Sleep until `t` (monotonic ns), a signal, or every worker has finished. */
static void sleep_until(uint64_t t) {
    while (!stop_signal && running() > 0) {
        uint64_t now = now_ns();
        if (now >= t) return;
        uint64_t d = t - now < 10000000ULL ? t - now : 10000000ULL;
        struct timespec ts = {0, (long)d};
        nanosleep(&ts, NULL);
    }
}

/* ------------------------------------------------------------------ main */

static void on_signal(int s) { (void)s; stop_signal = 1; }

static int parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return -1;
        if (!strcmp(a, "--host")) opt_host = v;
        else if (!strcmp(a, "--port")) opt_port = atoi(v);
        else if (!strcmp(a, "--path")) opt_path = v;
        else if (!strcmp(a, "--conns")) opt_conns = atoi(v);
        else if (!strcmp(a, "--inflight")) opt_inflight = atoi(v);
        else if (!strcmp(a, "--size")) opt_size = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--duration")) opt_duration = atof(v);
        else if (!strcmp(a, "--warmup")) opt_warmup = atof(v);
        else if (!strcmp(a, "--count")) opt_count = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--threads")) opt_threads = atoi(v);
        else if (!strcmp(a, "--handshake-window")) opt_window = atoi(v);
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "ws")) opt_mode = MODE_WS;
            else if (!strcmp(v, "raw")) opt_mode = MODE_RAW;
            else if (!strcmp(v, "idle")) opt_mode = MODE_IDLE;
            else return -1;
        } else return -1;
        i++;
    }
    if (opt_threads > opt_conns) opt_threads = opt_conns;
    return opt_port > 0 && opt_conns > 0 && opt_inflight > 0 && opt_size > 0 && opt_threads > 0
           && opt_window > 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) != 0) {
        fprintf(stderr, "usage: loadgen --port P [--host H] [--path /] [--mode ws|raw|idle] [--conns N]\n"
                        "               [--inflight K] [--size BYTES] [--duration S] [--warmup S] [--count M]\n"
                        "               [--threads T] [--handshake-window W]\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    uint64_t rng = now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ULL;
    make_payloads(&rng);
    char port[16];
    snprintf(port, sizeof port, "%d", opt_port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    if (getaddrinfo(opt_host, port, &hints, &server_addr) != 0) die("cannot resolve %s", opt_host);

    conn_t *conns = calloc((size_t)opt_conns, sizeof *conns);
    uint64_t t_connect = now_ns();
    open_all(conns, &rng);
    double connect_s = (double)(now_ns() - t_connect) / 1e9;

    worker_t *workers = calloc((size_t)opt_threads, sizeof *workers);
    for (int t = 0, first = 0; t < opt_threads; t++) {
        worker_t *w = &workers[t];
        w->nconns = opt_conns / opt_threads + (t < opt_conns % opt_threads);
        w->conns = conns + first;
        first += w->nconns;
        w->rng = xorshift64s(&rng) | 1;
        w->epfd = epoll_create1(0);
        for (int i = 0; i < w->nconns; i++) {
            conn_t *c = &w->conns[i];
            c->w = w;
            fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev);
        }
    }

    if (opt_mode == MODE_IDLE) {
        printf("{\"mode\": \"idle\", \"conns\": %d, \"ready\": true, \"connect_s\": %.3f}\n", opt_conns, connect_s);
        fflush(stdout);
        /* hold until stdin closes or a signal; then close every connection with the closing handshake */
        char tmp[256];
        while (!stop_signal) {
            ssize_t r = read(0, tmp, sizeof tmp);
            if (r == 0 || (r < 0 && errno != EINTR)) break;
        }
        sending = 0;
    }

    uint64_t start = now_ns();
    measure_from = start + (uint64_t)(opt_warmup * 1e9);
    measure_to = measure_from + (uint64_t)(opt_duration * 1e9);
    if (opt_mode == MODE_IDLE) measure_from = measure_to = start;
    if (opt_count) { measure_from = start; measure_to = start + 3600000000000ULL; }
    double cpu_from = process_cpu_s(), cpu_to;
    workers_running = opt_threads;
    for (int t = 0; t < opt_threads; t++)
        if (pthread_create(&workers[t].tid, NULL, worker_main, &workers[t]) != 0) die("%s", "pthread_create failed");
    if (!opt_count && opt_mode != MODE_IDLE) {
        sleep_until(measure_from);
        cpu_from = process_cpu_s();
        sleep_until(measure_to);
    }
    uint64_t stopped = now_ns();
    cpu_to = process_cpu_s();
    for (int t = 0; t < opt_threads; t++) pthread_join(workers[t].tid, NULL);
    if (opt_count) cpu_to = process_cpu_s();

    hist_t *lat = calloc(1, sizeof *lat);
    uint64_t count_measured = 0, count_total = 0, mismatches = 0, errors = 0, last_echo = start;
    int timed_out = 0;
    for (int t = 0; t < opt_threads; t++) {
        worker_t *w = &workers[t];
        hist_merge(lat, &w->lat);
        count_measured += w->count_measured; count_total += w->count_total;
        mismatches += w->mismatches; errors += w->errors;
        timed_out |= w->timed_out;
        if (w->last_echo > last_echo) last_echo = w->last_echo;
    }
    double secs;
    if (opt_count) secs = (double)(last_echo - start) / 1e9;
    else if (stopped < measure_to) secs = (double)(stopped > measure_from ? stopped - measure_from : 1) / 1e9;
    else secs = opt_duration;
    if (secs <= 0) secs = 1e-9;
    double cpu_used = cpu_to - cpu_from;

    if (opt_mode == MODE_IDLE) {
        printf("{\"mode\": \"idle\", \"conns\": %d, \"closed\": true, \"errors\": %llu, \"close_timeout\": %s}\n",
               opt_conns, (unsigned long long)errors, timed_out ? "true" : "false");
        return errors || timed_out ? 1 : 0;
    }
    int ok = mismatches == 0 && errors == 0 && count_measured > 0;
    printf("{\"mode\": \"%s\", \"conns\": %d, \"inflight\": %d, \"size\": %zu, \"threads\": %d, "
           "\"duration_s\": %.6f, \"messages\": %llu, \"msgs_per_s\": %.1f, \"mb_per_s\": %.2f, "
           "\"total_messages\": %llu, ",
           opt_mode == MODE_RAW ? "raw" : "ws", opt_conns, opt_inflight, opt_size, opt_threads, secs,
           (unsigned long long)count_measured, (double)count_measured / secs,
           (double)count_measured * (double)opt_size / secs / 1e6, (unsigned long long)count_total);
    hist_print_json(stdout, "lat", lat);
    printf(", \"mismatches\": %llu, \"errors\": %llu, \"close_timeout\": %s, \"connect_s\": %.3f, "
           "\"cpu_us_per_msg\": %.3f, \"cpu_pct\": %.1f, \"ok\": %s}\n",
           (unsigned long long)mismatches, (unsigned long long)errors, timed_out ? "true" : "false",
           connect_s, cpu_used / (double)(count_measured ? count_measured : 1) * 1e6, cpu_used / secs * 100,
           ok ? "true" : "false");
    return mismatches ? 2 : ok ? 0 : 1;
}
