/* fanout: the load generator of the fan-out benchmark: a broadcast server's subscribers and
 * its publisher, independent of every server under test.
 *
 * Build:  cc -O2 -I ../echo -o fanout fanout.c       (wsbench.h from bench/echo)
 * Usage:  fanout --port P [--host 127.0.0.1] [--path /sub] [--pub-path /pub] [--conns N]
 *                [--inflight K] [--size BYTES] [--duration S] [--warmup S]
 *
 * Opens N subscriber connections to --path and one publisher connection to --pub-path (RFC 6455
 * handshakes, Sec-WebSocket-Accept checked). The publisher sends binary messages of SIZE (>= 16)
 * bytes, masked: a sequence number, its send time, then a pattern; it keeps at most K messages
 * in flight, a message being done when every subscriber has it. Every subscriber checks that it
 * gets every message once, in order, byte for byte (a gap, a duplicate, a reordering or a
 * difference is a mismatch: exit status 2). After WARMUP seconds, deliveries during DURATION
 * seconds are counted, with the latency from the publisher's send to each delivery (a histogram
 * over every delivery). Then publishing stops, what is in flight drains (given twice as long as
 * the measured rate needs, up to 2 minutes), and every connection is closed with the closing
 * handshake. One JSON line on stdout describes the run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include "wsbench.h"

static const char *opt_host = "127.0.0.1", *opt_path = "/sub", *opt_pub_path = "/pub";
static int opt_port = 0, opt_conns = 1, opt_inflight = 64;
static size_t opt_size = 32;
static double opt_duration = 2.0, opt_warmup = 0.5;

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "fanout: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    printf("{\"error\": \"");
    printf(fmt, arg);
    printf("\"}\n");
    fflush(stdout);
    exit(1);
}

typedef struct {
    int fd;
    uint8_t *sbuf;                 /* outbound: control frames (and the publisher's messages) */
    size_t scap, slen, soff;
    int want_out;
    uint8_t *rbuf;
    size_t rcap, rlen, roff;
    uint64_t next_recv_seq;
    size_t msg_pos;                /* bytes of the current inbound message checked */
    int in_message, have_hdr;
    uint8_t fr_op, fr_fin;
    uint64_t fr_left;
    int closing, close_sent, close_received, done;
} conn_t;

static conn_t *conns, *pub;        /* pub: the publisher, conns[opt_conns] */
static int epfd, sending = 1;
static uint64_t rng_state, measure_from, measure_to;
static uint64_t fan_sent, fan_done;  /* messages sent; messages every subscriber has */
static uint32_t *fan_left;           /* per ring slot (seq % inflight): subscribers still to get it */
static uint64_t *fan_stamp;          /* per ring slot: send time */
static uint8_t *pattern;
static uint64_t count_measured, count_total, mismatches, errors;
static hist_t lat;
static double cpu_from = -1, cpu_to = -1;

static uint8_t expected_byte(uint64_t seq, size_t at) {
    if (at < 8) return (uint8_t)(seq >> (8 * at));
    if (at < 16) return (uint8_t)(fan_stamp[seq % opt_inflight] >> (8 * (at - 8)));
    return pattern[(seq & 255) + at];
}

