/* attn_cli.c: the attn contract's options, input checks and output (see attn_cli.h). */
#include "attn_cli.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "args.h"
#include "device.h"
#include "error.h"
#include "npy.h"

void attn_args_parse(AttnArgs *a, const char *prog, const char *summary, int argc, char **argv)
{
    char name[128];
    memset(a, 0, sizeof *a);
    a->device = "auto";
    ArgSpec specs[] = {
        {.name = "q", .kind = ARG_STRING, .dest = &a->q_path, .metavar = "FILE",
         .help = "queries, float32 .npy of shape (B, H, T, D)", .required = 1},
        {.name = "k", .kind = ARG_STRING, .dest = &a->k_path, .metavar = "FILE",
         .help = "keys, float32 .npy of shape (B, Hkv, S, D)", .required = 1},
        {.name = "v", .kind = ARG_STRING, .dest = &a->v_path, .metavar = "FILE",
         .help = "values, float32 .npy of shape (B, Hkv, S, D)", .required = 1},
        {.name = "out", .kind = ARG_STRING, .dest = &a->out_path, .metavar = "FILE",
         .help = "where to write the output, float32 (B, H, T, D)", .required = 1},
        {.name = "causal", .kind = ARG_FLAG, .dest = &a->causal,
         .help = "bottom-right causal mask: query t sees key s iff s <= t + S - T"},
        {.name = "scale", .kind = ARG_DOUBLE, .dest = &a->scale, .metavar = "S",
         .help = "score scale, any finite float (default 1/sqrt(D); 0 averages V, < 0 is allowed)",
         .given = &a->scale_given},
        {.name = "kernel", .kind = ARG_INT, .dest = &a->kernel, .metavar = "N",
         .help = "which version to run, 1 = the simplest (default: the fastest)", .min = 1, .max = 99},
        {.name = "device", .kind = ARG_CHOICE, .dest = &a->device, .choices = DEVICE_CHOICES,
         .help = "where to run (default auto: the GPU if there is one)"},
    };
    snprintf(name, sizeof name, "%s attn", prog);
    ArgCommand cmd = {name, "--q Q.npy --k K.npy --v V.npy --out O.npy [options]", summary, specs,
                      (int)(sizeof specs / sizeof specs[0])};
    args_parse_or_exit(&cmd, argc, argv);
}

int check_finite(const char *name, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return error_set("%s: element %zu is %s; inputs must be finite", name, i, isnan(x[i]) ? "NaN" : "infinite");
    return 0;
}

static int check_dims(const char *path, const Tensor *t, const char *names)
{
    char shape[96];
    for (int i = 0; i < 4; i++) {
        if (t->shape[i] == 0)
            return error_set("%s: shape %s has %c = 0; every dimension must be at least 1", path,
                             tensor_shape_str(t, shape, sizeof shape), names[i]);
        if (t->shape[i] > INT_MAX)
            return error_set("%s: dimension %c = %zu is too large", path, names[i], t->shape[i]);
    }
    return 0;
}

static double max_abs(const Tensor *t)
{
    double m = 0.0;
    for (size_t i = 0; i < t->numel; i++)
        m = fmax(m, fabs((double)t->data[i]));
    return m;
}

/* Finite inputs can still make scores beyond float32 (--scale 1e38, or q and k near 1e20): then
 * a row's scores turn inf or -inf and its output NaN, or zero in a kernel that treats an all -inf
 * row as masked -- a wrong answer that looks like one. Every |q . k| is at most D max|q| max|k|
 * (computed here in double); a kernel sums q . k unscaled, or with q pre-multiplied by the scale
 * (times log2(e) < 2 in the exp2 kernels), so both must fit: refused up front, before any work. */
static int check_score_range(const AttnArgs *a, const AttnInputs *in)
{
    const double mq = max_abs(&in->q), mk = max_abs(&in->k), s = fabs((double)in->scale);
    const double dot = (double)in->D * mq * mk, worst = dot * fmax(1.0, 2.0 * s);
    if (worst > FLT_MAX)
        return error_set("the attention scores can overflow float32: D x max|q| x max|k| x max(1, 2|scale|) = %d x %g "
                         "x %g x %g = %g, above FLT_MAX %g (max|q| from %s, max|k| from %s, scale %g); scale the inputs "
                         "down",
                         in->D, mq, mk, fmax(1.0, 2.0 * s), worst, (double)FLT_MAX, a->q_path, a->k_path,
                         (double)in->scale);
    return 0;
}

