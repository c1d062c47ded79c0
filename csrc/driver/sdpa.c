/*
 * Scaled-dot-product attention entry points: attn_sdpa_f32 / attn_sdpa_f64.
 * The algorithm lives in sdpa.inc.c (instantiated once per dtype below); this
 * file holds the block sizes and the descriptor check.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "../kernels/ktab.h"
#include "dropout.h"
#include "workspace.h"

/* Largest unit width any kernel table uses (panel NR or rows-path rows). */
#define ATTN_MAX_PANEL 64
/* Keys per block: the panel path's St tile is ATTN_BK_PANEL x NR (16 KiB for
 * float32, NR = 32). Measured on the reference shapes (Zen 4, 1 and 2
 * threads): 128 is 1-2% faster than 64 and as fast as 192-256; smaller
 * blocks waste less on the causal diagonal but pay the per-block softmax
 * bookkeeping more often. The rows path streams longer blocks (decode is
 * bound by memory bandwidth). */
#define ATTN_BK_PANEL 128
#define ATTN_BK_ROWS 256
/* Key splitting (decode): when fewer than ATTN_SPLIT_MIN_UNITS units exist,
 * split the keys into chunks of at least ATTN_SPLIT_MIN_KEYS so that about
 * ATTN_SPLIT_TARGET_UNITS units exist. */
#define ATTN_SPLIT_MIN_UNITS 16
#define ATTN_SPLIT_TARGET_UNITS 32
#define ATTN_SPLIT_MIN_KEYS 512

uint32_t attn_dropout_bits(uint64_t seed, uint64_t counter)
{
    return attn_dropout_draw(attn_mix64(seed), counter);
}

static attn_status attn_sdpa_check(const attn_sdpa_desc *d)
{
    if (!d) return ATTN_EINVAL;
    if (d->B < 0 || d->Hq < 0 || d->Hkv < 0 || d->Lq < 0 || d->Lk < 0 || d->D < 0 || d->Dv < 0)
        return ATTN_EINVAL;
    if (d->B == 0 || d->Hq == 0 || d->Lq == 0) return ATTN_OK;
    if (d->Hkv < 1 || d->Hq % d->Hkv != 0) return ATTN_EINVAL;
    if (!d->q || !d->out || !d->q_boff || !d->o_boff) return ATTN_EINVAL;
    if (d->Lk > 0 && (!d->k || !d->v || !d->k_boff || !d->v_boff)) return ATTN_EINVAL;
    if (d->mask_kind < ATTN_MASK_NONE || d->mask_kind > ATTN_MASK_ADD) return ATTN_EINVAL;
    if (d->mask_kind != ATTN_MASK_NONE && (!d->mask || !d->m_boff)) return ATTN_EINVAL;
    if (d->causal != 0 && d->causal != 1) return ATTN_EINVAL;
    if (d->valid_lens && !d->vl_boff) return ATTN_EINVAL;
    if (d->score_kind != ATTN_SCORE_DOT && d->score_kind != ATTN_SCORE_ADDITIVE) return ATTN_EINVAL;
    if (d->score_kind == ATTN_SCORE_ADDITIVE && d->D > 0 && !d->w_score) return ATTN_EINVAL;
    return ATTN_OK;
}

#define T float
#define TAG f32
#define KTAB attn_ktab_f32
#define KTAB_GET attn_ktab_get_f32
#include "sdpa.inc.c"
#undef T
#undef TAG
#undef KTAB
#undef KTAB_GET

#define T double
#define TAG f64
#define KTAB attn_ktab_f64
#define KTAB_GET attn_ktab_get_f64
#include "sdpa.inc.c"
#undef T
#undef TAG
#undef KTAB
#undef KTAB_GET
