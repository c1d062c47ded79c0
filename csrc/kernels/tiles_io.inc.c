/*
 * The kernel entries that read the inputs or write the output (ktab.h's
 * attn_kio tables), once per (ISA, input type IT). csrc/arch/kern_<isa>.c
 * includes this file after tiles.inc.c, once per IT, defining:
 *
 *   IT                  the input/output element type (T, or uint16_t for
 *                       bfloat16 / float16 bit patterns)
 *   IO_SAME             1 when IT is T (vector loads and register transposes
 *                       read the inputs directly; no widen entry)
 *   v_load_in(p)        VL elements of IT at p, as a vector of T
 *   v_load_in_n(p, n)   the first n (1 <= n < VL) of them, zeros after; reads
 *                       nothing past p + n
 *   in_to_T(x)          one IT element as T (exact)
 *   T_to_out(x)         one T value as IT (round to nearest even; NaN stays
 *                       NaN, +-inf stays +-inf)
 *   v_store_out(p, x)   optional (16-bit IT, levels with a register
 *                       transpose): VL values of x stored as T_to_out would
 *   QK_ROWS, QK_KEYS    the rows-path QK register block (QK_ROWS x QK_KEYS
 *                       dot products at once), and
 *   v_hsum_block(acc, out)  out[i] = horizontal sum of acc[i], i < QK_ROWS * QK_KEYS
 *   FNIO(name)          the ISA/IT-suffixed name; KIO_TYPE, KIO_NAME, IO_DTYPE
 *   IO_KV_ONLY          1 for storage types that hold keys/values only (int8
 *                       with scales): the Q and output entries are NULL
 *   KIO_QK_ROWS,        optional: the level's own qk_rows / pv_rows entries
 *   KIO_PV_ROWS         (declared before the include; they may call the
 *                       defaults below, FNIO(qk_rows) / FNIO(pv_rows), for
 *                       the inputs they do not take)
 *
 * and the SIMD mapping of tiles.inc.c. Same preconditions as there. The
 * file #undefs these parameters at its end, ready for the next IT.
 *
 * Where the conversion runs: the rows path (decode, bound by memory
 * bandwidth) converts in its vector loads, so it reads half the bytes for
 * 16-bit inputs; the panel path stages each K and V block once into a T
 * scratch (`widen` for K and V, `widen_tiles` for V in column tiles, which
 * float32 V also takes when a kv head has enough panels to reuse it) and
 * runs tiles.inc.c's micro-kernels on it -- every element is then reused by
 * NR query lanes. Q is staged and the output
 * finished once per unit, with scalar conversions where IT is not T.
 */

#define NR (NV * VL)

#ifndef IO_KV_ONLY
#define IO_KV_ONLY 0
#endif

#if !IO_KV_ONLY && !defined(ATTN_HAVE_pack_qt)
/*
 * Qt[d][r] = sign * Q_r[d] for r < nr (lanes past nr are 0), from one
 * pointer per query row. Full VL x VL blocks go through the ISA's register
 * transpose when it has one and IT is T. sign is +-1, or a power of two
 * for a scale past T's range (exact either way), for dot products; 2 log2 e
 * for the additive scores.
 */
static void FNIO(pack_qt)(int nr, int64_t D, const IT *const *rows, T sign, T *qt)
{
    int64_t d0 = 0;   /* columns [0, d0) of rows [0, rfull) go through the transpose */
    int rfull = 0;
#if defined(V_HAS_TRANSPOSE)
    rfull = nr / VL * VL;   /* whole VL-row blocks (a half or partial panel's too) */
    if (rfull > 0)
        for (; d0 + VL <= D; d0 += VL)
            for (int r0 = 0; r0 < rfull; r0 += VL) {
#if IO_SAME
                v_transpose(rows + r0, d0, sign, qt + d0 * NR + r0, NR);
#else   /* widened into a stage, then transposed */
                T stage[VL * VL];
                const T *srows[VL];
                for (int i = 0; i < VL; i++) {
                    srows[i] = stage + i * VL;
                    v_store(stage + i * VL, v_load_in(rows[r0 + i] + d0));
                }
                v_transpose(srows, 0, sign, qt + d0 * NR + r0, NR);
#endif
            }
#endif
    for (int64_t d = 0; d < D; d++) {
        T *col = qt + d * NR;
        for (int r = d < d0 ? rfull : 0; r < nr; r++) col[r] = in_to_T(rows[r][d]) * sign;
        for (int r = nr; r < NR; r++) col[r] = 0;
    }
}
#endif

