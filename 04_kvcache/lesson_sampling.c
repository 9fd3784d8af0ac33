/*
 * lesson_sampling.c: the lesson's section on choosing the next token -- temperature, top-k and
 * top-p (common/sampler.c samples; this file shows what each knob does to one step's
 * probabilities).
 *
 * The example is a logit vector chosen by hand over a vocabulary of 32000 ids (llama2.c's and
 * Llama 2's): the built-in random model's own next-token distribution is nearly flat (the
 * section prints by how much), while a trained model's has a few likely tokens and a long tail of
 * unlikely ones, which is what the knobs are for. Counting ranks from 0 here (the lesson prints
 * them from 1): ranks 0..7 get the logits of SAMPLING_HEAD, rank r >= 8 the logit
 * 2 - 0.9 ln(r - 7) (a Zipf-like tail: probability proportional to (r - 7)^-0.9), and rank r is
 * spread to id (7919 r + 29) mod 32000, so that only a sort finds the most probable. Every number
 * is computed from that vector in float32 when the lesson runs: the same on every machine up to
 * the last bits of expf and logf.
 *
 *   sampling_filter   softmax(logits / T), then top-k and top-p as run.c cuts them, renormalised
 *   sampling_example  the table the lesson prints: one column per setting
 *   lesson_sampling   the printed section
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "04_kvcache/commands.h"
#include "common/error.h"
#include "common/tensor.h"

/* the logits of the 8 most probable tokens: a few plausible continuations */
static const float SAMPLING_HEAD[SAMPLING_SHOWN] = {6.0f, 5.2f, 4.6f, 4.1f, 3.5f, 3.2f, 2.8f, 2.5f};

/* the settings of the table: the first SAMPLING_PRINTED are its columns, the rest feed sentences */
const SamplingColumn SAMPLING_SETTINGS[SAMPLING_COLUMNS] = {
    {.label = "T = 1", .s = {.temperature = 1.0f}},
    {.label = "T = 0.5", .s = {.temperature = 0.5f}},
    {.label = "T = 1.5", .s = {.temperature = 1.5f}},
    {.label = "top-k 5", .s = {.temperature = 1.0f, .top_k = 5}},
    {.label = "top-p 0.9", .s = {.temperature = 1.0f, .top_p = 0.9f}},
    {.label = "T 0.5, p 0.9", .s = {.temperature = 0.5f, .top_p = 0.9f}},
    {.label = "T 1.5, p 0.9", .s = {.temperature = 1.5f, .top_p = 0.9f}},
};

int sampling_example_id(int rank) { return (int)((7919LL * rank + 29) % SAMPLING_EXAMPLE_V); }

void sampling_example_logits(float *logits)
{
    for (int r = 0; r < SAMPLING_EXAMPLE_V; r++)
        logits[sampling_example_id(r)] = r < SAMPLING_SHOWN ? SAMPLING_HEAD[r] : 2.0f - 0.9f * logf((float)(r - 7));
}

/* A token and its probability, for the sort (run.c's ProbIndex). */
typedef struct {
    float prob;
    int index;
} Candidate;

static int by_prob_descending(const void *a, const void *b)
{
    const Candidate *x = a, *y = b;
    return x->prob > y->prob ? -1 : x->prob < y->prob ? 1 : x->index - y->index;
}

/* probs (n) = softmax(logits / T), the way model_sample_with computes it (T > 0). */
static void softmax_at(const float *logits, int n, float temperature, float *probs)
{
    float max_val = logits[0] / temperature, sum = 0.0f;
    for (int i = 0; i < n; i++)
        max_val = fmaxf(max_val, logits[i] / temperature);
    for (int i = 0; i < n; i++) {
        probs[i] = expf(logits[i] / temperature - max_val);
        sum += probs[i];
    }
    for (int i = 0; i < n; i++)
        probs[i] /= sum;
}