static int check_inputs(const AttnArgs *a, AttnHeadRule rule, AttnInputs *in)
{
    char qs[96], ks[96], vs[96];
    tensor_shape_str(&in->q, qs, sizeof qs);
    tensor_shape_str(&in->k, ks, sizeof ks);
    tensor_shape_str(&in->v, vs, sizeof vs);
    if (check_dims(a->q_path, &in->q, "BHTD") || check_dims(a->k_path, &in->k, "BHSD") ||
        check_dims(a->v_path, &in->v, "BHSD"))
        return -1;
    if (memcmp(in->k.shape, in->v.shape, sizeof in->k.shape) != 0)
        return error_set("K %s (%s) and V %s (%s) must have the same shape", ks, a->k_path, vs, a->v_path);
    if (in->q.shape[0] != in->k.shape[0])
        return error_set("batch differs: Q %s has B = %zu but K %s has B = %zu", qs, in->q.shape[0], ks, in->k.shape[0]);
    if (in->q.shape[3] != in->k.shape[3])
        return error_set("head dim differs: Q %s has D = %zu but K %s has D = %zu", qs, in->q.shape[3], ks,
                         in->k.shape[3]);
    in->B = (int)in->q.shape[0];
    in->H = (int)in->q.shape[1];
    in->T = (int)in->q.shape[2];
    in->D = (int)in->q.shape[3];
    in->Hkv = (int)in->k.shape[1];
    in->S = (int)in->k.shape[2];
    if (rule == ATTN_HEADS_EQUAL && in->Hkv != in->H)
        return error_set("Q has H = %d heads but K/V have Hkv = %d: this chapter needs Hkv = H; "
                         "multi-query and grouped-query attention (Hkv < H) are chapter 02 (build/bin/02_mqa_gqa attn)",
                         in->H, in->Hkv);
    if (rule == ATTN_HEADS_DIVIDE && in->H % in->Hkv != 0)
        return error_set("H = %d query heads is not a multiple of Hkv = %d key/value heads "
                         "(each kv head must serve a whole group of query heads)", in->H, in->Hkv);
    if (check_finite(a->q_path, in->q.data, in->q.numel) || check_finite(a->k_path, in->k.data, in->k.numel) ||
        check_finite(a->v_path, in->v.data, in->v.numel))
        return -1;
    in->scale = a->scale_given ? (float)a->scale : 1.0f / sqrtf((float)in->D);
    if (!isfinite(in->scale))
        return error_set("--scale %g does not fit in a float", a->scale);
    return check_score_range(a, in);
}

int attn_inputs_load(const AttnArgs *a, AttnHeadRule rule, AttnInputs *in)
{
    memset(in, 0, sizeof *in);
    if (npy_read_tensor(a->q_path, 4, &in->q) != 0 || npy_read_tensor(a->k_path, 4, &in->k) != 0 ||
        npy_read_tensor(a->v_path, 4, &in->v) != 0 || check_inputs(a, rule, in) != 0) {
        attn_inputs_free(in);
        return -1;
    }
    return 0;
}

void attn_inputs_free(AttnInputs *in)
{
    tensor_free(&in->q);
    tensor_free(&in->k);
    tensor_free(&in->v);
}

int attn_output_save(const AttnArgs *a, const AttnInputs *in, const float *out)
{
    size_t shape[4] = {(size_t)in->B, (size_t)in->H, (size_t)in->T, (size_t)in->D};
    /* the scores were checked up front; sums of large values (V near FLT_MAX / S) can still
     * overflow, and a non-finite output is never written with exit 0 */
    const size_t n = shape[0] * shape[1] * shape[2] * shape[3];
    for (size_t i = 0; i < n; i++)
        if (!isfinite(out[i])) {
            const size_t d = i % shape[3], t = i / shape[3] % shape[2], h = i / shape[3] / shape[2] % shape[1];
            return error_set("the output at (b %zu, h %zu, t %zu, d %zu) is %s: the inputs overflow float32 arithmetic "
                             "(max|v| = %g from %s, over up to S = %d keys); %s not written",
                             i / shape[3] / shape[2] / shape[1], h, t, d, isnan(out[i]) ? "NaN" : "infinite",
                             max_abs(&in->v), a->v_path, in->S, a->out_path);
        }
    return npy_write(a->out_path, NPY_F32, 4, shape, out);
}

double attn_flops(int B, int H, int T, int S, int D, int causal)
{
    double pairs = 0.0;
    for (int t = 0; t < T; t++)
        pairs += attn_visible_keys(t, T, S, causal);
    return 4.0 * D * pairs * B * H;
}
