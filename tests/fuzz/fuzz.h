// What every harness shares: the readers take paths, so each input is handed over
// as a file. A memfd keeps that in memory: its /proc/self/fd path opens as a
// regular file, and rewriting it costs no disk traffic per execution.
#ifndef KILN_FUZZ_H
#define KILN_FUZZ_H

#include <stddef.h>
#include <stdint.h>

// Replaces the contents of memory file `slot` (0..3) with data and returns a path
// that opens it. Aborts if the file cannot be written: the harness is broken then.
const char *kiln_fuzz_file(int slot, const uint8_t *data, size_t size);

#endif
