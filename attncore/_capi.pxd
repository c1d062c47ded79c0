# The only extern block: declarations of csrc/include/attncore/attn.h.
from libc.stdint cimport int64_t, uint32_t, uint64_t

cdef extern from "attncore/attn.h" nogil:
    ctypedef enum attn_status:
        ATTN_OK
        ATTN_ENOMEM
        ATTN_EINVAL
        ATTN_EISA
        ATTN_EINTR

    ctypedef struct attn_sdpa_desc:
        int64_t B, Hq, Hkv, Lq, Lk, D, Dv
        int score_kind
        const void *w_score
        const void *q
        const int64_t *q_boff
        int64_t q_sh, q_sl
        const void *k
        const int64_t *k_boff
        int64_t k_sh, k_sl
        const void *v
        const int64_t *v_boff
        int64_t v_sh, v_sl
        void *out
        const int64_t *o_boff
        int64_t o_sh, o_sl
        int mask_kind
        const void *mask
        const int64_t *m_boff
        int64_t m_sh, m_si, m_sj
        int causal
        int64_t causal_offset
        const int64_t *valid_lens
        const int64_t *vl_boff
        int64_t vl_sh, vl_si
        double scale
        uint32_t drop_threshold
        uint64_t drop_seed
        double drop_scale
        void *weights
        void *lse
        int weighting
        double sigmoid_bias
        int64_t hard_k
        int hard_sample, hard_softmax
        uint64_t hard_seed
        int64_t *hard_indices
        int offset_bottom_right
        int64_t window_left, window_right
        const void *alibi
        const int64_t *al_boff
        int64_t al_sh
        double softcap
        const void *sinks
        int64_t sk_sh
        const int64_t *seq_lq
        const int64_t *seq_lk
        const void *k_scale
        const int64_t *ks_boff
        int64_t ks_sh
        const void *v_scale
        const int64_t *vs_boff
        int64_t vs_sh
        int cancellable
        uint64_t cancel_epoch

    ctypedef struct attn_plan_info:
        int path
        int additive_form
        int64_t rows_per_unit, units, chunks, chunk_len, key_block, key_blocks
        int threads
        int native_pairs
        int widened_chunks
        int value_tiles
        int int8_integer
        int amx_tiles
        int64_t group_panels
        int half_panels

    ctypedef struct attn_linear_desc:
        int64_t M, N, K
        const void *x
        int64_t x_sm
        const void *w
        int64_t w_sn, w_sk
        const void *bias
        void *y
        int64_t y_sm
        int cancellable
        uint64_t cancel_epoch

    attn_status attn_linear_f32(const attn_linear_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_linear_f64(const attn_linear_desc *desc, int isa, int num_threads) noexcept
    ctypedef struct attn_linear_plan_info:
        int path
        int64_t units
        int threads
    attn_status attn_linear_plan_f32(const attn_linear_desc *desc, int isa, int num_threads,
                                     attn_linear_plan_info *info) noexcept
    attn_status attn_linear_plan_f64(const attn_linear_desc *desc, int isa, int num_threads,
                                     attn_linear_plan_info *info) noexcept
    attn_status attn_sdpa_f32(const attn_sdpa_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_sdpa_f64(const attn_sdpa_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_sdpa_bf16(const attn_sdpa_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_sdpa_f16(const attn_sdpa_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_sdpa_f32_kvbf16(const attn_sdpa_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_sdpa_f32_kvf16(const attn_sdpa_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_sdpa_f32_kvi8(const attn_sdpa_desc *desc, int isa, int num_threads) noexcept
    attn_status attn_sdpa_plan_f32_kvbf16(const attn_sdpa_desc *desc, int isa, int num_threads,
                                          attn_plan_info *info) noexcept
    attn_status attn_sdpa_plan_f32_kvf16(const attn_sdpa_desc *desc, int isa, int num_threads,
                                         attn_plan_info *info) noexcept
    attn_status attn_sdpa_plan_f32_kvi8(const attn_sdpa_desc *desc, int isa, int num_threads,
                                        attn_plan_info *info) noexcept
    attn_status attn_sdpa_plan_bf16(const attn_sdpa_desc *desc, int isa, int num_threads,
                                    attn_plan_info *info) noexcept
    attn_status attn_sdpa_plan_f16(const attn_sdpa_desc *desc, int isa, int num_threads,
                                   attn_plan_info *info) noexcept
    attn_status attn_sdpa_plan_f32(const attn_sdpa_desc *desc, int isa, int num_threads,
                                   attn_plan_info *info) noexcept
    attn_status attn_sdpa_plan_f64(const attn_sdpa_desc *desc, int isa, int num_threads,
                                   attn_plan_info *info) noexcept
    int attn_sigint_guard_begin(uint64_t *epoch) noexcept
    void attn_sigint_guard_end() noexcept
    void attn_sigint_simulate() noexcept
    uint32_t attn_dropout_bits(uint64_t seed, uint64_t counter) noexcept
    int attn_isa_built(int isa) noexcept
    int attn_isa_supported(int isa) noexcept
    int attn_isa_best() noexcept
    const char *attn_isa_name(int isa) noexcept
    const char *attn_cpu_features() noexcept
    const char *attn_compiler() noexcept
    int attn_default_threads() noexcept
    int attn_openmp_enabled() noexcept
    void attn_runtime_init() noexcept
    int attn_single_threaded_after_fork() noexcept
    void attn_note_shared_pool() noexcept
    attn_status attn_vexp2_f32(int isa, const float *x, float *y, int64_t n) noexcept
    attn_status attn_vtanh_f32(int isa, const float *x, float *y, int64_t n) noexcept

    enum:
        ATTN_PATH_PANEL
        ATTN_PATH_ROWS
        ATTN_ADDITIVE_NONE
        ATTN_ADDITIVE_PRODUCT
        ATTN_ADDITIVE_TANH
        ATTN_SCORE_DOT
        ATTN_SCORE_ADDITIVE
        ATTN_MASK_NONE
        ATTN_MASK_BOOL
        ATTN_MASK_ADD
        ATTN_WEIGHTS_SOFTMAX
        ATTN_WEIGHTS_SIGMOID
        ATTN_WEIGHTS_HARD
        ATTN_ISA_PORTABLE
        ATTN_ISA_AVX2
        ATTN_ISA_AVX512
        ATTN_ISA_COUNT
