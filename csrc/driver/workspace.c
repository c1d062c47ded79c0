#include <stdlib.h>
#include "workspace.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define ATTN_HAVE_ATFORK 1
#endif

/*
 * Fork safety. GNU OpenMP's thread pool does not survive fork(): a child
 * process that opens a parallel region after its parent has run one waits
 * forever for workers that were not copied. So once this process has run a
 * multi-threaded region, a forked child runs every region single-threaded
 * (correct, and bitwise the same results, just slower); so does a child of
 * a process where torch (which shares the runtime) may have run one
 * (attn_note_shared_pool). Children started with "spawn"/"forkserver" are
 * unaffected.
 */
static int g_pool_started = 0;       /* this process ran a region with > 1 thread */
static int g_forked_after_pool = 0;  /* this process is such a forked child */

#ifdef ATTN_HAVE_ATFORK
/* Runs in the child only (one thread), right after fork(). */
static void attn_atfork_child(void)
{
    if (ATTN_ATOMIC_LOAD(&g_pool_started)) ATTN_ATOMIC_STORE(&g_forked_after_pool, 1);
    ATTN_ATOMIC_STORE(&g_pool_started, 0);
}
#endif

void attn_runtime_init(void)
{
#ifdef ATTN_HAVE_ATFORK
    static int registered = 0;   /* called once at import, under the GIL */
    if (!registered) {
        registered = 1;
        pthread_atfork(NULL, NULL, attn_atfork_child);
    }
#endif
}

int attn_single_threaded_after_fork(void) { return ATTN_ATOMIC_LOAD(&g_forked_after_pool); }

/* Another library's multi-threaded regions may have started the process's
 * OpenMP pool (torch shares GNU OpenMP with attncore): a forked child must
 * then run single-threaded too. Called before fork (attncore/_core.pyx). */
void attn_note_shared_pool(void) { ATTN_ATOMIC_STORE(&g_pool_started, 1); }

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

int attn_plan_threads(int requested, int64_t units, double work)
{
    int n = requested > 0 ? requested : 1;
#ifndef _OPENMP
    n = 1;
#endif
    if (units < n) n = units > 0 ? (int)units : 1;
    if (work / ATTN_MIN_WORK_PER_THREAD < n) n = work >= 2 * ATTN_MIN_WORK_PER_THREAD
                                                    ? (int)(work / ATTN_MIN_WORK_PER_THREAD) : 1;
    if (ATTN_ATOMIC_LOAD(&g_forked_after_pool)) n = 1;
    return n;
}

void attn_region_starts(int threads)
{
    /* concurrent callers may all store 1: a relaxed atomic store is enough */
    if (threads > 1) ATTN_ATOMIC_STORE(&g_pool_started, 1);
}

int attn_region_threads(int requested, int64_t units, double work)
{
    int n = attn_plan_threads(requested, units, work);
    attn_region_starts(n);
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
