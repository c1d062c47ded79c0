/*
 * attncore C API (plain C99).
 *
 * One descriptor struct per operation, filled in by the Cython layer from
 * already-validated NumPy arrays; one entry point per (operation, dtype):
 * attn_<op>_<f32|f64>(). Every entry point returns an attn_status; C never
 * aborts and never allocates memory that Python sees (outputs are allocated
 * by the caller and passed in).
 *
 * Vocabulary (the same in Python, C, tests and benchmarks):
 *   B  flattened batch count        Hq / Hkv  query / key-value heads
 *   Lq / Lk  query / key lengths    D / Dv    query-key / value head size
 * All element strides and offsets below are in elements, not bytes. The last
 * (feature) dimension of every tensor has unit stride; every other dimension
 * may have any stride (0 for broadcast dimensions, negative for reversed views).
 */
#ifndef ATTNCORE_ATTN_H
#define ATTNCORE_ATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ATTN_OK = 0,
    ATTN_ENOMEM = 1,    /* a scratch allocation failed            -> MemoryError */
    ATTN_EINVAL = 2,    /* a descriptor field is out of range     -> ValueError  */
    ATTN_EISA = 3,      /* kernel level not built or not supported -> RuntimeError */
    ATTN_EINTR = 4      /* stopped early by Ctrl-C (see attn_sigint_guard_begin);  */
                        /* the outputs are incomplete                              */
} attn_status;

/* Kernel levels, in increasing order: X(NAME, name, auto), where auto says
 * whether attn_isa_best may pick the level. avx512vnni is avx512 with the
 * int8 KV cache's scores on VNNI; avx512bf16 has VNNI too; amxbf16 is
 * avx512bf16 with bfloat16 prefill on AMX tiles. avx512bf16emu and
 * amxbf16emu are those levels with their BF16 / AMX instructions emulated
 * and without VNNI (for tests on any AVX-512 CPU): never the best level.
 *
 * A new level is one line here, its kernel file csrc/arch/kern_<name>.c
 * (which defines the tables named in csrc/kernels/ktab.h), the CPU's
 * condition for it in csrc/dispatch/cpu_features.c (cpu_runs) and its
 * flags and probe in setup.py (ISA_FLAGS, ISA_PROBES). */
#define ATTN_ISA_LEVELS(X)                  \
    X(PORTABLE, portable, 1)                \
    X(AVX2, avx2, 1)                        \
    X(AVX512, avx512, 1)                    \
    X(AVX512VNNI, avx512vnni, 1)            \
    X(AVX512BF16EMU, avx512bf16emu, 0)      \
    X(AVX512BF16, avx512bf16, 1)            \
    X(AMXBF16EMU, amxbf16emu, 0)            \
    X(AMXBF16, amxbf16, 1)
#define ATTN_ISA_ENUM_(NAME, name, auto_) ATTN_ISA_##NAME,
typedef enum { ATTN_ISA_LEVELS(ATTN_ISA_ENUM_) ATTN_ISA_COUNT } attn_isa;
#undef ATTN_ISA_ENUM_

/* Score kinds for attn_sdpa_desc.score_kind. */
enum {
    ATTN_SCORE_DOT = 0,       /* s = scale * q . k                               */
    ATTN_SCORE_ADDITIVE = 1   /* s = sum_h w[h] tanh(q[h] + k[h]) (Bahdanau);    */
                              /* q, k are the projected Qp + b and Kp, D = H     */
};

/* attn_sdpa_desc.weighting */
enum { ATTN_WEIGHTS_SOFTMAX = 0, ATTN_WEIGHTS_SIGMOID = 1, ATTN_WEIGHTS_HARD = 2 };

/* Mask kinds for attn_sdpa_desc.mask_kind. */
enum {
    ATTN_MASK_NONE = 0,
    ATTN_MASK_BOOL = 1,   /* uint8: nonzero = may attend (SDPA convention) */
    ATTN_MASK_ADD = 2     /* same dtype as the query: added to the scaled scores */
};

/*
 * Scaled dot-product attention, forward.
 *   out[b,h,i,:] = sum_j softmax_j(scale * q[b,h,i,:] . k[b,g(h),j,:] + mask) v[b,g(h),j,:]
 * with g(h) = h / (Hq / Hkv) (grouped-query attention when Hkv < Hq).
 * Key j is visible from query i when the mask allows it, j <= i + causal_offset
 * (if causal) and j < its valid length (if valid_lens is given).
 */
