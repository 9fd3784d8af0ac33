/*
 * tp_lesson.c: the lesson of 04_kvcache_tp (tp.h) -- what tensor parallelism divides, what it
 * costs, and when it pays.
 *
 *   1. What each rank holds of this model at N = 1, 2, 4, 8: model_shard_plan's heads, columns and
 *      rows, and the bytes of its weights and KV cache, computed by the loader's own arithmetic.
 *   2. The same for Llama-2-70B at 32k context across 1-8 GPUs of 80 GB: the model does not fit one
 *      GPU; across 8 each holds 1/8 of the weights and of every sequence's cache.
 *   3. What the all-reduces cost per token: 2 per layer of dim values each; their bytes against a
 *      link's bandwidth, and against the time to read a rank's weights once (a decode step).
 *   4. Measured here: `mpirun -np N 04_kvcache_tp time` for N = 1, 2, 4, run by this lesson.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "04_kvcache/kvcache.h"
#include "04_kvcache/tp.h"
#include "common/error.h"
#include "common/program.h"
#include "common/roofline.h"
#include "common/tensor.h"

/* Published configs (the released config.json files): Llama-2-70B has dim 8192, SwiGLU 28672,
 * 80 layers, 64 heads over 8 kv heads (GQA 8:1), vocab 32000, an unshared classifier. */
static const ModelConfig LLAMA2_70B = {.dim = 8192, .hidden_dim = 28672, .n_layers = 80, .n_heads = 64,
                                       .n_kv_heads = 8, .vocab_size = 32000, .seq_len = 4096,
                                       .shared_classifier = 0};

/* Link and memory bandwidths from the vendors' datasheets, one direction: NVLink 4 on an H100 SXM
 * (900 GB/s both ways), PCIe 5.0 x16 (64 GB/s), HBM3 of an H100 SXM (3.35 TB/s). */
#define NVLINK4_GBS 450.0
#define PCIE5_GBS 64.0
#define H100_HBM_GBS 3350.0

/* ==== 1 and 2: what a rank holds ========================================================================== */

static void table_ranks(const ModelConfig *c, double value_bytes, int context, const char *unit, double scale)
{
    const int D = model_head_size(c);
    printf("   %5s %7s %8s %9s %8s %12s %14s %12s\n", "ranks", "q heads", "kv heads", "SwiGLU", "vocab",
           "weights", "KV per token", "KV at ctx");
    for (int N = 1; N <= 8; N *= 2) {
        ModelShard s;
        if (model_shard_plan(c, 0, N, &s) != 0) {
            printf("   %5d (%s)\n", N, error_message());
            continue;
        }
        const double w = (double)model_shard_floats(c, &s) * value_bytes;
        const double kv = (double)kvcache_bytes_per_token(c->n_layers, s.n_kv, D, KV_F32) * value_bytes / 4.0;
        printf("   %5d %7d %8d %9d %8d %9.2f %-3s %11.0f B %9.2f %s\n", N, s.n_h, s.n_kv, s.n_f, s.n_v, w / scale,
               unit, kv, kv * context / scale, unit);
    }
}

static void lesson_shards(const ModelConfig *c)
{
    printf("1. What each rank holds (Megatron-LM's split; rank 0 shown, the others alike). Every layer's\n"
           "   Wq, Wk, Wv by output heads and Wo by the matching input columns; W1, W3 by rows and W2 by columns;\n"
           "   the embedding and the classifier by vocabulary rows (vLLM's VocabParallelEmbedding: replicated,\n"
           "   they would be most of a small model's bytes); the norms whole. Its KV cache holds only its kv\n"
           "   heads. This model (fp32, context %d):\n\n",
           c->seq_len);
    table_ranks(c, 4.0, c->seq_len, "MiB", 1048576.0);
    printf("\n   With more ranks than kv heads (here %d), each kv head is replicated on N / %d ranks, as vLLM\n"
           "   does: the weights still divide by N, the cache only by %d.\n\n",
           c->n_kv_heads, c->n_kv_heads, c->n_kv_heads);
    printf("2. Llama-2-70B (fp16 weights and cache, context 32k = 32768 tokens), per GPU:\n\n");
    table_ranks(&LLAMA2_70B, 2.0, 32768, "GB", 1e9);
    ModelShard s8;
    model_shard_plan(&LLAMA2_70B, 0, 8, &s8);
    const double w8 = (double)model_shard_floats(&LLAMA2_70B, &s8) * 2.0 / 1e9;
    const double kv8 = (double)kvcache_bytes_per_token(80, s8.n_kv, 128, KV_F16) * 32768 / 1e9;
    const double w1 = (double)model_param_count(&LLAMA2_70B) * 2.0 / 1e9;
    printf("\n   One 80 GB GPU cannot hold the %.0f GB of weights at all. Across 8, each holds %.1f GB of them\n"
           "   and %.2f GB per 32k-token sequence, so %d such sequences fit beside the weights (before\n"
           "   activations and the runtime's own memory).\n\n",
           w1, w8, kv8, (int)((80.0 - w8) / kv8));
}

/* ==== 3: the all-reduces' bytes against the links ========================================================= */

