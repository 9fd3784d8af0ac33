/* attn_harness.c: the chapter-independent half of every chapter program (see attn_harness.h). */
#include "attn_harness.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "compare.h"
#include "error.h"
#include "fileio.h"
#include "program.h"
#include "rng.h"
#if HAVE_CUDA
#include "cuda_utils.h"
#endif

size_t attn_q_count(const AttnDims *d) { return (size_t)d->B * (size_t)d->H * (size_t)d->T * (size_t)d->D; }

size_t attn_kv_count(const AttnDims *d) { return (size_t)d->B * (size_t)d->Hkv * (size_t)d->S * (size_t)d->D; }

void attn_random_inputs(const AttnDims *d, uint64_t seed, Tensor *q, Tensor *k, Tensor *v)
{
    Rng rng;
    rng_seed(&rng, seed);
    *q = tensor_zeros(4, (size_t[]){(size_t)d->B, (size_t)d->H, (size_t)d->T, (size_t)d->D}, "q (B, H, T, D)");
    *k = tensor_zeros(4, (size_t[]){(size_t)d->B, (size_t)d->Hkv, (size_t)d->S, (size_t)d->D}, "k (B, Hkv, S, D)");
    *v = tensor_zeros(4, (size_t[]){(size_t)d->B, (size_t)d->Hkv, (size_t)d->S, (size_t)d->D}, "v (B, Hkv, S, D)");
    tensor_fill_normal(q, &rng, 0.0f, 1.0f);
    tensor_fill_normal(k, &rng, 0.0f, 1.0f);
    tensor_fill_normal(v, &rng, 0.0f, 1.0f);
}

int attn_impl_count(const AttnImpls *im, Device dev) { return dev == DEVICE_CUDA ? im->n_cuda : im->n_cpu; }

const char *attn_impl_name(const AttnImpls *im, Device dev, int kernel)
{
    if (dev == DEVICE_CUDA)
        return im->cuda_name ? im->cuda_name(kernel) : NULL;
    return im->cpu_name(kernel);
}

/* ==== running and timing ========================================================================= */

int attn_run_host(const AttnImpls *im, Device dev, int kernel, const AttnDims *d, const float *q, const float *k,
                  const float *v, float *out)
{
#if HAVE_CUDA
    if (dev == DEVICE_CUDA) {
        if (!im->cuda)
            return error_set("%s has no CUDA version", im->prog);
        const size_t qb = attn_q_count(d) * sizeof(float), kb = attn_kv_count(d) * sizeof(float);
        float *d_q = cuda_alloc(qb), *d_k = cuda_alloc(kb), *d_v = cuda_alloc(kb), *d_o = cuda_alloc(qb);
        cuda_upload(d_q, q, qb), cuda_upload(d_k, k, kb), cuda_upload(d_v, v, kb);
        /* NaN first: an element the kernel never writes must fail the comparison, not pass with
         * whatever the allocator's memory held (often the previous call's correct output) */
        cuda_memset_nan(d_o, qb);
        int rc = im->cuda(im->ctx, kernel, d, d_q, d_k, d_v, d_o);
        if (rc == 0)
            cuda_download(out, d_o, qb);
        cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o);
        return rc;
    }
#endif
    if (dev == DEVICE_CUDA)
        return error_set("%s: this build has no CUDA", im->prog);
    return im->cpu(im->ctx, kernel, d, q, k, v, out);
}

typedef struct {
    const AttnImpls *im;
    Device dev;
    int kernel;
    const AttnDims *d;
    const float *q, *k, *v; /* host or device pointers */
    float *out;
    int rc;
} TimedCall;

static void timed_call(void *ctx)
{
    TimedCall *c = ctx;
#if HAVE_CUDA
    if (c->dev == DEVICE_CUDA) {
        c->rc = c->im->cuda(c->im->ctx, c->kernel, c->d, c->q, c->k, c->v, c->out);
        cuda_sync();
        return;
    }
#endif
    c->rc = c->im->cpu(c->im->ctx, c->kernel, c->d, c->q, c->k, c->v, c->out);
}

