/*
 * causal.h: the causal rule, written once for the CPU and the GPU.
 *
 * T queries attend to S keys, and the queries are the LAST T positions of the sequence (the
 * bottom-right alignment: during decode, T = 1 query sits after S - 1 cached keys). Query t
 * (0-based among the T) stands at position t + S - T and may see every key at or before it:
 *
 *     keys query t sees = min(S, max(0, t + S - T + 1))      (all S without the mask)
 *
 * A query that sees no key (t + S - T < 0, possible only when T > S) gets an output row of 0.
 * Every chapter's CPU code and CUDA kernels call this one function.
 */
#ifndef COMMON_CAUSAL_H
#define COMMON_CAUSAL_H

#ifdef __CUDACC__
#define CAUSAL_INLINE static __host__ __device__ __forceinline__
#else
#define CAUSAL_INLINE static inline
#endif

CAUSAL_INLINE int attn_visible_keys(int t, int T, int S, int causal)
{
    if (!causal)
        return S;
    const long long last = (long long)t + S - T; /* the last key query t may see */
    if (last < 0)
        return 0;
    return last + 1 < S ? (int)(last + 1) : S;
}

#endif
