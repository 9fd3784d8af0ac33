/*
 * fuzz.h: what the fuzz targets share. Each fuzz_<name>.c defines LLVMFuzzerTestOneInput: built
 * with clang -fsanitize=fuzzer (make fuzz) it is driven by libFuzzer; linked with replay.c
 * (make fuzz-replay) it is a plain program that runs every file of a corpus through it, which
 * is how CI replays the committed corpus under AddressSanitizer and UBSan with gcc.
 *
 * A target returns normally for any input; a broken invariant calls fuzz_fail, which aborts:
 * that is a finding (libFuzzer saves the input; replay reports the file).
 */
#ifndef FUZZ_FUZZ_H
#define FUZZ_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Writes the input to a file of this process (the loaders under test take paths); returns it. */
const char *fuzz_to_file(const uint8_t *data, size_t size, const char *suffix);

/* Reports the broken invariant on stderr and aborts. */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
