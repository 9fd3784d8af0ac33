/*
 * testing_attn.c: the checks every attention chapter's suite makes, written once (see testing.h):
 *
 *   testing_attn_grid     a chapter's CPU versions against its reference on the shape grid
 *   testing_attn_shapes   its versions on a device, on a list of shapes, against the reference
 *   testing_attn_oracle   its CPU versions on a list of shapes against the float64 oracle
 *   testing_attn_program  its program's `attn` command end to end against the float64 oracle
 *
 * A chapter's versions come as the harness's AttnImpls table (common/attn_harness.h): the tests
 * call the same entry points as `verify`, but hold them to the suite's tolerance and its float64
 * oracle. Shapes: q and out (B, H, T, D); k and v (B, Hkv, S, D).
 */
#include "testing.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_harness.h"
#include "compare.h"
#include "error.h"
#include "npy.h"
#include "tensor.h"
#include "verify.h"

/* ==== versions against the reference ============================================================= */

/* q, k, v ~ N(0, 1) from seeds seed, seed + 1, seed + 2, for shape d (mem_free them). */
static void random_qkv(const AttnDims *d, uint64_t seed, float **q, float **k, float **v)
{
    const size_t nq = attn_q_count(d), nk = attn_kv_count(d);
    *q = mem_alloc_or_die(nq * sizeof(float), "q (B, H, T, D)");
    *k = mem_alloc_or_die(nk * sizeof(float), "k (B, Hkv, S, D)");
    *v = mem_alloc_or_die(nk * sizeof(float), "v (B, Hkv, S, D)");
    fill_normal(*q, nq, seed), fill_normal(*k, nk, seed + 1), fill_normal(*v, nk, seed + 2);
}

/* Versions first..last of im on dev, each writing over an output of NaN, against im->ref on one
 * problem (oracle: against attention_f64 instead): how many were off or failed (each said on
 * stderr, with its first `show` mismatches). */
static int versions_against_ref(const AttnImpls *im, Device dev, int first, int last, int oracle, const AttnDims *d,
                                uint64_t seed, double atol, double rtol, size_t show)
{
    float *q, *k, *v;
    random_qkv(d, seed, &q, &k, &v);
    const size_t n = attn_q_count(d);
    float *ref = mem_alloc_or_die(n * sizeof(float), "the reference's output (B, H, T, D)");
    double *ref64 = mem_alloc_or_die(n * sizeof(double), "the float64 oracle's output (B, H, T, D)");
    float *out = mem_alloc_or_die(n * sizeof(float), "a version's output (B, H, T, D)");
    char shape[128], label[256];
    snprintf(shape, sizeof shape, "B=%d H=%d Hkv=%d T=%d S=%d D=%d causal=%d", d->B, d->H, d->Hkv, d->T, d->S, d->D,
             d->causal);
    int failed = 0;
    if (oracle)
        attention_f64(d->B, d->H, d->Hkv, d->T, d->S, d->D, d->causal, d->scale, q, k, v, ref64);
    else if (im->ref(im->ctx, 1, d, q, k, v, ref) != 0) {
        fprintf(stderr, "%s reference, %s: %s\n", im->prog, shape, error_message());
        failed = 1;
    }
    for (int kern = first; kern <= last && !failed; kern++) {
        snprintf(label, sizeof label, "%s %s kernel %d %s", im->prog, device_name(dev), kern, shape);
        memset(out, 0xff, n * sizeof(float)); /* NaN: an element never written fails */
        if (attn_run_host(im, dev, kern, d, q, k, v, out) != 0) {
            fprintf(stderr, "%s: %s\n", label, error_message());
            failed++;
        } else if (oracle) {
            failed += compare_f32_f64(label, out, ref64, n, atol, rtol, show).n_bad > 0;
        } else {
            failed += compare_f32(label, out, ref, n, atol, rtol, show).n_bad > 0;
        }
    }
    mem_free(q), mem_free(k), mem_free(v), mem_free(ref), mem_free(ref64), mem_free(out);
    return failed;
}

/* NULL when nothing failed, else "<failed> <what> failed (listed above)". */
static const char *none_failed(int failed, const char *what)
{
    static char why[128];
    if (failed == 0)
        return NULL;
    snprintf(why, sizeof why, "%d %s failed (listed above)", failed, what);
    return why;
}

