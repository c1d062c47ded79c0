/*
 * The amxbf16 level: every avx512bf16 kernel (kern_avx512bf16.c, included
 * below under this level's names) except bfloat16 prefill's two products,
 * which run on AMX tiles (TDPBF16PS: a 16 x 16 float32 tile += a 16 x 32
 * bfloat16 tile times a 16-pair x 16 tile). Compiled with avx512bf16's flags
 * plus -mamx-tile -mamx-bf16 (setup.py); dispatch checks AMX-TILE,
 * AMX-BF16, the OS's tile state in XCR0 and Linux's per-process permission
 * (arch_prctl ARCH_REQ_XCOMP_PERM), all at run time.
 *
 * With ATTN_AMX_EMULATED defined (kern_amxbf16emu.c, AVX-512 flags only)
 * the tile registers are thread-local arrays and the six tile instructions
 * used here are emulated (emu_* below), following the SDM's definitions:
 * loads and stores touch exactly rows x colsb bytes, TDPBF16PS rounds each
 * of the pair's two products' additions to float32 (nearest even) with
 * subnormal inputs read as 0 and subnormal results flushed, and a shape
 * the instruction would refuse (#UD) aborts. That level, "amxbf16emu", is
 * never chosen automatically: it runs this file's layouts, edges and tile
 * shapes on every AVX-512 CPU, so that the real level's logic is tested
 * here too. (The hardware's order inside one TDPBF16PS may differ from the
 * SDM's pseudocode in the last bit; the tests bound errors against float64,
 * they do not compare the two levels bit for bit.)
 *
 * Layouts (the pair layouts of kern_avx512bf16.c, PNR = 32 query lanes):
 *   QK  St[j][r] = K[j] . Q[r]:  C = St rows j0..j0+15, lanes 0-15 / 16-31
 *       (two tiles, rows PNR floats apart); A = 16 K rows read in place
 *       (32 elements = 16 pairs of each row per step); B = Q2 rows
 *       p0..p0+15 (pairs of d), lanes 0-15 / 16-31.
 *   PV  Ot[c][r] += sum_j V[j][c] P[j][r]:  C = Ot rows c0..c0+15 (stored,
 *       then added with Kahan compensation); A = Vt, V transposed (row c:
 *       32 keys per step); B = P2 rows jp0..jp0+15 (key pairs), written
 *       over St as in pv_panel2_native and zero-padded to whole steps.
 *       Vt is staged once per key chunk and thread by the driver when
 *       several panels share it (stage_vt2, plan value_tiles), else
 *       transposed per block into the vpairs scratch.
 * A key tile that runs past nk, an odd D's last pair and a block's last
 * 1..31 keys of Vt are copied into a zero-padded 16 x 32 buffer first, so
 * that no load reads past K's rows or another block's staged keys.
 */
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <stdio.h>
#include "../kernels/ktab.h"

#ifndef LEVEL
#define LEVEL amxbf16
#define ISA_NAME "amxbf16"
#endif

static void qk_panel2_amx(int64_t D, const uint16_t *k, int64_t ldk, int64_t nk, const uint16_t *q2,
                          float *st, float *colmax);
static void pv_panel2_amx(int64_t nk, const uint16_t *v, int64_t ldv, int64_t Dv, float *st,
                          const float *alpha, float *ot, float *ct, uint16_t *vpairs,
                          const uint16_t *vt, int64_t ldvt);
static void stage_vt2_amx(int64_t nk, const uint16_t *v, int64_t ldv, int64_t Dv, uint16_t *vt, int64_t ldvt);
#define BF16_NATIVE_ENTRIES                                                                      \
    .pack_qt2 = pack_qt2_native, .qk_panel2 = qk_panel2_amx, .pv_panel2 = pv_panel2_amx,        \
    .stage_vt2 = stage_vt2_amx, .amx_tiles = 1,

#include "kern_avx512bf16.c"

#define TROWS 16       /* rows of every tile used here */
#define TPAIRS 16      /* pairs per tile row (64 bytes): one step along k */
#define TKEYS 32       /* keys (or elements of d) per step */

