/*
 * vmath.h: eight floats at a time, without intrinsics: the vector type the CPU kernels use and
 * a vectorised exp.
 *
 * f32x8 is GCC's vector extension: the compiler keeps it in one AVX register (two SSE registers
 * on older CPUs) and turns + - * into vector instructions. A softmax spends much of its time in
 * exp(); glibc's expf handles one float per call, vexp_f32x8 eight per call.
 *
 * vexp_f32x8(x) = 2^n * e^r with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2]
 * (ln 2 split in two parts so that r is exact), e^r from a degree-6 polynomial (the Cephes
 * expf coefficients), 2^n built directly in the float's exponent bits. Relative error about
 * 2e-7 (a couple of ulp) over the range softmax uses; inputs below -87.3 give exactly 0, inputs
 * above 88 are clamped to 88 (e^88 ~ 1.7e38). NaN inputs are not handled.
 */
#ifndef COMMON_VMATH_H
#define COMMON_VMATH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef float f32x8 __attribute__((vector_size(32), aligned(4)));
typedef int32_t i32x8 __attribute__((vector_size(32), aligned(4)));

#define F32X8(v) ((f32x8){(v), (v), (v), (v), (v), (v), (v), (v)})
#define I32X8(v) ((i32x8){(v), (v), (v), (v), (v), (v), (v), (v)})

/* where(mask, a, b): a in the lanes where mask is all ones, b elsewhere */
static inline f32x8 f32x8_select(i32x8 mask, f32x8 a, f32x8 b)
{
    return (f32x8)(((i32x8)a & mask) | ((i32x8)b & ~mask));
}

static inline f32x8 vexp_f32x8(f32x8 x)
{
    const i32x8 underflow = x < F32X8(-87.33654f); /* e^x below the smallest normal float: 0 */
    x = f32x8_select(x > F32X8(88.0f), F32X8(88.0f), x);
    x = f32x8_select(underflow, F32X8(0.0f), x);

    /* n = floor(x / ln 2 + 1/2): truncate, then step down where truncation rounded up */
    const f32x8 fx = x * F32X8(1.44269504088896341f) + F32X8(0.5f);
    i32x8 n = __builtin_convertvector(fx, i32x8);
    n += (i32x8)(__builtin_convertvector(n, f32x8) > fx); /* true lanes are -1 */
    const f32x8 nf = __builtin_convertvector(n, f32x8);

    /* r = x - n ln 2, with ln 2 = 0.693359375 + (-2.12194440e-4) so the first product is exact */
    f32x8 r = x - nf * F32X8(0.693359375f);
    r = r - nf * F32X8(-2.12194440e-4f);

    f32x8 p = F32X8(1.9875691500e-4f);
    p = p * r + F32X8(1.3981999507e-3f);
    p = p * r + F32X8(8.3334519073e-3f);
    p = p * r + F32X8(4.1665795894e-2f);
    p = p * r + F32X8(1.6666665459e-1f);
    p = p * r + F32X8(5.0000001201e-1f);
    const f32x8 er = p * r * r + r + F32X8(1.0f);

    const f32x8 two_n = (f32x8)((n + I32X8(127)) << 23); /* 2^n: n + 127 in the exponent field */
    return f32x8_select(underflow, F32X8(0.0f), er * two_n);
}

/* x[i] = exp(x[i] * scale - shift) for i < n, and returns the sum of the results. */
static inline float vexp_scaled_sum(float *x, size_t n, float scale, float shift)
{
    f32x8 acc = F32X8(0.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        f32x8 e = vexp_f32x8(*(f32x8 *)(x + i) * scale - shift);
        *(f32x8 *)(x + i) = e;
        acc += e;
    }
    if (i < n) { /* the tail through the same arithmetic, in a vector whose extra lanes give 0 */
        const i32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
        const i32x8 live = lane < I32X8((int32_t)(n - i));
        f32x8 t = F32X8(0.0f);
        memcpy(&t, x + i, (n - i) * sizeof(float));
        const f32x8 e = f32x8_select(live, vexp_f32x8(t * scale - shift), F32X8(0.0f));
        memcpy(x + i, &e, (n - i) * sizeof(float));
        acc += e;
    }
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

#endif
