/*
 * Ctrl-C for long calls. Python runs its SIGINT handler (KeyboardInterrupt)
 * only between bytecodes, so a kernel running with the GIL released would
 * finish its whole call first. While a guard is active, our handler counts
 * the signal, which the kernels poll between key blocks (attn_cancelled in
 * workspace.h), and then hands the signal on to the previous handler, so
 * Python still raises KeyboardInterrupt as soon as the call returns.
 *
 * Only Python's main thread installs the guard (attncore/_core.pyx), one
 * call at a time, so begin/end never nest or race.
 */
#include <string.h>
#include "attncore/attn.h"
#include "workspace.h"

uint64_t attn_g_sigint_count = 0;

void attn_sigint_simulate(void) { ATTN_ATOMIC_INC(&attn_g_sigint_count); }

#if defined(__unix__) || defined(__APPLE__)
#include <signal.h>

static struct sigaction g_previous;

static void attn_on_sigint(int sig, siginfo_t *info, void *context)
{
    ATTN_ATOMIC_INC(&attn_g_sigint_count);   /* lock-free: async-signal-safe */
    if (g_previous.sa_flags & SA_SIGINFO) {
        if (g_previous.sa_sigaction) g_previous.sa_sigaction(sig, info, context);
    } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
        g_previous.sa_handler(sig);
    }
}

int attn_sigint_guard_begin(uint64_t *epoch)
{
    struct sigaction current, ours;
    if (sigaction(SIGINT, NULL, &current) != 0) return 0;
    /* SIG_DFL ends the process and SIG_IGN ignores the key: nothing to do */
    if (!(current.sa_flags & SA_SIGINFO) &&
        (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN))
        return 0;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = attn_on_sigint;
    ours.sa_flags = SA_SIGINFO | (current.sa_flags & (SA_RESTART | SA_ONSTACK));
    sigemptyset(&ours.sa_mask);
    g_previous = current;
    *epoch = ATTN_ATOMIC_LOAD(&attn_g_sigint_count);
    return sigaction(SIGINT, &ours, NULL) == 0;
}

void attn_sigint_guard_end(void) { sigaction(SIGINT, &g_previous, NULL); }

#else  /* no POSIX signals: calls run to the end */
int attn_sigint_guard_begin(uint64_t *epoch) { (void)epoch; return 0; }
void attn_sigint_guard_end(void) {}
#endif
