/* Scratch memory for the drivers: 64-byte aligned, checked, never seen by Python. */
#ifndef ATTNCORE_WORKSPACE_H
#define ATTNCORE_WORKSPACE_H
#include <stddef.h>
#include <stdint.h>

#define ATTN_ALIGN 64

/* NULL on failure (or on a size that overflows). */
void *attn_scratch_alloc(size_t bytes);
void attn_scratch_free(void *p);

/* Round n up to a multiple of m (m > 0). */
static inline int64_t attn_round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
static inline int64_t attn_min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t attn_max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* A flag shared by the threads of one region (a failed scratch allocation):
 * set by any thread, read by all before each work unit. */
static inline void attn_flag_set(int *flag)
{
#ifdef _OPENMP
#pragma omp atomic write
#endif
    *flag = 1;
}

static inline int attn_flag_get(const int *flag)
{
    int value;
#ifdef _OPENMP
#pragma omp atomic read
#endif
    value = *flag;
    return value;
}

/* The number of threads a region should use: what was asked for, never more
 * than the work units, at least one; one in a child forked after this
 * process ran a multi-threaded region (see workspace.c). */
int attn_region_threads(int requested, int64_t units);

#endif