/* Case n of the grid at lengths T, S: its D, batch and heads (testing.h). */
static AttnDims grid_dims(int grouped, int n, int T, int S, int causal)
{
    AttnDims d = {.B = 1 + n % 2, .T = T, .S = S, .D = VERIFY_HEAD_DIMS[n % VERIFY_N_HEAD_DIMS], .causal = causal};
    if (grouped)
        d.H = VERIFY_HEAD_RATIOS[n % VERIFY_N_HEAD_RATIOS][0], d.Hkv = VERIFY_HEAD_RATIOS[n % VERIFY_N_HEAD_RATIOS][1];
    else
        d.H = d.Hkv = (int[]){1, 4, 8}[n % 3];
    if ((double)T * S * d.H * d.B > 3e5) /* long lengths: few heads, seconds rather than minutes */
        d.B = 1, d.H = grouped ? 2 : 1, d.Hkv = 1;
    d.scale = 1.0f / sqrtf((float)d.D);
    return d;
}

const char *testing_attn_grid(const AttnImpls *im, int first, uint64_t seed, double atol, double rtol)
{
    const int grouped = im->heads != ATTN_HEADS_EQUAL;
    int n_case = 0, failed = 0;
    for (int i = 0; i < VERIFY_N_LENGTHS; i++)
        for (int j = 0; j < VERIFY_N_LENGTHS; j++)
            for (int causal = 0; causal <= 1; causal++, n_case++) {
                const int T = VERIFY_LENGTHS[i], S = VERIFY_LENGTHS[j];
                if (testing_small() && (T > 257 || S > 257))
                    continue; /* under emulation: lengths up to 257, still several tiles (n_case goes on) */
                const AttnDims d = grid_dims(grouped, n_case, T, S, causal);
                failed += versions_against_ref(im, DEVICE_CPU, first, im->n_cpu, 0, &d, seed + (uint64_t)n_case, atol,
                                               rtol, 3);
            }
    return none_failed(failed, "grid cases");
}

/* Every version of im on dev on every shape (testing_attn_shapes, testing_attn_oracle). */
static const char *versions_on_shapes(const AttnImpls *im, Device dev, int oracle, const int shapes[][7],
                                      size_t n_shapes, uint64_t seed, double atol, double rtol)
{
    int failed = 0;
    for (size_t i = 0; i < n_shapes; i++) {
        const int *x = shapes[i]; /* B H Hkv T S D causal */
        const AttnDims d = {.B = x[0], .H = x[1], .Hkv = x[2], .T = x[3], .S = x[4], .D = x[5], .causal = x[6],
                            .scale = 1.0f / sqrtf((float)x[5])};
        failed += versions_against_ref(im, dev, 1, attn_impl_count(im, dev), oracle, &d, seed + i, atol, rtol, 5);
    }
    return none_failed(failed, oracle ? "runs against float64" : "runs against the reference");
}

const char *testing_attn_shapes(const AttnImpls *im, Device dev, const int shapes[][7], size_t n_shapes,
                                uint64_t seed, double atol, double rtol)
{
    return versions_on_shapes(im, dev, 0, shapes, n_shapes, seed, atol, rtol);
}

const char *testing_attn_oracle(const AttnImpls *im, const int shapes[][7], size_t n_shapes, uint64_t seed,
                                double atol, double rtol)
{
    return versions_on_shapes(im, DEVICE_CPU, 1, shapes, n_shapes, seed, atol, rtol);
}

/* ==== the `attn` program against the float64 attention ========================================= */

/* An fp16 version's output, held to FlashAttention's rule: its error against the float64 truth
 * `want` within 2x the naive fp16 run's. NULL if it holds, else what failed (in why). */
static const char *fp16_rule(const AttnDims *d, const float *q, const float *k, const float *v, const float *out,
                             const double *want, size_t si, char *why, size_t len)
{
    const size_t n = attn_q_count(d);
    float *ref = mem_alloc_or_die(n * sizeof(float), "the truth in fp32 (B, H, T, D)");
    float *naive = mem_alloc_or_die(n * sizeof(float), "the naive fp16 run (B, H, T, D)");
    attn_naive_fp16(d, q, k, v, naive);
    for (size_t i = 0; i < n; i++)
        ref[i] = (float)want[i];
    const AttnFp16Check c = attn_check_fp16(out, ref, naive, n);
    if (!c.ok)
        snprintf(why, len, "shape %zu tc: error %g (2x naive fp16's %g), NMSE %g", si, c.err, c.err_naive, c.nmse);
    mem_free(ref), mem_free(naive);
    return c.ok ? NULL : why;
}

/* q, k, v as .npy files in dir (q.npy, k.npy, v.npy); dies if one cannot be written. */
static void write_qkv(const char *dir, const AttnDims *d, const float *q, const float *k, const float *v)
{
    const size_t qs[4] = {(size_t)d->B, (size_t)d->H, (size_t)d->T, (size_t)d->D};
    const size_t ks[4] = {(size_t)d->B, (size_t)d->Hkv, (size_t)d->S, (size_t)d->D};
    const char *names[3] = {"q.npy", "k.npy", "v.npy"};
    const float *data[3] = {q, k, v};
    for (int i = 0; i < 3; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (npy_write(path, NPY_F32, 4, i ? ks : qs, data[i]) != 0)
            die_with_error();
    }
}

