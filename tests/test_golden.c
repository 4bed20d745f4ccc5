// Golden IR: every bundled model's IR text (what `kiln check --print-ir` prints)
// must equal tests/golden/<model>.ir. After an intended change to the lowering,
// regenerate with KILN_UPDATE_GOLDEN=1 and review the diff like code.
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

#define MODELS KILN_SOURCE_DIR "/models"
#define GOLDEN KILN_SOURCE_DIR "/tests/golden"

typedef struct {
  char model[512], golden[512], name[64];
} Case;

static void golden_case(void **state) {
  const Case *c = *state;
  char *ir = NULL, *errs = NULL;
  size_t irlen = 0, errlen = 0;
  FILE *out = open_memstream(&ir, &irlen), *err = open_memstream(&errs, &errlen);
  KilnDiag d;
  kiln_diag_init(&d, err);
  KilnModel m;
  int rc = kiln_model_load(&m, &d, c->model, NULL, 0);
  if (rc == 0) kiln_graph_print(&m.graph, out);
  kiln_model_free(&m);
  fclose(out);
  fclose(err);
  if (rc != 0) print_error("%s:\n%s", c->model, errs);
  assert_int_equal(rc, 0);
  kiln_test_golden(c->golden, ir, irlen);
  free(ir);
  free(errs);
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const Case *)a)->name, ((const Case *)b)->name);
}

int main(void) {
  static Case cases[64];
  static struct CMUnitTest tests[64];
  int n = 0;
  DIR *dir = opendir(MODELS);
  if (!dir) return 1;
  for (struct dirent *e; (e = readdir(dir)) && n < 64;) {
    size_t len = strlen(e->d_name);
    if (len < 6 || strcmp(e->d_name + len - 5, ".yaml") != 0) continue;
    Case *c = &cases[n];
    int stem = (int)(len - 5);
    snprintf(c->name, sizeof c->name, "%.*s", stem, e->d_name);
    snprintf(c->model, sizeof c->model, "%s/%s", MODELS, e->d_name);
    snprintf(c->golden, sizeof c->golden, "%s/%.*s.ir", GOLDEN, stem, e->d_name);
    n++;
  }
  closedir(dir);
  qsort(cases, (size_t)n, sizeof cases[0], by_name);
  for (int i = 0; i < n; i++) tests[i] = (struct CMUnitTest){cases[i].name, golden_case, NULL, NULL, &cases[i]};
  if (n < 4) {
    fprintf(stderr, "expected at least 4 bundled models in %s, found %d\n", MODELS, n);
    return 1;
  }
  return _cmocka_run_group_tests("golden_ir", tests, (size_t)n, NULL, NULL);
}
