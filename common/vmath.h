/*
 * vmath.h: the vector type every CPU kernel uses, as wide as the build's target allows, and a
 * vectorised exp.
 *
 * fvec is VL floats in GCC's vector extension: the compiler keeps it in one register and turns
 * + - * into vector instructions (a * b + c into one FMA, with -ffp-contract=fast). VL is chosen
 * at compile time from what the target has (the build uses -march=native):
 *
 *   AVX-512 (zmm, 32 registers)  16 lanes
 *   AVX / AVX2 (ymm, 16)          8 lanes
 *   NEON, or SSE only (16 bytes)  4 lanes
 *
 * One source serves all three: kernels are written in fvec and in loops over VEC_PER(n) vectors
 * (fully unrolled), never in a fixed lane count. A kernel that used 8 lanes on an AVX-512
 * machine would leave half of every FMA unused.
 *
 * Sums that end in a horizontal reduction (dot products) are written as 16 partial sums, lane
 * i holding the terms k = i mod 16, folded by fsum16_x4 in one fixed order: the same bits on
 * every width (a dot product on an AVX2 laptop equals the one on an AVX-512 server).
 *
 * vexp(x) = 2^n * e^r with n = round(x / ln 2) and r = x - n ln 2 in [-ln2/2, ln2/2]
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

#if defined(__AVX512F__)
#define VL 16
#define VEC_WHAT "16-lane AVX-512"
#elif defined(__AVX2__)
#define VL 8
#define VEC_WHAT "8-lane AVX2"
#elif defined(__AVX__)
#define VL 8
#define VEC_WHAT "8-lane AVX"
#elif defined(__aarch64__)
#define VL 4
#define VEC_WHAT "4-lane NEON"
#else
#define VL 4
#define VEC_WHAT "4-lane SSE"
#endif

/* vectors that hold n floats (n a multiple of VL) */
#define VEC_PER(n) ((n) / VL)

typedef float fvec __attribute__((vector_size(VL * sizeof(float)), aligned(4)));
typedef int32_t ivec __attribute__((vector_size(VL * sizeof(int32_t)), aligned(4)));

static inline fvec fvec_splat(float v) { return (fvec){0} + v; }
static inline ivec ivec_splat(int32_t v) { return (ivec){0} + v; }
/* VL floats from p, which needs only a float's alignment */
static inline fvec fvec_load(const float *p) { return *(const fvec *)p; }
static inline void fvec_store(float *p, fvec v) { *(fvec *)p = v; }

/* Keeps v in a register from here on. A value used by several FMAs is otherwise often re-read
 * from L1 by each of them (x86 folds a load into an FMA for free, the compiler reckons); a
 * kernel that is limited by loads (AMD Zen 4 loads one 64-byte vector per cycle) then runs at
 * the load ports' speed instead of the FMAs'. An empty asm statement that "changes" v in a
 * vector register ends that: the compiler must load v once, there. */
static inline void fvec_in_register(fvec *v)
{
#if defined(__AVX512F__)
    __asm__("" : "+v"(*v));
#elif defined(__AVX__)
    __asm__("" : "+x"(*v));
#elif defined(__aarch64__)
    __asm__("" : "+w"(*v));
#else
    (void)v;
#endif
}

/* where(mask, a, b): a in the lanes where mask is all ones, b elsewhere */
static inline fvec fvec_select(ivec mask, fvec a, fvec b)
{
    return (fvec)(((ivec)a & mask) | ((ivec)b & ~mask));
}

/* 0, 1, .., VL-1 */
static inline ivec ivec_iota(void)
{
    ivec lane;
    for (int i = 0; i < VL; i++)
        lane[i] = i;
    return lane;
}

/* ==== quantised values in, floats out ================================================================ */

/* VL IEEE half floats (given as their 16-bit patterns) or VL int8 values, converted to floats
 * in registers: the inner loops of a kernel that reads a quantised KV cache (chapter 04) call
 * these instead of first writing float copies to memory. GCC's vector extension converts such
 * vectors one lane at a time, so each width has its instruction: AVX-512 and F16C vcvtph2ps,
 * vpmovsxbd + vcvtdq2ps, NEON fcvtl / sxtl + scvtf. */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__F16C__))
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

static inline fvec fvec_from_f16(const uint16_t *p)
{
#if VL == 16
    return (fvec)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif VL == 8 && defined(__F16C__)
    return (fvec)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
#elif defined(__aarch64__)
    float16x4_t h;
    memcpy(&h, p, sizeof h);
    return (fvec)vcvt_f32_f16(h);
#else /* no conversion instruction targeted: one lane at a time, as C converts */
    fvec v;
    for (int i = 0; i < VL; i++) {
        _Float16 h;
        memcpy(&h, p + i, sizeof h);
        v[i] = (float)h;
    }
    return v;
#endif
}

static inline fvec fvec_from_i8(const int8_t *p)
{
#if VL == 16
    return (fvec)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
#elif VL == 8 && defined(__AVX2__)
    return (fvec)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
#elif defined(__aarch64__)
    int8x8_t b = vdup_n_s8(0);
    memcpy(&b, p, 4); /* four values: the vector's low half */
    return (fvec)vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b))));
#else
    fvec v;
    for (int i = 0; i < VL; i++)
        v[i] = (float)p[i];
    return v;
#endif
}

/* ==== 16 partial sums, folded the same way on every width ============================================ */

