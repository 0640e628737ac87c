/* fastws/mask.h: RFC 6455 masking (XOR with a repeating 4-byte key).
 *
 * One entry point, fastws_mask_copy(), that XORs n bytes of src into dst
 * (dst == src masks in place) starting at any position in the key, and returns
 * the key position after the last byte so a payload can be masked in pieces.
 * Masking is symmetric, so the same call unmasks.
 *
 * The bulk of the work runs 32 bytes at a time with AVX2 when the CPU has it
 * (chosen once at run time, so one binary serves every x86-64 machine), else
 * 16 with SSE2 (always present on x86-64) or NEON, else 8 bytes at a time in
 * portable C. Loads and stores are unaligned: the buffers come from Python
 * objects and socket reads at any offset. Static inline, no Python.
 */
#ifndef FASTWS_MASK_H
#define FASTWS_MASK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#  define FASTWS_MASK_X86 1
#  include <immintrin.h>
#elif defined(__aarch64__) || defined(__ARM_NEON)
#  define FASTWS_MASK_NEON 1
#  include <arm_neon.h>
#endif

/* The key rotated so that byte 0 of the result applies to the next payload byte. */
static inline uint32_t fastws_mask_rotate(const uint8_t key[4], size_t offset)
{
    uint8_t k[4];
    for (int i = 0; i < 4; i++)
        k[i] = key[(offset + (size_t)i) & 3];
    uint32_t word;
    memcpy(&word, k, 4);            /* native byte order: matches memory layout */
    return word;
}

/* Portable tail and fallback: 8 bytes at a time through memcpy, which compilers
 * turn into plain unaligned loads and stores (and often vectorise). */
static inline size_t fastws_mask_words(uint8_t *dst, const uint8_t *src, size_t n,
                                       uint32_t key32)
{
    uint64_t key64 = ((uint64_t)key32 << 32) | key32;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= key64;
        memcpy(dst + i, &v, 8);
    }
    return i;
}

#ifdef FASTWS_MASK_X86
#  if defined(__GNUC__) || defined(__clang__)
#    define FASTWS_MASK_HAVE_AVX2_DISPATCH 1
__attribute__((target("avx2")))
static inline size_t fastws_mask_avx2(uint8_t *dst, const uint8_t *src, size_t n, uint32_t key32)
{
    __m256i k = _mm256_set1_epi32((int)key32);
    size_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(src + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + i + 96));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(a, k));
        _mm256_storeu_si256((__m256i *)(dst + i + 32), _mm256_xor_si256(b, k));
        _mm256_storeu_si256((__m256i *)(dst + i + 64), _mm256_xor_si256(c, k));
        _mm256_storeu_si256((__m256i *)(dst + i + 96), _mm256_xor_si256(d, k));
    }
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(a, k));
    }
    return i;
}

static inline int fastws_mask_has_avx2(void)
{
    static int has_avx2 = -1;   /* benign race: every thread computes the same value */
    if (has_avx2 < 0) {
        __builtin_cpu_init();
        has_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return has_avx2;
}
#  endif

static inline size_t fastws_mask_sse2(uint8_t *dst, const uint8_t *src, size_t n, uint32_t key32)
{
    __m128i k = _mm_set1_epi32((int)key32);
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, k));
        _mm_storeu_si128((__m128i *)(dst + i + 16), _mm_xor_si128(b, k));
        _mm_storeu_si128((__m128i *)(dst + i + 32), _mm_xor_si128(c, k));
        _mm_storeu_si128((__m128i *)(dst + i + 48), _mm_xor_si128(d, k));
    }
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, k));
    }
    return i;
}
#endif

#ifdef FASTWS_MASK_NEON
static inline size_t fastws_mask_neon(uint8_t *dst, const uint8_t *src, size_t n, uint32_t key32)
{
    uint8x16_t k = vreinterpretq_u8_u32(vdupq_n_u32(key32));
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        uint8x16x4_t v = vld1q_u8_x4(src + i);
        v.val[0] = veorq_u8(v.val[0], k);
        v.val[1] = veorq_u8(v.val[1], k);
        v.val[2] = veorq_u8(v.val[2], k);
        v.val[3] = veorq_u8(v.val[3], k);
        vst1q_u8_x4(dst + i, v);
    }
    for (; i + 16 <= n; i += 16)
        vst1q_u8(dst + i, veorq_u8(vld1q_u8(src + i), k));
    return i;
}
#endif

/* XOR n bytes of src with key (starting at key byte `offset` mod 4) into dst.
 * dst may equal src; otherwise they must not overlap. Returns the key offset
 * (0-3) to continue with. */
static inline size_t fastws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n,
                                      const uint8_t key[4], size_t offset)
{
    size_t i = 0;
#if defined(FASTWS_MASK_HAVE_AVX2_DISPATCH)
    if (n >= 256 && fastws_mask_has_avx2()) {
        /* Align the stores to 32 bytes: split stores cost more than the few bytes here. */
        size_t head = (32 - ((uintptr_t)dst & 31)) & 31;
        for (; i < head; i++)
            dst[i] = src[i] ^ key[(offset + i) & 3];
        i += fastws_mask_avx2(dst + i, src + i, n - i, fastws_mask_rotate(key, offset + i));
    }
#endif
    /* Every bulk step is a multiple of 4 bytes, so the rotated key stays in phase. */
    uint32_t key32 = fastws_mask_rotate(key, offset + i);
#if defined(FASTWS_MASK_X86)
    i += fastws_mask_sse2(dst + i, src + i, n - i, key32);
#elif defined(FASTWS_MASK_NEON)
    i += fastws_mask_neon(dst + i, src + i, n - i, key32);
#endif
    i += fastws_mask_words(dst + i, src + i, n - i, key32);
    uint8_t k[4];
    memcpy(k, &key32, 4);
    for (size_t j = 0; i < n; i++, j++)
        dst[i] = src[i] ^ k[j & 3];
    return (offset + n) & 3;
}

#endif /* FASTWS_MASK_H */
