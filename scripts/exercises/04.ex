# Exercise 04 (make exercise-4): where the cached keys start, in kvcache_decode_ref().
# What scripts/exercise.sh cuts out of the lesson code and what it puts there (format: its header).
file: 04_kvcache/decode.c
begin: const size_t row0 = row_of(c, layer, b, h / G, 0);
end: const size_t row0 = row_of(c, layer, b, h / G, 0);
hint:
where the cached keys of query head h start: the row (layer, b, kv head h / G, position 0) of
the cache
stub:
exercise_todo("exercise 04, the cache row of kvcache_decode_ref in @FILE@");
const size_t row0 = row_of(c, layer, 0 * b, h / G, 0);
