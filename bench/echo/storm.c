/* storm: a connection-storm client for WebSocket servers: new connections per second.
 *
 * Build:  cc -O2 -o storm storm.c -lssl -lcrypto      (wsbench.h next to it; Debian: libssl-dev)
 * Usage:  storm --port P [--host 127.0.0.1] [--path /] [--concurrency K] [--size BYTES]
 *               [--duration S] [--warmup S] [--tls CAFILE [--servername localhost]]
 *
 * K clients run at once, each in a loop: open a TCP connection (and with --tls a full TLS
 * handshake, no session resumption, the server's certificate verified against CAFILE), do the
 * WebSocket opening handshake (the 101 and Sec-WebSocket-Accept checked), send one masked binary
 * message of SIZE bytes (default 32) and check its echo byte for byte, send a close frame (1000),
 * read the server's close frame, wait for the server to close the TCP connection (RFC 6455 7.1.1:
 * the server closes first), close the socket, and start again. Every step is non-blocking on one
 * epoll, so the client costs little next to the server.
 *
 * Connections that finish during DURATION seconds (after WARMUP) are counted. One JSON line on
 * stdout: conns_per_s, the time of a whole connection (connect to the server's FIN) as
 * percentiles, the client's own CPU (cpu_pct of one core), errors with the first one described.
 * A connection that makes no progress for 5 s counts as an error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wsbench.h"

static const char *opt_host = "127.0.0.1", *opt_path = "/", *opt_ca = NULL, *opt_servername = "localhost";
static int opt_port = 0, opt_concurrency = 50;
static size_t opt_size = 32;
static double opt_duration = 3.0, opt_warmup = 0.5;

#define STALL_NS 5000000000ULL

enum step { CONNECTING, TLS_HANDSHAKE, SEND_REQUEST, READ_RESPONSE, SEND_MESSAGE, READ_ECHO,
            SEND_CLOSE, READ_CLOSE, READ_EOF };

typedef struct {
    int fd;
    SSL *ssl;
    enum step step;
    uint64_t started, progressed;
    ws_handshake hs;
    uint8_t out[16384];
    size_t out_len, out_off;
    uint8_t in[16384];
    size_t in_len;
    uint8_t payload[4096];
} client_t;

static SSL_CTX *tls;
static struct addrinfo *server_addr;
static int epfd;
static uint64_t rng_state;
static uint64_t measure_from, measure_to;
static uint64_t done_measured, done_total, errors, stalls;
static char first_error[256];
static hist_t lat;
static volatile sig_atomic_t stop_signal;

static void on_signal(int s) { (void)s; stop_signal = 1; }

static void note_error(const char *what, const char *detail) {
    errors++;
    if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s%s%s", what, detail ? ": " : "", detail ? detail : "");
}

/* ------------------------------------------------------------------ byte I/O, clear or TLS */

enum { IO_AGAIN = -1, IO_ERROR = -2 };

/* Bytes written (> 0), IO_AGAIN, or IO_ERROR. */
static ssize_t io_write(client_t *c, const void *p, size_t n) {
    if (!c->ssl) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w >= 0) return w;
        return errno == EAGAIN || errno == EINTR ? IO_AGAIN : IO_ERROR;
    }
    int w = SSL_write(c->ssl, p, (int)n);
    if (w > 0) return w;
    int e = SSL_get_error(c->ssl, w);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? IO_AGAIN : IO_ERROR;
}

/* Bytes read (> 0), 0 at EOF, IO_AGAIN, or IO_ERROR. */
static ssize_t io_read(client_t *c, void *p, size_t n) {
    if (!c->ssl) {
        ssize_t r = recv(c->fd, p, n, 0);
        if (r >= 0) return r;
        return errno == EAGAIN || errno == EINTR ? IO_AGAIN : IO_ERROR;
    }
    int r = SSL_read(c->ssl, p, (int)n);
    if (r > 0) return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_ZERO_RETURN) return 0;
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return IO_AGAIN;
    if (e == SSL_ERROR_SYSCALL && errno == 0) return 0;
    return IO_ERROR;
}

/* ------------------------------------------------------------------ one client's loop */

static void start(client_t *c);

