/*
 * Fused scaled-dot-product attention driver, one instance per dtype
 * (sdpa.c includes this file with T = float and T = double).
 *
 * Loop nest (one OpenMP region per call):
 *
 *   for unit u in (b, kv head, row group, row panel, key chunk)   <- omp for, dynamic
 *       stage the panel's queries (times scale * log2 e)
 *       m = -inf, l = 0, O = 0
 *       for key block [j0, j0 + Bk) inside the chunk and the causal limit
 *           S  = Q K^T                      kernel qk_*   (register-blocked)
 *              (additive: sum_h w tanh(.))  kernel additive_panel_*
 *           S += mask, causal, -> weights   this file     (only where present)
 *           online softmax on S -> P        kernel softmax_*
 *           P *= dropout                    this file     (only if p > 0)
 *           O  = alpha O + P V              kernel pv_*
 *       finalise O / l, lse  (or store the chunk's partial O, m, l)
 *   if keys were split into chunks: merge the partials in chunk order  <- omp for
 *
 * Units. Query rows are processed in panels of W rows: W = NR lanes on the
 * panel path, ROWS_MAX rows on the rows path (decode: taken when all G * Lq
 * rows of a kv head fit one unit). The G = Hq / Hkv query heads that share a
 * kv head are one row group when Lq is small (their rows are stacked so that
 * short queries still fill a panel and K/V are streamed once for all of
 * them), or G groups of Lq rows each when Lq >= NR.
 *
 * Determinism. Every output element is computed by exactly one unit with a
 * fixed sequence of operations; the key chunking depends only on the problem
 * size, and chunks are merged in a fixed order. Results are therefore bitwise
 * identical for any thread count.
 *
 * Kernel preconditions (see csrc/kernels/tiles.inc.c) are established here:
 * scratch tiles are padded to the kernels' register-tile multiples.
 */

#define SDPA_CAT_(a, b) a##_##b
#define SDPA_CAT(a, b) SDPA_CAT_(a, b)
#define SDPA_FN(name) SDPA_CAT(name, TAG)

typedef struct {
    const T *q;        /* query row */
    T *out;            /* output row */
    T *w;              /* weights row, or NULL */
    T *lse;            /* lse element, or NULL */
    const char *mrow;  /* mask row base (bytes), or NULL */
    int64_t pos;       /* last visible key (causal, valid_lens), else INT64_MAX */
    uint64_t counter;  /* dropout counter of (row, key 0) */
} SDPA_FN(row_ref);

typedef struct {
    const attn_sdpa_desc *d;
    const KTAB *kt;
    int rows_path;     /* 1: decode-shaped rows path; 0: panel path */
    int limited;       /* rows have a last visible key (causal or valid_lens) */
    int64_t G;         /* query heads per kv head */
    int64_t W;         /* rows per unit */
    int64_t rows_per_group, ngroups, npanels;
    int64_t nchunks, chunk_len, bk;
    int64_t nbase;     /* units before key splitting */
    T qscale;          /* dot: scale * log2(e); additive: 2 log2(e) */
    T *wneg;           /* additive: -2 log2(e) w_score (D values) */
    T score_c;         /* additive: log2(e) sum_h w_score[h] */
    T *fk;             /* additive, product form: e^(2 Kp), (B, Hkv, Lk, D) */
    T *partial;        /* nbase * nchunks * W * (Dv + 2) when nchunks > 1 */
    /* scratch layout (elements, each part 64-byte aligned) */
    int64_t ld_q, ld_s, ld_o;
    int64_t off_s, off_o, off_m, off_l, off_a, off_c, scratch_elems;
} SDPA_FN(plan);

#define PLAN SDPA_FN(plan)
#define ROWREF SDPA_FN(row_ref)

static int64_t SDPA_FN(align_elems)(int64_t n) { return attn_round_up(n, ATTN_ALIGN / (int64_t)sizeof(T)); }