_Static_assert(PNR == 2 * TROWS, "a panel is two tiles of 16 query lanes");
_Static_assert(BK_PANEL % TKEYS == 0, "St holds whole key tiles and P2 whole steps (pv_panel2 pads to 32 keys)");

/* the tiles (one configuration serves both products); plain numbers, as
 * GCC's tile intrinsics paste them into the instruction's register name */
#define TC0 0
#define TC1 1
#define TA 2
#define TB0 3
#define TB1 4
#define TA_REM 5
#define TB0_REM 6
#define TB1_REM 7

/* LDTILECFG's 64-byte operand, palette 1 */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;
_Static_assert(sizeof(amx_config) == 64, "the tile configuration is 64 bytes");

/* ---- the tile instructions, native or emulated ---- */

#ifdef ATTN_AMX_EMULATED
typedef struct {
    int rows, colsb;
    uint8_t b[TROWS][64];
} emu_tile;
static __thread emu_tile emu_t[8];
static __thread int emu_configured;

static void emu_fail(const char *what)
{
    fprintf(stderr, "attncore: emulated AMX: %s (the instruction would raise #UD)\n", what);
    abort();
}
static void emu_loadconfig(const amx_config *c)
{
    if (c->palette != 1 || c->start_row != 0) emu_fail("unsupported palette");
    for (int i = 0; i < 14; i++)
        if (c->reserved[i]) emu_fail("reserved configuration bytes not zero");   /* (#GP) */
    for (int t = 8; t < 16; t++)
        if (c->rows[t] || c->colsb[t]) emu_fail("tiles 8-15 configured");
    for (int t = 0; t < 8; t++) {
        if (c->rows[t] > TROWS || c->colsb[t] > 64 || (c->rows[t] == 0) != (c->colsb[t] == 0))
            emu_fail("bad tile shape in the configuration");
        emu_t[t].rows = c->rows[t];
        emu_t[t].colsb = c->colsb[t];
        memset(emu_t[t].b, 0, sizeof emu_t[t].b);
    }
    emu_configured = 1;
}
static emu_tile *emu_use(int t)
{
    if (!emu_configured || emu_t[t].rows == 0) emu_fail("tile used without a configuration");
    return &emu_t[t];
}
static void emu_release(void) { emu_configured = 0; }
static void emu_zero(int t) { memset(emu_use(t)->b, 0, sizeof emu_t[t].b); }
static void emu_load(int t, const void *base, int64_t stride)
{
    emu_tile *x = emu_use(t);
    memset(x->b, 0, sizeof x->b);
    for (int r = 0; r < x->rows; r++) memcpy(x->b[r], (const uint8_t *)base + r * stride, (size_t)x->colsb);
}
static void emu_store(int t, void *base, int64_t stride)
{
    emu_tile *x = emu_use(t);
    for (int r = 0; r < x->rows; r++) memcpy((uint8_t *)base + r * stride, x->b[r], (size_t)x->colsb);
}
/* TDPBF16PS c, a, b: c[m][n] += a[m].bf16[2k] b[k].bf16[2n], then
 * + a[m].bf16[2k+1] b[k].bf16[2n+1], for k < a.colsb / 4 (SDM order) */