/* `<program> attn` on dir's q, k, v with version `kernel`: its exit status, its output in out
 * (B*H*T*D floats) when it is 0, its stderr in err. */
static int attn_run(const TestingAttnRun *run, const char *dir, int kernel, const AttnDims *d, float *out, char *err,
                    size_t err_len)
{
    char prog[4200], qp[4200], kp[4200], vp[4200], op[4200], kern[16], scale[32];
    program_path(prog, sizeof prog, run->name);
    snprintf(qp, sizeof qp, "%s/q.npy", dir), snprintf(kp, sizeof kp, "%s/k.npy", dir);
    snprintf(vp, sizeof vp, "%s/v.npy", dir), snprintf(op, sizeof op, "%s/o.npy", dir);
    snprintf(kern, sizeof kern, "%d", kernel), snprintf(scale, sizeof scale, "%.9g", (double)run->scale);
    const char *argv[TESTING_MAX_ARGS] = {prog, "attn", "--q", qp, "--k", kp, "--v", vp, "--out", op, "--device",
                                          run->device, "--kernel", kern};
    int argc = 14;
    if (d->causal)
        argv[argc++] = "--causal";
    if (run->scale != 0.0f)
        argv[argc++] = "--scale", argv[argc++] = scale;
    for (int i = 0; i < 4 && run->extra[i]; i++)
        argv[argc++] = run->extra[i];
    argv[argc] = NULL;
    remove(op);
    ProcResult *r = mem_alloc_or_die(sizeof *r, "a program's output");
    if (run_program(r, argv) != 0)
        die("cannot run %s", prog);
    const int status = r->status;
    snprintf(err, err_len, "%.4000s", r->err);
    mem_free(r);
    if (status == 0) {
        Tensor o;
        if (npy_read_tensor(op, 4, &o) != 0)
            die_with_error();
        if (o.numel != attn_q_count(d))
            die("%s attn wrote %zu elements, expected %zu", run->name, o.numel, attn_q_count(d));
        memcpy(out, o.data, o.numel * sizeof(float));
        tensor_free(&o);
    }
    return status;
}

const char *testing_attn_program(const TestingAttnRun *run, const char *dir, const int shapes[][7], size_t n_shapes,
                                 double atol, double rtol)
{
    static char why[8192];
    char err[4096], label[64];
    snprintf(label, sizeof label, "%s attn --device %s", run->name, run->device);
    const char *failed = NULL;
    for (size_t si = 0; si < n_shapes && !failed; si++) {
        const int *x = shapes[si]; /* B H Hkv T S D causal */
        const AttnDims d = {.B = x[0], .H = x[1], .Hkv = x[2], .T = x[3], .S = x[4], .D = x[5], .causal = x[6],
                            .scale = run->scale != 0.0f ? run->scale : 1.0f / sqrtf((float)x[5])};
        float *q, *k, *v;
        random_qkv(&d, run->seed + si, &q, &k, &v);
        write_qkv(dir, &d, q, k, v);
        const size_t n = attn_q_count(&d);
        float *out = mem_alloc_or_die(n * sizeof(float), "attn's output (B, H, T, D)");
        double *want = mem_alloc_or_die(n * sizeof(double), "the float64 attention (B, H, T, D)");
        attention_f64(d.B, d.H, d.Hkv, d.T, d.S, d.D, d.causal, run->scale != 0.0f ? run->scale : 1.0 / sqrt(d.D), q, k,
                      v, want);
        for (int kern = 1; kern <= run->n_kernels && !failed; kern++) {
            const int status = attn_run(run, dir, kern, &d, out, err, sizeof err);
            if (status != 0) {
                snprintf(why, sizeof why, "shape %zu: %s --kernel %d: status %d: %s", si, label, kern, status, err);
                failed = why;
            } else if (run->fp16 && run->fp16(kern)) {
                failed = fp16_rule(&d, q, k, v, out, want, si, why, sizeof why);
            } else if (compare_f32_f64(label, out, want, n, atol, rtol, 5).n_bad != 0) {
                snprintf(why, sizeof why, "shape %zu: %s --kernel %d: elements off (listed above)", si, label, kern);
                failed = why;
            }
        }
        mem_free(q), mem_free(k), mem_free(v), mem_free(out), mem_free(want);
    }
    return failed;
}