/* The rows of base unit `ub` (a unit before key splitting). Returns the count. */
static int SDPA_FN(build_rows)(const PLAN *P, int64_t ub, ROWREF *rows)
{
    const attn_sdpa_desc *d = P->d;
    int64_t panel = ub % P->npanels;
    int64_t t = ub / P->npanels;
    int64_t group = t % P->ngroups;
    t /= P->ngroups;
    int64_t hkv = t % d->Hkv;
    int64_t b = t / d->Hkv;
    int64_t first = panel * P->W;
    int64_t nr = attn_min64(P->W, P->rows_per_group - first);
    size_t msize = d->mask_kind == ATTN_MASK_BOOL ? 1 : sizeof(T);

    for (int64_t r = 0; r < nr; r++) {
        int64_t row = first + r, g, i;
        if (P->ngroups == 1) { g = row / d->Lq; i = row % d->Lq; }
        else { g = group; i = row; }
        int64_t hq = hkv * P->G + g;
        ROWREF *x = &rows[r];
        x->q = (const T *)d->q + d->q_boff[b] + hq * d->q_sh + i * d->q_sl;
        x->out = (T *)d->out + d->o_boff[b] + hq * d->o_sh + i * d->o_sl;
        int64_t flat = (b * d->Hq + hq) * d->Lq + i;
        x->w = d->weights ? (T *)d->weights + flat * d->Lk : NULL;
        x->lse = d->lse ? (T *)d->lse + flat : NULL;
        x->mrow = d->mask_kind != ATTN_MASK_NONE
                      ? (const char *)d->mask +
                            (d->m_boff[b] + hq * d->m_sh + i * d->m_si) * (int64_t)msize
                      : NULL;
        x->pos = d->causal ? i + d->causal_offset : INT64_MAX;
        if (d->valid_lens) x->pos = attn_min64(x->pos, d->valid_lens[d->vl_boff[b] + i * d->vl_si] - 1);
        x->counter = (uint64_t)flat * (uint64_t)d->Lk;
    }
    return (int)nr;
}

/* Row index of key 0 of base unit ub's kv head in (B, Hkv, Lk) order. */
static int64_t SDPA_FN(kvbase_row)(const PLAN *P, int64_t ub)
{
    int64_t t = ub / P->npanels / P->ngroups;   /* = b * Hkv + hkv */
    return t * P->d->Lk;
}

/* Whether |x| <= limit for every element of a (B, H, L, D) tensor; NaN fails. */
static int SDPA_FN(all_within)(const T *base, const int64_t *boff, int64_t sh, int64_t sl,
                               int64_t B, int64_t H, int64_t L, int64_t D, double limit)
{
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t i = 0; i < L; i++) {
                const T *x = base + boff[b] + h * sh + i * sl;
                for (int64_t c = 0; c < D; c++)
                    if (!(fabs((double)x[c]) <= limit)) return 0;
            }
    return 1;
}

/* Whether every additive input is small enough for the product form:
 * e^(2x) stays in [2^-63, 2^63] for |x| <= 63 / (2 log2 e), so products of
 * a query and a key term never leave the float range. */
static int SDPA_FN(additive_in_range)(const attn_sdpa_desc *d)
{
    const double limit = 63.0 / (2.0 * ATTN_LOG2E);
    return SDPA_FN(all_within)((const T *)d->q, d->q_boff, d->q_sh, d->q_sl, d->B, d->Hq, d->Lq,
                               d->D, limit) &&
           SDPA_FN(all_within)((const T *)d->k, d->k_boff, d->k_sh, d->k_sl, d->B, d->Hkv, d->Lk,
                               d->D, limit);
}

/* F = e^(2 Kp) for key row t of (B, Hkv, Lk) order. */
static void SDPA_FN(additive_key_exp)(const PLAN *P, int64_t t)
{
    const attn_sdpa_desc *d = P->d;
    int64_t j = t % d->Lk, bh = t / d->Lk, h = bh % d->Hkv, b = bh / d->Hkv;
    const T *x = (const T *)d->k + d->k_boff[b] + h * d->k_sh + j * d->k_sl;
    T *f = P->fk + t * d->D;
    for (int64_t c = 0; c < d->D; c++) f[c] = x[c] * (T)(2.0 * ATTN_LOG2E);
    P->kt->exp2(d->D, f, f);
}

