/* loadgen: a WebSocket (and raw TCP) echo load generator, independent of every server under test.
 *
 * Build:  cc -O2 -o loadgen loadgen.c
 * Usage:  loadgen --port P [--host 127.0.0.1] [--path /] [--mode ws|raw|idle]
 *                 [--conns N] [--inflight K] [--size BYTES] [--duration S] [--warmup S]
 *                 [--count M]
 *
 * ws:   opens N connections, does the RFC 6455 handshake on each (checks the 101 and
 *       Sec-WebSocket-Accept), then keeps K binary messages of SIZE bytes in flight on each
 *       connection (client frames masked with random keys). Every echoed message is compared
 *       byte for byte with what was sent; a mismatch fails the run (exit status 2).
 * raw:  the same without handshake or framing: SIZE bytes out, the same SIZE bytes back.
 * idle: opens N connections and handshakes them, prints {"ready": ...} and holds them until
 *       stdin reaches EOF (or SIGTERM), then closes them.
 * fanout: a broadcast server's subscribers and its publisher. N subscriber connections to
 *       --path, one publisher connection to --pub-path. The publisher sends binary messages
 *       of SIZE (>= 16) bytes: a sequence number, its send time, then the pattern; it keeps
 *       at most K messages in flight, a message being done when every subscriber has it.
 *       Each subscriber checks that it gets every message once, in order, byte for byte
 *       (a gap, a duplicate or a difference is a mismatch). Reports deliveries per second
 *       and the publish-to-delivery latency (p50/p99 over every delivery).
 *
 * After WARMUP seconds the counters are reset and messages completed during DURATION seconds are
 * counted. Then sending stops, in-flight messages are drained, and each connection is closed with
 * the closing handshake (ws). One JSON line on stdout describes the run.
 * With --count M (no warm-up), each connection sends exactly M messages; the run is timed from
 * the first send to the last echo.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ SHA-1 (FIPS 180-4) */

typedef struct {
    uint32_t h[5];
    uint64_t len;
    uint8_t block[64];
    size_t fill;
} sha1_ctx;

static uint32_t rol32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

static void sha1_block(sha1_ctx *c, const uint8_t *p) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++) w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) { f = (b & cc) | (~b & d); k = 0x5A827999; }
        else if (i < 40) { f = b ^ cc ^ d; k = 0x6ED9EBA1; }
        else if (i < 60) { f = (b & cc) | (b & d) | (cc & d); k = 0x8F1BBCDC; }
        else { f = b ^ cc ^ d; k = 0xCA62C1D6; }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d; d = cc; cc = rol32(b, 30); b = a; a = t;
    }
    c->h[0] += a; c->h[1] += b; c->h[2] += cc; c->h[3] += d; c->h[4] += e;
}

static void sha1_init(sha1_ctx *c) {
    c->h[0] = 0x67452301; c->h[1] = 0xEFCDAB89; c->h[2] = 0x98BADCFE; c->h[3] = 0x10325476; c->h[4] = 0xC3D2E1F0;
    c->len = 0; c->fill = 0;
}

static void sha1_update(sha1_ctx *c, const void *data, size_t n) {
    const uint8_t *p = data;
    c->len += n;
    while (n) {
        size_t take = 64 - c->fill;
        if (take > n) take = n;
        memcpy(c->block + c->fill, p, take);
        c->fill += take; p += take; n -= take;
        if (c->fill == 64) { sha1_block(c, c->block); c->fill = 0; }
    }
}

static void sha1_final(sha1_ctx *c, uint8_t out[20]) {
    uint64_t bits = c->len * 8;
    uint8_t pad = 0x80, zero = 0;
    sha1_update(c, &pad, 1);
    while (c->fill != 56) sha1_update(c, &zero, 1);
    uint8_t lenb[8];
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha1_update(c, lenb, 8);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = c->h[i] >> 24; out[4 * i + 1] = c->h[i] >> 16;
        out[4 * i + 2] = c->h[i] >> 8; out[4 * i + 3] = c->h[i];
    }
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0, o = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63]; out[o++] = tab[(v >> 6) & 63]; out[o++] = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63]; out[o++] = '='; out[o++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = tab[v >> 18]; out[o++] = tab[(v >> 12) & 63]; out[o++] = tab[(v >> 6) & 63]; out[o++] = '=';
    }
    out[o] = 0;
}