#if !IO_SAME
/* dst[j][c] = src[j][c] (IT -> T), times scale[j] when given, for j < n, c < D. */
static void FNIO(widen)(int64_t n, int64_t D, const IT *src, int64_t lds, const T *scale, T *dst,
                        int64_t ldd)
{
    for (int64_t j = 0; j < n; j++) {
        const IT *s = src + j * lds;
        T *t = dst + j * ldd;
        vec sc = v_set1(scale ? scale[j] : (T)1);
        int64_t c = 0;
        for (; c + VL <= D; c += VL) v_store(t + c, v_mul(sc, v_load_in(s + c)));
        if (c < D) v_store_n(t + c, v_mul(sc, v_load_in_n(s + c, (int)(D - c))), (int)(D - c));
    }
}
#endif

/*
 * V in column tiles of MR_PV (ktab.h's widen_tiles): tile t holds columns
 * [t MR_PV, (t + 1) MR_PV) of every row, rows MR_PV apart, tiles ldt apart.
 * pv_panel then broadcasts from one contiguous stream instead of touching a
 * new value row -- a new cache line -- at every key. Each tile is written in
 * pieces of at most VL lanes; columns past D are zeros (the loads fill them).
 */
static void FNIO(widen_tiles)(int64_t n, int64_t D, const IT *src, int64_t lds, const T *scale, T *dst,
                              int64_t ldt)
{
    for (int64_t j = 0; j < n; j++) {
        const IT *s = src + j * lds;
        vec sc = v_set1(scale ? scale[j] : (T)1);
        T *row = dst + j * MR_PV;
        for (int64_t c0 = 0; c0 < D; c0 += MR_PV, row += ldt)
            for (int i = 0; i < MR_PV; i += VL) {
                int lanes = MR_PV - i < VL ? MR_PV - i : VL;   /* this piece of the tile */
                int64_t left = D - c0 - i;                     /* source columns left */
                int take = left < lanes ? (int)(left > 0 ? left : 0) : lanes;
                /* a whole vector when the row has one left (only `lanes` of
                 * it are stored): cheaper than a masked load, which AVX2
                 * does element by element for 8- and 16-bit types */
                vec x = left >= VL ? v_load_in(s + c0 + i)
                      : take > 0   ? v_load_in_n(s + c0 + i, take)
                                   : v_zero();
                if (scale) x = v_mul(sc, x);
                /* a whole vector where it ends inside this call's rows of
                 * the tile: its lanes past the piece land on later rows,
                 * written after it (masked stores are slow on AMD) */
                if (lanes == VL || j * MR_PV + i + VL <= n * MR_PV)
                    v_store(row + i, x);
                else
                    v_store_n(row + i, x, lanes);
            }
    }
}

#if !IO_KV_ONLY && !defined(ATTN_HAVE_finish_panel)
/*
 * Panel output: rows[r][c] = (Ot[c][r] - Ct[c][r]) / L[r] for r < nr, c < Dv,
 * with a zero row where L[r] == 0 (no visible key); without L, the
 * unnormalised (Ot - Ct) (a split-K partial). Ot is overwritten. The division
 * (not a multiplication by 1 / L) keeps the result within 1/2 ulp of the
 * exact quotient of the accumulated sums.
 */
static void FNIO(finish_panel)(int nr, int64_t Dv, T *ot, const T *ct, const T *L, IT *const *rows)
{
    vec lv[NV];
    const int nvu = (nr + VL - 1) / VL;   /* the vectors that hold rows */
    if (L) {
        T lpad[NR];
        for (int r = 0; r < NR; r++) lpad[r] = r < nr ? L[r] : (T)1;
        for (int u = 0; u < NV; u++) lv[u] = v_load(lpad + u * VL);
    }
    for (int64_t c = 0; c < Dv; c++)
        for (int u = 0; u < nvu; u++) {
            T *p = ot + c * NR + u * VL;
            vec x = v_sub(v_load(p), v_load(ct + c * NR + u * VL));
            v_store(p, L ? v_keep_nonzero(lv[u], v_div(x, lv[u])) : x);
        }
#if defined(V_HAS_TRANSPOSE) && (IO_SAME || defined(v_store_out))
    /* the whole VL-row blocks through the register transpose (16-bit
     * outputs through a stage, then narrowed); the rest element by element */
    const int rfull = nr / VL * VL;
    if (rfull > 0) {
        T ones[ATTN_MAX_LANES];
        for (int r = 0; r < NR; r++) ones[r] = 1;
        int64_t c0 = 0;
        for (; c0 + VL <= Dv; c0 += VL)
            for (int r0 = 0; r0 < rfull; r0 += VL) {
#if IO_SAME
                v_untranspose(ot + c0 * NR + r0, NR, ones + r0, rows + r0, c0);
#else
                T stage[VL * VL];
                T *srows[VL];
                for (int i = 0; i < VL; i++) srows[i] = stage + i * VL;
                v_untranspose(ot + c0 * NR + r0, NR, ones + r0, srows, 0);
                for (int i = 0; i < VL; i++) v_store_out(rows[r0 + i] + c0, v_load(stage + i * VL));
#endif
            }
        for (int r = 0; r < nr; r++)
            for (int64_t c = r < rfull ? c0 : 0; c < Dv; c++) rows[r][c] = T_to_out(ot[c * NR + r]);
        return;
    }
#endif
    for (int r = 0; r < nr; r++) {
        IT *out = rows[r];
        for (int64_t c = 0; c < Dv; c++) out[c] = T_to_out(ot[c * NR + r]);
    }
}
#endif

