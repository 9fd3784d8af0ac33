/* compare.c: allclose with reporting (see compare.h). */
#include "compare.h"

#include <math.h>
#include <stdio.h>

#define MAX_REPORT_LIST 64

/* The shared loop: ref values are read as double whatever their storage. */
static CompareResult compare_impl(const char *label, const float *out, const float *ref32,
                                  const double *ref64, size_t n, double atol, double rtol, int report)
{
    CompareResult r = {0};
    size_t listed[MAX_REPORT_LIST];
    int n_listed = 0;
    r.n = n;
    r.worst_ratio = -1.0;
    for (size_t i = 0; i < n; i++) {
        double o = out[i];
        double f = ref32 ? (double)ref32[i] : ref64[i];
        double err = fabs(o - f);
        double tol = atol + rtol * fabs(f);
        double ratio;
        int bad;
        if (isnan(o) || isnan(f) || isinf(o) || isinf(f)) {
            bad = !(o == f); /* equal infinities pass; any NaN fails */
            ratio = bad ? INFINITY : 0.0;
            if (bad)
                r.max_abs_err = INFINITY;
        } else {
            bad = err > tol;
            ratio = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0.0);
            if (err > r.max_abs_err)
                r.max_abs_err = err;
            if (fabs(f) > atol && err / fabs(f) > r.max_rel_err)
                r.max_rel_err = err / fabs(f);
        }
        if (bad) {
            r.n_bad++;
            if (n_listed < report && n_listed < MAX_REPORT_LIST)
                listed[n_listed++] = i;
        }
        if (ratio > r.worst_ratio) {
            r.worst_ratio = ratio;
            r.worst = i;
            r.worst_out = out[i];
            r.worst_ref = (float)f;
        }
    }
    if (r.n_bad > 0 && report > 0) {
        fprintf(stderr, "%s: %zu of %zu elements differ (atol %g, rtol %g); worst at [%zu]: got %.9g, expected %.9g\n",
                label, r.n_bad, n, atol, rtol, r.worst, (double)r.worst_out, (double)r.worst_ref);
        for (int k = 0; k < n_listed; k++) {
            size_t i = listed[k];
            fprintf(stderr, "  [%zu] got %.9g, expected %.9g\n", i, (double)out[i],
                    ref32 ? (double)ref32[i] : ref64[i]);
        }
    }
    return r;
}

CompareResult compare_f32(const char *label, const float *out, const float *ref, size_t n,
                          double atol, double rtol, int report)
{
    return compare_impl(label, out, ref, NULL, n, atol, rtol, report);
}

CompareResult compare_f32_f64(const char *label, const float *out, const double *ref, size_t n,
                              double atol, double rtol, int report)
{
    return compare_impl(label, out, NULL, ref, n, atol, rtol, report);
}

double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) != isnan(b[i]))
            return NAN;
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m)
            m = d;
    }
    return m;
}

double rel_l2_error(const float *out, const float *ref, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)out[i] - (double)ref[i];
        num += d * d;
        den += (double)ref[i] * (double)ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
