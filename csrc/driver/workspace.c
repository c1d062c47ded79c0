#include <stdlib.h>
#include "workspace.h"
#ifdef _OPENMP
#include <omp.h>
#endif

void *attn_scratch_alloc(size_t bytes)
{
    if (bytes == 0) bytes = ATTN_ALIGN;
    if (bytes > (SIZE_MAX - ATTN_ALIGN)) return NULL;
    bytes = (bytes + ATTN_ALIGN - 1) / ATTN_ALIGN * ATTN_ALIGN;
    void *p = NULL;
    if (posix_memalign(&p, ATTN_ALIGN, bytes) != 0) return NULL;
    return p;
}

void attn_scratch_free(void *p) { free(p); }

int attn_region_threads(int requested, int64_t units)
{
    int n = requested > 0 ? requested : 1;
#ifndef _OPENMP
    n = 1;
#endif
    if (units < n) n = units > 0 ? (int)units : 1;
    return n;
}

int attn_default_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int attn_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