#if !IO_KV_ONLY && !defined(ATTN_HAVE_stage_rows)
/* Qs[r][d] = sign * rows[r][d] for d < D, zeros up to ldq. */
static void FNIO(stage_rows)(int nr, int64_t D, const IT *const *rows, T sign, T *qs, int64_t ldq)
{
    for (int r = 0; r < nr; r++) {
        T *q = qs + r * ldq;
        for (int64_t d = 0; d < D; d++) q[d] = in_to_T(rows[r][d]) * sign;
        for (int64_t d = D; d < ldq; d++) q[d] = 0;
    }
}
#endif

/*
 * Decode streams K and V once from memory, and one core's hardware
 * prefetchers alone keep too few lines in flight for the read bandwidth
 * (Cascade Lake: ~7 GB/s per core without, ~10 with). qk_rows asks for the
 * lines of the key rows ROWS_PF_BYTES ahead of the ones it reads (pv_rows
 * for its value columns one sub-block ahead, below); a prefetch never
 * faults, so running past the block's (or the array's) end is harmless.
 */
#ifndef ROWS_PF_BYTES
#define ROWS_PF_BYTES 8192
#endif
/* Rows (ld elements apart) to prefetch ahead: ROWS_PF_BYTES of them, plus
 * `block` (the rows one step of the caller reads); 0 when ld is 0. */
static inline int64_t FNIO(rows_ahead)(int64_t ld, int64_t block)
{
    const int64_t bytes = ld * (int64_t)sizeof(IT);
    return bytes > 0 ? ROWS_PF_BYTES / bytes + block : 0;
}
/* Asks for the cache lines of elements [at, at + n) of the array at base.
 * The addresses are formed as integers (they may lie past the array's end,
 * where pointer arithmetic would be undefined) and start at the first
 * element's line, so a row that does not start on a line boundary has its
 * last line fetched too. */
static inline void FNIO(prefetch_span)(const IT *base, int64_t at, int64_t n)
{
    attn_prefetch_bytes((uintptr_t)base + (uintptr_t)(at * (int64_t)sizeof(IT)),
                        (uintptr_t)base + (uintptr_t)((at + n) * (int64_t)sizeof(IT)));
}
/* Asks for the first n elements of rows [row, row + nrows) (ld apart):
 * one span when the rows are adjacent (ld == n), else a span per row. */
static inline void FNIO(prefetch_rows)(const IT *base, int64_t row, int64_t nrows, int64_t ld, int64_t n)
{
    if (ld == n)
        FNIO(prefetch_span)(base, row * ld, nrows * n);
    else
        for (int64_t r = row; r < row + nrows; r++) FNIO(prefetch_span)(base, r * ld, n);
}

#ifndef ATTN_HAVE_qk_rows
/* One row-block x key-block of dot products: acc[rr * QK_KEYS + jj] over d
 * for rows q[rr], keys k + jj * ldk (QK_ROWS rows, QK_KEYS keys). */
#define QK_ACC (QK_ROWS * QK_KEYS)

