// Helpers shared by the test programs (tests/helpers.c). Failures are cmocka
// failures of the calling test.
#ifndef KILN_TEST_HELPERS_H
#define KILN_TEST_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include "compiler/cpu/cpu.h"

// A whole file, NUL-terminated, or NULL when it cannot be read. The caller frees.
char *kiln_test_slurp(const char *path, size_t *out_len);

// dir/name, in one of eight rotating buffers (a call may use a few at once).
const char *kiln_test_join(const char *dir, const char *name);
// Writes len bytes to path, failing the test on any error.
void kiln_test_write(const char *path, const void *data, size_t len);

// Compares text with the golden file at path (KILN_UPDATE_GOLDEN=1 rewrites the
// file first); on a difference prints the first differing line and both texts.
void kiln_test_golden(const char *path, const char *text, size_t len);

// Compiles g (planned with nstate optimizer tensors per parameter, training
// set-up td or NULL) through the CPU backend at -O3, links it into a shared object
// in dir and loads it: the test program exports the runtime (ENABLE_EXPORTS).
// Returns the model's descriptor; *out_dl is the handle for dlclose.
const KilnModelDesc *kiln_test_compile(const KilnGraph *g, KilnArena *a, int nstate,
                                       const KilnTrainDesc *td, uint64_t seed, const char *dir,
                                       void **out_dl);

#ifdef KILN_TEST_CUDA_EMU
// As kiln_test_compile, through the CUDA backend: the host module links the same
// way; the kernels' source, compiled for the host with tests/cuda-emu/emu.h, runs
// under the emulated driver (KILN_CUDA_DRIVER and KILN_CUDA_EMU_KERNELS are set
// here for the context the caller creates next).
const KilnModelDesc *kiln_test_compile_cuda(const KilnGraph *g, KilnArena *a, int nstate,
                                            const KilnTrainDesc *td, uint64_t seed,
                                            const char *dir, void **out_dl);
// Its matmul kernels multiply in bf16 on tensor cores (--gpu-matmul=bf16) while set.
extern bool kiln_test_cuda_bf16;
#endif

#endif