typedef struct {
    int64_t B, Hq, Hkv, Lq, Lk, D, Dv;

    int score_kind;           /* ATTN_SCORE_* */
    const void *w_score;      /* additive: (D,) score weights of the dtype */

    const void *q;  const int64_t *q_boff;  int64_t q_sh, q_sl;
    const void *k;  const int64_t *k_boff;  int64_t k_sh, k_sl;
    const void *v;  const int64_t *v_boff;  int64_t v_sh, v_sl;
    void *out;      const int64_t *o_boff;  int64_t o_sh, o_sl;

    int mask_kind;  /* ATTN_MASK_* */
    const void *mask; const int64_t *m_boff; int64_t m_sh, m_si, m_sj;

    int causal;              /* 0 or 1 */
    int64_t causal_offset;   /* 0 = top-left, Lk - Lq = bottom-right */

    /* Valid lengths (d2l masked_softmax): query i of head h, batch b sees
     * keys j < valid_lens[vl_boff[b] + h * vl_sh + i * vl_si]; strides are 0
     * where lengths are shared. NULL for none. */
    const int64_t *valid_lens; const int64_t *vl_boff; int64_t vl_sh, vl_si;

    double scale;

    /* Dropout on the normalised weights: weight (b,h,i,j) is kept when
     * attn_dropout_bits(seed, ((b*Hq + h)*Lq + i)*Lk + j) >= drop_threshold,
     * and kept weights are multiplied by drop_scale (= 1 / (1 - p)). */
    uint32_t drop_threshold;  /* 0 = no dropout; else round(p * 2^24) */
    uint64_t drop_seed;
    double drop_scale;

    void *weights;  /* NULL, or contiguous (B, Hq, Lq, Lk) of the dtype */
    void *lse;      /* NULL, or contiguous (B, Hq, Lq) of the dtype */

    /* Variants of the scores (zero / NULL when unused). Query i of batch b
     * sits at key position p_i = i + offset_b: offset_b = causal_offset, or
     * Lk_b - Lq_b when offset_bottom_right (varlen batches differ). Key j is
     * visible when it passes the mask, j <= p_i (causal), j < valid_len,
     * p_i - window_left <= j <= p_i + window_right (each side only when >= 0)
     * and j < Lk_b. */
    int offset_bottom_right;
    int64_t window_left, window_right;   /* -1: that side unbounded */
    /* ALiBi: -slope * |p_i - j| is added to the scaled score; slopes (T) of
     * query head h, batch b at alibi[al_boff[b] + h * al_sh] */
    const void *alibi; const int64_t *al_boff; int64_t al_sh;
    /* logit soft-capping: score -> softcap * tanh(score / softcap), applied
     * to the scaled score before masks and biases (Gemma 2); 0: none */
    double softcap;
    /* attention sinks: one extra logit per query head, sinks[h * sk_sh] (T),
     * in every row's softmax denominator with no value (gpt-oss) */
    const void *sinks; int64_t sk_sh;
    /* packed variable-length batches: sequence b has seq_lq[b] <= Lq queries
     * and seq_lk[b] <= Lk keys (its rows start at the batch offsets) */
    const int64_t *seq_lq, *seq_lk;

    /* How scores become weights: ATTN_WEIGHTS_SOFTMAX (normalised over the
     * keys), or ATTN_WEIGHTS_SIGMOID: w = sigmoid(score + sigmoid_bias), no
     * normalisation (sigmoid attention; lse is not defined). */
    int weighting;
    double sigmoid_bias;
    /* Hard attention (ATTN_WEIGHTS_HARD): each row keeps its hard_k best
     * keys by score (ties: the smaller key); hard_sample adds Gumbel noise
     * keyed by (hard_seed, b, h, i, j) first (a draw from the softmax);
     * hard_softmax weights the kept keys by a softmax of their scores, else
     * each kept key weighs 1 / hard_k (k = 1: the argmax's value row).
     * hard_indices: NULL or contiguous (B, Hq, Lq, hard_k) int64, -1 for
     * empty slots. float32 / float64 entries only; no lse, no split. */
    int64_t hard_k;
    int hard_sample, hard_softmax;
    uint64_t hard_seed;
    int64_t *hard_indices;

    /* Quantized keys/values (the _kvi8 entry): key j of kv head h, batch b
     * is k[...] * k_scale[ks_boff[b] + h * ks_sh + j] (float32), likewise
     * for v. NULL for every other entry. */
    const void *k_scale; const int64_t *ks_boff; int64_t ks_sh;
    const void *v_scale; const int64_t *vs_boff; int64_t vs_sh;

    /* Ctrl-C: when cancellable, the kernel stops early with ATTN_EINTR once
     * the SIGINT count differs from cancel_epoch (attn_sigint_guard_begin). */
    int cancellable;
    uint64_t cancel_epoch;
} attn_sdpa_desc;

