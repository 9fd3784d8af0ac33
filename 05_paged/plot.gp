# plot.gp: chapter 05's plots. Called by the programs and `make plots` with
#   which='waste' | 'bench', datafile, outfile, term ('png' | 'dumb'), setup (common.gp).
load setup

if (which eq 'waste') {
    # columns: workload scheme block_size used_pct waste_pct requests_fit label
    set title 'Chapter 05: share of allocated KV memory holding tokens (averaged over every decode step)'
    set style data histograms
    set style histogram clustered gap 1
    set style fill solid 0.6 border -1
    set boxwidth 0.9
    set ylabel '% of allocated KV memory holding tokens'
    set yrange [0:110]
    set key below
    set xlabel '(a) reserve max_seq, (b) reserve own final length, (c) paged with block size bs'
    # each scheme has one skewed and one uniform row, in that order: plot every other row
    plot datafile every 2::0 using 4:xtic(7) title 'skewed (ShareGPT-like) lengths', \
         datafile every 2::1 using 4 title 'uniform lengths'
}

if (which eq 'bench') {
    # columns: device variant block_size B H Hkv L D time_ms gbs pct_dram vs_contiguous
    # the contiguous cache has one row per Hkv: a horizontal line each
    stats datafile using ((strcol(1) eq 'cpu' && strcol(2) eq 'contiguous' && strcol(6) eq '8') ? $11 : 1/0) nooutput prefix 'C8'
    stats datafile using ((strcol(1) eq 'cpu' && strcol(2) eq 'contiguous' && strcol(6) eq '2') ? $11 : 1/0) nooutput prefix 'C2'
    set title 'Chapter 05 bench: decode attention through block tables (B=16, H=8, D=128, L=16384, cold caches)'
    set logscale x 2
    set xrange [0.8:160]
    set xlabel 'block size (tokens)'
    set ylabel '% of the measured DRAM read bandwidth'
    set yrange [0:110]
    set key below
    plot for [h in '8 2'] for [pl in 'in_order shuffled'] datafile \
             using 3:((strcol(1) eq 'cpu' && strcol(2) eq 'paged_'.pl && strcol(6) eq h) ? $11 : NaN) \
             with linespoints title 'paged, Hkv='.h.', blocks '.pl, \
         C8_max with lines dashtype 3 lw 2 title 'contiguous (chapter 04), Hkv=8', \
         C2_max with lines dashtype 3 lw 2 title 'contiguous (chapter 04), Hkv=2', \
         datafile using 3:((strcol(2) eq 'memory_scattered') ? $11 : NaN) with linespoints dashtype 2 \
             title 'reading blocks of one kv head in random order (no compute)', \
         100 with lines dashtype 2 lc rgb 'gray' title 'DRAM read bandwidth (one stream)'
}

if (which eq 'frag') {
    # columns: workload scheme used_pct reserved_pct internal_pct external_pct free_pct steps completed
    #          preemptions mean_running waiting_pct label
    # rows: the 5 schemes of the skewed workload, then the same 5 of the uniform one
    set title "Chapter 05: where a KV arena's slots go, requests arriving and leaving (mean over the steps)\n(the vLLM paper's Fig. 2 categories)"
    set style data histograms
    set style histogram rowstacked title offset 0,-1
    set style fill solid 0.7 border -1
    set boxwidth 0.75
    set ylabel '% of the arena'
    set yrange [0:105]
    set key below horizontal
    set xlabel ' '
    set bmargin 6
    plot newhistogram 'skewed lengths' lt 1, \
             datafile every ::0::4 using 3:xtic(13) title 'used (tokens held)', \
             '' every ::0::4 using 4 title 'reserved (tokens to come)', \
             '' every ::0::4 using 5 title 'internal fragmentation', \
             '' every ::0::4 using 6 title 'external fragmentation', \
             '' every ::0::4 using 7 title 'free', \
         newhistogram 'uniform lengths' lt 1, \
             datafile every ::5::9 using 3:xtic(13) notitle, \
             '' every ::5::9 using 4 notitle, \
             '' every ::5::9 using 5 notitle, \
             '' every ::5::9 using 6 notitle, \
             '' every ::5::9 using 7 notitle
}