/*
 * S[r][j] = Qs[r] . K[j] (* kscale[j])   for r < nr, j < nk.
 * A register block of QK_ROWS (4) query rows x QK_KEYS keys accumulates
 * along d -- every key vector is loaded once for four rows, then the query
 * rows one at a time (the keys stay in registers) -- and the block's
 * QK_ACC partial-sum vectors are reduced together (v_hsum_block: one
 * shuffle/add tree instead of QK_ACC horizontal sums). Leftover rows take
 * QK_ACC keys at a time. Key rows are read with masked tails (Qs is
 * zero-padded, so its full loads are safe).
 *
 * Every S[r][j], in every branch below (full block, leftover keys, leftover
 * rows), is the same arithmetic: one FMA chain over d in VL steps, then the
 * same reduction tree (each output of v_hsum_block has the same tree; unused
 * slots are zero vectors). So a row's scores do not depend on where the row
 * or the key sits in the call -- a token projected in a batch of 3 or of 18,
 * or in a GQA group of 4 or 6, gets bitwise the same numbers.
 */
static void FNIO(qk_rows)(int64_t D, const T *qs, int64_t ldq, int nr, const IT *k,
                          int64_t ldk, int64_t nk, const T *kscale, T *s, int64_t lds)
{
    T sums[QK_ACC];
    int r = 0;
    for (; r + QK_ROWS <= nr; r += QK_ROWS) {
        const T *q[QK_ROWS];
        for (int rr = 0; rr < QK_ROWS; rr++) q[rr] = qs + (r + rr) * ldq;
        int64_t j = 0;
        const int64_t pf = FNIO(rows_ahead)(ldk, QK_KEYS);   /* keys ahead to prefetch */
        for (; j + QK_KEYS <= nk; j += QK_KEYS) {
            if (r == 0)
                for (int jj = 0; jj < QK_KEYS; jj++) FNIO(prefetch_span)(k, (j + pf + jj) * ldk, D);
            vec acc[QK_ACC];
#pragma GCC unroll 16
            for (int i = 0; i < QK_ACC; i++) acc[i] = v_zero();
            const IT *kb = k + j * ldk;
            int64_t d = 0;
            /* whole vectors, then the masked tail: the loop body has no branch */
#pragma GCC unroll 2
            for (; d + VL <= D; d += VL) {
                vec kv[QK_KEYS];
#pragma GCC unroll 4
                for (int jj = 0; jj < QK_KEYS; jj++) kv[jj] = v_load_in(kb + jj * ldk + d);
#pragma GCC unroll 4
                for (int rr = 0; rr < QK_ROWS; rr++) {
                    vec qv = v_load(q[rr] + d);
#pragma GCC unroll 4
                    for (int jj = 0; jj < QK_KEYS; jj++)
                        acc[rr * QK_KEYS + jj] = v_fma(qv, kv[jj], acc[rr * QK_KEYS + jj]);
                }
            }
            if (d < D) {   /* (the same order: no spills on AVX2) */
                int n = (int)(D - d);
                vec kv[QK_KEYS];
#pragma GCC unroll 4
                for (int jj = 0; jj < QK_KEYS; jj++) kv[jj] = v_load_in_n(kb + jj * ldk + d, n);
#pragma GCC unroll 4
                for (int rr = 0; rr < QK_ROWS; rr++) {
                    vec qv = v_load(q[rr] + d);
#pragma GCC unroll 4
                    for (int jj = 0; jj < QK_KEYS; jj++)
                        acc[rr * QK_KEYS + jj] = v_fma(qv, kv[jj], acc[rr * QK_KEYS + jj]);
                }
            }
            v_hsum_block(acc, sums);
            for (int rr = 0; rr < QK_ROWS; rr++)
                for (int jj = 0; jj < QK_KEYS; jj++) s[(r + rr) * lds + j + jj] = sums[rr * QK_KEYS + jj];
        }
        if (j < nk) {   /* fewer than QK_KEYS keys left: same block, missing keys zero */
            int left = (int)(nk - j);
            vec acc[QK_ACC];
            for (int i = 0; i < QK_ACC; i++) acc[i] = v_zero();
            for (int64_t d = 0; d < D; d += VL) {
                int n = D - d < VL ? (int)(D - d) : VL;
                for (int jj = 0; jj < left; jj++) {
                    const IT *kj = k + (j + jj) * ldk + d;
                    vec kv = n == VL ? v_load_in(kj) : v_load_in_n(kj, n);
                    for (int rr = 0; rr < QK_ROWS; rr++)
                        acc[rr * QK_KEYS + jj] = v_fma(v_load(q[rr] + d), kv, acc[rr * QK_KEYS + jj]);
                }
            }
            v_hsum_block(acc, sums);
            for (int rr = 0; rr < QK_ROWS; rr++)
                for (int jj = 0; jj < left; jj++) s[(r + rr) * lds + j + jj] = sums[rr * QK_KEYS + jj];
        }
    }
    /* keys ahead to prefetch in the leftover rows (r == 0 there: no 4-row block ran) */
    const int64_t pf1 = FNIO(rows_ahead)(ldk, QK_ACC);
    for (; r < nr; r++) {
        const T *q0 = qs + r * ldq;
        for (int64_t j = 0; j < nk; j += QK_ACC) {
            int cnt = nk - j < QK_ACC ? (int)(nk - j) : QK_ACC;
            vec acc[QK_ACC];
#pragma GCC unroll 16
            for (int i = 0; i < QK_ACC; i++) acc[i] = v_zero();
            if (cnt == QK_ACC) {
                const IT *kb = k + j * ldk;
                if (r == 0)
                    for (int jj = 0; jj < QK_ACC; jj++) FNIO(prefetch_span)(k, (j + pf1 + jj) * ldk, D);
                int64_t d = 0;
                for (; d + VL <= D; d += VL) {
                    vec qv = v_load(q0 + d);
#pragma GCC unroll 16
                    for (int jj = 0; jj < QK_ACC; jj++) acc[jj] = v_fma(qv, v_load_in(kb + jj * ldk + d), acc[jj]);
                }
                if (d < D) {
                    int n = (int)(D - d);
                    vec qv = v_load(q0 + d);
#pragma GCC unroll 16
                    for (int jj = 0; jj < QK_ACC; jj++)
                        acc[jj] = v_fma(qv, v_load_in_n(kb + jj * ldk + d, n), acc[jj]);
                }
                v_hsum_block(acc, s + r * lds + j);
            } else {   /* the last keys: same chains, unused slots zero */
                for (int64_t d = 0; d < D; d += VL) {
                    int n = D - d < VL ? (int)(D - d) : VL;
                    vec qv = v_load(q0 + d);
                    for (int jj = 0; jj < cnt; jj++) {
                        const IT *kj = k + (j + jj) * ldk + d;
                        acc[jj] = v_fma(qv, n == VL ? v_load_in(kj) : v_load_in_n(kj, n), acc[jj]);
                    }
                }
                v_hsum_block(acc, sums);
                for (int jj = 0; jj < cnt; jj++) s[r * lds + j + jj] = sums[jj];
            }
        }
    }
    if (kscale)   /* quantized keys: the row's scale applies to its whole dot product */
        for (r = 0; r < nr; r++)
            for (int64_t j = 0; j < nk; j++) s[r * lds + j] *= kscale[j];
}
#undef QK_ACC
#endif

