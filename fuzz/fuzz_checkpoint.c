/*
 * fuzz_checkpoint.c: the llama2.c checkpoint loader (common/model.c) on any bytes: refuse with an
 * error, or load a model whose configuration is valid and whose weights fill the file exactly.
 */
#include "common/model.h"
#include "fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_to_file(data, size, ".bin");
    Model m;
    if (model_load(path, &m) != 0)
        return 0;
    if (model_check_config(&m.c) != 0)
        fuzz_fail("checkpoint: loaded a model with an invalid configuration");
    if (28 + model_checkpoint_floats(&m.c) * sizeof(float) != size)
        fuzz_fail("checkpoint: loaded %zu bytes as a model of %zu floats", size, model_checkpoint_floats(&m.c));
    model_free(&m);
    return 0;
}