AttnTiming attn_time(const AttnImpls *im, Device dev, int kernel, const AttnDims *d, const Tensor *q,
                     const Tensor *k, const Tensor *v, int repeats, double budget_s, int cold_cache)
{
    AttnTiming r = {.rc = 0};
    float *h_out = mem_alloc_or_die(tensor_bytes(q), "output (B, H, T, D)");
    TimedCall c = {.im = im, .dev = dev, .kernel = kernel, .d = d, .q = q->data, .k = k->data, .v = v->data, .out = h_out};
#if HAVE_CUDA
    float *d_q = NULL, *d_k = NULL, *d_v = NULL, *d_o = NULL;
    if (dev == DEVICE_CUDA) {
        d_q = cuda_alloc(tensor_bytes(q)), d_k = cuda_alloc(tensor_bytes(k));
        d_v = cuda_alloc(tensor_bytes(v)), d_o = cuda_alloc(tensor_bytes(q));
        cuda_upload(d_q, q->data, tensor_bytes(q)), cuda_upload(d_k, k->data, tensor_bytes(k));
        cuda_upload(d_v, v->data, tensor_bytes(v));
        c.q = d_q, c.k = d_k, c.v = d_v, c.out = d_o;
    }
#endif
    size_t before = mem_current_bytes();
    mem_reset_peak();
    r.time = bench_time_setup(timed_call, cold_cache && dev == DEVICE_CPU ? cache_flush : NULL, &c, 1, repeats,
                              budget_s);
    r.peak_bytes = dev == DEVICE_CPU ? mem_peak_bytes() - before : 0;
    r.rc = c.rc;
#if HAVE_CUDA
    if (dev == DEVICE_CUDA)
        cuda_free(d_q), cuda_free(d_k), cuda_free(d_v), cuda_free(d_o);
#endif
    mem_free(h_out);
    return r;
}

/* ==== attn ====================================================================================== */

int attn_command(const AttnImpls *im, int argc, char **argv)
{
    AttnArgs a;
    AttnInputs in;
    Device dev;
    attn_args_parse(&a, im->prog, im->attn_help, argc, argv);
    if (device_resolve(a.device, &dev) != 0)
        die_with_error();
    if (a.kernel > attn_impl_count(im, dev))
        die("--kernel %d: %s has %s kernels 1..%d", a.kernel, im->prog, device_name(dev), attn_impl_count(im, dev));
    /* a bad --out (a folder, a missing folder) fails now, before the inputs are read and run */
    if (file_check_output(a.out_path) != 0 || attn_inputs_load(&a, im->heads, &in) != 0)
        die_with_error();
    AttnDims d = {.B = in.B, .H = in.H, .Hkv = in.Hkv, .T = in.T, .S = in.S, .D = in.D, .causal = a.causal, .scale = in.scale};
    float *out = mem_alloc(tensor_bytes(&in.q), "the output (B, H, T, D)");
    if (!out || attn_run_host(im, dev, a.kernel, &d, in.q.data, in.k.data, in.v.data, out) != 0 ||
        attn_output_save(&a, &in, out) != 0)
        die_with_error();
    fprintf(stderr, "%s attn: B=%d H=%d Hkv=%d T=%d S=%d D=%d causal=%d scale=%g on %s (kernel %s) -> %s\n", im->prog,
            in.B, in.H, in.Hkv, in.T, in.S, in.D, a.causal, (double)in.scale, device_name(dev),
            attn_impl_name(im, dev, a.kernel), a.out_path);
    mem_free(out);
    attn_inputs_free(&in);
    return 0;
}

/* ==== fp16 versions: FlashAttention's rule ====================================================== */

/* x rounded to 11 significant bits (fp16's precision), ties to even; below fp16's smallest
 * normal, 2^-14, in its subnormal steps of 2^-24. No overflow: fp32's range is kept. */
static float round_fp16_digits(float x)
{
    if (!isfinite(x) || x == 0.0f)
        return x;
    int e;
    (void)frexpf(x, &e); /* |x| = m 2^e with 0.5 <= m < 1: the 11th significant bit is worth 2^(e-11) */
    const int shift = e - 11 < -24 ? -24 : e - 11;
    return ldexpf(nearbyintf(ldexpf(x, -shift)), shift);
}

float attn_round_fp16(float x)
{
    const float r = round_fp16_digits(x);
    return fabsf(r) > 65504.0f ? copysignf(INFINITY, x) : r;
}