/* K/V base pointers of base unit ub's kv head. */
static void SDPA_FN(kv_base)(const PLAN *P, int64_t ub, const T **k, const T **v)
{
    const attn_sdpa_desc *d = P->d;
    int64_t t = ub / P->npanels / P->ngroups;
    int64_t hkv = t % d->Hkv, b = t / d->Hkv;
    *k = (const T *)d->k + d->k_boff[b] + hkv * d->k_sh;
    *v = (const T *)d->v + d->v_boff[b] + hkv * d->v_sh;
}

/*
 * Mask, causal limit and weight recording on a score tile whose element
 * (row r, key j0 + j) lives at s[r * rs + j * js]: the panel path (rs = 1,
 * js = W) hands the mask and the weight copy to its kernels, the rows path
 * (rs = lds, js = 1) does them here.
 */
static void SDPA_FN(prep_scores)(const PLAN *P, const ROWREF *rows, int nr, T *s,
                                 int64_t rs, int64_t js, int64_t j0, int64_t nk)
{
    const attn_sdpa_desc *d = P->d;
    const T log2e = (T)ATTN_LOG2E;
    const void *mrows[ATTN_MAX_PANEL];
    T *wrows[ATTN_MAX_PANEL];
    size_t msize = d->mask_kind == ATTN_MASK_BOOL ? 1 : sizeof(T);
    for (int r = 0; r < nr; r++) {
        mrows[r] = rows[r].mrow ? rows[r].mrow + j0 * d->m_sj * (int64_t)msize : NULL;
        wrows[r] = rows[r].w ? rows[r].w + j0 : NULL;
    }
    if (d->mask_kind != ATTN_MASK_NONE) {
        if (!P->rows_path) {
            P->kt->mask_panel(nr, nk, d->mask_kind, mrows, d->m_sj, s);
        } else {
            for (int r = 0; r < nr; r++) {
                T *sr = s + r * rs;
                if (d->mask_kind == ATTN_MASK_BOOL) {
                    const uint8_t *mr = (const uint8_t *)mrows[r];
                    for (int64_t j = 0; j < nk; j++)
                        sr[j * js] = mr[j * d->m_sj] ? sr[j * js] : (T)-INFINITY;
                } else {
                    const T *mr = (const T *)mrows[r];
                    for (int64_t j = 0; j < nk; j++) sr[j * js] += mr[j * d->m_sj] * log2e;
                }
            }
        }
    }
    for (int r = 0; r < nr; r++) {
        int64_t first_hidden = rows[r].pos == INT64_MAX ? INT64_MAX : rows[r].pos + 1 - j0;
        T *sr = s + r * rs;
        for (int64_t j = attn_max64(first_hidden, 0); j < nk; j++) sr[j * js] = -INFINITY;
    }
    if (d->weights) {
        if (!P->rows_path) {
            T ones[ATTN_MAX_PANEL];
            for (int r = 0; r < nr; r++) ones[r] = 1;
            P->kt->unpack_ot(nr, nk, s, ones, wrows);   /* weights rows = St^T */
        } else {
            for (int r = 0; r < nr; r++)
                for (int64_t j = 0; j < nk; j++) wrows[r][j] = s[r * rs + j * js];
        }
    }
}

static void SDPA_FN(apply_dropout)(const PLAN *P, const ROWREF *rows, int nr, T *p,
                                   int64_t rs, int64_t js, int64_t j0, int64_t nk)
{
    const attn_sdpa_desc *d = P->d;
    uint64_t seed = attn_mix64(d->drop_seed);
    T keep_scale = (T)d->drop_scale;
    for (int r = 0; r < nr; r++) {
        uint64_t c0 = rows[r].counter + (uint64_t)j0;
        T *pr = p + r * rs;
        for (int64_t j = 0; j < nk; j++) {
            int keep = attn_dropout_draw(seed, c0 + (uint64_t)j) >= d->drop_threshold;
            pr[j * js] = keep ? pr[j * js] * keep_scale : (T)0;
        }
    }
}