#ifndef ATTN_HAVE_pv_rows
/* Value vectors per register tile of pv_rows: 4 rows x PV_ROWS_VECS sums,
 * plus the tile's value vectors and one weight, must fit the register file.
 * 4 x 4 + 4 + 1 = 21 fits AVX-512's 32 registers; with 16 (SSE, AVX2) the
 * 4 x 4 tile kept three sums on the stack, and each key step then waited on
 * store-to-load forwarding (Zen 3: pv_rows ran at half of qk_rows' rate
 * from L3). 4 x 3 + 3 + 1 = 16 fits. */
#ifndef PV_ROWS_VECS
#define PV_ROWS_VECS 4
#endif
_Static_assert(PV_ROWS_VECS >= 1 && PV_ROWS_VECS <= 4, "pv_rows tiles are 1 to 4 vectors wide");

/* Keys per sub-block of pv_rows: every column tile passes over a
 * sub-block's value rows while they are in L1, so at most PV_SUB_KEYS rows
 * and PV_SUB_BYTES of them (L1 is 32 KiB or more, and the next sub-block's
 * rows arrive while this one is read). */
#ifndef PV_SUB_BYTES
#define PV_SUB_BYTES 16384
#endif
#ifndef PV_SUB_KEYS
#define PV_SUB_KEYS 32
#endif
/* Column tiles per chunk: the tiles' partial sums wait in a stack stash
 * between sub-blocks (4 rows x PV_CHUNK_VECS vectors; AVX2: 18 vectors,
 * 144 floats, one chunk for head sizes up to 144). */
#define PV_CHUNK_VECS (6 * PV_ROWS_VECS)

/* One register tile of pv_rows over whole vectors, its sums kept in
 * stash[r][u0 + u]: those = (fresh ? 0 : those) + sum over j < nk of
 * P[r][j] V[j][u VL ..] (p0: the tile's first weight, vt: its first value)
 * for r < tr, u < tv, each sum one FMA chain in key order. tr (rows) and tv
 * (vectors) are constants at every call (the function is always inlined),
 * so the sums live in registers across the keys. When pf_n > 0, key step j
 * asks for the pf_n elements at pf_at + j pf_step (counted from vt). */