/* ------------------------------------------------------------------ misc */

static uint64_t rng_state;
static uint64_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "loadgen: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    printf("{\"error\": \"");
    printf(fmt, arg);
    printf("\"}\n");
    exit(1);
}

enum { MODE_WS, MODE_RAW, MODE_IDLE, MODE_FANOUT };

static const char *opt_host = "127.0.0.1", *opt_path = "/", *opt_pub_path = "/pub";
static int opt_port = 0, opt_mode = MODE_WS, opt_conns = 1, opt_inflight = 1;
static size_t opt_size = 32;
static double opt_duration = 2.0, opt_warmup = 0.5;
static uint64_t opt_count = 0;  /* > 0: send exactly this many messages per connection, then stop */

/* Message payloads: message `seq` is bytes pattern[(seq & 255) ...] with its first 8 bytes
 * replaced by seq (little endian) when the message is that long. Regenerated for each check. */
static uint8_t *pattern;

static void payload_chunk(uint64_t seq, size_t pos, uint8_t *dst, size_t n) {
    memcpy(dst, pattern + (seq & 255) + pos, n);
    for (size_t i = pos; i < 8 && i < pos + n && i < opt_size; i++) dst[i - pos] = (uint8_t)(seq >> (8 * i));
}

static int payload_equal(uint64_t seq, size_t pos, const uint8_t *got, size_t n) {
    size_t i = pos;
    for (; i < 8 && i < pos + n; i++)
        if (got[i - pos] != (uint8_t)(seq >> (8 * i))) return 0;
    return memcmp(got + (i - pos), pattern + (seq & 255) + i, n - (i - pos)) == 0;
}

static void mask_bytes(uint8_t *p, size_t n, uint32_t key_wire) {
    /* key_wire: the 4 key bytes as they appear on the wire, in memory order */
    uint64_t k8 = (uint64_t)key_wire << 32 | key_wire;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= k8;
        memcpy(p + i, &v, 8);
    }
    const uint8_t *kb = (const uint8_t *)&key_wire;
    for (; i < n; i++) p[i] ^= kb[i & 3];
}

/* ------------------------------------------------------------------ connections */

typedef struct {
    int fd;
    /* outbound */
    uint8_t *sbuf;
    size_t scap, slen, soff;
    int want_out;
    uint64_t next_send_seq;
    /* inbound */
    uint8_t *rbuf;
    size_t rcap, rlen, roff;
    uint64_t next_recv_seq;
    size_t msg_pos;      /* bytes of the current inbound message already checked */
    int in_message;      /* inside a fragmented message */
    /* frame being read (header parsed, payload streaming) */
    int have_hdr;
    uint8_t fr_op, fr_fin;
    uint64_t fr_left;
    uint64_t *stamps;    /* send time of each in-flight message, ring of `inflight` */
    int closing, close_sent, close_received, done;
} conn_t;

static conn_t *conns;
static int epfd;
static int sending = 1;
static uint64_t measure_from, measure_to;
static uint64_t count_measured, count_total, mismatches, protocol_errors;
static uint64_t *lat;
static double cpu_from = -1, cpu_to = -1;
static size_t nlat, caplat;

static int connect_one(void) {
    struct addrinfo hints = {0}, *ai;
    char port[16];
    snprintf(port, sizeof port, "%d", opt_port);
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(opt_host, port, &hints, &ai) != 0) die("cannot resolve %s", opt_host);
    int fd = socket(ai->ai_family, SOCK_STREAM, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) die("connect: %s", strerror(errno));
    freeaddrinfo(ai);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* Blocking handshake; bytes after the response head are left in c->rbuf. */