/* Turn the recorded log2 scores of one row into its final weights. */
static void SDPA_FN(finish_weights)(const PLAN *P, const ROWREF *row, T m, T inv_l,
                                    int64_t kbeg, int64_t kend)
{
    const attn_sdpa_desc *d = P->d;
    T *w = row->w;
    for (int64_t j = 0; j < kbeg && j < d->Lk; j++) w[j] = 0;
    for (int64_t j = attn_max64(kend, 0); j < d->Lk; j++) w[j] = 0;
    if (kend <= kbeg) return;
    P->kt->weights_row(kend - kbeg, w + kbeg, m == -INFINITY ? (T)0 : m, inv_l);
    if (d->drop_threshold) {
        uint64_t seed = attn_mix64(d->drop_seed);
        T keep_scale = (T)d->drop_scale;
        for (int64_t j = kbeg; j < kend; j++) {
            int keep = attn_dropout_draw(seed, row->counter + (uint64_t)j) >= d->drop_threshold;
            w[j] = keep ? w[j] * keep_scale : (T)0;
        }
    }
}

/* 1 / l, with l == 0 (every key masked) giving a zero row, NaN staying NaN. */
static inline T SDPA_FN(inv_sum)(T l) { return l == 0 ? (T)0 : (T)1 / l; }

static inline T SDPA_FN(lse_of)(T m, T l)
{
    if (l == 0) return -INFINITY;
    return (T)((m + (T)log2((double)l)) * (T)ATTN_LN2);
}