static void emu_dp(int tc, int ta, int tb)
{
    emu_tile *c = emu_use(tc), *a = emu_use(ta), *b = emu_use(tb);
    if (tc == ta || tc == tb || ta == tb) emu_fail("TDPBF16PS operands are not three distinct tiles");
    if (c->rows != a->rows || a->colsb / 4 != b->rows || c->colsb != b->colsb || (a->colsb & 3) ||
        (c->colsb & 3) || (b->colsb & 3))
        emu_fail("TDPBF16PS tile shapes do not match");
    const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000);
    const __mmask16 cols = lanes_(c->colsb / 4);
    for (int m = 0; m < c->rows; m++) {
        __m512 acc = _mm512_maskz_loadu_ps(cols, c->b[m]);
        for (int k = 0; k < a->colsb / 4; k++) {
            int32_t pair;
            memcpy(&pair, a->b[m] + 4 * k, 4);
            __m512i av = _mm512_set1_epi32(pair), bv = _mm512_maskz_loadu_epi32(cols, b->b[k]);
            __m512 alo = bf16_half_daz(_mm512_slli_epi32(av, 16)), blo = bf16_half_daz(_mm512_slli_epi32(bv, 16));
            __m512 ahi = bf16_half_daz(_mm512_and_si512(av, hi)), bhi = bf16_half_daz(_mm512_and_si512(bv, hi));
            acc = ftz(_mm512_fmadd_ps(alo, blo, acc));
            acc = ftz(_mm512_fmadd_ps(ahi, bhi, acc));
        }
        _mm512_mask_storeu_ps(c->b[m], cols, acc);
    }
}
#define T_CONFIG(cfg) emu_loadconfig(cfg)
#define T_RELEASE() emu_release()
#define T_ZERO(t) emu_zero(t)
#define T_LOAD(t, p, stride) emu_load((t), (p), (stride))
#define T_STORE(t, p, stride) emu_store((t), (p), (stride))
#define T_DP(c, a, b) emu_dp((c), (a), (b))
#else
/* GCC's tile intrinsics are asm statements that pass the address alone:
 * they do not tell the compiler which memory they read (the configuration,
 * a staged K step, P2 and Vt written just before). The empty asm with a
 * memory clobber makes every earlier store happen first. */
#define T_READS_MEMORY() __asm__ volatile("" ::: "memory")
#define T_CONFIG(cfg) do { T_READS_MEMORY(); _tile_loadconfig(cfg); } while (0)
#define T_RELEASE() _tile_release()
#define T_ZERO(t) _tile_zero(t)
#define T_LOAD(t, p, stride) do { T_READS_MEMORY(); _tile_loadd(t, (p), (stride)); } while (0)
#define T_STORE(t, p, stride) _tile_stored(t, (p), (stride))
#define T_DP(c, a, b) _tile_dpbf16ps(c, a, b)
#endif

/*
 * Every call configures the tiles itself and releases them at the end: the
 * configuration is per thread and other libraries in the process (oneDNN
 * under torch, say) load their own between our calls. rem_pairs (0..16)
 * shapes the three *_REM tiles for qk's last step (d's last 1..31
 * elements).
 */
static void amx_configure(int rem_pairs)
{
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = TC0; t <= TB1; t++) {
        cfg.rows[t] = TROWS;
        cfg.colsb[t] = 64;
    }
    if (rem_pairs) {
        cfg.rows[TA_REM] = TROWS;
        cfg.colsb[TA_REM] = (uint16_t)(4 * rem_pairs);
        cfg.rows[TB0_REM] = cfg.rows[TB1_REM] = (uint8_t)rem_pairs;
        cfg.colsb[TB0_REM] = cfg.colsb[TB1_REM] = 64;
    }
    T_CONFIG(&cfg);
}

/* stage[r][0..32) = elements [0, n) of row r of src (rows ld apart), then
 * zeros; rows r >= nrows zero: a step of a K tile (or of Vt) that may not
 * be read in place */
static void stage_k_step(int nrows, const uint16_t *src, int64_t ld, int n, uint16_t *stage)
{
    memset(stage, 0, TROWS * TKEYS * sizeof *stage);
    for (int r = 0; r < nrows; r++) memcpy(stage + r * TKEYS, src + r * ld, (size_t)n * sizeof *stage);
}

/* A step's A operand, whose tile reads `width` elements of 16 rows: the
 * rows of src (ld elements apart) in place when all 16 exist and hold
 * exactly width elements of this step, else their n elements copied into
 * stage, zero-padded. *bytes: the operand's row stride. */
static const uint16_t *a_operand(const uint16_t *src, int64_t ld, int nrows, int n, int width, uint16_t *stage,
                                 int64_t *bytes)
{
    if (nrows == TROWS && n == width) {
        *bytes = ld * (int64_t)sizeof *src;
        return src;
    }
    stage_k_step(nrows, src, ld, n, stage);
    *bytes = TKEYS * (int64_t)sizeof *stage;
    return stage;
}