static void handshake(conn_t *c, const char *path) {
    uint8_t raw[16];
    char key[32], req[1024], expect[64];
    for (int i = 0; i < 16; i++) raw[i] = (uint8_t)rng();
    base64(raw, 16, key);
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, opt_host, opt_port, key);
    if (write(c->fd, req, n) != n) die("handshake write failed: %s", strerror(errno));
    sha1_ctx s;
    uint8_t dig[20];
    sha1_init(&s);
    sha1_update(&s, key, strlen(key));
    sha1_update(&s, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    sha1_final(&s, dig);
    base64(dig, 20, expect);

    char head[8192];
    size_t got = 0;
    char *end = NULL;
    while (!end) {
        if (got >= sizeof head - 1) die("%s", "handshake response too long");
        ssize_t r = read(c->fd, head + got, sizeof head - 1 - got);
        if (r <= 0) die("handshake read failed: %s", r == 0 ? "EOF" : strerror(errno));
        got += r;
        head[got] = 0;
        end = strstr(head, "\r\n\r\n");
    }
    size_t head_len = (size_t)(end - head) + 4;
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        *strchr(head, '\r') = 0;
        die("handshake refused: %s", head);
    }
    int accept_ok = 0, upgrade_ok = 0;
    for (char *line = strstr(head, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
        char *colon = memchr(line, ':', (size_t)(strstr(line, "\r\n") - line));
        if (!colon) continue;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        size_t vlen = (size_t)(strstr(v, "\r\n") - v);
        while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
        size_t nlen = (size_t)(colon - line);
        if (nlen == 20 && strncasecmp(line, "Sec-WebSocket-Accept", 20) == 0)
            accept_ok = vlen == strlen(expect) && memcmp(v, expect, vlen) == 0;
        else if (nlen == 7 && strncasecmp(line, "Upgrade", 7) == 0)
            upgrade_ok = vlen == 9 && strncasecmp(v, "websocket", 9) == 0;
        else if (nlen == 24 && strncasecmp(line, "Sec-WebSocket-Extensions", 24) == 0)
            die("%s", "server negotiated an extension that was not offered");
    }
    if (!accept_ok) die("%s", "bad or missing Sec-WebSocket-Accept");
    if (!upgrade_ok) die("%s", "bad or missing Upgrade header");
    memcpy(c->rbuf, head + head_len, got - head_len);
    c->rlen = got - head_len;
}

static void set_events(conn_t *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

static size_t frame_header(uint8_t *h, uint8_t opcode, uint64_t n, uint32_t key) {
    size_t i = 0;
    h[i++] = 0x80 | opcode;
    if (n < 126) h[i++] = 0x80 | (uint8_t)n;
    else if (n < 65536) { h[i++] = 0x80 | 126; h[i++] = n >> 8; h[i++] = (uint8_t)n; }
    else { h[i++] = 0x80 | 127; for (int b = 7; b >= 0; b--) h[i++] = (uint8_t)(n >> (8 * b)); }
    memcpy(h + i, &key, 4);
    return i + 4;
}

static void queue_control(conn_t *c, uint8_t opcode, const uint8_t *data, size_t n) {
    if (c->slen + n + 14 > c->scap) {
        c->scap = c->slen + n + 14;
        c->sbuf = realloc(c->sbuf, c->scap);
    }
    uint32_t key = (uint32_t)rng();
    size_t h = frame_header(c->sbuf + c->slen, opcode, n, key);
    memcpy(c->sbuf + c->slen + h, data, n);
    mask_bytes(c->sbuf + c->slen + h, n, key);
    c->slen += h + n;
}

/* Append as many new messages as the in-flight limit and the buffer allow. */
static void fill(conn_t *c) {
    if (c->soff == c->slen) c->soff = c->slen = 0;
    while (sending && !c->closing && c->next_send_seq - c->next_recv_seq < (uint64_t)opt_inflight
           && (!opt_count || c->next_send_seq < opt_count)) {
        size_t need = opt_size + (opt_mode == MODE_RAW ? 0 : 14);
        if (c->slen + need > c->scap) {
            if (c->soff == 0 && c->slen == 0) die("%s", "send buffer too small");
            if (c->soff > 0) { /* compact */
                memmove(c->sbuf, c->sbuf + c->soff, c->slen - c->soff);
                c->slen -= c->soff; c->soff = 0;
                continue;
            }
            break;
        }
        uint64_t seq = c->next_send_seq++;
        uint8_t *p = c->sbuf + c->slen;
        if (opt_mode == MODE_RAW) {
            payload_chunk(seq, 0, p, opt_size);
            c->slen += opt_size;
        } else {
            uint32_t key = (uint32_t)rng();
            size_t h = frame_header(p, 2, opt_size, key);
            payload_chunk(seq, 0, p + h, opt_size);
            mask_bytes(p + h, opt_size, key);
            c->slen += h + opt_size;
        }
        c->stamps[seq % opt_inflight] = now_ns();
    }
}

static void flush(conn_t *c) {
    while (c->soff < c->slen) {
        ssize_t w = send(c->fd, c->sbuf + c->soff, c->slen - c->soff, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) continue;
            protocol_errors++;
            c->done = 1;
            return;
        }
        c->soff += w;
    }
    int out = c->soff < c->slen;
    if (out != c->want_out) set_events(c, out);
}

