# plot.gp: chapter 06's plots. Called by the programs and `make plots` with
#   which='occupancy' | 'lesson' | 'bench', datafile, outfile, term ('png' | 'dumb'), setup (common.gp).
load setup

if (which eq 'occupancy') {
    # columns: policy clock_s scheduled blocks_used (one block of rows per policy)
    set title 'Chapter 06: sequences in each iteration''s forward, over time (max-batch 16)'
    set xlabel 'engine clock (s)'
    set ylabel 'sequences per iteration'
    set yrange [0:18]
    set key top right
    plot datafile using 2:((strcol(1) eq 'continuous') ? $3 : NaN) with steps lw 2 title 'continuous batching', \
         datafile using 2:((strcol(1) eq 'static') ? $3 : NaN) with steps lw 2 title 'static batching'
}

if (which eq 'lesson' || which eq 'bench') {
    # columns: policy rate requests max_batch tokens_per_s ttft_p50_s ttft_p99_s tpot_p50_ms tpot_p99_ms mean_batch preemptions model peak_rss_mib pct_dram
    set title 'Chapter 06: throughput (left) and p99 time to first token (right) against the arrival rate'
    set logscale x 2
    set xlabel 'arrival rate (requests per second, Poisson)'
    set ylabel 'output tokens per second'
    set y2label 'p99 TTFT (s)'
    set ytics nomirror
    set y2tics
    set yrange [0:*]
    set y2range [0:*]
    set key top left
    plot datafile using 2:((strcol(1) eq 'continuous' && $2 > 0) ? $5 : NaN) with linespoints lw 2 title 'continuous: tokens/s', \
         datafile using 2:((strcol(1) eq 'static' && $2 > 0) ? $5 : NaN) with linespoints lw 2 title 'static: tokens/s', \
         datafile using 2:((strcol(1) eq 'continuous' && $2 > 0) ? $7 : NaN) axes x1y2 with linespoints dashtype 2 title 'continuous: p99 TTFT', \
         datafile using 2:((strcol(1) eq 'static' && $2 > 0) ? $7 : NaN) axes x1y2 with linespoints dashtype 2 title 'static: p99 TTFT'
}
