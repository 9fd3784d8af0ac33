/*
 * test_engine.h: what chapter 06's three test files share: the model every in-process test
 * serves (a checked fixture), synthetic workloads, each request's tokens from chapter 05 alone,
 * and serve_and_check, which serves a workload and holds every request to those tokens.
 *
 *   test_engine.c           the engine against chapter 05 alone, the metrics, and main()
 *   test_engine_requests.c  the requests file: parsing, its rules, bounded memory
 *   test_engine_program.c   the program (serve, gen-requests, verify, bench), text through
 *                           chapters 04-06, the GPU engine and hostile inputs
 *   test_engine_grid.c      the iteration x sequence grid, worked out by hand, and static-padded
 *   test_engine_prefix.c    prefix caching: tokens unchanged on and off, the budget and the hit
 *                           rate by hand, the workloads, serve --prefix-caching
 *   test_engine_live.c      the live engine (requests entering while it runs) against engine_serve
 *   test_server.c           the HTTP server: its JSON rules, and curl and the openai client against serve
 */
#ifndef TEST_ENGINE_H
#define TEST_ENGINE_H

#include <check.h>
#include <stdint.h>
#include <string.h>

#include "06_batching/engine.h"
#include "common/model.h"
#include "common/testing.h"
#include "common/testing_main.h"

/* The small model of the in-process tests (dim 64, 2 layers, GQA 2:1, vocabulary 113, seq_len
 * 192), made before each test by model_setup and freed by model_teardown. */
extern Model model;
void model_setup(void);
void model_teardown(void);

/* A workload of n skewed requests (seed) for `model`, arriving at `rate` per second (0: all at
 * once). */
EngineRequest *workload(int n, double rate, uint64_t seed);

/* want[i]: chapter 05 alone on request i (NULL when it cannot run); free_want frees them. */
int **alone(const EngineRequest *r, int n, float temperature, uint64_t seed);
void free_want(int **want, int n);

/* The most blocks of bs tokens any of the n requests needs at its longest. */
int longest_in_blocks(const EngineRequest *r, int n, int bs);

/* n requests, each with what chapter 05 gives it alone. */
typedef struct {
    int n;
    EngineRequest *r; /* the requests */
    int **want;       /* want[i]: chapter 05 alone on request i (NULL when it cannot run) */
    int longest;      /* the most blocks of 4 tokens any request needs at its longest */
} Requests;

/* workload(n, rate, seed), each request served alone by chapter 05 (alone(..., temperature,
 * sample_seed)); requests_free frees all of it. */
Requests requests_alone(int n, double rate, uint64_t seed, float temperature, uint64_t sample_seed);
void requests_free(Requests *q);

/* Serves q's requests with o; checks every served request against q->want, progress at every
 * iteration and an empty pool at the end (engine_serve fails otherwise); returns the metrics. */
EngineMetrics serve_and_check(const Requests *q, EngineOptions o, const char *what);

/* text (a C string) as the file path; dies if it cannot be written. */
static inline void write_text(const char *path, const char *text) { write_bytes(path, text, strlen(text)); }

/* The cases of the other two files: "requests and program" comes in two parts, the requests
 * file's tests (test_engine_requests.c), then the program's (test_engine_program.c). */
TestingCase engine_requests_case(void);
TestingCase engine_program_case(void);
TestingCase engine_hostile_case(void);
TestingCase engine_cuda_case(void);
TestingCase engine_grid_case(void); /* test_engine_grid.c: the grid and static-padded batching */
TestingCase engine_prefix_case(void); /* test_engine_prefix.c: prefix caching */
TestingCase engine_live_case(void);   /* test_engine_live.c: the live engine against engine_serve */
TestingCase engine_server_case(void); /* test_server.c: the HTTP server's JSON, and real clients */
TestingCase engine_page_case(void);   /* test_server.c: the live page in headless chromium */

#endif
