/* fastws/utf8.h: incremental UTF-8 validation for WebSocket text messages.
 *
 * RFC 6455 requires failing a connection as soon as a text message is known to be
 * invalid UTF-8, even when the message arrives in fragments that split a character.
 * So validation is a small deterministic automaton whose whole memory is one state
 * number: feed chunks one after another, carry the state between them, and the
 * input is valid when the state is back at FASTWS_UTF8_ACCEPT at the end.
 *
 * Every byte is sorted into one of 12 classes; the automaton's states record how
 * many continuation bytes are still due and, right after the lead bytes E0, ED,
 * F0 and F4, the narrower range the next byte must fall in. That is what rejects
 * overlong forms (C0, C1, E0 80-9F, F0 80-8F), UTF-16 surrogates (ED A0-BF) and
 * code points above U+10FFFF (F4 90-BF, F5-FF). REJECT is sticky. Runs of ASCII
 * are skipped 16 bytes at a time while no sequence is open.
 */
#ifndef FASTWS_UTF8_H
#define FASTWS_UTF8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    FASTWS_UTF8_ACCEPT = 0,   /* between characters: a valid place to stop */
    FASTWS_UTF8_REJECT = 1,   /* invalid input seen; stays here */
};

/* Byte classes: 0 ASCII, 1 80-8F, 2 90-9F, 3 A0-BF, 4 never valid (C0 C1 F5-FF),
 * 5 C2-DF, 6 E0, 7 E1-EC EE-EF, 8 ED, 9 F0, 10 F1-F3, 11 F4. */
static const uint8_t fastws_utf8_class[256] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
    3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,
    4,4,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,
    6,7,7,7,7,7,7,7,7,7,7,7,7,8,7,7,9,10,10,10,11,4,4,4,4,4,4,4,4,4,4,4,
};

/* States: 0 accept, 1 reject, 2 one continuation due, 3 two due, 4 after E0,
 * 5 after ED, 6 three due, 7 after F0, 8 after F4. */
static const uint8_t fastws_utf8_next[9][12] = {
    /*        asc 80 90 A0 bad C2 E0 E1 ED F0 F1 F4 */
    /* 0 */ {  0,  1, 1, 1,  1, 2, 4, 3, 5, 7, 6, 8 },
    /* 1 */ {  1,  1, 1, 1,  1, 1, 1, 1, 1, 1, 1, 1 },
    /* 2 */ {  1,  0, 0, 0,  1, 1, 1, 1, 1, 1, 1, 1 },
    /* 3 */ {  1,  2, 2, 2,  1, 1, 1, 1, 1, 1, 1, 1 },
    /* 4 */ {  1,  1, 1, 2,  1, 1, 1, 1, 1, 1, 1, 1 },
    /* 5 */ {  1,  2, 2, 1,  1, 1, 1, 1, 1, 1, 1, 1 },
    /* 6 */ {  1,  3, 3, 3,  1, 1, 1, 1, 1, 1, 1, 1 },
    /* 7 */ {  1,  1, 3, 3,  1, 1, 1, 1, 1, 1, 1, 1 },
    /* 8 */ {  1,  3, 1, 1,  1, 1, 1, 1, 1, 1, 1, 1 },
};

/* Feed n bytes, starting from `state` (FASTWS_UTF8_ACCEPT for a new message);
 * returns the state after them. Stops early once the input is rejected. */
static inline uint32_t fastws_utf8_feed(uint32_t state, const uint8_t *s, size_t n)
{
    const uint64_t high_bits = 0x8080808080808080ULL;
    size_t i = 0;
    while (i < n) {
        if (state == FASTWS_UTF8_ACCEPT) {
            /* ASCII fast path: skip 16 bytes whenever none has its high bit set. */
            while (i + 16 <= n) {
                uint64_t a, b;
                memcpy(&a, s + i, 8);
                memcpy(&b, s + i + 8, 8);
                if ((a | b) & high_bits)
                    break;
                i += 16;
            }
            while (i < n && s[i] < 0x80)
                i++;
            if (i == n)
                break;
        }
        state = fastws_utf8_next[state][fastws_utf8_class[s[i]]];
        if (state == FASTWS_UTF8_REJECT)
            break;
        i++;
    }
    return state;
}

/* Whole-buffer check: 1 when s[0:n] is complete, valid UTF-8. */
static inline int fastws_utf8_valid(const uint8_t *s, size_t n)
{
    return fastws_utf8_feed(FASTWS_UTF8_ACCEPT, s, n) == FASTWS_UTF8_ACCEPT;
}

#endif /* FASTWS_UTF8_H */