static void message_done(conn_t *c) {
    uint64_t t = now_ns();
    uint64_t seq = c->next_recv_seq++;
    count_total++;
    if (t >= measure_from && t < measure_to) {
        if (cpu_from < 0) cpu_from = cpu_now();
        count_measured++;
        if (nlat == caplat) {
            caplat = caplat ? caplat * 2 : 1 << 16;
            lat = realloc(lat, caplat * sizeof *lat);
        }
        lat[nlat++] = t - c->stamps[seq % opt_inflight];
    }
}

/* ------------------------------------------------------------------ fan-out */

static conn_t *pub;                 /* the publisher (fanout mode): conns[opt_conns] */
static uint64_t fan_sent, fan_done; /* messages sent; messages every subscriber has */
static uint32_t *fan_left;          /* per ring slot (seq % inflight): subscribers still to get it */
static uint64_t *fan_stamp;         /* per ring slot: send time */
/* Latency histogram: 1 us buckets up to 100 ms, then 1 ms buckets up to 100 s. */
#define HIST_FINE 100000
#define HIST_SIZE (HIST_FINE + 100000 + 1)
static uint64_t *hist, hist_n;

static size_t hist_bucket(uint64_t us) {
    if (us < HIST_FINE) return (size_t)us;
    uint64_t ms = (us - HIST_FINE) / 1000;
    return ms < 100000 ? HIST_FINE + (size_t)ms : HIST_SIZE - 1;
}

static double hist_value(size_t i) {   /* the bucket's lower bound, in us */
    return i < HIST_FINE ? (double)i : HIST_FINE + (double)(i - HIST_FINE) * 1000;
}

static void fan_fill(void) {
    conn_t *c = pub;
    if (c->soff == c->slen) c->soff = c->slen = 0;
    while (sending && fan_sent - fan_done < (uint64_t)opt_inflight) {
        if (c->slen + opt_size + 14 > c->scap) {
            if (c->soff == 0) break;
            memmove(c->sbuf, c->sbuf + c->soff, c->slen - c->soff);
            c->slen -= c->soff; c->soff = 0;
            continue;
        }
        uint64_t seq = fan_sent++, t = now_ns();
        uint8_t *p = c->sbuf + c->slen;
        uint32_t key = (uint32_t)rng();
        size_t h = frame_header(p, 2, opt_size, key);
        payload_chunk(seq, 0, p + h, opt_size);
        memcpy(p + h + 8, &t, 8);
        mask_bytes(p + h, opt_size, key);
        c->slen += h + opt_size;
        fan_left[seq % opt_inflight] = (uint32_t)opt_conns;
        fan_stamp[seq % opt_inflight] = t;
    }
}

static void fan_delivered(conn_t *c) {
    uint64_t t = now_ns();
    uint64_t seq = c->next_recv_seq++;
    uint64_t slot = seq % opt_inflight;
    count_total++;
    if (t >= measure_from && t < measure_to) {
        if (cpu_from < 0) cpu_from = cpu_now();
        count_measured++;
        hist[hist_bucket((t - fan_stamp[slot]) / 1000)]++;
        hist_n++;
    }
    if (--fan_left[slot] == 0)
        while (fan_done < fan_sent && fan_left[fan_done % opt_inflight] == 0) fan_done++;
}

static double hist_quantile(double q) {
    uint64_t want = (uint64_t)(hist_n * q), seen = 0;
    for (size_t i = 0; i < HIST_SIZE; i++) {
        seen += hist[i];
        if (seen > want) return hist_value(i);
    }
    return 0;
}

/* A subscriber's chunk of message `next_recv_seq`: the seq, then the send time (checked
 * against what the publisher recorded), then the pattern. */
static void fan_check(conn_t *c, const uint8_t *p, size_t n) {
    uint64_t seq = c->next_recv_seq;
    if (seq >= fan_sent || c->msg_pos + n > opt_size) { mismatches++; c->msg_pos += n; return; }
    uint8_t stamp[8];
    memcpy(stamp, &fan_stamp[seq % opt_inflight], 8);
    for (size_t i = 0; i < n; i++) {
        size_t at = c->msg_pos + i;
        uint8_t want = at < 8 ? (uint8_t)(seq >> (8 * at)) : at < 16 ? stamp[at - 8]
                                                                      : pattern[(seq & 255) + at];
        if (p[i] != want) { mismatches++; break; }
    }
    c->msg_pos += n;
}