/* One step of a product into C = (TC0 | TC1): A from a (lda bytes per
 * row), B's lanes 0-15 from b and lanes 16-31 64 bytes on, rows ldb bytes
 * apart. (Tile numbers must be literals: hence a macro.) */
#define AMX_STEP(ta, tb0, tb1, a, lda, b, ldb)                         \
    do {                                                               \
        T_LOAD(ta, (a), (lda));                                        \
        T_LOAD(tb0, (b), (ldb));                                       \
        T_LOAD(tb1, (const char *)(const void *)(b) + 64, (ldb));      \
        T_DP(TC0, ta, tb0);                                            \
        T_DP(TC1, ta, tb1);                                            \
    } while (0)

static void qk_panel2_amx(int64_t D, const uint16_t *k, int64_t ldk, int64_t nk, const uint16_t *q2,
                          float *st, float *colmax)
{
    const int64_t steps = D / TKEYS;   /* whole steps of 32 elements of d */
    const int tail = (int)(D - steps * TKEYS), rem = (tail + 1) / 2;   /* then tail elements in rem pairs */
    const int64_t q2bytes = PNR * 4;
    uint16_t stage[TROWS * TKEYS] __attribute__((aligned(64)));
    amx_configure(rem);
    for (int64_t j0 = 0; j0 < nk; j0 += TROWS) {
        const int kr = nk - j0 < TROWS ? (int)(nk - j0) : TROWS;   /* keys in this tile */
        const uint16_t *kt = k + j0 * ldk;
        T_ZERO(TC0);
        T_ZERO(TC1);
        int64_t lda;
        for (int64_t s = 0; s < steps; s++) {
            const uint16_t *a = a_operand(kt + s * TKEYS, ldk, kr, TKEYS, TKEYS, stage, &lda);
            AMX_STEP(TA, TB0, TB1, a, lda, q2 + s * TPAIRS * PNR * 2, q2bytes);
        }
        if (rem) {   /* the last 1..31 elements in rem pairs (an odd tail: staged, partner 0) */
            const uint16_t *a = a_operand(kt + steps * TKEYS, ldk, kr, tail, 2 * rem, stage, &lda);
            AMX_STEP(TA_REM, TB0_REM, TB1_REM, a, lda, q2 + steps * TPAIRS * PNR * 2, q2bytes);
        }
        /* rows past nk (zero keys) land in St's padding (BK_PANEL % 16 == 0) */
        float *c = st + j0 * PNR;
        T_STORE(TC0, c, q2bytes);
        T_STORE(TC1, c + TROWS, q2bytes);
        if (colmax) {
            __m512 m0 = _mm512_loadu_ps(colmax), m1 = _mm512_loadu_ps(colmax + TROWS);
            for (int r = 0; r < kr; r++) {
                m0 = _mm512_max_ps(m0, _mm512_loadu_ps(c + r * PNR));
                m1 = _mm512_max_ps(m1, _mm512_loadu_ps(c + r * PNR + TROWS));
            }
            _mm512_storeu_ps(colmax, m0);
            _mm512_storeu_ps(colmax + TROWS, m1);
        }
    }
    T_RELEASE();
}

/*
 * stage_vt2: vt[c][j] = V[j][c] for j < nk, c < round16(Dv) (0 past Dv),
 * rows ldvt apart; nothing is written at j >= nk (a staged chunk's next
 * block may already be there). As 32-bit words, a row holds key pairs
 * (V[2jp][c], V[2jp+1][c]): built 16 x 16 words at a time, the pairs of 32
 * keys for 16 columns (as pack_v_pairs), then one gather per column and a
 * store of that column's keys.
 */