static float *rounded_copy(const float *x, size_t n, const char *what)
{
    float *r = mem_alloc_or_die(n * sizeof(float), what);
    for (size_t i = 0; i < n; i++)
        r[i] = attn_round_fp16(x[i]);
    return r;
}

void attn_naive_fp16(const AttnDims *d, const float *q, const float *k, const float *v, float *out)
{
    const int G = d->H / d->Hkv, D = d->D;
    float *qh = rounded_copy(q, attn_q_count(d), "fp16 copy of q (B, H, T, D)");
    float *kh = rounded_copy(k, attn_kv_count(d), "fp16 copy of k (B, Hkv, S, D)");
    float *vh = rounded_copy(v, attn_kv_count(d), "fp16 copy of v (B, Hkv, S, D)");
    float *w = mem_alloc_or_die((size_t)d->S * sizeof(float), "scores, then probabilities (S)");
    for (size_t bh = 0; bh < (size_t)d->B * d->H; bh++) {
        const size_t bkv = (bh / d->H) * d->Hkv + (bh % d->H) / G;
        for (int t = 0; t < d->T; t++) {
            const float *qr = qh + (bh * d->T + t) * D; /* (D) */
            float *o = out + (bh * d->T + t) * D;       /* (D) */
            const int n = attn_visible_keys(t, d->T, d->S, d->causal);
            float m = -INFINITY, sum = 0.0f;
            for (int j = 0; j < n; j++) {
                const float *kr = kh + (bkv * d->S + j) * D; /* (D) */
                float dot = 0.0f;
                for (int x = 0; x < D; x++)
                    dot += qr[x] * kr[x];
                w[j] = round_fp16_digits(dot * d->scale);
                m = fmaxf(m, w[j]);
            }
            for (int j = 0; j < n; j++)
                sum += w[j] = expf(w[j] - m);
            for (int j = 0; j < n; j++)
                w[j] = attn_round_fp16(w[j] / sum);
            for (int x = 0; x < D; x++) {
                float acc = 0.0f;
                for (int j = 0; j < n; j++)
                    acc += w[j] * vh[(bkv * d->S + j) * D + x];
                o[x] = n ? attn_round_fp16(acc) : 0.0f;
            }
        }
    }
    mem_free(w), mem_free(qh), mem_free(kh), mem_free(vh);
}

AttnFp16Check attn_check_fp16(const float *out, const float *ref, const float *naive, size_t n)
{
    AttnFp16Check c;
    c.err = max_abs_diff(out, ref, n);
    c.err_naive = max_abs_diff(naive, ref, n);
    const double rel = rel_l2_error(out, ref, n);
    c.nmse = rel * rel;
    /* the floor: no fp16 kernel is asked to beat fp32's own tolerance */
    c.ok = c.err <= fmax(2.0 * c.err_naive, 1e-5) && c.nmse <= 5e-4;
    return c;
}

/* ==== verify ==================================================================================== */

int attn_verify_devices(const char *device, int have_gpu, Device devs[2])
{
    int n = 0;
    if (strcmp(device, "cuda") != 0)
        devs[n++] = DEVICE_CPU;
    if (have_gpu && strcmp(device, "cpu") != 0)
        devs[n++] = DEVICE_CUDA;
    return n;
}

/* Small integers for q and k, so that every logit is an exact integer whatever the order of the
 * sum: about +-1e4 (extreme = 1), or all about -1e4 (extreme = 2). */
static void extreme_logits(Tensor *q, Tensor *k, int extreme, Rng *rng)
{
    for (size_t i = 0; i < q->numel; i++)
        q->data[i] = extreme == 2 ? 100.0f : (float)((int)rng_below(rng, 21) - 10) * 10.0f;
    for (size_t i = 0; i < k->numel; i++)
        k->data[i] = extreme == 2 ? -(float)(1 + rng_below(rng, 3)) : (float)((int)rng_below(rng, 21) - 10) * 10.0f;
}