int sampling_filter(const float *logits, int n, const Sampling *s, float *probs, double *kept_mass)
{
    softmax_at(logits, n, s->temperature, probs);
    *kept_mass = 1.0;
    const int top_k = s->top_k > 0 && s->top_k < n ? s->top_k : n, nucleus = s->top_p > 0.0f && s->top_p < 1.0f;
    if (top_k == n && !nucleus)
        return n;
    Candidate *c = mem_alloc((size_t)n * sizeof(Candidate), "sampling candidates"); /* (n) */
    if (!c)
        return -1;
    for (int i = 0; i < n; i++)
        c[i] = (Candidate){.prob = probs[i], .index = i};
    qsort(c, (size_t)n, sizeof *c, by_prob_descending);
    /* top-k keeps the first k; top-p then cuts after the first token whose running sum passes
     * top_p times what is left (run.c: times 1), as common/sampler.c does */
    float mass = 0.0f, cumulative = 0.0f;
    for (int i = 0; i < top_k; i++)
        mass += c[i].prob;
    int kept = top_k;
    for (int i = 0; i < top_k; i++) {
        cumulative += c[i].prob;
        if (nucleus && cumulative > s->top_p * (top_k < n ? mass : 1.0f)) {
            kept = i + 1;
            break;
        }
    }
    cumulative = 0.0f;
    for (int i = 0; i < kept; i++)
        cumulative += c[i].prob;
    for (int i = 0; i < n; i++)
        probs[i] = 0.0f;
    for (int i = 0; i < kept; i++)
        probs[c[i].index] = c[i].prob / cumulative;
    *kept_mass = cumulative;
    mem_free(c);
    return kept;
}

/* The rest of column col: the mass of the tokens outside the shown ranks, its largest
 * probability and how many are kept; and the largest probability a cut token had before the cut
 * (before: the softmax at the column's temperature). */
static void column_rest(SamplingColumn *col, const float *probs, const float *before)
{
    double shown = 0.0, all = 0.0;
    for (int r = 0; r < SAMPLING_SHOWN; r++)
        shown += col->p[r] = probs[sampling_example_id(r)];
    for (int i = 0; i < SAMPLING_EXAMPLE_V; i++) {
        all += probs[i];
        if (probs[i] == 0.0f)
            col->dropped_max = fmax(col->dropped_max, before[i]);
    }
    col->rest = all - shown; /* summed, not 1 - shown: what the other tokens hold */
    for (int r = SAMPLING_SHOWN; r < SAMPLING_EXAMPLE_V; r++) {
        const float p = probs[sampling_example_id(r)];
        col->tail_max = fmax(col->tail_max, p);
        col->tail_kept += p > 0.0f;
    }
}

int sampling_example(SamplingColumn *cols)
{
    const size_t V = SAMPLING_EXAMPLE_V;
    float *logits = mem_alloc(3 * V * sizeof(float), "the example's logits"); /* (3, V) */
    if (!logits)
        return -1;
    float *probs = logits + V, *before = logits + 2 * V; /* after and before the column's filter */
    sampling_example_logits(logits);
    for (int j = 0; j < SAMPLING_COLUMNS; j++) {
        cols[j] = SAMPLING_SETTINGS[j];
        cols[j].kept = sampling_filter(logits, (int)V, &cols[j].s, probs, &cols[j].kept_mass);
        if (cols[j].kept < 0) {
            mem_free(logits);
            return -1;
        }
        softmax_at(logits, (int)V, cols[j].s.temperature, before);
        column_rest(&cols[j], probs, before);
    }
    mem_free(logits);
    return 0;
}

/* The built-in random model's own step after the prompt 1 500 7: its largest probability at
 * T = 1 and how many tokens top-p 0.9 keeps, to show why the example is chosen by hand. */
static void random_model_step(const Model *m, double *top, int *kept)
{
    const int prompt[3] = {1, 500, 7}, V = m->c.vocab_size;
    float *logits = mem_alloc_or_die(2 * (size_t)V * sizeof(float), "logits (2, vocab)");
    if (kvcache_forward_nocache(m, prompt, 3, logits) != 0)
        die_with_error();
    double mass;
    const Sampling t1 = {.temperature = 1.0f}, p09 = {.temperature = 1.0f, .top_p = 0.9f};
    sampling_filter(logits, V, &t1, logits + V, &mass);
    *top = logits[V + model_argmax(logits + V, V)];
    *kept = sampling_filter(logits, V, &p09, logits + V, &mass);
    if (*kept < 0)
        die_with_error();
    mem_free(logits);
}

