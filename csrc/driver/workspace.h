/* Scratch memory, checked size arithmetic, the region's failure flag and the
 * thread count of a region: what every driver shares. Never seen by Python. */
#ifndef ATTNCORE_WORKSPACE_H
#define ATTNCORE_WORKSPACE_H
#include <stddef.h>
#include <stdint.h>

#define ATTN_ALIGN 64

/* NULL on failure (or on a size that overflows). */
void *attn_scratch_alloc(size_t bytes);
void attn_scratch_free(void *p);

/* n elements of `size` bytes, or NULL when n < 0 or n * size overflows. */
static inline void *attn_scratch_alloc_n(int64_t n, size_t size)
{
    if (n < 0 || (uint64_t)n > SIZE_MAX / size) return NULL;
    return attn_scratch_alloc((size_t)n * size);
}

/* Round n up to a multiple of m (m > 0). */
static inline int64_t attn_round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
static inline int64_t attn_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t attn_max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* a * b for a, b >= 0, or -1 when it overflows int64 (size products of a
 * descriptor's dims are checked with this before they size anything). */
static inline int64_t attn_mul_checked(int64_t a, int64_t b)
{
    if (a < 0 || b < 0) return -1;
    if (a != 0 && b > INT64_MAX / a) return -1;
    return a * b;
}

/* Atomic loads and stores of shared flags and counters (GCC/Clang builtins;
 * plain volatile accesses elsewhere, where no other compiler is supported). */
#if defined(__GNUC__) || defined(__clang__)
#define ATTN_ATOMIC_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define ATTN_ATOMIC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define ATTN_ATOMIC_INC(p) __atomic_add_fetch((p), 1, __ATOMIC_RELAXED)
#else
#define ATTN_ATOMIC_LOAD(p) (*(volatile __typeof__(*(p)) *)(p))
#define ATTN_ATOMIC_STORE(p, v) (*(volatile __typeof__(*(p)) *)(p) = (v))
#define ATTN_ATOMIC_INC(p) (++*(volatile __typeof__(*(p)) *)(p))
#endif

/* A flag shared by the threads of one region (a failed scratch allocation,
 * an interrupt): set by any thread, read by all before each work unit. */
static inline void attn_flag_set(int *flag) { ATTN_ATOMIC_STORE(flag, 1); }
static inline int attn_flag_get(const int *flag) { return ATTN_ATOMIC_LOAD(flag); }

/* SIGINT count (csrc/driver/interrupt.c); a cancellable call stops when it
 * differs from the value it started with. */
extern uint64_t attn_g_sigint_count;
static inline int attn_cancelled(int cancellable, uint64_t epoch)
{
    return cancellable && ATTN_ATOMIC_LOAD(&attn_g_sigint_count) != epoch;
}

/* The number of threads a region should use: what was asked for, never more
 * than the work units, and no more than the work pays for (one thread per
 * ATTN_MIN_WORK_PER_THREAD multiply-adds: waking a thread, and waiting for
 * it at the barrier when another process holds its core, costs more than a
 * small problem's whole run); at least one; one in a child forked after
 * this process ran a multi-threaded region (see workspace.c). Results never
 * depend on the count (the drivers split work by problem size only). */
#define ATTN_MIN_WORK_PER_THREAD ((double)(1 << 21))
int attn_region_threads(int requested, int64_t units, double work);
/* The same count for a plan that does not run (no region starts: a plan
 * must not make later forked children single-threaded), and the mark a
 * region that does run with that count leaves (attn_region_threads is the
 * two together). */
int attn_plan_threads(int requested, int64_t units, double work);
void attn_region_starts(int threads);

#endif