void attn_verify_case(VerifyTally *tally, const AttnImpls *im, const char *device, int only_kernel, int have_gpu,
                      const AttnDims *d, uint64_t seed, int extreme)
{
    Tensor q, k, v;
    attn_random_inputs(d, seed, &q, &k, &v);
    if (extreme) {
        Rng rng;
        rng_seed(&rng, seed + 1);
        extreme_logits(&q, &k, extreme, &rng);
    }
    float *ref = mem_alloc_or_die(tensor_bytes(&q), "reference output");
    float *out = mem_alloc_or_die(tensor_bytes(&q), "output");
    float *naive = NULL; /* naive attention in fp16, for the fp16 versions (computed once, when needed) */
    if (im->ref(im->ctx, 1, d, q.data, k.data, v.data, ref) != 0)
        die_with_error();
    const char *what = extreme == 1 ? " logits~+-1e4" : extreme == 2 ? " logits~-1e4" : "";
    Device devs[2];
    for (int di = 0, n_devs = attn_verify_devices(device, have_gpu, devs); di < n_devs; di++) {
        const Device dev = devs[di];
        for (int kern = 1; kern <= attn_impl_count(im, dev); kern++) {
            if ((only_kernel && kern != only_kernel) || (dev == DEVICE_CPU && kern == 1 && im->ref_is_cpu1))
                continue; /* the reference itself */
            char label[192];
            snprintf(label, sizeof label, "%s %-8s%s%s B=%d H=%d Hkv=%d T=%d S=%d D=%d causal=%d%s", device_name(dev),
                     attn_impl_name(im, dev, kern), im->label ? " " : "", im->label ? im->label : "", d->B, d->H, d->Hkv,
                     d->T, d->S, d->D, d->causal, what);
            memset(out, 0xff, tensor_bytes(&q)); /* NaN: every output element must be written */
            int rc = attn_run_host(im, dev, kern, d, q.data, k.data, v.data, out);
            if (rc != 0)
                fprintf(stderr, "%s: %s\n", label, error_message());
            if (dev == DEVICE_CUDA && im->cuda_fp16 && im->cuda_fp16(kern)) { /* FlashAttention's rule */
                if (!naive) {
                    naive = mem_alloc_or_die(tensor_bytes(&q), "naive fp16 output");
                    attn_naive_fp16(d, q.data, k.data, v.data, naive);
                }
                AttnFp16Check c = attn_check_fp16(out, ref, naive, q.numel);
                verify_record(tally, rc == 0 && c.ok, "%s  max_abs_err=%.2e (fp16: at most 2x naive fp16's %.2e; NMSE %.1e)",
                              label, c.err, c.err_naive, c.nmse);
                continue;
            }
            CompareResult r = compare_f32(label, out, ref, q.numel, 1e-5, 1e-4, rc == 0 ? 3 : 0);
            verify_record(tally, rc == 0 && r.n_bad == 0, "%s  max_abs_err=%.2e", label, r.max_abs_err);
        }
    }
    mem_free(ref), mem_free(out), mem_free(naive);
    tensor_free(&q), tensor_free(&k), tensor_free(&v);
}

void attn_verify_grid(VerifyTally *tally, const AttnImpls *im, const char *device, int only_kernel, int have_gpu,
                      int quick, uint64_t *seed)
{
    int n_case = 0;
    for (int i = 0; i < VERIFY_N_LENGTHS; i++)
        for (int j = 0; j < VERIFY_N_LENGTHS; j++)
            for (int causal = 0; causal <= 1; causal++, n_case++) {
                int T = VERIFY_LENGTHS[i], S = VERIFY_LENGTHS[j];
                if ((quick == 1 && (T > 129 || S > 129)) || (quick >= 2 && (T > 17 || S > 17)))
                    continue;
                int D = VERIFY_HEAD_DIMS[n_case % VERIFY_N_HEAD_DIMS], B = 1 + n_case % 2, H, Hkv;
                if (im->heads == ATTN_HEADS_EQUAL) {
                    H = Hkv = (int[]){1, 4, 8}[n_case % 3];
                } else {
                    H = VERIFY_HEAD_RATIOS[n_case % VERIFY_N_HEAD_RATIOS][0];
                    Hkv = VERIFY_HEAD_RATIOS[n_case % VERIFY_N_HEAD_RATIOS][1];
                }
                if ((double)T * S * H * B > 3e5) /* keep the reference quick on big shapes */
                    B = 1, H = im->heads == ATTN_HEADS_EQUAL ? 1 : 2, Hkv = 1;
                AttnDims d = {.B = B, .H = H, .Hkv = Hkv, .T = T, .S = S, .D = D, .causal = causal,
                              .scale = 1.0f / sqrtf((float)D)};
                attn_verify_case(tally, im, device, only_kernel, have_gpu, &d, (*seed)++, 0);
            }
    for (int extreme = 1; extreme <= 2; extreme++)
        for (int causal = 0; causal <= 1; causal++) {
            AttnDims d = {.B = 2, .H = im->heads == ATTN_HEADS_EQUAL ? 3 : 6, .Hkv = 3, .T = 33, .S = 65, .D = 64,
                          .causal = causal, .scale = 1.0f};
            attn_verify_case(tally, im, device, only_kernel, have_gpu, &d, (*seed)++, extreme);
        }
}

