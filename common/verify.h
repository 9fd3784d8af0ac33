/*
 * verify.h: the shape grid of docs/contracts.md §4.2 and the pass/fail tally of every `verify`.
 *
 * `verify` runs each implementation a chapter has against its reference on this grid and ends
 * with the line "N passed, N failed" (exit status 1 if any failed). It is how a reader, or a
 * GPU machine without Check, checks the kernels.
 */
#ifndef COMMON_VERIFY_H
#define COMMON_VERIFY_H

#ifdef __cplusplus
extern "C" {
#endif

extern const int VERIFY_LENGTHS[];     /* T and S: 1, 2, 17, 63, 64, 65, 127, 128, 129, 257, 1023 */
extern const int VERIFY_N_LENGTHS;
extern const int VERIFY_HEAD_DIMS[];   /* D: 32, 64, 80, 128 */
extern const int VERIFY_N_HEAD_DIMS;
extern const int VERIFY_HEAD_RATIOS[][2]; /* H:Hkv: 1:1, 4:1, 8:1, 9:3, 8:2 */
extern const int VERIFY_N_HEAD_RATIOS;
extern const int VERIFY_BLOCK_SIZES[]; /* 1, 8, 16, 32 */
extern const int VERIFY_N_BLOCK_SIZES;

typedef struct {
    int passed, failed;
    int verbose; /* print passing cases too */
} VerifyTally;

/* Counts one case; prints "FAIL <what>" always and "ok   <what>" when verbose. */
void verify_record(VerifyTally *t, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prints "N passed, N failed" as the last line and returns the exit status (0 or 1). */
int verify_finish(const VerifyTally *t);

#ifdef __cplusplus
}
#endif
#endif
