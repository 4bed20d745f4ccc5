// `kiln import` on arbitrary bytes: the protobuf reader, the op mapping and the
// writers. Any input either imports or errors, never crashes or hangs; what it
// imports then goes through the front end as `kiln check` runs it, which must
// accept it or say why (a shape the importer does not check, such as a Gemm's
// inner dimensions, is reported there with the model file's line). Outputs go to
// a folder in /dev/shm when there is one, so their fsyncs are free.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compiler/compiler.h"
#include "passes/passes.h"
#include "tests/fuzz/fuzz.h"

static char dir[64], yaml[96], weights[96];

static void make_dir(void) {
  const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
  snprintf(dir, sizeof dir, "%s/kiln-fuzz-onnx-XXXXXX", base);
  if (!mkdtemp(dir)) abort();
  snprintf(yaml, sizeof yaml, "%s/m.yaml", dir);
  snprintf(weights, sizeof weights, "%s/m.safetensors", dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static FILE *null;
  if (!null && !(null = fopen("/dev/null", "w"))) abort();
  if (!*dir) make_dir();
  KilnDiag d;
  kiln_diag_init(&d, null);
  // A free axis of any name gets 2: the seeds call theirs "batch".
  KilnDimOverride dims[] = {{"batch", 2}};
  KilnImportOpts o = {.input = kiln_fuzz_file(0, data, size), .output = yaml, .weights = weights,
                      .name = "m", .dims = dims, .ndims = 1};
  int rc = kiln_import_onnx(&d, &o);
  if (rc != 0) {
    if (d.nerrors == 0) abort();  // a refused model must say why
    return 0;
  }
  KilnDiag d2;
  kiln_diag_init(&d2, null);
  KilnModel m;
  if (kiln_model_load(&m, &d2, yaml, NULL, 0) == 0) {
    KilnPipelineOpts po = {.out = null, .verify_each = true, .level = 2};
    kiln_pipeline_run(&m.graph, &po, null);
  } else if (d2.nerrors == 0) {
    abort();  // refused without a reason
  }
  kiln_model_free(&m);
  return 0;
}