static void print_table(const SamplingColumn *cols)
{
    printf("   %4s %6s", "rank", "id");
    for (int j = 0; j < SAMPLING_PRINTED; j++)
        printf(" %11s", cols[j].label);
    for (int r = 0; r < SAMPLING_SHOWN; r++) {
        printf("\n   %4d %6d", r + 1, sampling_example_id(r));
        for (int j = 0; j < SAMPLING_PRINTED; j++)
            printf(" %11.4f", cols[j].p[r]);
    }
    printf("\n   %-11s", "the rest");
    for (int j = 0; j < SAMPLING_PRINTED; j++)
        printf(" %11.4f", cols[j].rest);
    printf("\n   %-11s", "tokens kept");
    for (int j = 0; j < SAMPLING_PRINTED; j++)
        printf(" %11d", cols[j].kept);
    printf("\n\n");
}

void lesson_sampling(const Model *m)
{
    SamplingColumn c[SAMPLING_COLUMNS];
    if (sampling_example(c) != 0)
        die_with_error();
    double random_top;
    int random_kept;
    random_model_step(m, &random_top, &random_kept);
    const int V = SAMPLING_EXAMPLE_V, tail = V - SAMPLING_SHOWN;
    const int flat = random_kept > m->c.vocab_size / 4; /* a quarter of the vocabulary for 0.9 of the mass */
    printf("4. Choosing the next token: temperature, top-k, top-p. The built-in random model's distribution is\n"
           "   %s: after the prompt 1 500 7 its likeliest token has p = %.4f, and top-p 0.9 keeps %d of\n"
           "   its %d tokens. So the example is a logit vector chosen by hand, shaped like a trained model's:\n"
           "   %d ids (Llama 2's vocabulary), 8 likely tokens (logits %.1f down to %.1f), then a long tail\n"
           "   (rank r > 8: logit 2 - 0.9 ln(r - 8)). Probabilities of the 8 most probable tokens; 'the rest' is\n"
           "   the mass of the other %d. A filter keeps its tokens' probabilities in proportion, summing to 1.\n\n",
           flat ? "nearly flat" : "not flat", random_top, random_kept, m->c.vocab_size, V, SAMPLING_HEAD[0],
           SAMPLING_HEAD[SAMPLING_SHOWN - 1], tail);
    print_table(c);
    printf("   Temperature divides the logits before softmax: at T = 0.5 the first token's %.2f becomes %.2f;\n"
           "   at T = 1.5 it is %.2f, and the rest %s from %.2f to %.2f. Top-k keeps a fixed number, the %d\n"
           "   most probable, whatever the shape. Top-p keeps the fewest most probable tokens whose mass passes p\n"
           "   (the nucleus), as many as the shape needs: %d of %d here, %d at T = 0.5, %d at T = 1.5.\n"
           "   Why llama2.c's run.c samples with top-p 0.9 by default (at its default T = 1): each of the %d\n"
           "   tail tokens is unlikely (the largest has p = %.5f), yet together they hold %.3f, so plain\n"
           "   sampling picks one about once every %.0f tokens, and every later token is conditioned on it.\n"
           "   Top-p 0.9 drops the %d least probable ids (each at most p = %.5f, together %.3f of the\n"
           "   mass): the rest falls to %.3f, all of it on the %d most probable tail tokens. --top-p 1: no cut.\n\n",
           c[0].p[0], c[1].p[0], c[2].p[0], c[2].rest > c[0].rest ? "grows" : "shrinks", c[0].rest, c[2].rest,
           c[3].kept, c[4].kept, V, c[5].kept, c[6].kept, tail, c[0].tail_max, c[0].rest, 1.0 / c[0].rest,
           V - c[4].kept, c[4].dropped_max, 1.0 - c[4].kept_mass, c[4].rest, c[4].tail_kept);
}
