/*
 * Portable float32 kernels (no ISA flags): csrc/kernels/tiles.inc.c over the
 * generic mapping in simd_generic.h, which the compiler vectorises with the
 * baseline instruction set (SSE2 on x86-64). exp2 uses the same algorithm as
 * the vector ISAs (vmath.h). float64 is kern_portable_f64.c.
 */
#include <math.h>
#include "../kernels/ktab.h"
#include "../kernels/vmath.h"

typedef float T;
#define VL 4
#define NV 2
#define MR_QK 4
#define MR_PV 4
#define ROWS_MAX 2
#define PV_ROWS_VECS 3   /* 16 SSE registers (tiles_io.inc.c) */
#define MR_ADD 4
#define BK_PANEL 128
#define BK_ROWS 256
#define GEMM_KC 512
#define GEMM_MC 32
#define INV1P_SHIFT 0.0f
#define SCALAR_EXP2 attn_exp2_f32
#define SCALAR_INV1P_EXP2 attn_inv1p_exp2_f32
#define SCALAR_TANH tanhf
#define FN(name) name##_portable_f32
#define KTAB_TYPE attn_ktab_f32
#define PREP_TYPE attn_prep_f32
#define KTAB_NAME attn_ktab_portable_f32
#define ISA_NAME "portable"
#include "simd_generic.h"
#include "../kernels/tiles.inc.c"

/* The rows path's QK block: 4 rows x 1 key, plain horizontal sums. */
#define QK_ROWS 4
#define QK_KEYS 1
static inline void v_hsum_block(const vec a[4], T *out)
{
    for (int i = 0; i < 4; i++) out[i] = v_hsum(a[i]);
}

/* ---- the input/output tables (csrc/kernels/tiles_io.inc.c) ---- */
#define IT float
#define IO_SAME 1
#define v_load_in(p) v_load(p)
#define v_load_in_n(p, n) v_load_n((p), (n))
#define in_to_T(x) (x)
#define T_to_out(x) (x)
#define FNIO(name) name##_portable_io_f32
#define KIO_TYPE attn_kio_f32
#define KIO_NAME attn_kio_portable_f32
#define IO_DTYPE "float32"
#include "../kernels/tiles_io.inc.c"

/* 16-bit inputs through the scalar conversions of vmath.h */
static inline vec v_load_bf16_n(const uint16_t *p, int n)
{
    vec r;
    for (int i = 0; i < VL; i++) r.x[i] = i < n ? attn_bf16_to_f32(p[i]) : 0.0f;
    return r;
}
static inline vec v_load_f16_n(const uint16_t *p, int n)
{
    vec r;
    for (int i = 0; i < VL; i++) r.x[i] = i < n ? attn_f16_to_f32(p[i]) : 0.0f;
    return r;
}
#define IT uint16_t
#define IO_SAME 0
#define v_load_in(p) v_load_bf16_n((p), VL)
#define v_load_in_n(p, n) v_load_bf16_n((p), (n))
#define in_to_T(x) attn_bf16_to_f32(x)
#define T_to_out(x) attn_f32_to_bf16(x)
#define FNIO(name) name##_portable_io_bf16
#define KIO_TYPE attn_kio_bf16
#define KIO_NAME attn_kio_portable_bf16
#define IO_DTYPE "bfloat16"
#include "../kernels/tiles_io.inc.c"

#define IT uint16_t
#define IO_SAME 0
#define v_load_in(p) v_load_f16_n((p), VL)
#define v_load_in_n(p, n) v_load_f16_n((p), (n))
#define in_to_T(x) attn_f16_to_f32(x)
#define T_to_out(x) attn_f32_to_f16(x)
#define FNIO(name) name##_portable_io_f16
#define KIO_TYPE attn_kio_f16
#define KIO_NAME attn_kio_portable_f16
#define IO_DTYPE "float16"
#include "../kernels/tiles_io.inc.c"

/* int8 keys/values of the quantized KV cache (scales applied by the entries) */
static inline vec v_load_i8_n(const int8_t *p, int n)
{
    vec r;
    for (int i = 0; i < VL; i++) r.x[i] = i < n ? (float)p[i] : 0.0f;
    return r;
}
#define v_load_i8(p) v_load_i8_n((p), VL)
#define IT int8_t
#define IO_SAME 0
#define IO_KV_ONLY 1
#define v_load_in(p) v_load_i8(p)
#define v_load_in_n(p, n) v_load_i8_n((p), (n))
#define in_to_T(x) ((T)(x))
#define T_to_out(x) ((int8_t)0)   /* unused: no int8 outputs */
#define FNIO(name) name##_portable_io_i8
#define KIO_TYPE attn_kio_i8
#define KIO_NAME attn_kio_portable_i8
#define IO_DTYPE "int8"
#include "../kernels/tiles_io.inc.c"
