// Golden IR per pass: each tests/passes/NAME.yaml names a pass in its header
// ("# pass: cse"); the IR right before and right after that pass (the full
// pipeline at -O2, training graphs for models with a loss) must equal
// tests/passes/NAME.ir.
// KILN_UPDATE_GOLDEN=1 rewrites the files; review the diff like code.
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "compiler/compiler.h"
#include "tests/helpers.h"
#include "passes/passes.h"

#define PASS_DIR KILN_SOURCE_DIR "/tests/passes"

typedef struct {
  char yaml[512], golden[512], name[64], pass[32];
} Case;

static void run(void **state) {
  const Case *c = *state;
  char *ir = NULL;
  size_t irlen = 0;
  FILE *out = open_memstream(&ir, &irlen);
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  KilnModel m;
  assert_int_equal(kiln_model_load(&m, &d, c->yaml, NULL, 0), 0);
  KilnPipelineOpts po = {.print_after = "all", .out = out, .level = 2,
                         .training = m.graph.loss >= 0};
  assert_int_equal(kiln_pipeline_run(&m.graph, &po, stderr), 0);
  kiln_model_free(&m);
  fclose(out);
  // Keep the pass's section and the one printed before it (the IR it was given).
  char marker[64];
  snprintf(marker, sizeof marker, "; IR after %s\n", c->pass);
  char *after = strstr(ir, marker), *before = NULL;
  if (!after) fail_msg("%s: pass '%s' did not run", c->name, c->pass);
  for (char *p = ir; (p = strstr(p, "; IR after ")) && p < after; p++) before = p;
  if (!before) fail_msg("%s: no pass ran before '%s'", c->name, c->pass);
  char *end = strstr(after + 1, "; IR after ");
  if (end) *end = '\0';
  char *text = NULL;
  size_t textlen = 0;
  FILE *t = open_memstream(&text, &textlen);
  fprintf(t, "; before %s (%.*s)", c->pass, (int)(strchr(before, '\n') - before - 11), before + 11);
  fputc('\n', t);
  fwrite(strchr(before, '\n') + 1, 1, (size_t)(after - strchr(before, '\n') - 1), t);
  fputs(after, t);
  fclose(t);
  free(ir);
  ir = text;
  irlen = textlen;
  kiln_test_golden(c->golden, ir, irlen);
  free(ir);
}

int main(void) {
  static Case cases[64];
  static struct CMUnitTest tests[64];
  int n = 0;
  DIR *dir = opendir(PASS_DIR);
  if (!dir) return 1;
  for (struct dirent *e; (e = readdir(dir)) && n < 64;) {
    size_t len = strlen(e->d_name);
    if (len < 6 || strcmp(e->d_name + len - 5, ".yaml") != 0) continue;
    Case *c = &cases[n];
    int stem = (int)(len - 5);
    snprintf(c->name, sizeof c->name, "%.*s", stem, e->d_name);
    snprintf(c->yaml, sizeof c->yaml, "%s/%s", PASS_DIR, e->d_name);
    snprintf(c->golden, sizeof c->golden, "%s/%.*s.ir", PASS_DIR, stem, e->d_name);
    size_t tlen;
    char *text = kiln_test_slurp(c->yaml, &tlen);
    const char *p = text ? strstr(text, "# pass: ") : NULL;
    if (!p || sscanf(p, "# pass: %31s", c->pass) != 1) {
      fprintf(stderr, "%s: no '# pass: NAME' line\n", c->yaml);
      return 1;
    }
    free(text);
    tests[n] = (struct CMUnitTest){c->name, run, NULL, NULL, c};
    n++;
  }
  closedir(dir);
  // Every pass of the pipeline has a golden case.
  for (int i = 0; kiln_pipeline_pass_name(i); i++) {
    bool found = false;
    for (int j = 0; j < n; j++) found |= strcmp(cases[j].pass, kiln_pipeline_pass_name(i)) == 0;
    if (!found && strcmp(kiln_pipeline_pass_name(i), "shapes") != 0) {
      fprintf(stderr, "pass '%s' has no golden case in %s\n", kiln_pipeline_pass_name(i), PASS_DIR);
      return 1;
    }
  }
  return _cmocka_run_group_tests("pass_golden", tests, (size_t)n, NULL, NULL);
}