static void SDPA_FN(run_unit)(const PLAN *P, int64_t u, T *scratch)
{
    const attn_sdpa_desc *d = P->d;
    const KTAB *kt = P->kt;
    int64_t chunk = u % P->nchunks, ub = u / P->nchunks;
    ROWREF rows[ATTN_MAX_PANEL];
    int nr = SDPA_FN(build_rows)(P, ub, rows);
    const T *kh, *vh;
    SDPA_FN(kv_base)(P, ub, &kh, &vh);

    /* keys this unit visits: its chunk, cut after the last key any row can see */
    int64_t kbeg = chunk * P->chunk_len;
    int64_t kend = attn_min64(d->Lk, kbeg + P->chunk_len);
    int64_t minpos = INT64_MAX;
    if (P->limited) {
        int64_t maxpos = INT64_MIN;
        for (int r = 0; r < nr; r++) {
            maxpos = attn_max64(maxpos, rows[r].pos);
            minpos = attn_min64(minpos, rows[r].pos);
        }
        kend = attn_min64(kend, maxpos + 1);
    }
    /* scores need a pass here for masks and weights always, for causal rows
     * only in the key blocks that cross the diagonal */
    int prep_always = d->mask_kind != ATTN_MASK_NONE || d->weights != NULL;

    const int64_t W = P->W, D = d->D, Dv = d->Dv;
    T *qbuf = scratch, *sbuf = scratch + P->off_s, *obuf = scratch + P->off_o;
    T *m = scratch + P->off_m, *l = scratch + P->off_l, *alpha = scratch + P->off_a;
    T *cmax = scratch + P->off_c;
    /* element (row r, column c) of the O accumulator, (row r, key j) of S */
    int64_t o_rs, o_cs, s_rs, s_js;
    if (P->rows_path) {
        o_rs = P->ld_o; o_cs = 1; s_rs = P->ld_s; s_js = 1;
        for (int r = 0; r < nr; r++) {
            T *qr = qbuf + r * P->ld_q;
            for (int64_t c = 0; c < D; c++) qr[c] = rows[r].q[c] * P->qscale;
            for (int64_t c = D; c < P->ld_q; c++) qr[c] = 0;
        }
        for (int64_t i = 0; i < W * P->ld_o; i++) obuf[i] = 0;
    } else {
        o_rs = 1; o_cs = W; s_rs = 1; s_js = W;
        const T *qrows[ATTN_MAX_PANEL];
        for (int r = 0; r < nr; r++) qrows[r] = rows[r].q;
        kt->pack_qt(nr, D, qrows, P->qscale, qbuf);
        if (P->fk) kt->exp2(D * W, qbuf, qbuf);   /* Et = e^(2 (Qp + b)) */
        int64_t ot_elems = attn_round_up(Dv, kt->mr_pv) * W;
        for (int64_t i = 0; i < ot_elems; i++) obuf[i] = 0;
    }
    for (int64_t r = 0; r < W; r++) { m[r] = -INFINITY; l[r] = 0; alpha[r] = 1; }

    for (int64_t j0 = kbeg; j0 < kend; j0 += P->bk) {
        int64_t nk = attn_min64(P->bk, kend - j0);
        const T *kb = kh + j0 * d->k_sl, *vb = vh + j0 * d->v_sl;
        /* the QK kernel can fold the column maxima on the way out unless
         * masks, weights or the causal diagonal still change this block */
        int prep = prep_always || (P->limited && j0 + nk - 1 > minpos);
        T *colmax = NULL;
        if (!prep && !P->rows_path && d->score_kind == ATTN_SCORE_DOT) {
            colmax = cmax;
            for (int64_t r = 0; r < W; r++) colmax[r] = m[r];
        }
        if (P->rows_path)
            kt->qk_rows(D, qbuf, P->ld_q, nr, kb, d->k_sl, nk, sbuf, P->ld_s);
        else if (P->fk)
            kt->additive_panel_exp(D, P->fk + (SDPA_FN(kvbase_row)(P, ub) + j0) * D, D, nk, qbuf, P->wneg,
                                   P->score_c, sbuf);
        else if (d->score_kind == ATTN_SCORE_ADDITIVE)
            kt->additive_panel_tanh(D, kb, d->k_sl, nk, qbuf, P->wneg, P->score_c, sbuf);
        else
            kt->qk_panel(D, kb, d->k_sl, nk, qbuf, sbuf, W, 0, colmax);

        if (prep) SDPA_FN(prep_scores)(P, rows, nr, sbuf, s_rs, s_js, j0, nk);

        if (P->rows_path)
            kt->softmax_rows(nr, nk, sbuf, P->ld_s, m, l, alpha);
        else
            kt->softmax_panel(nk, sbuf, m, l, alpha, colmax);

        if (d->drop_threshold) SDPA_FN(apply_dropout)(P, rows, nr, sbuf, s_rs, s_js, j0, nk);

        if (P->rows_path)
            kt->pv_rows(nk, sbuf, P->ld_s, nr, vb, d->v_sl, Dv, alpha, obuf, P->ld_o);
        else
            kt->pv_panel(nk, vb, d->v_sl, Dv, sbuf, alpha, obuf);
    }

    if (P->nchunks > 1) {
        /* partial result: unnormalised O, m, l per row */
        T *part = P->partial + (ub * P->nchunks + chunk) * W * (Dv + 2);
        for (int r = 0; r < nr; r++) {
            T *pr = part + r * (Dv + 2);
            for (int64_t c = 0; c < Dv; c++) pr[c] = obuf[r * o_rs + c * o_cs];
            pr[Dv] = m[r];
            pr[Dv + 1] = l[r];
        }
        return;
    }
    T inv[ATTN_MAX_PANEL];
    T *orows[ATTN_MAX_PANEL];
    for (int r = 0; r < nr; r++) {
        inv[r] = SDPA_FN(inv_sum)(l[r]);
        orows[r] = rows[r].out;
    }
    if (P->rows_path) {
        for (int r = 0; r < nr; r++)
            for (int64_t c = 0; c < Dv; c++) rows[r].out[c] = obuf[r * o_rs + c * o_cs] * inv[r];
    } else {
        kt->unpack_ot(nr, Dv, obuf, inv, orows);
    }
    for (int r = 0; r < nr; r++) {
        if (rows[r].lse) *rows[r].lse = SDPA_FN(lse_of)(m[r], l[r]);
        if (rows[r].w) SDPA_FN(finish_weights)(P, &rows[r], m[r], inv[r], kbeg, kend);
    }
}

