/* verify.c: see verify.h. */
#include "verify.h"

#include <stdarg.h>
#include <stdio.h>

const int VERIFY_LENGTHS[] = {1, 2, 17, 63, 64, 65, 127, 128, 129, 257, 1023};
const int VERIFY_N_LENGTHS = (int)(sizeof VERIFY_LENGTHS / sizeof VERIFY_LENGTHS[0]);
const int VERIFY_HEAD_DIMS[] = {32, 64, 80, 128};
const int VERIFY_N_HEAD_DIMS = (int)(sizeof VERIFY_HEAD_DIMS / sizeof VERIFY_HEAD_DIMS[0]);
const int VERIFY_HEAD_RATIOS[][2] = {{1, 1}, {4, 1}, {8, 1}, {9, 3}, {8, 2}};
const int VERIFY_N_HEAD_RATIOS = (int)(sizeof VERIFY_HEAD_RATIOS / sizeof VERIFY_HEAD_RATIOS[0]);
const int VERIFY_BLOCK_SIZES[] = {1, 8, 16, 32};
const int VERIFY_N_BLOCK_SIZES = (int)(sizeof VERIFY_BLOCK_SIZES / sizeof VERIFY_BLOCK_SIZES[0]);

void verify_record(VerifyTally *t, int ok, const char *fmt, ...)
{
    if (ok)
        t->passed++;
    else
        t->failed++;
    if (ok && !t->verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

int verify_finish(const VerifyTally *t)
{
    printf("%d passed, %d failed\n", t->passed, t->failed);
    return t->failed ? 1 : 0;
}
