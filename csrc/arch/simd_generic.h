/*
 * The portable SIMD mapping: a "vector" is a small array of T handled with
 * plain loops, which the compiler vectorises with the baseline instruction
 * set (SSE2 on x86-64). Included by kern_portable.c for float and double
 * after it defines T, VL, SCALAR_EXP2, SCALAR_INV1P_EXP2 and SCALAR_TANH.
 */
#include <math.h>

typedef struct { T x[VL]; } vec;

static inline vec v_load(const T *p) { vec r; for (int i = 0; i < VL; i++) r.x[i] = p[i]; return r; }
static inline void v_store(T *p, vec a) { for (int i = 0; i < VL; i++) p[i] = a.x[i]; }
static inline vec v_load_n(const T *p, int n) { vec r; for (int i = 0; i < VL; i++) r.x[i] = i < n ? p[i] : (T)0; return r; }
static inline void v_store_n(T *p, vec a, int n) { for (int i = 0; i < VL && i < n; i++) p[i] = a.x[i]; }
static inline vec v_set1(T s) { vec r; for (int i = 0; i < VL; i++) r.x[i] = s; return r; }
static inline vec v_zero(void) { return v_set1((T)0); }
static inline vec v_add(vec a, vec b) { for (int i = 0; i < VL; i++) a.x[i] += b.x[i]; return a; }
static inline vec v_sub(vec a, vec b) { for (int i = 0; i < VL; i++) a.x[i] -= b.x[i]; return a; }
static inline vec v_mul(vec a, vec b) { for (int i = 0; i < VL; i++) a.x[i] *= b.x[i]; return a; }
static inline vec v_div(vec a, vec b) { for (int i = 0; i < VL; i++) a.x[i] /= b.x[i]; return a; }
static inline vec v_fma(vec a, vec b, vec c) { for (int i = 0; i < VL; i++) c.x[i] += a.x[i] * b.x[i]; return c; }
/* like the x86 max instructions: the second operand when either is NaN */
static inline vec v_max(vec a, vec b) { for (int i = 0; i < VL; i++) a.x[i] = a.x[i] > b.x[i] ? a.x[i] : b.x[i]; return a; }
static inline T v_hsum(vec a) { T s = 0; for (int i = 0; i < VL; i++) s += a.x[i]; return s; }
static inline T v_hmax(vec a) { T s = a.x[0]; for (int i = 1; i < VL; i++) s = a.x[i] > s ? a.x[i] : s; return s; }
static inline vec v_neginf_to_zero(vec a) { for (int i = 0; i < VL; i++) if (a.x[i] == -INFINITY) a.x[i] = 0; return a; }
static inline vec v_nan_to_zero(vec a) { for (int i = 0; i < VL; i++) if (a.x[i] != a.x[i]) a.x[i] = 0; return a; }
/* x where a != 0 (NaN included), else 0 */
static inline vec v_keep_nonzero(vec a, vec x) { for (int i = 0; i < VL; i++) if (a.x[i] == 0) x.x[i] = 0; return x; }
static inline vec v_exp2(vec a) { for (int i = 0; i < VL; i++) a.x[i] = SCALAR_EXP2(a.x[i]); return a; }
static inline vec v_inv1p_exp2_shifted(vec a) { for (int i = 0; i < VL; i++) a.x[i] = SCALAR_INV1P_EXP2(a.x[i]); return a; }
static inline vec v_recip(vec a) { for (int i = 0; i < VL; i++) a.x[i] = (T)1 / a.x[i]; return a; }
#define v_exp2_nonpos v_exp2
/* soft-capping's tanh: the C library's (SCALAR_TANH), per lane */
#define V_HAS_TANH_SOFTCAP
static inline vec v_tanh_softcap(vec a) { for (int i = 0; i < VL; i++) a.x[i] = SCALAR_TANH(a.x[i]); return a; }