/* The 16 partial sums of a dot product live in VEC_PER(16) vectors (one zmm, two ymm, four
 * xmm): acc[u] lane i holds the terms k = u * VL + i mod 16. */
#define ACC16 VEC_PER(16)

typedef float f32x8 __attribute__((vector_size(32), aligned(4)));
typedef float f32x4 __attribute__((vector_size(16), aligned(4)));
typedef float f32x2 __attribute__((vector_size(8), aligned(4)));

typedef float f32x16 __attribute__((vector_size(64), aligned(4)));

/* p[0..15] folded to h[i] = p[i] + p[i + 8], eight lanes */
static inline f32x8 fold16(const fvec acc[ACC16])
{
#if VL == 16
    return __builtin_shufflevector(acc[0], acc[0], 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(acc[0], acc[0], 8, 9, 10, 11, 12, 13, 14, 15);
#elif VL == 8
    return acc[0] + acc[1];
#else
    return __builtin_shufflevector(acc[0] + acc[2], acc[1] + acc[3], 0, 1, 2, 3, 4, 5, 6, 7);
#endif
}

/* The sums of four dot products' 16 partial sums p[0..15] each, in one order for every width:
 * h[i] = p[i] + p[i + 8], then pairs, ((h0+h1) + (h2+h3)) + ((h4+h5) + (h6+h7)) -- so that a dot
 * product has the same bits on every machine (common/test_numeric.c checks them against that
 * order written in scalar C). Each step works on all four at once (their lanes side by side,
 * shuffled in registers): a quarter of the shuffles of four separate sums. */
static inline f32x4 fsum16_x4(const fvec a0[ACC16], const fvec a1[ACC16], const fvec a2[ACC16], const fvec a3[ACC16])
{
    const f32x8 h0 = fold16(a0), h1 = fold16(a1), h2 = fold16(a2), h3 = fold16(a3);
    const f32x16 x = __builtin_shufflevector(h0, h1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const f32x16 y = __builtin_shufflevector(h2, h3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    /* g: four lanes per dot product, h[2j] + h[2j + 1] */
    const f32x16 g = __builtin_shufflevector(x, y, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
                     __builtin_shufflevector(x, y, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const f32x8 f = __builtin_shufflevector(g, g, 0, 2, 4, 6, 8, 10, 12, 14) +
                    __builtin_shufflevector(g, g, 1, 3, 5, 7, 9, 11, 13, 15);
    return __builtin_shufflevector(f, f, 0, 2, 4, 6) + __builtin_shufflevector(f, f, 1, 3, 5, 7);
}

/* ==== exp ============================================================================================= */

static inline fvec vexp(fvec x)
{
    const ivec underflow = x < fvec_splat(-87.33654f); /* e^x below the smallest normal float: 0 */
    x = fvec_select(x > fvec_splat(88.0f), fvec_splat(88.0f), x);
    x = fvec_select(underflow, fvec_splat(0.0f), x);

    /* n = floor(x / ln 2 + 1/2): truncate, then step down where truncation rounded up */
    const fvec fx = x * fvec_splat(1.44269504088896341f) + fvec_splat(0.5f);
    ivec n = __builtin_convertvector(fx, ivec);
    n += (ivec)(__builtin_convertvector(n, fvec) > fx); /* true lanes are -1 */
    const fvec nf = __builtin_convertvector(n, fvec);

    /* r = x - n ln 2, with ln 2 = 0.693359375 + (-2.12194440e-4) so the first product is exact */
    fvec r = x - nf * fvec_splat(0.693359375f);
    r = r - nf * fvec_splat(-2.12194440e-4f);

    fvec p = fvec_splat(1.9875691500e-4f);
    p = p * r + fvec_splat(1.3981999507e-3f);
    p = p * r + fvec_splat(8.3334519073e-3f);
    p = p * r + fvec_splat(4.1665795894e-2f);
    p = p * r + fvec_splat(1.6666665459e-1f);
    p = p * r + fvec_splat(5.0000001201e-1f);
    const fvec er = p * r * r + r + fvec_splat(1.0f);

    const fvec two_n = (fvec)((n + ivec_splat(127)) << 23); /* 2^n: n + 127 in the exponent field */
    return fvec_select(underflow, fvec_splat(0.0f), er * two_n);
}

/* The sum of a vector's lanes, pairwise. */
static inline float fvec_sum(fvec v)
{
    float p[VL];
    memcpy(p, &v, sizeof p);
    for (int w = VL / 2; w > 0; w /= 2)
        for (int i = 0; i < w; i++)
            p[i] += p[i + w];
    return p[0];
}

/* x[i] = exp(x[i] * scale - shift) for i < n, and returns the sum of the results. */
static inline float vexp_scaled_sum(float *x, size_t n, float scale, float shift)
{
    fvec acc = fvec_splat(0.0f);
    size_t i = 0;
    for (; i + VL <= n; i += VL) {
        const fvec e = vexp(fvec_load(x + i) * scale - shift);
        fvec_store(x + i, e);
        acc += e;
    }
    if (i < n) { /* the tail through the same arithmetic, in a vector whose extra lanes give 0 */
        const ivec live = ivec_iota() < ivec_splat((int32_t)(n - i));
        fvec t = fvec_splat(0.0f);
        memcpy(&t, x + i, (n - i) * sizeof(float));
        const fvec e = fvec_select(live, vexp(t * scale - shift), fvec_splat(0.0f));
        memcpy(x + i, &e, (n - i) * sizeof(float));
        acc += e;
    }
    return fvec_sum(acc);
}

#endif
