# plot_server.gp: chapter 06's server against in-process serve over a rate sweep (scripts/server-bench.sh).
# Called with datafile, outfile, term ('png' | 'dumb'), setup (common.gp); which is not read.
# columns: mode rate requests tokens_per_s ttft_p50_s ttft_p99_s itl_p50_ms itl_p99_ms tpot_p50_ms
# tpot_p99_ms client_cpu_s; mode 'http' (open-loop clients through the server, wall clock) or
# 'in-process' (serve on the simulated clock), one row of each per rate.
load setup

if (term eq 'png') {
    if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {
        set terminal pngcairo size 1400,520 font ',11' noenhanced
    } else {
        set terminal png size 1400,520 noenhanced
    }
    set output outfile
}
# NaN (the other mode's rows) as missing, so each mode's points are joined across them
set datafile missing NaN
set logscale x 2
set xlabel 'arrival rate (requests per second, Poisson)'
set yrange [0:*]
set key top left
array panels[3] = ['output tokens per second', 'p99 time to first token (s)', 'p99 inter-token latency (ms)']
cols = '4 6 8'
set multiplot layout 1,3 title 'Chapter 06: the HTTP server (clients streaming) beside in-process serve of the same requests'
do for [k = 1:3] {
    set title panels[k]
    c = int(word(cols, k))
    plot datafile using 2:((strcol(1) eq 'http') ? column(c) : NaN) with linespoints lw 2 pt 7 title 'HTTP (wall clock)', \
         datafile using 2:((strcol(1) eq 'in-process') ? column(c) : NaN) with linespoints lw 2 pt 5 dashtype 2 title 'in-process (simulated clock)'
    unset key
}
unset multiplot
