/*
 * Counter-based dropout: whether weight number `counter` (its flat index in
 * the (B, Hq, Lq, Lk) weights) is kept depends only on (seed, counter), so the
 * pattern is reproducible and independent of blocking and thread count.
 * attncore.reference implements the same function in pure Python.
 */
#ifndef ATTNCORE_DROPOUT_H
#define ATTNCORE_DROPOUT_H
#include <stdint.h>

/* splitmix64's finaliser: a bijective 64-bit mix with full avalanche. */
static inline uint64_t attn_mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* 24 uniform bits for one weight. Keep it when the bits >= round(p * 2^24). */
static inline uint32_t attn_dropout_draw(uint64_t seed_mixed, uint64_t counter)
{
    return (uint32_t)(attn_mix64(seed_mixed ^ counter) >> 40);
}

#endif