static void set_events(conn_t *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

static void reserve(conn_t *c, size_t n) {
    if (c->soff == c->slen) c->soff = c->slen = 0;
    if (c->slen + n <= c->scap) return;
    if (c->soff) {
        memmove(c->sbuf, c->sbuf + c->soff, c->slen - c->soff);
        c->slen -= c->soff; c->soff = 0;
    }
    if (c->slen + n > c->scap) {
        c->scap = c->slen + n;
        c->sbuf = realloc(c->sbuf, c->scap);
    }
}

static void queue_control(conn_t *c, uint8_t opcode, const uint8_t *data, size_t n) {
    reserve(c, n + 14);
    uint32_t key = (uint32_t)xorshift64s(&rng_state);
    size_t h = ws_frame_header(c->sbuf + c->slen, opcode, n, key);
    memcpy(c->sbuf + c->slen + h, data, n);
    ws_mask(c->sbuf + c->slen + h, n, key);
    c->slen += h + n;
}

static void flush(conn_t *c) {
    while (c->soff < c->slen) {
        ssize_t w = send(c->fd, c->sbuf + c->soff, c->slen - c->soff, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            errors++;
            c->done = 1;
            return;
        }
        c->soff += (size_t)w;
    }
    int out = c->soff < c->slen;
    if (out != c->want_out) set_events(c, out);
}

/* The publisher: new messages while fewer than K are in flight. */
static void publish(void) {
    while (sending && !pub->closing && fan_sent - fan_done < (uint64_t)opt_inflight) {
        reserve(pub, opt_size + 14);
        uint64_t seq = fan_sent++, t = now_ns();
        uint8_t *p = pub->sbuf + pub->slen;
        uint32_t key = (uint32_t)xorshift64s(&rng_state);
        size_t h = ws_frame_header(p, 2, opt_size, key);
        fan_left[seq % opt_inflight] = (uint32_t)opt_conns;
        fan_stamp[seq % opt_inflight] = t;
        for (size_t i = 0; i < opt_size; i++) p[h + i] = expected_byte(seq, i);
        ws_mask(p + h, opt_size, key);
        pub->slen += h + opt_size;
    }
}

static void delivered(conn_t *c) {
    uint64_t t = now_ns(), seq = c->next_recv_seq++, slot = seq % opt_inflight;
    count_total++;
    if (t >= measure_from && t < measure_to) {
        if (cpu_from < 0) cpu_from = process_cpu_s();
        count_measured++;
        hist_add(&lat, t - fan_stamp[slot]);
    }
    if (--fan_left[slot] == 0)
        while (fan_done < fan_sent && fan_left[fan_done % opt_inflight] == 0) fan_done++;
}

/* Check `n` payload bytes of a subscriber's current message. */
static void check(conn_t *c, const uint8_t *p, size_t n) {
    uint64_t seq = c->next_recv_seq;
    if (c == pub || seq >= fan_sent || c->msg_pos + n > opt_size) { mismatches++; c->msg_pos += n; return; }
    for (size_t i = 0; i < n; i++)
        if (p[i] != expected_byte(seq, c->msg_pos + i)) { mismatches++; break; }
    c->msg_pos += n;
}

static void parse(conn_t *c) {
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
            if ((b1 & 0x80) || (b0 & 0x70)) { errors++; c->done = 1; return; }  /* masked / RSV */
            if (n < hl) break;
            if (len == 126) len = (uint64_t)p[2] << 8 | p[3];
            else if (len == 127) { len = 0; for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i]; }
            c->fr_op = b0 & 0x0f; c->fr_fin = b0 >> 7; c->fr_left = len;
            c->have_hdr = 1;
            c->roff += hl; p += hl; n -= hl;
            if (c->fr_op >= 8) {
                if (len > 125 || !c->fr_fin) { errors++; c->done = 1; return; }
            } else if (c->fr_op == 2 || c->fr_op == 1) {
                if (c->in_message) { errors++; c->done = 1; return; }
                if (c->fr_op == 1) mismatches++;                 /* only binary is published */
                c->in_message = 1;
            } else if (c->fr_op == 0) {
                if (!c->in_message) { errors++; c->done = 1; return; }
            } else { errors++; c->done = 1; return; }
        }
        if (c->fr_op >= 8) {
            if (n < c->fr_left) break;
            if (c->fr_op == 9) queue_control(c, 10, p, c->fr_left);           /* ping -> pong */
            else if (c->fr_op == 8) {
                c->close_received = 1;
                if (!c->close_sent) { queue_control(c, 8, p, c->fr_left >= 2 ? 2 : 0); c->close_sent = 1; }
                if (!c->closing) errors++;                                     /* unexpected close */
                else c->done = 1;
            }
            c->roff += c->fr_left;
            c->have_hdr = 0;
            if (c->done) { flush(c); return; }
            continue;
        }
        size_t take = c->fr_left < n ? (size_t)c->fr_left : n;
        if (take) check(c, p, take);
        c->roff += take; c->fr_left -= take;
        if (c->fr_left) break;
        c->have_hdr = 0;
        if (c->fr_fin) {
            c->in_message = 0;
            if (c->msg_pos != opt_size) mismatches++;
            c->msg_pos = 0;
            if (c != pub) delivered(c);
        }
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
            errors++;
            c->done = 1;
            return;
        }
        if (r == 0) {
            if (!(c->closing && c->close_received)) errors++;
            c->done = 1;
            return;
        }
        c->rlen += (size_t)r;
        parse(c);
        if (c->done || (size_t)r < c->rcap / 2) return;
    }
}

