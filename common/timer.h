/* timer.h: a monotonic wall clock in seconds (CLOCK_MONOTONIC), for benchmarks and lessons. */
#ifndef COMMON_TIMER_H
#define COMMON_TIMER_H

#ifdef __cplusplus
extern "C" {
#endif

double timer_now(void);

#ifdef __cplusplus
}
#endif
#endif