attn_status attn_sdpa_f32(const attn_sdpa_desc *desc, int isa, int num_threads);
attn_status attn_sdpa_f64(const attn_sdpa_desc *desc, int isa, int num_threads);
/* bfloat16 / float16 q, k, v and out (their 16-bit patterns, strides in
 * elements), computed in float32; masks, weights and lse are float32.
 * Dot-product scores only (score_kind ATTN_SCORE_DOT). */
attn_status attn_sdpa_bf16(const attn_sdpa_desc *desc, int isa, int num_threads);
attn_status attn_sdpa_f16(const attn_sdpa_desc *desc, int isa, int num_threads);
/* float32 q and out over a KV cache stored as bfloat16, float16, or int8
 * with per-(batch, head, position) float32 scales (k_scale / v_scale). */
attn_status attn_sdpa_f32_kvbf16(const attn_sdpa_desc *desc, int isa, int num_threads);
attn_status attn_sdpa_f32_kvf16(const attn_sdpa_desc *desc, int isa, int num_threads);
attn_status attn_sdpa_f32_kvi8(const attn_sdpa_desc *desc, int isa, int num_threads);

/* How a call would run (tests assert that they reach the path they name). */
enum { ATTN_PATH_PANEL = 0, ATTN_PATH_ROWS = 1 };
enum { ATTN_ADDITIVE_NONE = 0, ATTN_ADDITIVE_PRODUCT = 1, ATTN_ADDITIVE_TANH = 2 };
typedef struct {
    int path;               /* ATTN_PATH_* */
    int additive_form;      /* ATTN_ADDITIVE_* */
    int64_t rows_per_unit;  /* query rows one work unit takes (panel width or rows) */
    int64_t units;          /* work units, key chunks included */
    int64_t chunks;         /* key chunks per row (> 1: split-K with a merge) */
    int64_t chunk_len;      /* keys per chunk */
    int64_t key_block;      /* keys per block inside a chunk */
    int64_t key_blocks;     /* key blocks the units visit in all (causal, windows and
                             * varlen lengths skip the rest) */
    int threads;            /* threads the region would use */
    int native_pairs;       /* panel path on the level's native 16-bit dot products
                             * (bfloat16 on avx512bf16 / amxbf16: K and V read as
                             * they are) */
    int widened_chunks;     /* panel path, 16-bit or int8 K/V: each thread keeps a
                             * key chunk widened to float32 across panels */
    int value_tiles;        /* panel path: each thread keeps a key chunk's V in
                             * column tiles (any storage type) across panels */
    int int8_integer;       /* rows path over int8 K/V on a level that multiplies
                             * them in integers (avx2, the VNNI levels): weights
                             * rounded to int16 for P V, and query rows for Q K
                             * while D <= 2048 (I8DOT_MAX_D; past it Q K runs
                             * the float32 kernel) */
    int amx_tiles;          /* native_pairs on AMX tiles (amxbf16) */
    int64_t group_panels;   /* panel path: panels of one kv head a work item runs
                             * block by block together (1: one panel per item) */
    int half_panels;        /* panel path: a head's last panel holds at most half
                             * a panel's rows and runs the half-panel kernels
                             * (packed sequences: some may) */
} attn_plan_info;

attn_status attn_sdpa_plan_f32(const attn_sdpa_desc *desc, int isa, int num_threads,
                               attn_plan_info *info);
attn_status attn_sdpa_plan_f64(const attn_sdpa_desc *desc, int isa, int num_threads,
                               attn_plan_info *info);
attn_status attn_sdpa_plan_bf16(const attn_sdpa_desc *desc, int isa, int num_threads,
                                attn_plan_info *info);
attn_status attn_sdpa_plan_f16(const attn_sdpa_desc *desc, int isa, int num_threads,
                               attn_plan_info *info);
attn_status attn_sdpa_plan_f32_kvbf16(const attn_sdpa_desc *desc, int isa, int num_threads,
                                      attn_plan_info *info);
attn_status attn_sdpa_plan_f32_kvf16(const attn_sdpa_desc *desc, int isa, int num_threads,
                                     attn_plan_info *info);
