/* rawecho: a minimal raw-TCP echo server on epoll (one thread), the machine's limit for the
 * echo benchmarks. Build: cc -O2 -o rawecho rawecho.c.  Usage: rawecho PORT [HOST]
 * Prints "listening" once ready. Whatever arrives is written back; what the kernel does not take
 * at once is kept per connection and reading from that connection pauses until it drains.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (256 * 1024)

typedef struct {
    int fd;
    char *pend;          /* bytes read but not yet written back */
    size_t plen, poff;
} conn_t;

static int epfd;
static char buf[BUF];

static void drop(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c);
}

static void watch(conn_t *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* write the pending bytes; returns 1 when all are out, 0 when the kernel is full, -1 on error */
static int drain(conn_t *c) {
    while (c->poff < c->plen) {
        ssize_t w = send(c->fd, c->pend + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN) return 0;
            if (errno == EINTR) continue;
            return -1;
        }
        c->poff += w;
    }
    c->plen = c->poff = 0;
    return 1;
}

static void on_event(conn_t *c, unsigned events) {
    if (c->plen) {
        int r = drain(c);
        if (r < 0) { drop(c); return; }
        if (r == 0) return;
        watch(c, EPOLLIN);
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR | EPOLLOUT))) return;
    for (int rounds = 0; rounds < 8; rounds++) {
        ssize_t n = recv(c->fd, buf, BUF, 0);
        if (n == 0) { drop(c); return; }
        if (n < 0) {
            if (errno == EAGAIN) return;
            if (errno == EINTR) continue;
            drop(c);
            return;
        }
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = send(c->fd, buf + off, n - off, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR) continue;
                if (errno != EAGAIN) { drop(c); return; }
                c->pend = realloc(c->pend, n - off);
                memcpy(c->pend, buf + off, n - off);
                c->plen = n - off; c->poff = 0;
                watch(c, EPOLLOUT);
                return;
            }
            off += w;
        }
        if (n < BUF) return;
    }
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: rawecho PORT [HOST [WORKERS]]\n"); return 64; }
    int workers = argc > 3 ? atoi(argv[3]) : 1;
    for (int i = 1; i < workers; i++)
        if (fork() == 0) { prctl(PR_SET_PDEATHSIG, SIGTERM); break; }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { rl.rlim_cur = rl.rlim_max; setrlimit(RLIMIT_NOFILE, &rl); }
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(ls, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, argc > 2 ? argv[2] : "127.0.0.1", &a.sin_addr);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) { perror("rawecho"); return 1; }
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, ls, &ev);
    printf("listening\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event e = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            on_event(evs[i].data.ptr, evs[i].events);
        }
    }
}