void attn_verify_parse(AttnVerifyArgs *a, const AttnImpls *im, const char *summary, int argc, char **argv)
{
    int smoke = 0;
    char name[96];
    *a = (AttnVerifyArgs){.device = "auto"};
    ArgSpec specs[] = {
        OPTION_DEVICE(&a->device, "auto: CPU versions, and CUDA versions when a GPU is present"),
        {.name = "kernel", .kind = ARG_INT, .dest = &a->kernel, .metavar = "N", .help = "check only version N",
         .min = 1, .max = 9},
        {.name = "quick", .kind = ARG_FLAG, .dest = &a->quick, .help = "lengths up to 129 only (for sanitizers)"},
        {.name = "smoke", .kind = ARG_FLAG, .dest = &smoke, .help = "lengths up to 17 only (for valgrind)",
         .conflicts = "quick"},
        {.name = "verbose", .kind = ARG_FLAG, .dest = &a->verbose, .help = "print passing cases too"},
    };
    snprintf(name, sizeof name, "%s verify", im->prog);
    const ArgCommand cmd = {.name = name, .usage = "[options]", .summary = summary, .specs = specs,
                            .n_specs = ARRAY_COUNT(specs)};
    args_parse_or_exit(&cmd, argc, argv);
    a->quick = smoke ? 2 : a->quick;
    const int n_max = im->n_cpu > im->n_cuda ? im->n_cpu : im->n_cuda;
    if (a->kernel > n_max)
        die("--kernel %d: %s has kernels 1..%d", a->kernel, im->prog, n_max);
    char why[256];
    a->have_gpu = device_cuda_available(why, sizeof why) && im->cuda;
    if (strcmp(a->device, "cuda") == 0 && !a->have_gpu)
        die("--device cuda: no usable GPU: %s", why);
    if (!a->have_gpu && strcmp(a->device, "cpu") != 0)
        printf("CUDA versions skipped: %s\n", why);
}

int attn_verify_command(const AttnImpls *im, int argc, char **argv)
{
    char summary[1024];
    snprintf(summary, sizeof summary,
             "Checks every attention version of %s against its reference on the shape grid of\n"
             "docs/contracts.md §4.2: T, S in {1, 2, 17, 63, 64, 65, 127, 128, 129, 257, 1023}, D in {32, 64, 80, 128},\n"
             "%s, causal and not, plus logits of +-1e4 and rows of very\n"
             "negative logits. Tolerance: atol 1e-5, rtol 1e-4%s. Ends with 'N passed, N failed'.",
             im->prog, im->heads == ATTN_HEADS_EQUAL ? "H in {1, 4, 8} (Hkv = H)" : "H:Hkv in {1:1, 4:1, 8:1, 9:3, 8:2}",
             im->cuda_fp16 ? "; versions that compute in fp16 (tensor\ncores): an error at most 2x that of naive "
                             "attention in fp16, and NMSE <= 5e-4"
                           : "");
    AttnVerifyArgs a;
    attn_verify_parse(&a, im, summary, argc, argv);
    VerifyTally tally = {.passed = 0, .failed = 0, .verbose = a.verbose};
    uint64_t seed = 1;
    attn_verify_grid(&tally, im, a.device, a.kernel, a.have_gpu, a.quick, &seed);
    return verify_finish(&tally);
}
