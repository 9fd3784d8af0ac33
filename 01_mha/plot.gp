# plot.gp: chapter 01's plots. Called by the programs and `make plots` with
#   which='lesson' | 'bench', datafile, outfile, term ('png' | 'dumb'), setup (common.gp).
load setup
set logscale xy 2
set xlabel 'sequence length T (= S)'
set format y '%g'

if (which eq 'lesson') {
    # columns: T time_ms scores_mib peak_mib ref_time_ms gflops gpu_time_ms
    set title 'Chapter 01: materialised attention grows as T^2 (B=1, H=8, D=64, causal)'
    set ylabel 'time (ms)'
    set y2label 'memory (MiB)'
    set logscale y2 2
    set y2tics
    set ytics nomirror
    set key bottom right
    # the T^2 guide starts at the first OpenMP point; gpu columns hold NaN without a GPU
    stats datafile using 1 every ::0::0 name 'FX' nooutput
    stats datafile using 2 every ::0::0 name 'FY' nooutput
    stats datafile using (valid(7) ? 1 : 0) name 'G' nooutput
    quad(x) = FY_min * (x / FX_min)**2
    if (G_sum > 0) {
        plot datafile using 1:2 with linespoints title 'time, CPU OpenMP (ms)', \
             datafile using 1:5 with linespoints title 'time, CPU reference (ms)', \
             datafile using 1:7 with linespoints title 'time, GPU cuBLAS (ms)', \
             datafile using 1:4 axes x1y2 with linespoints title 'measured peak memory (MiB, right axis)', \
             quad(x) with lines dashtype 2 title 'T^2 from the first point'
    } else {
        plot datafile using 1:2 with linespoints title 'time, CPU OpenMP (ms)', \
             datafile using 1:5 with linespoints title 'time, CPU reference (ms)', \
             datafile using 1:4 axes x1y2 with linespoints title 'measured peak memory (MiB, right axis)', \
             quad(x) with lines dashtype 2 title 'T^2 from the first point'
    }
}

if (which eq 'bench') {
    # columns: device kernel B H T S D causal time_ms gflops pct_peak scores_bytes peak_bytes
    present = ''
    do for [v in 'cpu:ref cpu:omp cuda:naive cuda:cublas'] {
        stats datafile using ((strcol(1).':'.strcol(2)) eq v ? 1 : 0) name 'N' nooutput
        if (N_sum > 0) { present = present.' '.v }
    }
    set multiplot layout 1,2 title 'Chapter 01 bench: attention with the full score matrix (B=1, H=8, D=64, causal)'
    set ylabel 'time per call (ms)'
    plot for [v in present] datafile using 5:((strcol(1).':'.strcol(2)) eq v ? $9 : NaN) with linespoints title v
    set ylabel 'GFLOP/s (4*D per visible pair)'
    unset logscale y
    set logscale y 10
    plot for [v in present] datafile using 5:((strcol(1).':'.strcol(2)) eq v ? $10 : NaN) with linespoints title v
    unset multiplot
}