static void stage_vt2_amx(int64_t nk, const uint16_t *v, int64_t ldv, int64_t Dv, uint16_t *vt, int64_t ldvt)
{
    uint32_t w[TPAIRS * TROWS] __attribute__((aligned(64)));
    const __m512i by_column = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                 _mm512_set1_epi32(TROWS));
    for (int64_t c0 = 0; c0 < Dv; c0 += TROWS) {
        const int nc = Dv - c0 < TROWS ? (int)(Dv - c0) : TROWS;
        const __mmask16 mk = lanes_(nc);
        for (int64_t j0 = 0; j0 < nk; j0 += TKEYS) {
            for (int jp = 0; jp < TPAIRS; jp++) {
                int64_t j = j0 + 2 * jp;
                __m512i lo = _mm512_setzero_si512(), hi = _mm512_setzero_si512();
                if (j < nk) lo = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, v + j * ldv + c0));
                if (j + 1 < nk) hi = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, v + (j + 1) * ldv + c0));
                _mm512_store_si512(w + jp * TROWS, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
            const int keys = nk - j0 < TKEYS ? (int)(nk - j0) : TKEYS;
            const __mmask32 km = keys == TKEYS ? ~(__mmask32)0 : (((__mmask32)1 << keys) - 1);
            for (int c = 0; c < TROWS; c++)   /* row c0 + c: word jp = w[jp][c] */
                _mm512_mask_storeu_epi16(vt + (c0 + c) * ldvt + j0, km,
                                         _mm512_i32gather_epi32(_mm512_add_epi32(by_column, _mm512_set1_epi32(c)), w, 4));
        }
    }
}

static void pv_panel2_amx(int64_t nk, const uint16_t *v, int64_t ldv, int64_t Dv, float *st,
                          const float *alpha, float *ot, float *ct, uint16_t *vpairs,
                          const uint16_t *vt, int64_t ldvt)
{
    const int64_t np = (nk + 1) / 2, npp = (np + TPAIRS - 1) / TPAIRS * TPAIRS;
    uint32_t *p2 = p2_over_st(nk, st);
    /* whole steps: pairs past nk are 0 (St rows there were read above) */
    memset(p2 + np * PNR, 0, (size_t)(npp - np) * PNR * sizeof *p2);
    if (!vt) {   /* not staged for the chunk: transpose the block here */
        stage_vt2_amx(nk, v, ldv, Dv, vpairs, nk);
        vt = vpairs;
        ldvt = nk;
    }

    /* whole steps of 32 keys read from vt in place; the last 1..31 keys
     * from a zero-padded copy (vt holds other keys past nk) */
    uint16_t stage[TROWS * TKEYS] __attribute__((aligned(64)));
    float part[TROWS * PNR] __attribute__((aligned(64)));
    __m512 al[NV];
    for (int u = 0; u < NV; u++) al[u] = _mm512_loadu_ps(alpha + u * VL);
    amx_configure(0);
    for (int64_t c0 = 0; c0 < Dv; c0 += TROWS) {
        const uint16_t *rows = vt + c0 * ldvt;   /* 16 rows: vt has round16(Dv) */
        T_ZERO(TC0);
        T_ZERO(TC1);
        for (int64_t j0 = 0; j0 < nk; j0 += TKEYS) {
            int64_t lda;
            const int n = nk - j0 < TKEYS ? (int)(nk - j0) : TKEYS;
            const uint16_t *a = a_operand(rows + j0, ldvt, TROWS, n, TKEYS, stage, &lda);
            AMX_STEP(TA, TB0, TB1, a, lda, p2 + (j0 / 2) * PNR, PNR * 4);
        }
        T_STORE(TC0, part, PNR * 4);
        T_STORE(TC1, part + TROWS, PNR * 4);
        const int nc = Dv - c0 < TROWS ? (int)(Dv - c0) : TROWS;
        for (int m = 0; m < nc; m++)
            for (int u = 0; u < NV; u++) {
                float *po = ot + (c0 + m) * PNR + u * VL, *pc = ct + (c0 + m) * PNR + u * VL;
                __m512 total = _mm512_loadu_ps(po), comp = _mm512_loadu_ps(pc);
                FN(kahan_update)(al[u], _mm512_load_ps(part + m * PNR + u * VL), &total, &comp);
                _mm512_storeu_ps(po, total);
                _mm512_storeu_ps(pc, comp);
            }
    }
    T_RELEASE();
}