static inline __attribute__((always_inline)) void FNIO(pv_tile)(const int tr, const int tv, int64_t nk,
                                                            const T *p0, int64_t ldp, const IT *vt,
                                                            int64_t ldv, int64_t pf_at, int64_t pf_step, int64_t pf_n,
                                                            int fresh, vec stash[4][PV_CHUNK_VECS], int u0)
{
    vec acc[4][PV_ROWS_VECS];
#pragma GCC unroll 4
    for (int r = 0; r < tr; r++)
#pragma GCC unroll 4
        for (int u = 0; u < tv; u++) acc[r][u] = fresh ? v_zero() : stash[r][u0 + u];
    for (int64_t j = 0; j < nk; j++) {
        const IT *vj = vt + j * ldv;
        if (pf_n > 0) FNIO(prefetch_span)(vt, pf_at + j * pf_step, pf_n);
        vec x[PV_ROWS_VECS];
#pragma GCC unroll 4
        for (int u = 0; u < tv; u++) x[u] = v_load_in(vj + u * VL);
#pragma GCC unroll 4
        for (int r = 0; r < tr; r++) {
            vec s = v_set1(p0[r * ldp + j]);
#pragma GCC unroll 4
            for (int u = 0; u < tv; u++) acc[r][u] = v_fma(s, x[u], acc[r][u]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < tr; r++)
#pragma GCC unroll 4
        for (int u = 0; u < tv; u++) stash[r][u0 + u] = acc[r][u];
}

/* pv_tile with tv (1 .. PV_ROWS_VECS) known only at run time: one branch per
 * tile, each arm a constant-width copy. */
static inline __attribute__((always_inline)) void FNIO(pv_tile_nv)(const int tr, int nv, int64_t nk,
                                                               const T *p0, int64_t ldp, const IT *vt,
                                                               int64_t ldv, int64_t pf_at, int64_t pf_step, int64_t pf_n,
                                                               int fresh, vec stash[4][PV_CHUNK_VECS], int u0)
{
    switch (nv) {
    case 1: FNIO(pv_tile)(tr, 1, nk, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0); break;
#if PV_ROWS_VECS >= 2
    case 2: FNIO(pv_tile)(tr, 2, nk, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0); break;
#endif
#if PV_ROWS_VECS >= 3
    case 3: FNIO(pv_tile)(tr, 3, nk, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0); break;
#endif
#if PV_ROWS_VECS >= 4
    case 4: FNIO(pv_tile)(tr, 4, nk, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0); break;
#endif
    default: break;
    }
}

/* pv_tile for a tile whose last vector is partial (cn elements): masked
 * loads, so nothing past the row's end is touched. */
static void FNIO(pv_tile_masked)(int tr, int64_t cn, int64_t nk, const T *p0, int64_t ldp,
                                 const IT *vt, int64_t ldv, int64_t pf_at, int64_t pf_step, int64_t pf_n,
                                 int fresh, vec stash[4][PV_CHUNK_VECS], int u0)
{
    const int nvec = (int)((cn + VL - 1) / VL);
    vec acc[4][PV_ROWS_VECS];
    for (int r = 0; r < tr; r++)
        for (int u = 0; u < nvec; u++) acc[r][u] = fresh ? v_zero() : stash[r][u0 + u];
    for (int64_t j = 0; j < nk; j++) {
        const IT *vj = vt + j * ldv;
        if (pf_n > 0) FNIO(prefetch_span)(vt, pf_at + j * pf_step, pf_n);
        vec x[PV_ROWS_VECS];
        for (int u = 0; u < nvec; u++) {
            int64_t left = cn - u * VL;
            x[u] = left >= VL ? v_load_in(vj + u * VL) : v_load_in_n(vj + u * VL, (int)left);
        }
        for (int r = 0; r < tr; r++) {
            vec s = v_set1(p0[r * ldp + j]);
            for (int u = 0; u < nvec; u++) acc[r][u] = v_fma(s, x[u], acc[r][u]);
        }
    }
    for (int r = 0; r < tr; r++)
        for (int u = 0; u < nvec; u++) stash[r][u0 + u] = acc[r][u];
}

/*
 * O[r][:] = alpha[r] * O[r][:] + sum_{j<nk} P[r][j] * V[j][:]   for r < nr
 * Register tile: up to 4 rows x PV_ROWS_VECS vectors of the value row
 * (pv_tile, constant-sized arms over whole vectors; a partial last vector,
 * Dv not a multiple of VL, takes pv_tile_masked, so nothing past Dv is
 * touched). The block's sums start from zero and are added to O with Kahan
 * compensation (Oc), as in pv_panel. Every sum is one FMA chain over j in
 * key order whatever the tiling (a chain paused between sub-blocks waits in
 * the stash unrounded), so the tiling does not change a bit.
 *
 * Loop order, for each group of 4 rows and chunk of PV_CHUNK_VECS columns:
 * sub-blocks of keys (at most PV_SUB_KEYS rows and PV_SUB_BYTES), and in
 * each every column tile. A tile reads only its columns of each row; the
 * sub-block keeps the rows in L1 for the chunk's other tiles, so each value
 * byte comes from memory once and in address order. (Column tiles over the whole 256-key
 * block, 128 KiB at Dv = 128, read every row a few lines at a time, strided
 * across memory, and re-read the rest from L2.)
 *
 * Prefetch, by the first group of rows: where the chunk is whole rows that
 * lie next to each other (ldv == Dv: the caches, contiguous heads), column
 * tile t of a sub-block asks for share t of the next sub-block's bytes, in
 * address order, a few lines per key step; else each tile asks for its own
 * columns of the row a sub-block ahead. (Column by column, the requests went
 * to memory as strided pieces of every row: Zen 3, one thread, value rows
 * from DRAM, P V read 8 GB/s where Q K read 13-14; in address order 13.4.)
 */
static void FNIO(pv_rows)(int64_t nk, T *p, int64_t ldp, int nr, const IT *v, int64_t ldv,
                          int64_t Dv, const T *vscale, const T *alpha, T *o, T *oc, int64_t ldo)
{
    if (vscale)   /* quantized values: fold each row's scale into its weights */
        for (int r = 0; r < nr; r++)
            for (int64_t j = 0; j < nk; j++) p[r * ldp + j] *= vscale[j];
    const int64_t row_bytes = ldv * (int64_t)sizeof(IT);
    int64_t sub = row_bytes > 0 ? PV_SUB_BYTES / row_bytes : PV_SUB_KEYS;   /* keys per sub-block */
    sub = sub < 1 ? 1 : sub > PV_SUB_KEYS ? PV_SUB_KEYS : sub;
    const int64_t pf = sub;   /* rows ahead to prefetch: one sub-block */
    const int64_t dv_whole = Dv / VL * VL;   /* elements in whole vectors */
    vec stash[4][PV_CHUNK_VECS];
    for (int r0 = 0; r0 < nr; r0 += 4) {
        const int rn = nr - r0 < 4 ? nr - r0 : 4;
        for (int64_t cc = 0; cc < Dv; cc += PV_CHUNK_VECS * VL) {
            const int64_t cend = Dv - cc < PV_CHUNK_VECS * VL ? Dv : cc + PV_CHUNK_VECS * VL;
            /* where the chunk is whole adjacent rows: each tile's share of a
             * sub-block's elements, and the part of it one key step asks for */
            const int whole_rows = cc == 0 && cend == Dv && ldv == Dv;
            const int64_t ntiles = (cend - cc + PV_ROWS_VECS * VL - 1) / (PV_ROWS_VECS * VL);
            const int64_t share = (sub * ldv + ntiles - 1) / ntiles, share_step = (share + sub - 1) / sub;
            int64_t s0 = 0, sn;
            do {   /* (once when nk is 0: O is still scaled by alpha) */
                sn = nk - s0 < sub ? nk - s0 : sub;
                const int last = s0 + sn == nk;
                const T *p0 = p + r0 * ldp + s0;
                for (int64_t c0 = cc; c0 < cend; c0 += PV_ROWS_VECS * VL) {
                    const int64_t cn = cend - c0 < PV_ROWS_VECS * VL ? cend - c0 : PV_ROWS_VECS * VL;
                    const int nvec = (int)((cn + VL - 1) / VL), u0 = (int)((c0 - cc) / VL);
                    const IT *vt = v + s0 * ldv + c0;
                    /* prefetch (first rows only): where the chunk is whole rows that lie
                     * next to each other, tile t asks for its share t of the next
                     * sub-block's bytes, in address order, spread over its key steps;
                     * else for its own columns of the row a sub-block ahead */
                    int64_t pf_at = pf * ldv, pf_step = ldv, pf_n = r0 == 0 ? cn : 0;
                    if (r0 == 0 && whole_rows) {
                        pf_step = pf_n = share_step;
                        pf_at = sub * ldv - c0 + (c0 - cc) / (PV_ROWS_VECS * VL) * share;
                    }
                    const int fresh = s0 == 0;
                    if (c0 + cn <= dv_whole) {
                        switch (rn) {
                        case 4: FNIO(pv_tile_nv)(4, nvec, sn, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0); break;
                        case 3: FNIO(pv_tile_nv)(3, nvec, sn, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0); break;
                        case 2: FNIO(pv_tile_nv)(2, nvec, sn, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0); break;
                        default: FNIO(pv_tile_nv)(1, nvec, sn, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0); break;
                        }
                    } else {
                        FNIO(pv_tile_masked)(rn, cn, sn, p0, ldp, vt, ldv, pf_at, pf_step, pf_n, fresh, stash, u0);
                    }
                    if (!last) continue;
                    for (int r = 0; r < rn; r++) {
                        vec a = v_set1(alpha[r0 + r]);
                        for (int u = 0; u < nvec; u++) {
                            /* O rows are padded to whole vectors (ldo), so full loads are safe */
                            T *po = o + (r0 + r) * ldo + c0 + u * VL, *pc = oc + (r0 + r) * ldo + c0 + u * VL;
                            vec total = v_load(po), comp = v_load(pc);
                            FN(kahan_update)(a, stash[r][u0 + u], &total, &comp);
                            v_store(po, total);
                            v_store(pc, comp);
                        }
                    }
                }
                s0 += sn;
            } while (s0 < nk);
        }
    }
}
#endif

#if !IO_KV_ONLY && !defined(ATTN_HAVE_finish_rows)
/* rows[r][c] = (O - Oc)[r][c] / L[r] (0 where L[r] == 0; no division without L). */
static void FNIO(finish_rows)(int nr, int64_t Dv, const T *o, const T *oc, int64_t ldo, const T *L,
                              IT *const *rows)
{
    for (int r = 0; r < nr; r++) {
        const T *orow = o + r * ldo, *crow = oc + r * ldo;
        IT *out = rows[r];
        if (L && L[r] == 0) {
            for (int64_t c = 0; c < Dv; c++) out[c] = T_to_out((T)0);
            continue;
        }
        vec lv = v_set1(L ? L[r] : (T)1);
        for (int64_t c = 0; c < Dv; c += VL) {
            int n = Dv - c < VL ? (int)(Dv - c) : VL;
            vec x = v_sub(v_load(orow + c), v_load(crow + c));   /* O rows padded to VL */
            x = L ? v_div(x, lv) : x;
#if IO_SAME
            v_store_n(out + c, x, n);
#else
            T tmp[VL];
            v_store(tmp, x);
            for (int i = 0; i < n; i++) out[c + i] = T_to_out(tmp[i]);
#endif
        }
    }
}
#endif

const KIO_TYPE KIO_NAME = {
    .dtype = IO_DTYPE,
#ifdef KIO_EXTRA
    KIO_EXTRA   /* the level's own entries (the native 16-bit ones) */
#endif
#if IO_KV_ONLY
    .pack_qt = NULL,
    .finish_panel = NULL,
    .stage_rows = NULL,
    .finish_rows = NULL,
#else
    .pack_qt = FNIO(pack_qt),
    .finish_panel = FNIO(finish_panel),
    .stage_rows = FNIO(stage_rows),
    .finish_rows = FNIO(finish_rows),
#endif
#if IO_SAME
    .widen = NULL,
#else
    .widen = FNIO(widen),
#endif
    .widen_tiles = FNIO(widen_tiles),
    .tile_width = MR_PV,
#ifdef KIO_QK_ROWS
    .qk_rows = KIO_QK_ROWS,
#else
    .qk_rows = FNIO(qk_rows),
#endif
#ifdef KIO_PV_ROWS
    .pv_rows = KIO_PV_ROWS,
#else
    .pv_rows = FNIO(pv_rows),
#endif
};

/* the parameters are consumed: the next instantiation defines its own */
#undef NR
#undef ROWS_PF_BYTES
#undef KIO_EXTRA
#undef KIO_QK_ROWS
#undef KIO_PV_ROWS
#undef IO_KV_ONLY
#undef IT
#undef IO_SAME
#undef v_load_in
#undef v_load_in_n
#undef in_to_T
#undef T_to_out
#undef v_store_out
#undef FNIO
#undef KIO_TYPE
#undef KIO_NAME
#undef IO_DTYPE
