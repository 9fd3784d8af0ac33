# Exercise 01 (make exercise-1): the softmax of one score row, in mha_softmax_row().
# What scripts/exercise.sh cuts out of the lesson code and what it puts there (format: its header).
file: 01_mha/mha.c
begin: /* the row's maximum first: every exponent is then <= 0, so no exp can overflow */
end: x[j] = 0.0f;
hint:
softmax of x[0..n) * scale: take the row's maximum m first, then e^(x*scale - m)
(vexp_scaled_sum does both the exps and their sum), divide by the sum, and set x[n..width) to 0
stub:
exercise_todo("exercise 01, mha_softmax_row in @FILE@");
for (size_t j = 0; j < width; j++)
    x[j] = j < n ? scale : 0.0f;
