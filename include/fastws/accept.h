/* fastws/accept.h: the Sec-WebSocket-Accept value of an opening handshake (RFC 6455 4.2.2).
 *
 * accept = base64(SHA-1(key + GUID)). Every handshake computes it once, server and client;
 * through hashlib that costs an OpenSSL method fetch, a hash object and a bytes object per
 * call, which a connection storm pays thousands of times a second. SHA-1 here serves only
 * this: a name-based digest the RFC fixes, not a security function. The input is at most a
 * few blocks (a key is 24 characters), so the code favours being short over being fast on
 * long inputs.
 */
#ifndef FASTWS_ACCEPT_H
#define FASTWS_ACCEPT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FASTWS_WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define FASTWS_ACCEPT_SIZE 28   /* base64 of a 20-byte digest */
#define FASTWS_MAX_KEY 128      /* longer keys are invalid anyway: the caller uses hashlib */

static inline uint32_t fastws_rol32(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

#define FASTWS_SHA1_ROUNDS(from, to, f, k)                                       \
    for (i = from; i < to; i++) {                                              \
        t = fastws_rol32(a, 5) + (f) + e + (k) + w[i];                         \
        e = d; d = c; c = fastws_rol32(b, 30); b = a; a = t;                   \
    }

static void fastws_sha1_block(uint32_t h[5], const uint8_t *block)
{
    uint32_t w[80], a, b, c, d, e, t;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16
               | (uint32_t)block[4 * i + 2] << 8 | block[4 * i + 3];
    for (i = 16; i < 80; i++)
        w[i] = fastws_rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4];
    FASTWS_SHA1_ROUNDS(0, 20, (b & c) | (~b & d), 0x5A827999u)
    FASTWS_SHA1_ROUNDS(20, 40, b ^ c ^ d, 0x6ED9EBA1u)
    FASTWS_SHA1_ROUNDS(40, 60, (b & c) | (b & d) | (c & d), 0x8F1BBCDCu)
    FASTWS_SHA1_ROUNDS(60, 80, b ^ c ^ d, 0xCA62C1D6u)
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}
#undef FASTWS_SHA1_ROUNDS

/* SHA-1 of data[0:n] into out (FIPS 180-4). */
static void fastws_sha1(const uint8_t *data, size_t n, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
    uint8_t last[128];
    size_t whole = n & ~(size_t)63, rest = n - whole, tail;
    uint64_t bits = (uint64_t)n * 8;
    int i;
    for (size_t at = 0; at < whole; at += 64)
        fastws_sha1_block(h, data + at);
    /* the rest, a 1 bit, zeros, the length in bits: one block, or two when it does not fit */
    tail = rest + 9 <= 64 ? 64 : 128;
    memset(last, 0, sizeof last);
    memcpy(last, data + whole, rest);
    last[rest] = 0x80;
    for (i = 0; i < 8; i++)
        last[tail - 1 - i] = (uint8_t)(bits >> (8 * i));
    fastws_sha1_block(h, last);
    if (tail == 128)
        fastws_sha1_block(h, last + 64);
    for (i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8);
        out[4 * i + 3] = (uint8_t)h[i];
    }
}

/* Sec-WebSocket-Accept for key[0:n] (n <= FASTWS_MAX_KEY) into out (28 characters, no NUL);
 * 0, or -1 when the key is too long for this path. */
static int fastws_ws_accept(const char *key, size_t n, char out[FASTWS_ACCEPT_SIZE])
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint8_t input[FASTWS_MAX_KEY + sizeof FASTWS_WS_GUID], digest[21];
    size_t size = n + sizeof FASTWS_WS_GUID - 1;
    int i, o = 0;
    if (n > FASTWS_MAX_KEY)
        return -1;
    memcpy(input, key, n);
    memcpy(input + n, FASTWS_WS_GUID, sizeof FASTWS_WS_GUID - 1);
    fastws_sha1(input, size, digest);
    digest[20] = 0;                   /* 20 bytes: six whole groups of 3, then 2 and a pad */
    for (i = 0; i < 21; i += 3) {
        uint32_t v = (uint32_t)digest[i] << 16 | (uint32_t)digest[i + 1] << 8 | digest[i + 2];
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        out[o++] = alphabet[v & 63];
    }
    out[FASTWS_ACCEPT_SIZE - 1] = '=';
    return 0;
}

#endif
