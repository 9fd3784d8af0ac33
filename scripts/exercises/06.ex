# Exercise 06 (make exercise-6): the admission step of continuous batching, in engine_schedule (scheduler.c).
# What scripts/exercise.sh cuts out of the lesson code and what it puts there (format: its header).
file: 06_batching/scheduler.c
begin: while (e->o.policy == ENGINE_CONTINUOUS && e->n_waiting > 0 && e->n_running < e->o.max_batch && budget > 0) {
end: return total;
hint:
continuous batching's admission step: while the policy is continuous, someone waits, the batch
has room (max_batch) and the budget tokens remain, admit the head of the queue with its first
chunk of min(its tokens, budget) -- if the pool has the blocks for that chunk; otherwise stop
(nobody overtakes the head)
stub:
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
