# plot.gp: chapter 04's plots. Called by the programs and `make plots` with
#   which='steps' | 'memory' | 'bench', datafile, outfile, term ('png' | 'dumb'), setup (common.gp).
load setup

if (which eq 'steps') {
    # columns: position with_cache_ms without_cache_ms
    set title 'Chapter 04: time of one generation step against its position (built-in model, CPU)'
    set xlabel 'position of the token being generated'
    set ylabel 'milliseconds per step'
    set yrange [0:*]
    set key top left
    plot datafile using 1:3 with lines lw 2 title 'without the cache: the whole sequence again', \
         datafile using 1:2 with lines lw 2 title 'with the cache: one token'
}

if (which eq 'memory') {
    # columns: context this_f16 llama2_7b_f16 llama3_8b_f16 llama2_70b_f16 (GiB)
    set title 'Chapter 04: KV cache of one sequence in fp16, 2 * layers * kv_heads * head_dim * 2 bytes per token'
    set logscale xy 2
    set xlabel 'context length (tokens)'
    set ylabel 'GiB'
    set format y '%g'
    set key top left
    plot datafile using 1:3 with linespoints title 'Llama-2-7B (MHA, 32 kv heads)', \
         datafile using 1:5 with linespoints title 'Llama-2-70B (80 layers, 8 kv heads)', \
         datafile using 1:4 with linespoints title 'Llama-3-8B (GQA, 8 kv heads)', \
         datafile using 1:2 with linespoints title 'this chapter''s random model'
}

if (which eq 'bench') {
    # columns: mode device variant dtype B H Hkv L D time_ms gbs pct_dram tokens_per_s peak_rss_mib
    set title 'Chapter 04 bench: decode attention (B=16, H=8, D=128, cold caches): bytes of K and V read per second'
    set logscale x 2
    set xrange [800:20000]
    set xlabel 'cache length L'
    set ylabel '% of the measured DRAM read bandwidth'
    set yrange [0:110]
    set key bottom right
    plot for [c in 'f32:8 f32:2 f16:8 f16:2 int8:8 int8:2'] datafile using 8:((strcol(1) eq 'decode' && strcol(2) eq 'cpu' && strcol(3) eq 'split' && strcol(4).':'.strcol(7) eq c) ? $12 : NaN) \
         with linespoints title 'split, dtype:Hkv '.c, \
         100 with lines dashtype 2 lc rgb 'gray' title 'DRAM read bandwidth'
}
