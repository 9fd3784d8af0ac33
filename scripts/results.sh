#!/usr/bin/env bash
# results.sh [BUILD]: the README's results table, computed from the benchmark data that
# `make bench` (and, for chapter 05's waste, `make chapter-5`) left in BUILD/bench, never typed
# by hand. Writes the table between the README's "results:begin" and "results:end" markers and
# copies the plots to docs/img/. `make results` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bench=$build/bench
need=(01_mha_bench 02_mqa_gqa_bench 03_flash_bench 04_kvcache_bench 05_paged_bench 05_paged_waste 06_batching_bench)
for f in "${need[@]}"; do
    if [ ! -s "$bench/$f.dat" ]; then
        echo "results: $bench/$f.dat is missing: run 'make bench' and 'make chapter-5' first" >&2
        exit 1
    fi
done
# the roofline cache names the FMA its peak was measured with (column 5); an older cache has no
# such column and is measured again by the next benchmark
if [ "$(head -n 1 "$build/roofline.tsv" 2>/dev/null | cut -f 5)" != fma_what ]; then
    echo "results: $build/roofline.tsv is missing or predates the FMA width: run 'make bench' first" >&2
    exit 1
fi
machine=$(awk -F'\t' 'NR == 2 { printf "%s, %s threads, measured fp32 FMA peak %.0f GFLOP/s (%s), DRAM read %.1f GB/s", $1, $2, $3, $5, $4 }' \
    "$build/roofline.tsv")

# value FILE AWK-CONDITION COLUMN: the column of the first data row that matches
value() {
    awk -F'\t' -v col="$3" "!/^#/ && ($2) { print \$col; exit }" "$bench/$1.dat"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "—"; else printf "%.2f×", a / b }'; }
ms() { awk -v v="$1" 'BEGIN { printf "%.1f ms", v }'; }
mib() { awk -v v="$1" 'BEGIN { printf "%.1f MiB", v / 1048576 }'; }

