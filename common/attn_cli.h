/*
 * attn_cli.h: the `attn` subcommand contract shared by chapters 01-05 (docs/contracts.md §1.3, shapes in §3.2).
 *
 *   NN_name attn --q Q.npy --k K.npy --v V.npy --out O.npy [--causal] [--scale S]
 *                [--kernel N] [--device auto|cpu|cuda]
 *
 * Q is float32 (B, H, T, D); K and V are float32 (B, Hkv, S, D); O is written as (B, H, T, D).
 * This file parses the options, loads and checks the three tensors (ranks, matching B and D,
 * K and V of one shape, the chapter's head rule, finite values) and saves the output. Each
 * problem is one error line that names the file and what was expected.
 *
 * The scale rule: --scale is any value that is a finite float -- 0 gives every visible key the
 * same weight (the mean of V), a negative scale favours the least similar keys; NaN, inf and
 * values beyond float (1e39) are refused. Scores must fit in float32: inputs with
 * D x max|q| x max|k| x max(1, 2|scale|) > FLT_MAX are refused before any work (--scale 1e38, or q
 * and k near 1e20), and an output that is not finite anyway (sums of V near FLT_MAX) is an error
 * with the out file not written: attn never writes NaN or inf with exit 0.
 */
#ifndef COMMON_ATTN_CLI_H
#define COMMON_ATTN_CLI_H

#include "causal.h" /* attn_visible_keys: which keys a query sees */
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *q_path, *k_path, *v_path, *out_path;
    int causal;
    double scale;
    int scale_given;
    int kernel;         /* 0: the chapter's fastest version */
    const char *device; /* auto|cpu|cuda */
} AttnArgs;

/* Parses the attn options (argv[0] is "attn"); exits after --help and on a bad option.
 * `summary` is the chapter's --help paragraph. */
void attn_args_parse(AttnArgs *a, const char *prog, const char *summary, int argc, char **argv);

typedef enum {
    ATTN_HEADS_DIVIDE, /* chapters 02+: H must be a multiple of Hkv */
    ATTN_HEADS_EQUAL   /* chapter 01: Hkv must equal H */
} AttnHeadRule;

typedef struct {
    Tensor q; /* (B, H, T, D) */
    Tensor k; /* (B, Hkv, S, D) */
    Tensor v; /* (B, Hkv, S, D) */
    int B, H, Hkv, T, S, D;
    float scale; /* --scale, or 1/sqrt(D) */
} AttnInputs;

/* Loads and checks Q, K, V. 0 on success, -1 with the problem recorded. */
int attn_inputs_load(const AttnArgs *a, AttnHeadRule rule, AttnInputs *in);
void attn_inputs_free(AttnInputs *in);

/* Writes out (B, H, T, D) to a->out_path. */
int attn_output_save(const AttnArgs *a, const AttnInputs *in, const float *out);

/* -1 (error recorded, naming `name`) if any of the n values is NaN or infinite. */
int check_finite(const char *name, const float *x, size_t n);

/* FLOPs of one attention: 4 * D per visible (query, key) pair (2 for QKᵀ, 2 for PV), summed
 * over B*H. For causal T = S this is about half of 4*B*H*T*S*D (docs/contracts.md §6.1). */
double attn_flops(int B, int H, int T, int S, int D, int causal);

#ifdef __cplusplus
}
#endif

#endif
