// The front end as `kiln check --train` runs it: YAML, the model format, lowering,
// autodiff and the graph passes, with the IR verifier after every pass. Any text
// either gives a verified graph or errors; never a crash or a hang.
#include <stdio.h>
#include <stdlib.h>

#include "compiler/compiler.h"
#include "passes/passes.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static FILE *null;
  if (!null && !(null = fopen("/dev/null", "w"))) abort();
  KilnDiag d;
  kiln_diag_init(&d, null);
  KilnModel m;
  int rc = kiln_model_load(&m, &d, kiln_fuzz_file(0, data, size), NULL, 0);
  if (rc == 0) {
    KilnPipelineOpts po = {.out = null, .verify_each = true, .training = m.graph.loss >= 0,
                           .level = 2};
    rc = kiln_pipeline_run(&m.graph, &po, null);
  } else if (d.nerrors == 0) {
    abort();  // a model that fails to load must say why
  }
  kiln_model_free(&m);
  return 0;
}