/* Combine the key chunks of base unit ub, in chunk order (see merge_attention). */
static void SDPA_FN(merge_unit)(const PLAN *P, int64_t ub)
{
    const attn_sdpa_desc *d = P->d;
    ROWREF rows[ATTN_MAX_PANEL];
    int nr = SDPA_FN(build_rows)(P, ub, rows);
    const int64_t Dv = d->Dv, stride = P->W * (Dv + 2);
    const T *base = P->partial + ub * P->nchunks * stride;
    for (int r = 0; r < nr; r++) {
        T mmax = -INFINITY;
        for (int64_t c = 0; c < P->nchunks; c++) {
            T mc = base[c * stride + r * (Dv + 2) + Dv];
            if (mc > mmax) mmax = mc;
        }
        T shift = mmax == -INFINITY ? (T)0 : mmax;
        T *out = rows[r].out;
        for (int64_t k = 0; k < Dv; k++) out[k] = 0;
        T lsum = 0;
        for (int64_t c = 0; c < P->nchunks; c++) {
            const T *pr = base + c * stride + r * (Dv + 2);
            T wgt = (T)exp2((double)(pr[Dv] - shift));
            lsum += wgt * pr[Dv + 1];
            for (int64_t k = 0; k < Dv; k++) out[k] += wgt * pr[k];
        }
        T inv = SDPA_FN(inv_sum)(lsum);
        for (int64_t k = 0; k < Dv; k++) out[k] *= inv;
        if (rows[r].lse) *rows[r].lse = SDPA_FN(lse_of)(shift, lsum);
    }
}

static attn_status SDPA_FN(make_plan)(PLAN *P, const attn_sdpa_desc *d, const KTAB *kt)
{
    memset(P, 0, sizeof *P);
    P->d = d;
    P->kt = kt;
    P->G = d->Hq / d->Hkv;
    P->qscale = (T)(d->score_kind == ATTN_SCORE_ADDITIVE ? 2.0 * ATTN_LOG2E : d->scale * ATTN_LOG2E);
    P->limited = d->causal || d->valid_lens != NULL;

    /* Decode-shaped problems (all rows of a kv head fit one rows-path unit)
     * take the rows path; everything else takes panels. */
    int64_t stacked_rows = P->G * d->Lq;
    /* (the rows path computes dot-product scores only) */
    P->rows_path = stacked_rows <= kt->rows_max && d->score_kind == ATTN_SCORE_DOT;
    if (P->rows_path) {
        P->W = kt->rows_max;
        P->rows_per_group = stacked_rows;
        P->ngroups = 1;
        P->bk = ATTN_BK_ROWS;
    } else {
        P->W = kt->nr;
        int stack = d->Lq < kt->nr;
        P->rows_per_group = stack ? stacked_rows : d->Lq;
        P->ngroups = stack ? 1 : P->G;
        P->bk = attn_round_up(ATTN_BK_PANEL, kt->mr_qk);   /* whole register tiles */
    }
    P->npanels = (P->rows_per_group + P->W - 1) / P->W;
    P->nbase = d->B * d->Hkv * P->ngroups * P->npanels;

    /* Split the keys when there are too few units to occupy the machine
     * (decode): a function of the problem size only, never of the thread
     * count, so the result is the same for any thread count. */
    P->nchunks = 1;
    if (!d->weights && P->nbase < ATTN_SPLIT_MIN_UNITS && d->Lk >= 2 * ATTN_SPLIT_MIN_KEYS) {
        int64_t want = (ATTN_SPLIT_TARGET_UNITS + P->nbase - 1) / P->nbase;
        int64_t most = d->Lk / ATTN_SPLIT_MIN_KEYS;
        P->nchunks = attn_min64(want, most);
    }
    P->chunk_len = d->Lk > 0 ? attn_round_up((d->Lk + P->nchunks - 1) / P->nchunks, P->bk) : 1;
    P->nchunks = d->Lk > 0 ? (d->Lk + P->chunk_len - 1) / P->chunk_len : 1;

    /* scratch */
    if (P->rows_path) {
        P->ld_q = attn_round_up(attn_max64(d->D, 1), kt->vlen);
        P->ld_s = attn_round_up(P->bk, kt->vlen);
        P->ld_o = attn_round_up(attn_max64(d->Dv, 1), kt->vlen);
        P->off_s = SDPA_FN(align_elems)(P->W * P->ld_q);
        P->off_o = P->off_s + SDPA_FN(align_elems)(P->W * P->ld_s);
        P->off_m = P->off_o + SDPA_FN(align_elems)(P->W * P->ld_o);
    } else {
        P->off_s = SDPA_FN(align_elems)(attn_max64(d->D, 1) * P->W);
        P->off_o = P->off_s + SDPA_FN(align_elems)(attn_round_up(P->bk, kt->mr_qk) * P->W);
        P->off_m = P->off_o + SDPA_FN(align_elems)(attn_round_up(attn_max64(d->Dv, 1), kt->mr_pv) * P->W);
    }
    P->off_l = P->off_m + SDPA_FN(align_elems)(P->W);
    P->off_a = P->off_l + SDPA_FN(align_elems)(P->W);
    P->off_c = P->off_a + SDPA_FN(align_elems)(P->W);
    P->scratch_elems = P->off_c + SDPA_FN(align_elems)(P->W);
    return ATTN_OK;
}