/* Check `n` received payload bytes of the current inbound message. */
static void check_chunk(conn_t *c, const uint8_t *p, size_t n) {
    if (opt_mode == MODE_FANOUT) { fan_check(c, p, n); return; }
    if (c->next_recv_seq >= c->next_send_seq || c->msg_pos + n > opt_size) {
        mismatches++;
        c->msg_pos += n;
        return;
    }
    if (!payload_equal(c->next_recv_seq, c->msg_pos, p, n)) mismatches++;
    c->msg_pos += n;
}

static void end_message(conn_t *c) {
    if (c->msg_pos != opt_size) mismatches++;
    c->msg_pos = 0;
    if (opt_mode == MODE_FANOUT) fan_delivered(c);
    else message_done(c);
}

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
            if (b1 & 0x80) { protocol_errors++; c->done = 1; return; } /* server frames are unmasked */
            if (n < hl) break;
            if (len == 126) len = (uint64_t)p[2] << 8 | p[3];
            else if (len == 127) { len = 0; for (int i = 0; i < 8; i++) len = len << 8 | p[2 + i]; }
            if (b0 & 0x70) { protocol_errors++; c->done = 1; return; }
            c->fr_op = b0 & 0x0f; c->fr_fin = b0 >> 7; c->fr_left = len;
            c->have_hdr = 1;
            c->roff += hl; p += hl; n -= hl;
            if (c->fr_op >= 8) {
                /* control frame: wait for all of it */
                if (len > 125 || !c->fr_fin) { protocol_errors++; c->done = 1; return; }
            } else if (c->fr_op == 2 || c->fr_op == 1) {
                if (c->in_message) { protocol_errors++; c->done = 1; return; }
                if (c->fr_op == 1) mismatches++; /* we only send binary */
                c->in_message = 1;
            } else if (c->fr_op == 0) {
                if (!c->in_message) { protocol_errors++; c->done = 1; return; }
            } else { protocol_errors++; c->done = 1; return; }
        }
        if (c->fr_op >= 8) {
            if (n < c->fr_left) break;
            if (c->fr_op == 9) queue_control(c, 10, p, c->fr_left);           /* ping -> pong */
            else if (c->fr_op == 8) {
                c->close_received = 1;
                if (!c->close_sent) { queue_control(c, 8, p, c->fr_left >= 2 ? 2 : 0); c->close_sent = 1; }
                if (!c->closing) protocol_errors++;                            /* unexpected close */
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
            protocol_errors++;
            c->done = 1;
            return;
        }
        if (r == 0) {
            if (!(c->closing && (c->close_received || opt_mode == MODE_RAW))) protocol_errors++;
            c->done = 1;
            return;
        }
        c->rlen += r;
        parse(c);
        if (c->done) return;
        if ((size_t)r < c->rcap / 2) return;
    }
}

static volatile sig_atomic_t stop_signal;
static void on_signal(int s) { (void)s; stop_signal = 1; }

