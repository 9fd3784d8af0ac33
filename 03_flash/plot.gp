# plot.gp: chapter 03's plots. Called by the programs and `make plots` with
#   which='lesson' | 'tiles' | 'bench', datafile, outfile, term ('png' | 'dumb'), setup (common.gp).
load setup

if (which eq 'lesson') {
    # columns: T ch02_ms ch02_gflops ch02_alloc_bytes ch02_rss_bytes ch03_ms ch03_gflops ch03_alloc_bytes ch03_rss_bytes pct_peak
    set multiplot layout 1,2 title 'Chapter 03: flash attention against the materialised score matrix (B=1, H=8, D=64, causal)'
    set logscale xy 2
    set xlabel 'T = S'
    set ylabel 'time per call (ms)'
    set key top left
    plot datafile using 1:2 with linespoints title 'chapter 02 (grouped)', \
         datafile using 1:6 with linespoints title 'chapter 03 (fast)'
    set ylabel 'memory held by the call (MiB)'
    plot datafile using 1:($4/1048576) with linespoints title 'chapter 02, allocator', \
         datafile using 1:($5/1048576) with linespoints title 'chapter 02, peak RSS growth', \
         datafile using 1:($8/1048576) with linespoints title 'chapter 03, allocator', \
         datafile using 1:($9/1048576) with linespoints title 'chapter 03, peak RSS growth'
    unset multiplot
}

if (which eq 'tiles') {
    # columns: Br Bc time_ms gflops pct_peak tile_kib
    set title 'Chapter 03: fast version GFLOP/s by tile size (T=S=2048, B=1, H=8, D=64, causal)'
    set logscale x 2
    set xlabel 'Bc (keys per tile)'
    set ylabel 'GFLOP/s'
    set yrange [0:*]
    set key bottom right
    plot for [br in '12 24 48 96'] datafile using 2:($1 == br+0 ? $4 : NaN) with linespoints title 'Br='.br
}

if (which eq 'bench') {
    # columns: chapter device kernel B H Hkv T S D causal time_ms gflops pct_peak alloc_bytes
    present = ''
    do for [v in '02:cpu:grouped 03:cpu:tiled 03:cpu:fast 03:cuda:fa1 03:cuda:fa2 03:cuda:tc'] {
        stats datafile using ((strcol(1).':'.strcol(2).':'.strcol(3)) eq v ? 1 : 0) name 'N' nooutput
        if (N_sum > 0) { present = present.' '.v }
    }
    set multiplot layout 1,2 title 'Chapter 03 bench: B=1, H=8, D=64, causal (dots: no mask), fp32'
    set logscale xy 2
    set xlabel 'T = S'
    set ylabel 'time per call (ms)'
    set key top left
    plot for [v in present] datafile using 7:((strcol(1).':'.strcol(2).':'.strcol(3)) eq v && $9 == 64 && $10 == 1 ? $11 : NaN) with linespoints title v
    unset logscale y
    set yrange [0:*]
    set ylabel 'GFLOP/s (4*D per visible pair)'
    plot for [v in present] datafile using 7:((strcol(1).':'.strcol(2).':'.strcol(3)) eq v && $9 == 64 && $10 == 1 ? $12 : NaN) with linespoints title v, \
         datafile using 7:(strcol(1) eq '03' && strcol(2) eq 'cpu' && strcol(3) eq 'fast' && $10 == 0 ? $12 : NaN) with points pt 7 title '03:cpu:fast, no mask'
    unset multiplot
}
