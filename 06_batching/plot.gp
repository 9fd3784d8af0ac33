# plot.gp: chapter 06's plots. Called by the programs and `make plots` with
#   which='grid' | 'occupancy' | 'lesson' | 'bench' | 'prefix', datafile, outfile, term ('png' | 'dumb'), setup (common.gp).
load setup

if (which eq 'grid') {
    # columns: policy iteration request state name tokens padded; one panel per policy, a cell
    # per (iteration, request) coloured by its state (EngineCellState: 0 none is left blank)
    stats datafile using 2:3 nooutput
    last_it = STATS_max_x
    last_req = STATS_max_y
    names = 'waiting stalled prefill decode recompute preempted padding'
    colors = '#d0d0d0 #909090 #1f77b4 #2ca02c #ff7f0e #d62728 #9467bd'
    unset grid
    set multiplot layout 3,1 title 'Chapter 06: what each request does in each iteration'
    set xrange [-0.5:last_it + 0.5]
    set yrange [last_req + 0.5:-0.5]
    set ytics 1
    set ylabel 'request'
    set key outside right top
    do for [panel = 1:3] {
        pol = word('continuous static static-padded', panel)
        set title pol
        if (panel == 3) { set xlabel 'iteration' }
        if (panel == 2) { unset key }
        plot for [k = 1:7] datafile using ((strcol(1) eq pol && $4 == k) ? $2 : NaN):3:(0.5):(0.45) \
             with boxxyerror fill solid 1.0 noborder lc rgb word(colors, k) title word(names, k)
    }
    unset multiplot
}

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
    plot for [pol in 'continuous static static-padded'] datafile using 2:((strcol(1) eq pol && $2 > 0) ? $5 : NaN) \
             with linespoints lw 2 title pol.': tokens/s', \
         for [pol in 'continuous static static-padded'] datafile using 2:((strcol(1) eq pol && $2 > 0) ? $7 : NaN) \
             axes x1y2 with linespoints dashtype 2 title pol.': p99 TTFT'
}

if (which eq 'prefix') {
    # columns: workload caching prefill_tokens ttft_p50_s ttft_p99_s tokens_per_s hit_rate; one row per
    # (workload, caching off | on), off first
    unset grid
    set style fill solid 0.8 noborder
    set boxwidth 0.7
    set xtics rotate by -30 nomirror
    set yrange [0:*]
    unset key
    set multiplot layout 1,3 title 'Chapter 06: prefix caching off and on (continuous batching)'
    array panels[3] = ['prefill tokens computed', 'p50 time to first token (s)', 'output tokens/s']
    cols = '3 4 6'
    do for [k = 1:3] {
        set title panels[k] noenhanced
        c = int(word(cols, k))
        plot datafile using 0:c:((strcol(2) eq 'on') ? 2 : 1):xtic(strcol(1).' '.strcol(2)) with boxes lc variable noenhanced
    }
    unset multiplot
}
