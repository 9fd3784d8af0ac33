/*
 * compare.h: is `out` close to `ref`? The one check every test and every `verify` uses.
 *
 * Element i passes when |out[i] - ref[i]| <= atol + rtol * |ref[i]| (numpy's allclose); a NaN
 * or infinity where the reference is finite always fails. The caller chooses atol and rtol
 * (docs/contracts.md §4.1: 1e-5 and 1e-4 for fp32 against an fp32 reference); nothing here loosens them.
 */
#ifndef COMMON_COMPARE_H
#define COMMON_COMPARE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    size_t n;          /* elements compared */
    size_t n_bad;      /* elements outside the tolerance */
    size_t worst;      /* index of the element furthest outside (or closest to) its tolerance */
    float worst_out, worst_ref;
    double max_abs_err;  /* max |out - ref| */
    double max_rel_err;  /* max |out - ref| / |ref| over elements with |ref| > atol */
    double worst_ratio;  /* |out - ref| / (atol + rtol |ref|) at `worst`; <= 1 means pass */
} CompareResult;

/* Compares n floats. When report > 0 and some elements fail, prints to stderr a line naming
 * `label`, the count of failures, the worst element (index, both values) and the first
 * `report` mismatches. Returns the statistics; result.n_bad == 0 means pass. */
CompareResult compare_f32(const char *label, const float *out, const float *ref, size_t n,
                          double atol, double rtol, int report);

/* Same, against a float64 reference. */
CompareResult compare_f32_f64(const char *label, const float *out, const double *ref, size_t n,
                              double atol, double rtol, int report);

/* Largest |a[i] - b[i]| (NaN if either holds a NaN where the other does not). */
double max_abs_diff(const float *a, const float *b, size_t n);

/* Relative L2 error ||out - ref|| / ||ref||, in double precision. */
double rel_l2_error(const float *out, const float *ref, size_t n);

#ifdef __cplusplus
}
#endif
#endif
