/*
 * cuda_workspace.cu: grow-only device scratch buffers, freed at exit (see cuda_workspace.h).
 *
 * Freeing at exit: atexit handlers run in the reverse order of their registration, and the one
 * here is registered after the first allocation succeeded -- after the CUDA runtime started and
 * registered its own teardown -- so it runs while the runtime still works.
 */
#include "common/cuda_workspace.h"

#include <stdlib.h>

#include "common/cuda_utils.h"

static CudaWorkspace *g_workspaces; /* every workspace that holds (or held) memory */
static int g_at_exit;

static void free_at_exit(void) { cuda_workspace_free_all(); }

extern "C" void *cuda_workspace(CudaWorkspace *w, size_t bytes)
{
    if (w->ptr && w->bytes >= bytes)
        return w->ptr;
    cuda_free(w->ptr); /* waits for the kernels still using the old buffer */
    w->ptr = NULL, w->bytes = 0;
    w->ptr = cuda_try_alloc(bytes, w->what);
    if (!w->ptr)
        return NULL;
    w->bytes = bytes ? bytes : 1;
    if (!w->listed) {
        w->next = g_workspaces, g_workspaces = w, w->listed = 1;
        if (!g_at_exit && atexit(free_at_exit) == 0)
            g_at_exit = 1;
    }
    return w->ptr;
}

extern "C" void cuda_workspace_free_all(void)
{
    for (CudaWorkspace *w = g_workspaces; w; w = w->next) {
        if (!w->ptr)
            continue;
        /* Not CUDA_CHECK: this also runs at exit, where exiting again is not allowed, and where a
         * failure can only repeat the error that is ending the process (a kernel fault leaves
         * every later call failing); the memory goes with the process either way. */
        if (cudaFree(w->ptr) != cudaSuccess)
            (void)cudaGetLastError();
        w->ptr = NULL, w->bytes = 0;
    }
}