# 01: the reference and the OpenMP version at T = 2048; the score matrix at T = 8192
ref01=$(value 01_mha_bench '$1 == "cpu" && $2 == "ref" && $5 == 2048' 9)
omp01=$(value 01_mha_bench '$1 == "cpu" && $2 == "omp" && $5 == 2048' 9)
sc01=$(value 01_mha_bench '$1 == "cpu" && $2 == "omp" && $5 == 8192' 12)
# 02: decode at S = 8192, grouped kernel: MHA (Hkv 16) -> GQA-4 and MQA
mha02=$(value 02_mqa_gqa_bench '$1 == "decode" && $3 == "grouped" && $6 == 16 && $8 == 8192' 11)
gqa02=$(value 02_mqa_gqa_bench '$1 == "decode" && $3 == "grouped" && $6 == 4 && $8 == 8192' 11)
mqa02=$(value 02_mqa_gqa_bench '$1 == "decode" && $3 == "grouped" && $6 == 1 && $8 == 8192' 11)
# 03: chapter 02 -> flash at T = 8192 (time, % of peak), memory at the longest T both ran
t02=$(value 03_flash_bench '$1 == "02" && $3 == "grouped" && $7 == 8192' 11)
t03=$(value 03_flash_bench '$1 == "03" && $3 == "fast" && $7 == 8192' 11)
p02=$(value 03_flash_bench '$1 == "02" && $3 == "grouped" && $7 == 8192' 13)
p03=$(value 03_flash_bench '$1 == "03" && $3 == "fast" && $7 == 8192' 13)
m02=$(value 03_flash_bench '$1 == "02" && $3 == "grouped" && $7 == 8192' 14)
m03=$(value 03_flash_bench '$1 == "03" && $3 == "fast" && $7 == 8192' 14)
nm03=$(value 03_flash_bench '$1 == "03" && $2 == "cpu" && $3 == "fast" && $7 == 4096 && $10 == 0' 13)
# 04: generation with and without the cache; decode % of DRAM at L = 16384
nocache=$(value 04_kvcache_bench '$1 == "generate" && $2 == "cpu" && $3 == "nocache"' 10)
cache=$(value 04_kvcache_bench '$1 == "generate" && $2 == "cpu" && $3 == "cache"' 10)
dram8=$(value 04_kvcache_bench '$1 == "decode" && $3 == "split" && $4 == "f32" && $7 == 8 && $8 == 16384' 12)
dram2=$(value 04_kvcache_bench '$1 == "decode" && $3 == "split" && $4 == "f32" && $7 == 2 && $8 == 16384' 12)
f16_8=$(value 04_kvcache_bench '$1 == "decode" && $3 == "split" && $4 == "f16" && $7 == 8 && $8 == 16384' 12)
i8_8=$(value 04_kvcache_bench '$1 == "decode" && $3 == "split" && $4 == "int8" && $7 == 8 && $8 == 16384' 12)
f16_2=$(value 04_kvcache_bench '$1 == "decode" && $3 == "split" && $4 == "f16" && $7 == 2 && $8 == 16384' 12)
i8_2=$(value 04_kvcache_bench '$1 == "decode" && $3 == "split" && $4 == "int8" && $7 == 2 && $8 == 16384' 12)
f32ms8=$(value 04_kvcache_bench '$1 == "decode" && $3 == "split" && $4 == "f32" && $7 == 8 && $8 == 16384' 10)
f16ms8=$(value 04_kvcache_bench '$1 == "decode" && $3 == "split" && $4 == "f16" && $7 == 8 && $8 == 16384' 10)
rss04=$(value 04_kvcache_bench '$1 == "generate" && $2 == "cpu" && $3 == "cache"' 14)
# 05: waste (skewed), paged decode against contiguous (MHA, block size 16)
used_max=$(value 05_paged_waste '$1 == "skewed" && $2 == "max_seq"' 4)
used_16=$(value 05_paged_waste '$1 == "skewed" && $2 == "paged" && $3 == 16' 4)
fit_max=$(value 05_paged_waste '$1 == "skewed" && $2 == "max_seq"' 6)
fit_16=$(value 05_paged_waste '$1 == "skewed" && $2 == "paged" && $3 == 16' 6)
c05=$(value 05_paged_bench '$1 == "cpu" && $2 == "contiguous" && $6 == 8' 9)
io05=$(value 05_paged_bench '$1 == "cpu" && $2 == "paged_in_order" && $3 == 16 && $6 == 8' 9)
sh05=$(value 05_paged_bench '$1 == "cpu" && $2 == "paged_shuffled" && $3 == 16 && $6 == 8' 9)
# 06: static -> continuous at the highest rate; one sequence -> the engine at batch 32
rate06=$(awk -F'\t' '!/^#/ && $1 == "static" { r = $2 } END { print r }' "$bench/06_batching_bench.dat")
st06=$(value 06_batching_bench "\$1 == \"static\" && \$2 == $rate06" 5)
ct06=$(value 06_batching_bench "\$1 == \"continuous\" && \$2 == $rate06" 5)
sttf=$(value 06_batching_bench "\$1 == \"static\" && \$2 == $rate06" 7)
cttf=$(value 06_batching_bench "\$1 == \"continuous\" && \$2 == $rate06" 7)
one06=$(value 06_batching_bench '$1 == "ch05_generate" && $12 == "builtin"' 5)
b3206=$(value 06_batching_bench '$1 == "ch06_engine" && $3 == 32 && $12 == "builtin"' 5)

