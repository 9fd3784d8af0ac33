# plot.gp: chapter 02's plots. Called by the programs and `make plots` with
#   which='lesson' | 'bench', datafile, outfile, term ('png' | 'dumb'), setup (common.gp).
load setup

if (which eq 'lesson') {
    # columns: Hkv params kv_bytes_token prefill_ms decode_ms decode_ref_ms decode_gbs err_random err_corr gpu_decode_ms
    set title 'Chapter 02: sharing K/V heads (C=1024, H=16, D=64): decode time and conversion error'
    set xlabel 'key/value heads Hkv (16 = MHA, 1 = MQA)'
    set logscale x 2
    set xrange [0.8:20]
    set ylabel 'decode step, B=4, S=8192 (ms)'
    set y2label 'relative L2 error of the mean-pooled layer'
    set y2tics
    set ytics nomirror
    set yrange [0:*]
    set y2range [0:*]
    set key center right
    plot datafile using 1:5 with linespoints lw 2 title 'decode, grouped CPU version (ms)', \
         datafile using 1:8 axes x1y2 with linespoints title 'error, random weights (right)', \
         datafile using 1:9 axes x1y2 with linespoints title 'error, K/V heads correlated 0.94 (right)'
}

if (which eq 'bench') {
    # columns: mode device kernel B H Hkv T S D causal time_ms gflops gbs kv_read_bytes pct_peak pct_dram
    set multiplot layout 1,2 title 'Chapter 02 bench: decode step, one query per sequence (B=4, H=16, D=64), cold caches'
    set logscale xy 2
    set xrange [800:40000]
    set xlabel 'cache length S'
    set ylabel 'time per call (ms)'
    set key top left
    plot for [h in '16 8 4 2 1'] datafile using 8:((strcol(1) eq 'decode' && strcol(2) eq 'cpu' && strcol(3) eq 'grouped' && $6 == h+0) ? $11 : NaN) \
         with linespoints title 'grouped, Hkv='.h
    set ylabel 'K/V bytes read / time (GB/s)'
    unset logscale y
    set yrange [0:*]
    plot for [h in '16 8 4 2 1'] datafile using 8:((strcol(1) eq 'decode' && strcol(2) eq 'cpu' && strcol(3) eq 'grouped' && $6 == h+0) ? $13 : NaN) \
         with linespoints title 'grouped, Hkv='.h
    unset multiplot
}