static void finish(client_t *c, int ok) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    if (c->ssl) { SSL_free(c->ssl); c->ssl = NULL; }
    close(c->fd);
    if (ok) {
        uint64_t t = now_ns();
        done_total++;
        if (t >= measure_from && t < measure_to) {
            done_measured++;
            hist_add(&lat, t - c->started);
        }
    }
    if (!stop_signal && now_ns() < measure_to) start(c);
    else c->fd = -1;
}

static void start(client_t *c) {
    static unsigned started_count;
    c->fd = bench_socket(server_addr, started_count++, SOCK_NONBLOCK);
    if (c->fd < 0) { fprintf(stderr, "storm: socket: %s\n", strerror(errno)); exit(1); }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->started = c->progressed = now_ns();
    c->step = CONNECTING;
    c->in_len = 0;
    if (connect(c->fd, server_addr->ai_addr, server_addr->ai_addrlen) != 0 && errno != EINPROGRESS) {
        note_error("connect", strerror(errno));
        close(c->fd);
        c->fd = -1;
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void queue_frame(client_t *c, uint8_t opcode, const uint8_t *data, size_t n) {
    uint32_t key = (uint32_t)xorshift64s(&rng_state);
    size_t h = ws_frame_header(c->out, opcode, n, key);
    memcpy(c->out + h, data, n);
    ws_mask(c->out + h, n, key);
    c->out_len = h + n;
    c->out_off = 0;
}

/* 1 when everything queued is written, 0 to wait, -1 on error. */
static int write_out(client_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = io_write(c, c->out + c->out_off, c->out_len - c->out_off);
        if (w == IO_AGAIN) return 0;
        if (w < 0) return -1;
        c->out_off += (size_t)w;
    }
    return 1;
}

/* Read more into c->in: 1 when bytes came, 0 to wait, -1 on EOF or error. */
static int read_in(client_t *c) {
    if (c->in_len >= sizeof c->in - 1) return -1;
    ssize_t r = io_read(c, c->in + c->in_len, sizeof c->in - 1 - c->in_len);
    if (r == IO_AGAIN) return 0;
    if (r <= 0) return -1;
    c->in_len += (size_t)r;
    return 1;
}

/* A complete unmasked server frame at the start of c->in: its length (header + payload), with
 * opcode and payload position set; 0 when incomplete; -1 when malformed. */
static ssize_t frame_in(client_t *c, uint8_t *op, size_t *pay, size_t *len) {
    if (c->in_len < 2) return 0;
    uint8_t b0 = c->in[0], b1 = c->in[1];
    if ((b1 & 0x80) || (b0 & 0x70) || !(b0 & 0x80)) return -1;
    size_t hl = 2, n = b1 & 0x7f;
    if (n == 126) { if (c->in_len < 4) return 0; n = (size_t)c->in[2] << 8 | c->in[3]; hl = 4; }
    else if (n == 127) return -1;   /* larger than this client ever sends */
    if (c->in_len < hl + n) return 0;
    *op = b0 & 0x0f; *pay = hl; *len = n;
    return (ssize_t)(hl + n);
}

static void consume(client_t *c, size_t n) {
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
}

/* Run the client's steps until it has to wait for the socket. */
static void advance(client_t *c) {
    for (;;) {
        int r;
        switch (c->step) {
        case CONNECTING: {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err == EINPROGRESS || err == EALREADY) return;
            if (err) { note_error("connect", strerror(err)); finish(c, 0); return; }
            struct sockaddr_storage peer;
            socklen_t plen = sizeof peer;
            if (getpeername(c->fd, (struct sockaddr *)&peer, &plen) != 0) return;   /* not yet */
            if (tls) {
                c->ssl = SSL_new(tls);
                SSL_set_fd(c->ssl, c->fd);
                SSL_set_tlsext_host_name(c->ssl, opt_servername);
                SSL_set1_host(c->ssl, opt_servername);
                c->step = TLS_HANDSHAKE;
            } else c->step = SEND_REQUEST;
            ws_handshake_make(&c->hs, &rng_state, opt_host, opt_port, opt_path);
            memcpy(c->out, c->hs.request, (size_t)c->hs.request_len);
            c->out_len = (size_t)c->hs.request_len;
            c->out_off = 0;
            break;
        }
        case TLS_HANDSHAKE: {
            int h = SSL_connect(c->ssl);
            if (h == 1) { c->step = SEND_REQUEST; break; }
            int e = SSL_get_error(c->ssl, h);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
            char detail[160];
            ERR_error_string_n(ERR_get_error(), detail, sizeof detail);
            note_error("TLS handshake", detail);
            finish(c, 0);
            return;
        }
        case SEND_REQUEST:
        case SEND_MESSAGE:
        case SEND_CLOSE:
            r = write_out(c);
            if (r == 0) return;
            if (r < 0) { note_error("write failed", NULL); finish(c, 0); return; }
            c->step = c->step == SEND_REQUEST ? READ_RESPONSE : c->step == SEND_MESSAGE ? READ_ECHO : READ_CLOSE;
            break;
        case READ_RESPONSE: {
            size_t head = ws_response_head_len((char *)c->in, c->in_len);
            if (!head) {
                r = read_in(c);
                if (r == 0) return;
                if (r < 0) { note_error("handshake", "connection closed or failed before the response"); finish(c, 0); return; }
                continue;
            }
            const char *problem = ws_response_check(&c->hs, (const char *)c->in, head);
            if (problem) { note_error("handshake", problem); finish(c, 0); return; }
            consume(c, head);
            for (size_t i = 0; i < opt_size; i++) c->payload[i] = (uint8_t)xorshift64s(&rng_state);
            queue_frame(c, 2, c->payload, opt_size);
            c->step = SEND_MESSAGE;
            break;
        }
        case READ_ECHO:
        case READ_CLOSE: {
            uint8_t op;
            size_t pay, len;
            ssize_t f = frame_in(c, &op, &pay, &len);
            if (f < 0) { note_error("bad frame from the server", NULL); finish(c, 0); return; }
            if (f == 0) {
                r = read_in(c);
                if (r == 0) return;
                if (r < 0) { note_error("connection closed or failed before the", c->step == READ_ECHO ? "echo" : "close frame"); finish(c, 0); return; }
                continue;
            }
            if (op == 9 || op == 10) { consume(c, (size_t)f); continue; }   /* pings: ignored (no keepalive this short) */
            if (c->step == READ_ECHO) {
                if (op != 2 || len != opt_size || memcmp(c->in + pay, c->payload, opt_size) != 0) {
                    note_error("echo mismatch", NULL); finish(c, 0); return;
                }
                consume(c, (size_t)f);
                uint8_t code[2] = {0x03, 0xe8};
                queue_frame(c, 8, code, 2);
                c->step = SEND_CLOSE;
            } else {
                if (op != 8) { note_error("expected a close frame", NULL); finish(c, 0); return; }
                consume(c, (size_t)f);
                c->step = READ_EOF;
            }
            break;
        }
        case READ_EOF: {
            uint8_t tmp[256];
            ssize_t n = io_read(c, tmp, sizeof tmp);
            if (n == IO_AGAIN) return;
            if (n > 0) { note_error("data after the close frame", NULL); finish(c, 0); return; }
            finish(c, 1);   /* EOF, or a reset after the close handshake: the connection is done */
            return;
        }
        }
        c->progressed = now_ns();
    }
}