table=$(
    cat <<EOF
Measured on: $machine (the ceilings the last bench measured at its start; each bench's % columns are against its own measurement); no GPU. Regenerate with \`make bench && make chapter-5 && make results\`.

| chapter | headline measurement | before | after | ratio |
|---|---|---:|---:|---:|
| 01 MHA | attention core, T = 2048 (B = 1, H = 8, D = 64, causal): naive reference → OpenMP | $(ms "$ref01") | $(ms "$omp01") | $(ratio "$ref01" "$omp01") faster |
| 01 MHA | the T×S score matrix it materialises at T = 8192 | — | $(mib "$sc01") | — |
| 02 GQA | decode, S = 8192 (B = 4, H = 16, D = 64, cold caches): MHA → GQA-4 | $(ms "$mha02") | $(ms "$gqa02") | $(ratio "$mha02" "$gqa02") faster |
| 02 GQA | the same, MHA → MQA | $(ms "$mha02") | $(ms "$mqa02") | $(ratio "$mha02" "$mqa02") faster |
| 03 Flash | attention, T = 8192 (B = 1, H = 8, D = 64, causal): chapter 02 → flash | $(ms "$t02") | $(ms "$t03") | $(ratio "$t02" "$t03") faster |
| 03 Flash | the same, % of the FMA peak | ${p02}% | ${p03}% | |
| 03 Flash | memory one call allocates at T = 8192 | $(mib "$m02") | $(mib "$m03") | $(ratio "$m02" "$m03") less |
| 03 Flash | no mask, T = 4096, % of the FMA peak | | ${nm03}% | |
| 04 KV cache | 512 generated tokens, built-in model: no cache → cache | $(ms "$nocache") | $(ms "$cache") | $(ratio "$nocache" "$cache") faster |
| 04 KV cache | decode attention, B = 16, L = 16384, D = 128, % of DRAM bandwidth: MHA / GQA 4:1 | | ${dram8}% / ${dram2}% | |
| 04 KV cache | the same over an fp16 / int8 cache, for its own bytes: MHA | | ${f16_8}% / ${i8_8}% | |
| 04 KV cache | the same, GQA 4:1 | | ${f16_2}% / ${i8_2}% | |
| 04 KV cache | decode, MHA: fp32 → fp16 cache | $(ms "$f32ms8") | $(ms "$f16ms8") | $(ratio "$f32ms8" "$f16ms8") faster |
| 04 KV cache | peak resident memory of the cached generation (built-in model, weights held once) | | ${rss04} MiB | |
| 05 Paged | KV memory holding tokens (skewed lengths): reserve max_seq → pages of 16 | ${used_max}% | ${used_16}% | |
| 05 Paged | requests that fit in the memory of 64 max_seq reservations | $fit_max | $fit_16 | $(ratio "$fit_16" "$fit_max") more |
| 05 Paged | decode, B = 16, L = 16384, MHA: contiguous (ch04) → pages of 16, blocks in order | $(ms "$c05") | $(ms "$io05") | $(ratio "$c05" "$io05") |
| 05 Paged | the same, blocks shuffled | $(ms "$c05") | $(ms "$sh05") | $(ratio "$c05" "$sh05") |
| 06 Batching | skewed workload at $rate06 requests/s, max-batch 32: static → continuous, tokens/s | $st06 | $ct06 | $(ratio "$ct06" "$st06") more |
| 06 Batching | the same, p99 time to first token | ${sttf} s | ${cttf} s | $(ratio "$cttf" "$sttf") |
| 06 Batching | tokens/s, one sequence (ch05) → the engine at batch 32 | $one06 | $b3206 | $(ratio "$b3206" "$one06") more |
EOF
)
awk -v table="$table" '
    /<!-- results:begin -->/ { print; print table; skip = 1; next }
    /<!-- results:end -->/ { skip = 0 }
    !skip { print }
' README.md >README.md.new
if ! grep -q "results:begin" README.md.new; then
    rm -f README.md.new
    echo "results: README.md has no <!-- results:begin --> / <!-- results:end --> markers" >&2
    exit 1
fi
mv README.md.new README.md
mkdir -p docs/img
cp "$build"/plots/0*_bench.png docs/img/ 2>/dev/null || true
cp "$build"/plots/05_paged_waste.png "$build"/plots/05_paged_frag.png "$build"/plots/06_batching_occupancy.png \
    "$build"/plots/06_batching_grid.png "$build"/plots/06_batching_prefix.png docs/img/ 2>/dev/null || true
echo "results: README.md's table regenerated from $bench; plots copied to docs/img/"
