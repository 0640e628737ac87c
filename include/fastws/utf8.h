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
 * are skipped 16 bytes at a time, and whole characters checked at once, while no
 * sequence is open.
 */
#ifndef FASTWS_UTF8_H
#define FASTWS_UTF8_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    FASTWS_UTF8_ACCEPT = 0,   /* between characters: a valid place to stop */
    FASTWS_UTF8_REJECT = 12,  /* invalid input seen; stays here */
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

/* A state is the offset of its row (state number x 12), so a step is one add and one
 * load. States: 0 accept, 12 reject, 24 one continuation due, 36 two due, 48 after E0,
 * 60 after ED, 72 three due, 84 after F0, 96 after F4. */
static const uint8_t fastws_utf8_next[9 * 12] = {
    /*       asc  80  90  A0 bad  C2  E0  E1  ED  F0  F1  F4 */
    /*  0 */  0, 12, 12, 12, 12, 24, 48, 36, 60, 84, 72, 96,
    /* 12 */ 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    /* 24 */ 12,  0,  0,  0, 12, 12, 12, 12, 12, 12, 12, 12,
    /* 36 */ 12, 24, 24, 24, 12, 12, 12, 12, 12, 12, 12, 12,
    /* 48 */ 12, 12, 12, 24, 12, 12, 12, 12, 12, 12, 12, 12,
    /* 60 */ 12, 24, 24, 12, 12, 12, 12, 12, 12, 12, 12, 12,
    /* 72 */ 12, 36, 36, 36, 12, 12, 12, 12, 12, 12, 12, 12,
    /* 84 */ 12, 12, 36, 36, 12, 12, 12, 12, 12, 12, 12, 12,
    /* 96 */ 12, 36, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12,
};

/* Feed n bytes, starting from `state` (FASTWS_UTF8_ACCEPT for a new message);
 * returns the state after them. Stops early once the input is rejected.
 *
 * Between characters, whole sequences are checked at once (ASCII 16 bytes at a time,
 * then one 2-, 3- or 4-byte character per step, with the exact ranges of RFC 3629):
 * unlike the automaton, these steps do not wait on each other. Whatever they do not
 * accept (an invalid byte, or a character cut by the end of the chunk) goes through
 * the automaton, which decides it and carries an open character to the next call. */
static inline uint32_t fastws_utf8_feed(uint32_t state, const uint8_t *s, size_t n)
{
    const uint64_t high_bits = 0x8080808080808080ULL;
    size_t i = 0;
    /* Finish a character left open by the previous chunk. */
    while (i < n && state != FASTWS_UTF8_ACCEPT && state != FASTWS_UTF8_REJECT)
        state = fastws_utf8_next[state + fastws_utf8_class[s[i++]]];
    if (state == FASTWS_UTF8_REJECT)
        return state;
    while (i < n) {
        while (i + 16 <= n) {
            uint64_t a, b;
            memcpy(&a, s + i, 8);
            memcpy(&b, s + i + 8, 8);
            if ((a | b) & high_bits)
                break;
            i += 16;
        }
        if (i >= n)
            break;
        uint8_t c = s[i];
        size_t left = n - i;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (left >= 2 && (s[i + 1] & 0xC0) == 0x80) {
                i += 2;
                continue;
            }
        } else if ((c & 0xF0) == 0xE0) {
            if (left >= 3) {
                uint8_t lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
                if (s[i + 1] >= lo && s[i + 1] <= hi && (s[i + 2] & 0xC0) == 0x80) {
                    i += 3;
                    continue;
                }
            }
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (left >= 4) {
                uint8_t lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
                if (s[i + 1] >= lo && s[i + 1] <= hi && (s[i + 2] & 0xC0) == 0x80
                        && (s[i + 3] & 0xC0) == 0x80) {
                    i += 4;
                    continue;
                }
            }
        }
        /* Invalid here, or cut short by the end of the chunk: the automaton decides. */
        do {
            state = fastws_utf8_next[state + fastws_utf8_class[s[i++]]];
        } while (i < n && state != FASTWS_UTF8_ACCEPT && state != FASTWS_UTF8_REJECT);
        if (state == FASTWS_UTF8_REJECT)
            return state;
    }
    return state;
}

/* Whole-buffer check: 1 when s[0:n] is complete, valid UTF-8. */
static inline int fastws_utf8_valid(const uint8_t *s, size_t n)
{
    return fastws_utf8_feed(FASTWS_UTF8_ACCEPT, s, n) == FASTWS_UTF8_ACCEPT;
}

#endif /* FASTWS_UTF8_H */
