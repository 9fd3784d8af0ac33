# Exercise 03 (make exercise-3): the online softmax update, in flash_attention_tiled().
# What scripts/exercise.sh cuts out of the lesson code and what it puts there (format: its header).
file: 03_flash/flash.c
begin: /* the online softmax: a larger maximum rescales what was summed so far */
end: m[r] = m_new;
hint:
the online softmax of row r over this tile: the new maximum m_new, the factor
alpha = e^(m[r] - m_new) that rescales l[r] and the row of o summed so far, then add
e^(Sr[c] - m_new) to l[r] and e^(Sr[c] - m_new) * V row c to o, and keep m_new
stub:
exercise_todo("exercise 03, the online softmax of flash_attention_tiled in @FILE@");
m[r] = m_tile, l[r] = 1.0f;
for (int d = 0; d < D; d++)
    o[(size_t)r * D + d] = vh[(size_t)c0 * D + d];
