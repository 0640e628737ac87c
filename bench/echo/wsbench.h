/* wsbench.h: what the C benchmark clients (loadgen.c, storm.c) share, as static functions in a
 * header so that each program still builds from one `cc` command:
 *   - SHA-1 (FIPS 180-4) and base64, to check the server's Sec-WebSocket-Accept ourselves;
 *   - the client side of the RFC 6455 opening handshake (request text, response check);
 *   - frame headers and masking for client frames;
 *   - a latency histogram with bounded memory (log-linear buckets, < 0.8 % error), mergeable
 *     across threads, from which p50/p90/p99/p99.9 are read;
 *   - clocks and a small PRNG;
 *   - client sockets spread over loopback source addresses.
 */
#ifndef WSBENCH_H
#define WSBENCH_H

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

/* ------------------------------------------------------------------ clocks, PRNG */

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* CPU time of the whole process (every thread), in seconds. */
static inline double process_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline uint64_t xorshift64s(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* ------------------------------------------------------------------ sockets */

/* A TCP socket for the index-th connection to `ai`. Towards a loopback address the connections
 * come from 64 source addresses (127.0.0.1 to 127.0.0.64, round robin): with tens of thousands
 * of connections, or as many recently closed ones in TIME_WAIT, connect() on one source address
 * spends most of its time looking for a free ephemeral port (32 s for 20,000 connections here,
 * against 0.5 s for 5,000), which would be charged to the server under test. */
static int bench_socket(const struct addrinfo *ai, unsigned index, int type_flags) {
    int fd = socket(ai->ai_family, SOCK_STREAM | type_flags, 0);
    if (fd < 0) return fd;
    const struct sockaddr_in *to = (const struct sockaddr_in *)ai->ai_addr;
    if (ai->ai_family == AF_INET && (ntohl(to->sin_addr.s_addr) >> 24) == 127) {
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in from = {.sin_family = AF_INET, .sin_port = 0,
                                   .sin_addr.s_addr = htonl(0x7f000001u + index % 64)};
        bind(fd, (struct sockaddr *)&from, sizeof from);   /* on failure connect() picks one */
    }
    return fd;
}

/* ------------------------------------------------------------------ SHA-1, base64 */

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

/* ------------------------------------------------------------------ opening handshake (client) */

typedef struct {
    char request[1024];
    int request_len;
    char expect_accept[32];   /* base64(SHA-1(key + GUID)) */
} ws_handshake;

/* Fill `hs` with a request carrying a fresh random key, and the Sec-WebSocket-Accept it needs. */
static void ws_handshake_make(ws_handshake *hs, uint64_t *rng, const char *host, int port, const char *path) {
    uint8_t raw[16], dig[20];
    char key[32];
    for (int i = 0; i < 16; i++) raw[i] = (uint8_t)xorshift64s(rng);
    base64(raw, 16, key);
    hs->request_len = snprintf(hs->request, sizeof hs->request,
                               "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                               path, host, port, key);
    sha1_ctx s;
    sha1_init(&s);
    sha1_update(&s, key, strlen(key));
    sha1_update(&s, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    sha1_final(&s, dig);
    base64(dig, 20, hs->expect_accept);
}

/* Length of the response head (through the blank line) in buf[0..n), or 0 when incomplete.
 * buf must have room for a terminating NUL at buf[n]. */
static size_t ws_response_head_len(char *buf, size_t n) {
    buf[n] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    return end ? (size_t)(end - buf) + 4 : 0;
}

/* Check a complete response head: 101, Upgrade: websocket, the right Sec-WebSocket-Accept and no
 * extension (none was offered). Returns NULL when it is good, else a static description. */
static const char *ws_response_check(const ws_handshake *hs, const char *head, size_t head_len) {
    if (head_len < 12 || strncmp(head, "HTTP/1.1 101", 12) != 0) return "handshake refused (status is not 101)";
    const char *end = head + head_len - 2;
    int accept_ok = 0, upgrade_ok = 0;
    for (const char *line = strstr(head, "\r\n") + 2; line < end; line = strstr(line, "\r\n") + 2) {
        const char *eol = strstr(line, "\r\n");
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (!colon) continue;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        size_t vlen = (size_t)(eol - v);
        while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
        size_t nlen = (size_t)(colon - line);
        if (nlen == 20 && strncasecmp(line, "Sec-WebSocket-Accept", 20) == 0)
            accept_ok = vlen == strlen(hs->expect_accept) && memcmp(v, hs->expect_accept, vlen) == 0;
        else if (nlen == 7 && strncasecmp(line, "Upgrade", 7) == 0)
            upgrade_ok = vlen == 9 && strncasecmp(v, "websocket", 9) == 0;
        else if (nlen == 24 && strncasecmp(line, "Sec-WebSocket-Extensions", 24) == 0)
            return "server negotiated an extension that was not offered";
    }
    if (!accept_ok) return "bad or missing Sec-WebSocket-Accept";
    if (!upgrade_ok) return "bad or missing Upgrade header";
    return NULL;
}

/* ------------------------------------------------------------------ frames */

/* Header of a masked client frame (FIN set) with the 4 key bytes `key` (wire order in memory). */
static size_t ws_frame_header(uint8_t *h, uint8_t opcode, uint64_t n, uint32_t key) {
    size_t i = 0;
    h[i++] = 0x80 | opcode;
    if (n < 126) h[i++] = 0x80 | (uint8_t)n;
    else if (n < 65536) { h[i++] = 0x80 | 126; h[i++] = (uint8_t)(n >> 8); h[i++] = (uint8_t)n; }
    else { h[i++] = 0x80 | 127; for (int b = 7; b >= 0; b--) h[i++] = (uint8_t)(n >> (8 * b)); }
    memcpy(h + i, &key, 4);
    return i + 4;
}

/* XOR p[0..n) with the key, starting at key byte 0. */
static void ws_mask(uint8_t *p, size_t n, uint32_t key_wire) {
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

/* ------------------------------------------------------------------ latency histogram */

/* Values in ns. Below 128 one bucket per ns; above, 64 buckets per power of two, so a
 * bucket's midpoint is within 1/128 (< 0.8 %) of any value in it. Up to 2^41 ns (~36 min). */
#define HIST_BUCKETS (128 + 35 * 64)

typedef struct {
    uint64_t counts[HIST_BUCKETS];
    uint64_t n, max, sum;
} hist_t;

static inline int hist_index(uint64_t v) {
    if (v < 128) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - 6;
    int idx = 128 + (shift - 1) * 64 + (int)((v >> shift) - 64);
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

static inline uint64_t hist_value(int idx) {
    if (idx < 128) return (uint64_t)idx;
    int shift = (idx - 128) / 64 + 1;
    uint64_t m = (uint64_t)((idx - 128) % 64 + 64);
    return (m << shift) + ((1ULL << shift) >> 1);
}

static inline void hist_add(hist_t *h, uint64_t v) {
    h->counts[hist_index(v)]++;
    h->n++;
    h->sum += v;
    if (v > h->max) h->max = v;
}

static inline void hist_merge(hist_t *into, const hist_t *from) {
    for (int i = 0; i < HIST_BUCKETS; i++) into->counts[i] += from->counts[i];
    into->n += from->n;
    into->sum += from->sum;
    if (from->max > into->max) into->max = from->max;
}

/* The q-quantile (0 < q <= 1) in ns: the bucket holding the ceil(q * n)-th smallest value. */
static uint64_t hist_quantile(const hist_t *h, double q) {
    if (!h->n) return 0;
    uint64_t rank = (uint64_t)(q * (double)h->n + 0.999999);
    if (rank < 1) rank = 1;
    uint64_t seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_value(i);
            return v > h->max ? h->max : v;
        }
    }
    return h->max;
}

/* `"lat_p50_us": ..., ...` (no braces) for a JSON line. */
static void hist_print_json(FILE *f, const char *prefix, const hist_t *h) {
    fprintf(f, "\"%s_p50_us\": %.1f, \"%s_p90_us\": %.1f, \"%s_p99_us\": %.1f, \"%s_p999_us\": %.1f, "
               "\"%s_max_us\": %.1f, \"%s_mean_us\": %.1f, \"%s_samples\": %llu",
            prefix, hist_quantile(h, 0.5) / 1e3, prefix, hist_quantile(h, 0.9) / 1e3,
            prefix, hist_quantile(h, 0.99) / 1e3, prefix, hist_quantile(h, 0.999) / 1e3,
            prefix, h->max / 1e3, prefix, h->n ? (double)h->sum / (double)h->n / 1e3 : 0.0,
            prefix, (unsigned long long)h->n);
}

#endif
