# Exercise 06 (make exercise-6): the admission step of continuous batching, in engine_schedule (scheduler.c).
# What scripts/exercise.sh cuts out of the lesson code and what it puts there (format: its header).
file: 06_batching/scheduler.c
begin: while (e->o.policy == ENGINE_CONTINUOUS && e->n_waiting > 0 && e->n_running < e->o.max_batch && budget > 0) {
end: return total;
hint:
continuous batching's admission step: while the policy is continuous, someone waits, the batch
has room (max_batch) and budget tokens remain, take the head of the queue: prefix_match(e, i)
first (it sets s->n_computed to the tokens found in the prefix cache, 0 without one); its first
chunk is min(its tokens not computed, budget); if the pool lacks the blocks for that chunk,
prefix_unmatch(e, i) and stop (nobody overtakes the head); else admit it, append the chunk and
take the chunk from the budget
stub:
(void)prefix_unmatch; /* the admission step you write uses it */
if (e->o.policy == ENGINE_CONTINUOUS && e->n_running == 0 && e->n_waiting > 0) {
    exercise_todo("exercise 06, the admission step of engine_schedule in @FILE@");
    const int i = e->waiting[0];
    queue_remove(e->waiting, &e->n_waiting, i);
    admit(e, i);
    if (paged_seq_append(&e->pool, &e->s[i].seq, 1) != 0)
        return -1;
    e->s[i].chunk = 1, total += 1;
}
return total;