static void lesson_bytes(const ModelConfig *c, const Roofline *roof)
{
    printf("3. What the all-reduces cost per token: 2 per layer, each summing dim values across the ranks\n"
           "   (a ring all-reduce sends 2 (N-1)/N of them per rank), against the time to read a rank's\n"
           "   weights once, which is what a decode step of one sequence costs:\n\n");
    printf("   %-32s %5s %14s %14s %12s %14s\n", "", "ranks", "payload/token", "ring/rank", "link time", "weights time");
    for (int which = 0; which < 2; which++) {
        const ModelConfig *m = which ? &LLAMA2_70B : c;
        const double vb = which ? 2.0 : 4.0, payload = 2.0 * m->n_layers * m->dim * vb;
        ModelShard s;
        const int nr = which ? 8 : 2;
        model_shard_plan(m, 0, nr, &s);
        const double wbytes = (double)model_shard_floats(m, &s) * vb;
        const double link = which ? NVLINK4_GBS : roof->dram_gbs, mem = which ? H100_HBM_GBS : roof->dram_gbs;
        const double ring_n = 2.0 * (nr - 1) / nr * payload;
        printf("   %-32s %5d %11.1f KB %11.1f KB %9.2f us %11.3f ms\n",
               which ? "Llama-2-70B, H100 NVLink 4" : "this model, this machine's DRAM", nr, payload / 1e3,
               ring_n / 1e3, ring_n / (link * 1e9) * 1e6, wbytes / (mem * 1e9) * 1e3);
    }
    const double payload70 = 2.0 * 80 * 8192 * 2.0, ring70 = 2.0 * 7 / 8 * payload70;
    printf("\n   (Here the two ranks would share that one DRAM: their weights' times add up, see section 4.)\n"
           "   On NVLink the bytes cost %.1f us a token (%.0f us over PCIe 5.0), against %.1f ms of reading a GPU's\n"
           "   share of the weights: splitting 8 ways makes each step ~8x shorter and adds little traffic.\n"
           "   What does cost is the latency of 160 small all-reduces a token, each a synchronisation of the\n"
           "   8 GPUs whatever its size (`mpirun -np N %s nccl` measures it where GPUs are): engines\n"
           "   replace them with custom one-shot kernels and CUDA graphs for small batches.\n\n",
           ring70 / (NVLINK4_GBS * 1e9) * 1e6, ring70 / (PCIE5_GBS * 1e9) * 1e6,
           (double)model_param_count(&LLAMA2_70B) * 2.0 / 8 / (H100_HBM_GBS * 1e9) * 1e3, TP_PROG);
}

/* ==== 4: measured here ======================================================================================== */

/* Runs `mpirun -np N <this program> time` and reads its row into v (5 values). 0, or -1 with why. */
static int run_time(int N, double v[5], char *why, size_t why_len)
{
    char self[4096], cmd[8192];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return snprintf(why, why_len, "cannot find this program (/proc/self/exe)"), -1;
    self[n] = '\0';
    const long cores = sysconf(_SC_NPROCESSORS_ONLN);
    const long threads = cores / N > 0 ? cores / N : 1; /* the cores shared among the ranks */
    snprintf(cmd, sizeof cmd, "mpirun %s--oversubscribe --bind-to none -np %d -x OMP_NUM_THREADS=%ld '%s' time 2>&1",
             geteuid() == 0 ? "--allow-run-as-root " : "", N, threads, self);
    FILE *p = popen(cmd, "r");
    if (!p)
        return snprintf(why, why_len, "cannot run mpirun"), -1;
    char line[4096], last[4096] = "";
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        int ranks;
        if (!got && sscanf(line, "%d\t%lf\t%lf\t%lf\t%lf", &ranks, &v[1], &v[2], &v[3], &v[4]) == 5 && ranks == N)
            got = 1, v[0] = ranks;
        else if (line[0] != '\n')
            snprintf(last, sizeof last, "%s", line);
    }
    const int status = pclose(p);
    if (got && status == 0)
        return 0;
    last[strcspn(last, "\n")] = '\0';
    return snprintf(why, why_len, "`%s` failed: %s", cmd, last[0] ? last : "no output (is Open MPI's mpirun installed?)"),
           -1;
}

static void lesson_measured(void)
{
    printf("4. Measured on this machine: greedy decode steps of this model after a 64-token prompt, the\n"
           "   ranks started by `mpirun -np N %s time` (the cores shared among them):\n\n"
           "   %5s %12s %16s %10s %14s %12s\n",
           TP_PROG, "ranks", "ms/token", "all-reduce ms", "share", "bytes/token", "reduces/tok");
    double first = 0;
    for (int N = 1; N <= 4; N *= 2) {
        double v[5];
        char why[8400];
        if (run_time(N, v, why, sizeof why) != 0) {
            printf("   %5d %s\n", N, why);
            continue;
        }
        first = N == 1 ? v[1] : first;
        printf("   %5d %12.2f %16.3f %9.0f%% %14.0f %12.0f\n", N, v[1], v[2], 100.0 * v[2] / v[1], v[3], v[4]);
        if (N > 1 && first > 0)
            printf("   %5s x%.2f the speed of 1 rank\n", "", first / v[1]);
    }
    printf("\n   Here every rank shares the same cores and the same DRAM: one process already used both cores\n"
           "   and read the weights at the memory's speed, so N ranks read the same bytes through the same\n"
           "   memory and add the all-reduces' synchronisation (each waits for the slowest rank). GPUs gain\n"
           "   because each brings its own compute and its own HBM, and the link is fast (section 3).\n\n");
}

int tp_lesson(int argc, char **argv)
{
    (void)lesson_begin(&TP_PROGRAM, "the ranks run on the CPU (cuda: the same, this lesson has no GPU part)", NULL, 0,
                       argc, argv);
    lesson_machine(DEVICE_CPU, 0);
    const ModelConfig c = model_default_config();
    lesson_shards(&c);
    lesson_bytes(&c, roofline_get());
    lesson_measured();
    return lesson_end("tensor parallelism divides every layer's weights and every sequence's KV cache by the number\n"
                      "of ranks, at the price of two all-reduces of dim values per layer and token: little traffic,\n"
                      "but a synchronisation that only pays where each rank brings its own compute and memory.\n");
}