attn_status attn_sdpa_plan_f32_kvi8(const attn_sdpa_desc *desc, int isa, int num_threads,
                                    attn_plan_info *info);

/*
 * Linear layer:  y[m][n] = sum_k x[m][k] w[n][k] + bias[n]   (y = x W^T + b)
 * x: (M, K) with row stride x_sm and unit stride along k; w: (N, K) with any
 * strides; y: (M, N) with row stride y_sm; bias: (N,) contiguous, or NULL.
 */
typedef struct {
    int64_t M, N, K;
    const void *x; int64_t x_sm;
    const void *w; int64_t w_sn, w_sk;
    const void *bias;
    void *y; int64_t y_sm;
    int cancellable; uint64_t cancel_epoch;   /* as in attn_sdpa_desc */
} attn_linear_desc;

attn_status attn_linear_f32(const attn_linear_desc *desc, int isa, int num_threads);
attn_status attn_linear_f64(const attn_linear_desc *desc, int isa, int num_threads);

/* How attn_linear would run a problem (for tests that assert the path). */
enum {
    ATTN_LINEAR_PATH_NONE = 0,            /* nothing to multiply (M, N or K is 0) */
    ATTN_LINEAR_PATH_ROWS = 1,            /* few rows: dot products with W's rows, no packing */
    ATTN_LINEAR_PATH_PACKED_ROWS = 2,     /* W packed into panels by register transposes */
    ATTN_LINEAR_PATH_PACKED_STRIDED = 3   /* W packed element by element (w_sk != 1) */
};
typedef struct {
    int path;         /* ATTN_LINEAR_PATH_* */
    int64_t units;    /* work units */
    int threads;      /* threads the region would use */
} attn_linear_plan_info;

attn_status attn_linear_plan_f32(const attn_linear_desc *desc, int isa, int num_threads,
                                 attn_linear_plan_info *info);
attn_status attn_linear_plan_f64(const attn_linear_desc *desc, int isa, int num_threads,
                                 attn_linear_plan_info *info);

/* The 24-bit uniform draw that decides dropout for one weight (exposed for the
 * pure-Python reference and the tests, which reproduce it bit for bit). */
uint32_t attn_dropout_bits(uint64_t seed, uint64_t counter);

/* CPU detection and the kernel table (csrc/dispatch). */
int attn_isa_built(int isa);       /* compiled into this build */
int attn_isa_supported(int isa);   /* built, and the CPU + OS can run it */
int attn_isa_best(void);           /* highest supported level */
const char *attn_isa_name(int isa);
/* Comma-separated CPU features detected at first call, e.g. "avx2,fma,avx512f". */
const char *attn_cpu_features(void);
/* The compiler that built the extension, e.g. "gcc 12.2.0". */
const char *attn_compiler(void);

/* OpenMP's current maximum thread count for the calling thread (so that
 * OMP_NUM_THREADS and threadpoolctl apply), 1 without OpenMP. */
int attn_default_threads(void);
int attn_openmp_enabled(void);
/* Ctrl-C for long calls, from the thread that handles SIGINT (Python's main
 * thread): while the guard is active, SIGINT also bumps a counter that the
 * kernels poll between key blocks, then reaches the previous handler
 * (Python's, which raises KeyboardInterrupt when the call returns).
 * begin() returns 1 and the current count in *epoch if it installed the
 * guard; 0 when SIGINT is ignored or has its default action (then nothing
 * is installed and the call runs to the end). Not reentrant. */
int attn_sigint_guard_begin(uint64_t *epoch);
void attn_sigint_guard_end(void);
/* Test hook: act as if SIGINT arrived (bumps the counter only). */
void attn_sigint_simulate(void);

/* Called once at import: registers the fork handler (see workspace.c). */
void attn_runtime_init(void);
/* 1 in a child forked after the parent ran a multi-threaded region: every
 * region then runs single-threaded (GNU OpenMP's pool does not survive fork). */
int attn_single_threaded_after_fork(void);
/* Mark the OpenMP pool as possibly started by another library (torch shares
 * GNU OpenMP): a child forked from now on runs single-threaded. */
void attn_note_shared_pool(void);

/* Test hooks: apply one ISA's vector exp2 / tanh to n floats. */
attn_status attn_vexp2_f32(int isa, const float *x, float *y, int64_t n);
attn_status attn_vtanh_f32(int isa, const float *x, float *y, int64_t n);

#ifdef __cplusplus
}
#endif
#endif /* ATTNCORE_ATTN_H */