static int parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
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
        else if (!strcmp(a, "--count")) opt_count = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "ws")) opt_mode = MODE_WS;
            else if (!strcmp(v, "raw")) opt_mode = MODE_RAW;
            else if (!strcmp(v, "idle")) opt_mode = MODE_IDLE;
            else if (!strcmp(v, "fanout")) opt_mode = MODE_FANOUT;
            else return -1;
        } else return -1;
        i++;
    }
    if (opt_mode == MODE_FANOUT && opt_size < 16) return -1;
    return opt_port > 0 && opt_conns > 0 && opt_inflight > 0 && opt_size > 0 ? 0 : -1;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) != 0) {
        fprintf(stderr, "usage: loadgen --port P [--host H] [--path /] [--mode ws|raw|idle|fanout] [--conns N]\n"
                        "               [--pub-path /pub] (fanout: --size >= 16)\n"
                        "               [--inflight K] [--size BYTES] [--duration S] [--warmup S] [--count M]\n");
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
    for (size_t i = 0; i < opt_size + 256; i++) pattern[i] = (uint8_t)(rng() >> 56);

    epfd = epoll_create1(0);
    int nconns = opt_conns + (opt_mode == MODE_FANOUT);   /* fanout: the publisher is last */
    conns = calloc(nconns, sizeof *conns);
    if (opt_mode == MODE_FANOUT) {
        fan_left = calloc(opt_inflight, sizeof *fan_left);
        fan_stamp = calloc(opt_inflight, sizeof *fan_stamp);
        hist = calloc(HIST_SIZE, sizeof *hist);
    }
    size_t unit = opt_size + 14;
    size_t scap = unit * opt_inflight;
    if (scap > (256u << 10)) scap = unit > (256u << 10) ? unit : (256u << 10);
    size_t rcap = (opt_mode == MODE_IDLE ? 16384 : opt_mode == MODE_FANOUT ? 65536 : 262144);
    uint64_t t_connect = now_ns();
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        c->fd = connect_one();
        c->rcap = rcap;
        c->rbuf = malloc(rcap);
        c->scap = opt_mode == MODE_IDLE ? 256 : opt_mode == MODE_FANOUT && i < opt_conns ? 1024 : scap;
        c->sbuf = malloc(c->scap);
        c->stamps = calloc(opt_inflight, sizeof(uint64_t));
        if (opt_mode != MODE_RAW) handshake(c, opt_mode == MODE_FANOUT && i == opt_conns ? opt_pub_path : opt_path);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    }
    double connect_s = (now_ns() - t_connect) / 1e9;

    if (opt_mode == MODE_IDLE) {
        printf("{\"mode\": \"idle\", \"conns\": %d, \"ready\": true, \"connect_s\": %.3f}\n", opt_conns, connect_s);
        fflush(stdout);
        /* hold until stdin closes or a signal; count any unexpected traffic */
        char tmp[256];
        while (!stop_signal) {
            ssize_t r = read(0, tmp, sizeof tmp);
            if (r == 0 || (r < 0 && errno != EINTR)) break;
        }
        /* then close every connection with the closing handshake, below */
    }

    uint64_t start = now_ns();
    measure_from = start + (uint64_t)(opt_warmup * 1e9);
    measure_to = measure_from + (uint64_t)(opt_duration * 1e9);
    if (opt_mode == MODE_IDLE) { sending = 0; measure_from = measure_to = start; }
    if (opt_count) { measure_from = start; measure_to = start + 3600000000000ULL; }
    if (opt_mode == MODE_FANOUT) { pub = &conns[opt_conns]; fan_fill(); flush(pub); }
    else for (int i = 0; i < opt_conns; i++) { fill(&conns[i]); flush(&conns[i]); }

    struct epoll_event evs[512];
    int phase = 0; /* 0 running, 1 draining, 2 closing */
    uint64_t phase_deadline = 0;
    int live = nconns;
    int timed_out = 0;
    while (live > 0) {
        uint64_t t = now_ns();
        if (phase == 0 && opt_count && count_total == opt_count * (uint64_t)opt_conns) measure_to = t;
        if (phase == 0 && (t >= measure_to || stop_signal)) {
            phase = 1; sending = 0; phase_deadline = t + 10000000000ULL;
            cpu_to = cpu_now();
            if (opt_mode == MODE_FANOUT && count_measured) {
                /* The messages in flight reach every subscriber at the rate measured: give
                 * a slow server twice that long (up to 2 minutes) to drain them. */
                double rate = count_measured / ((measure_to - measure_from) / 1e9);
                double drain = 2.0 * (double)(fan_sent - fan_done) * opt_conns / rate;
                if (drain > 10) phase_deadline = t + (uint64_t)((drain < 120 ? drain : 120) * 1e9);
            }
        }
        if (phase == 1) {
            int pending = 0;
            if (opt_mode == MODE_FANOUT) pending = fan_done < fan_sent;
            else for (int i = 0; i < opt_conns; i++)
                if (!conns[i].done && conns[i].next_recv_seq < conns[i].next_send_seq) pending = 1;
            if (!pending || t >= phase_deadline) {
                if (pending) timed_out = 1;
                phase = 2; phase_deadline = t + 5000000000ULL;
                for (int i = 0; i < nconns; i++) {
                    conn_t *c = &conns[i];
                    if (c->done) continue;
                    c->closing = 1;
                    if (opt_mode == MODE_RAW) shutdown(c->fd, SHUT_WR);
                    else { uint8_t code[2] = {0x03, 0xe8}; queue_control(c, 8, code, 2); c->close_sent = 1; flush(c); }
                }
            }
        }
        if (phase == 2 && t >= phase_deadline) { timed_out = 1; break; }
        int n = epoll_wait(epfd, evs, 512, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->done) continue;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(c);
            if (!c->done) { if (opt_mode != MODE_FANOUT) fill(c); flush(c); }
            if (c->done) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                live--;
            }
        }
        if (opt_mode == MODE_FANOUT && !pub->done) { fan_fill(); flush(pub); }
    }
    uint64_t end = now_ns();
    double secs = (double)(measure_to - measure_from) / 1e9;
    if (end < measure_to) secs = (double)(end > measure_from ? end - measure_from : 1) / 1e9;
    if (cpu_to < 0) cpu_to = cpu_now();
    double cpu_used = cpu_from >= 0 ? cpu_to - cpu_from : 0;
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    double p50 = nlat ? lat[nlat / 2] / 1e3 : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] / 1e3 : 0;
    double mean = 0;
    for (size_t i = 0; i < nlat; i++) mean += lat[i];
    mean = nlat ? mean / nlat / 1e3 : 0;
    if (opt_mode == MODE_IDLE) {
        printf("{\"mode\": \"idle\", \"conns\": %d, \"closed\": true, \"errors\": %llu, \"close_timeout\": %s}\n",
               opt_conns, (unsigned long long)protocol_errors, timed_out ? "true" : "false");
        return protocol_errors || timed_out ? 1 : 0;
    }
    int ok = mismatches == 0 && protocol_errors == 0 && count_measured > 0;
    if (opt_mode == MODE_FANOUT) {
        double sum = 0;
        for (size_t i = 0; i < HIST_SIZE; i++) sum += (double)hist[i] * hist_value(i);
        ok = ok && !timed_out;
        printf("{\"mode\": \"fanout\", \"conns\": %d, \"inflight\": %d, \"size\": %zu, \"duration_s\": %.6f, "
               "\"deliveries\": %llu, \"deliveries_per_s\": %.1f, \"msgs_per_s\": %.1f, \"published\": %llu, "
               "\"total_deliveries\": %llu, \"total_messages\": %llu, \"lat_p50_us\": %.1f, \"lat_p99_us\": %.1f, "
               "\"lat_mean_us\": %.1f, \"mismatches\": %llu, \"errors\": %llu, \"close_timeout\": %s, "
               "\"connect_s\": %.3f, \"cpu_pct\": %.1f, \"ok\": %s}\n",
               opt_conns, opt_inflight, opt_size, secs, (unsigned long long)count_measured,
               count_measured / secs, count_measured / secs, (unsigned long long)fan_sent,
               (unsigned long long)count_total, (unsigned long long)count_total,
               hist_quantile(0.5), hist_quantile(0.99), hist_n ? sum / hist_n : 0,
               (unsigned long long)mismatches, (unsigned long long)protocol_errors,
               timed_out ? "true" : "false", connect_s, cpu_used / secs * 100, ok ? "true" : "false");
        return mismatches ? 2 : ok ? 0 : 1;
    }
    printf("{\"mode\": \"%s\", \"conns\": %d, \"inflight\": %d, \"size\": %zu, \"duration_s\": %.6f, "
           "\"messages\": %llu, \"msgs_per_s\": %.1f, \"mb_per_s\": %.2f, \"total_messages\": %llu, "
           "\"lat_p50_us\": %.1f, \"lat_p99_us\": %.1f, \"lat_mean_us\": %.1f, \"mismatches\": %llu, "
           "\"errors\": %llu, \"close_timeout\": %s, \"connect_s\": %.3f, \"cpu_us_per_msg\": %.3f, "
           "\"cpu_pct\": %.1f, \"ok\": %s}\n",
           opt_mode == MODE_RAW ? "raw" : "ws", opt_conns, opt_inflight, opt_size, secs,
           (unsigned long long)count_measured, count_measured / secs, count_measured * (double)opt_size / secs / 1e6,
           (unsigned long long)count_total, p50, p99, mean, (unsigned long long)mismatches,
           (unsigned long long)protocol_errors, timed_out ? "true" : "false", connect_s,
           cpu_used / (count_measured ? count_measured : 1) * 1e6, cpu_used / secs * 100, ok ? "true" : "false");
    return mismatches ? 2 : ok ? 0 : 1;
}