attn_status SDPA_FN(attn_sdpa)(const attn_sdpa_desc *d, int isa, int num_threads)
{
    attn_status st = attn_sdpa_check(d);
    if (st != ATTN_OK) return st;
    const KTAB *kt = KTAB_GET(isa);
    if (!kt) return ATTN_EISA;
    if (d->B == 0 || d->Hq == 0 || d->Lq == 0) return ATTN_OK;

    PLAN P;
    st = SDPA_FN(make_plan)(&P, d, kt);
    if (st != ATTN_OK) return st;
    if (d->score_kind == ATTN_SCORE_ADDITIVE) {
        P.wneg = (T *)attn_scratch_alloc((size_t)d->D * sizeof(T));
        if (!P.wneg) return ATTN_ENOMEM;
        double sum = 0;
        for (int64_t h = 0; h < d->D; h++) {
            T w = ((const T *)d->w_score)[h];
            P.wneg[h] = (T)(-2.0 * ATTN_LOG2E) * w;
            sum += (double)w;
        }
        P.score_c = (T)(ATTN_LOG2E * sum);
        if (d->D > 0 && d->Lk > 0 && SDPA_FN(additive_in_range)(d)) {
            P.fk = (T *)attn_scratch_alloc((size_t)(d->B * d->Hkv * d->Lk * d->D) * sizeof(T));
            if (!P.fk) {
                attn_scratch_free(P.wneg);
                return ATTN_ENOMEM;
            }
        }
    }
    if (P.nchunks > 1) {
        size_t n = (size_t)(P.nbase * P.nchunks * P.W * (d->Dv + 2));
        P.partial = (T *)attn_scratch_alloc(n * sizeof(T));
        if (!P.partial) {
            attn_scratch_free(P.wneg);
            attn_scratch_free(P.fk);
            return ATTN_ENOMEM;
        }
    }

    int64_t nunits = P.nbase * P.nchunks;
    int nthreads = attn_region_threads(num_threads, nunits);
    int failed = 0;
    (void)nthreads; /* unused without OpenMP */
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
#endif
    {
        T *scratch = (T *)attn_scratch_alloc((size_t)P.scratch_elems * sizeof(T));
        if (!scratch) {
            attn_flag_set(&failed);
        }
        if (P.fk) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t t = 0; t < d->B * d->Hkv * d->Lk; t++) SDPA_FN(additive_key_exp)(&P, t);
            /* (implicit barrier: F is complete) */
        }
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t u = 0; u < nunits; u++) {
            if (!attn_flag_get(&failed)) SDPA_FN(run_unit)(&P, u, scratch);
        }
        /* (implicit barrier) */
        if (P.nchunks > 1) {
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
            for (int64_t ub = 0; ub < P.nbase; ub++)
                if (!attn_flag_get(&failed)) SDPA_FN(merge_unit)(&P, ub);
        }
        attn_scratch_free(scratch);
    }
    attn_scratch_free(P.partial);
    attn_scratch_free(P.wneg);
    attn_scratch_free(P.fk);
    return failed ? ATTN_ENOMEM : ATTN_OK;
}

#undef PLAN
#undef ROWREF
#undef SDPA_FN
#undef SDPA_CAT
#undef SDPA_CAT_