/* ------------------------------------------------------------------ main */

static int parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return -1;
        if (!strcmp(a, "--host")) opt_host = v;
        else if (!strcmp(a, "--port")) opt_port = atoi(v);
        else if (!strcmp(a, "--path")) opt_path = v;
        else if (!strcmp(a, "--concurrency")) opt_concurrency = atoi(v);
        else if (!strcmp(a, "--size")) opt_size = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--duration")) opt_duration = atof(v);
        else if (!strcmp(a, "--warmup")) opt_warmup = atof(v);
        else if (!strcmp(a, "--tls")) opt_ca = v;
        else if (!strcmp(a, "--servername")) opt_servername = v;
        else return -1;
        i++;
    }
    return opt_port > 0 && opt_concurrency > 0 && opt_size > 0 && opt_size <= 4096 ? 0 : -1;
}

int main(int argc, char **argv) {
    if (parse_args(argc, argv) != 0) {
        fprintf(stderr, "usage: storm --port P [--host H] [--path /] [--concurrency K] [--size BYTES (<= 4096)]\n"
                        "             [--duration S] [--warmup S] [--tls CAFILE [--servername NAME]]\n");
        return 64;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    rng_state = now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9E3779B97F4A7C15ULL;
    char port[16];
    snprintf(port, sizeof port, "%d", opt_port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
    if (getaddrinfo(opt_host, port, &hints, &server_addr) != 0) { fprintf(stderr, "storm: cannot resolve %s\n", opt_host); return 1; }
    if (opt_ca) {
        tls = SSL_CTX_new(TLS_client_method());
        if (SSL_CTX_load_verify_locations(tls, opt_ca, NULL) != 1) { fprintf(stderr, "storm: cannot load %s\n", opt_ca); return 1; }
        SSL_CTX_set_verify(tls, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_session_cache_mode(tls, SSL_SESS_CACHE_OFF);   /* every connection a full handshake */
        SSL_CTX_set_options(tls, SSL_OP_IGNORE_UNEXPECTED_EOF);
        SSL_CTX_set_mode(tls, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
    epfd = epoll_create1(0);
    client_t *clients = calloc((size_t)opt_concurrency, sizeof *clients);
    uint64_t t0 = now_ns();
    measure_from = t0 + (uint64_t)(opt_warmup * 1e9);
    measure_to = measure_from + (uint64_t)(opt_duration * 1e9);
    for (int i = 0; i < opt_concurrency; i++) start(&clients[i]);
    double cpu_from = -1, cpu_to = -1;
    struct epoll_event evs[256];
    uint64_t last_scan = t0;
    for (;;) {
        uint64_t t = now_ns();
        if (cpu_from < 0 && t >= measure_from) cpu_from = process_cpu_s();
        if (cpu_to < 0 && (t >= measure_to || stop_signal)) cpu_to = process_cpu_s();
        int live = 0;
        for (int i = 0; i < opt_concurrency; i++) live += clients[i].fd >= 0;
        int running = t < measure_to && !stop_signal;
        if (!live && !running) break;
        if (t - last_scan > 50000000ULL) {   /* end stalled clients, restart those that failed to start */
            last_scan = t;
            for (int i = 0; i < opt_concurrency; i++) {
                client_t *c = &clients[i];
                if (c->fd >= 0 && t - c->progressed > STALL_NS) {
                    stalls++;
                    note_error("no progress for 5 s", c->step == READ_EOF ? "waiting for the server to close" : NULL);
                    finish(c, 0);
                } else if (c->fd < 0 && running) start(c);
            }
        }
        int n = epoll_wait(epfd, evs, 256, 20);
        if (n < 0 && errno != EINTR) { fprintf(stderr, "storm: epoll_wait: %s\n", strerror(errno)); return 1; }
        for (int i = 0; i < n; i++) advance(evs[i].data.ptr);
    }
    if (cpu_from < 0) cpu_from = process_cpu_s();
    if (cpu_to < 0) cpu_to = process_cpu_s();
    double secs = opt_duration, cpu = cpu_to - cpu_from;
    int ok = errors == 0 && done_measured > 0;
    printf("{\"tls\": %s, \"concurrency\": %d, \"size\": %zu, \"duration_s\": %.3f, \"conns\": %llu, "
           "\"conns_per_s\": %.1f, \"total_conns\": %llu, ",
           tls ? "true" : "false", opt_concurrency, opt_size, secs, (unsigned long long)done_measured,
           (double)done_measured / secs, (unsigned long long)done_total);
    hist_print_json(stdout, "conn", &lat);
    printf(", \"errors\": %llu, \"stalls\": %llu, \"first_error\": \"%s\", \"cpu_pct\": %.1f, "
           "\"cpu_us_per_conn\": %.1f, \"ok\": %s}\n",
           (unsigned long long)errors, (unsigned long long)stalls, first_error, cpu / secs * 100,
           cpu / (double)(done_measured ? done_measured : 1) * 1e6, ok ? "true" : "false");
    return ok ? 0 : 1;
}
