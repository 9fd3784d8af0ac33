# Exercise 05 (make exercise-5): the block-table lookup of a key, in paged_attention_ref().
# What scripts/exercise.sh cuts out of the lesson code and what it puts there (format: its header).
file: 05_paged/paged.c
begin: const float *kr = paged_k_block(p, s->blocks[j / bs], layer, hq / G) + (size_t)(j % bs) * D;
end: const float *kr = paged_k_block(p, s->blocks[j / bs], layer, hq / G) + (size_t)(j % bs) * D;
hint:
key j through the block table: logical block j / bs is physical block s->blocks[j / bs], and the
key is row j % bs of it (paged_k_block gives the block's (bs, D) rows)
stub:
exercise_todo("exercise 05, the block-table lookup of paged_attention_ref in @FILE@");
const float *kr = paged_k_block(p, j / bs, layer, hq / G) + (size_t)(j % bs) * D;