/* Connect and do the opening handshake (blocking); bytes after the head stay in rbuf. */
static void open_conn(conn_t *c, const struct addrinfo *ai, unsigned index, const char *path) {
    c->fd = bench_socket(ai, index, 0);
    if (c->fd < 0 || connect(c->fd, ai->ai_addr, ai->ai_addrlen) != 0) die("connect: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    ws_handshake hs;
    ws_handshake_make(&hs, &rng_state, opt_host, opt_port, path);
    if (write(c->fd, hs.request, (size_t)hs.request_len) != hs.request_len)
        die("handshake write failed: %s", strerror(errno));
    char head[8192];
    size_t got = 0, head_len = 0;
    while (!head_len) {
        if (got >= sizeof head - 1) die("%s", "handshake response too long");
        ssize_t r = read(c->fd, head + got, sizeof head - 1 - got);
        if (r <= 0) die("handshake read failed: %s", r == 0 ? "EOF" : strerror(errno));
        got += (size_t)r;
        head_len = ws_response_head_len(head, got);
    }
    const char *problem = ws_response_check(&hs, head, head_len);
    if (problem) die("%s", problem);
    memcpy(c->rbuf, head + head_len, got - head_len);
    c->rlen = got - head_len;
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static volatile sig_atomic_t stop_signal;
static void on_signal(int s) { (void)s; stop_signal = 1; }

static int parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return -1;
        if (!strcmp(a, "--host")) opt_host = v;
        else if (!strcmp(a, "--port")) opt_port = atoi(v);
        else if (!strcmp(a, "--path")) opt_path = v;
        else if (!strcmp(a, "--pub-path")) opt_pub_path = v;
        else if (!strcmp(a, "--conns")) opt_conns = atoi(v);
        else if (!strcmp(a, "--inflight")) opt_inflight = atoi(v);
        else if (!strcmp(a, "--size")) opt_size = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--duration")) opt_duration = atof(v);
        else if (!strcmp(a, "--warmup")) opt_warmup = atof(v);
        else return -1;
    }
    return opt_port > 0 && opt_conns > 0 && opt_inflight > 0 && opt_size >= 16 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) != 0) {
        fprintf(stderr, "usage: fanout --port P [--host H] [--path /sub] [--pub-path /pub] [--conns N]\n"
                        "              [--inflight K] [--size BYTES >= 16] [--duration S] [--warmup S]\n");
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
    rng_state = now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ULL;
    pattern = malloc(opt_size + 256);
    for (size_t i = 0; i < opt_size + 256; i++) pattern[i] = (uint8_t)(xorshift64s(&rng_state) >> 56);
    fan_left = calloc((size_t)opt_inflight, sizeof *fan_left);
    fan_stamp = calloc((size_t)opt_inflight, sizeof *fan_stamp);

    struct addrinfo hints = {0}, *ai;
    char port[16];
    snprintf(port, sizeof port, "%d", opt_port);
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(opt_host, port, &hints, &ai) != 0) die("cannot resolve %s", opt_host);
    epfd = epoll_create1(0);
    int nconns = opt_conns + 1;
    conns = calloc((size_t)nconns, sizeof *conns);
    pub = &conns[opt_conns];
    uint64_t t_connect = now_ns();
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        c->rcap = 65536;
        c->rbuf = malloc(c->rcap);
        c->scap = c == pub ? (opt_size + 14) * (size_t)opt_inflight : 256;
        c->sbuf = malloc(c->scap);
        open_conn(c, ai, (unsigned)i, c == pub ? opt_pub_path : opt_path);
    }
    freeaddrinfo(ai);
    double connect_s = (double)(now_ns() - t_connect) / 1e9;

    uint64_t start = now_ns();
    measure_from = start + (uint64_t)(opt_warmup * 1e9);
    measure_to = measure_from + (uint64_t)(opt_duration * 1e9);
    for (int i = 0; i < opt_conns; i++) if (conns[i].rlen) parse(&conns[i]);
    publish();
    flush(pub);

    struct epoll_event evs[512];
    int phase = 0, live = nconns, timed_out = 0;   /* phase: 0 running, 1 draining, 2 closing */
    uint64_t phase_deadline = 0;
    while (live > 0) {
        uint64_t t = now_ns();
        if (phase == 0 && (t >= measure_to || stop_signal)) {
            phase = 1; sending = 0; cpu_to = process_cpu_s();
            phase_deadline = t + 10000000000ULL;
            if (count_measured) {
                /* What is in flight reaches every subscriber at the measured rate: give a slow
                 * server twice that long (up to 2 minutes) to deliver it. */
                double rate = (double)count_measured / ((double)(measure_to - measure_from) / 1e9);
                double drain = 2.0 * (double)(fan_sent - fan_done) * opt_conns / rate;
                if (drain > 10) phase_deadline = t + (uint64_t)((drain < 120 ? drain : 120) * 1e9);
            }
        }
        if (phase == 1 && (fan_done == fan_sent || t >= phase_deadline)) {
            if (fan_done < fan_sent) timed_out = 1;
            phase = 2; phase_deadline = t + 10000000000ULL + (uint64_t)opt_conns * 1000000ULL;
            for (int i = 0; i < nconns; i++) {
                conn_t *c = &conns[i];
                if (c->done) continue;
                uint8_t code[2] = {0x03, 0xe8};
                c->closing = 1;
                queue_control(c, 8, code, 2);
                c->close_sent = 1;
                flush(c);
            }
        }
        if (phase == 2 && t >= phase_deadline) { timed_out = 1; break; }
        int n = epoll_wait(epfd, evs, 512, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->done) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (!c->done) flush(c);
            if (c->done) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                live--;
            }
        }
        if (!pub->done) { publish(); flush(pub); }
    }
    uint64_t end = now_ns();
    double secs = (double)(measure_to - measure_from) / 1e9;
    if (end < measure_to) secs = (double)(end > measure_from ? end - measure_from : 1) / 1e9;
    if (cpu_to < 0) cpu_to = process_cpu_s();
    double cpu_used = cpu_from >= 0 ? cpu_to - cpu_from : 0;
    int ok = mismatches == 0 && errors == 0 && count_measured > 0 && !timed_out;
    printf("{\"mode\": \"fanout\", \"conns\": %d, \"inflight\": %d, \"size\": %zu, \"duration_s\": %.6f, "
           "\"deliveries\": %llu, \"deliveries_per_s\": %.1f, \"published\": %llu, \"total_deliveries\": %llu, ",
           opt_conns, opt_inflight, opt_size, secs, (unsigned long long)count_measured,
           (double)count_measured / secs, (unsigned long long)fan_sent, (unsigned long long)count_total);
    hist_print_json(stdout, "lat", &lat);
    printf(", \"mismatches\": %llu, \"errors\": %llu, \"close_timeout\": %s, \"connect_s\": %.3f, "
           "\"cpu_pct\": %.1f, \"ok\": %s}\n",
           (unsigned long long)mismatches, (unsigned long long)errors, timed_out ? "true" : "false",
           connect_s, cpu_used / secs * 100, ok ? "true" : "false");
    return mismatches ? 2 : ok ? 0 : 1;
}
