# Exercise 02 (make exercise-2): the kv head a query head reads under GQA, in gqa_attention_ref().
# What scripts/exercise.sh cuts out of the lesson code and what it puts there (format: its header).
file: 02_mqa_gqa/gqa.c
begin: const size_t bkv = b * s->Hkv + h / G; /* the only change from chapter 01 */
end: const size_t bkv = b * s->Hkv + h / G; /* the only change from chapter 01 */
hint:
the kv head that query head h of sequence b reads: G = H / Hkv query heads share one
stub:
exercise_todo("exercise 02, the kv head of gqa_attention_ref in @FILE@");
const size_t bkv = b * s->Hkv + 0 * G;
