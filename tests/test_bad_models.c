// The invalid-model corpus: every tests/bad/*.yaml must fail to load, and report
// each error its header announces. A header line
//
//   # expect: 12:9: unknown attribute 'unit'
//
// requires a message "<file>:12:9: error: ..." containing the fragment (a warning
// is written "# expect-warning:"). Line 0 means "no location" (e.g. --dim errors).
// A header line "# dim: NAME=VALUE" passes an override, as --dim does.
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

#define BAD_DIR KILN_SOURCE_DIR "/tests/bad"
#define MAX_CASES 512

typedef struct {
  char path[512];
  char name[256];
} Case;

static void run_case(void **state) {
  const Case *c = *state;
  char *text = kiln_test_slurp(c->path, NULL);
  assert_non_null(text);
  KilnDimOverride ov[8];
  int nov = 0, nexpect = 0;
  for (char *line = strstr(text, "# dim: "); line && nov < 8; line = strstr(line + 1, "# dim: ")) {
    char name[64];
    long long v;
    assert_int_equal(sscanf(line, "# dim: %63[^=]=%lld", name, &v), 2);
    ov[nov].name = strdup(name);
    ov[nov++].value = v;
  }
  char *out = NULL;
  size_t outlen = 0;
  FILE *mem = open_memstream(&out, &outlen);
  KilnDiag d;
  kiln_diag_init(&d, mem);
  KilnModel m;
  int rc = kiln_model_load(&m, &d, c->path, ov, nov);
  if (rc == 0) {
    KilnPipelineOpts po = {.out = mem};
    rc = kiln_pipeline_run(&m.graph, &po, mem);
  }
  kiln_model_free(&m);
  fclose(mem);
  bool any_error_expected = false;
  for (char *line = text; (line = strstr(line, "# expect")); line++) {
    bool warning = strncmp(line, "# expect-warning: ", 18) == 0;
    if (!warning && strncmp(line, "# expect: ", 10) != 0) continue;
    int l, col, skip = 0;
    char frag[256] = {0};
    const char *p = line + (warning ? 18 : 10);
    assert_true(sscanf(p, "%d:%d: %n", &l, &col, &skip) >= 2);
    sscanf(p + skip, "%255[^\n]", frag);
    char want[1024];
    if (l == 0) snprintf(want, sizeof want, "%s: %s: ", c->path, warning ? "warning" : "error");
    else snprintf(want, sizeof want, "%s:%d:%d: %s: ", c->path, l, col, warning ? "warning" : "error");
    // The fragment must be in that message: its first line or the indented lines
    // (source, caret, hint) under it.
    bool found = false;
    for (char *m2 = strstr(out, want); m2 && !found; m2 = strstr(m2 + 1, want)) {
      char *end = m2;
      while ((end = strchr(end, '\n')) && end[1] == ' ') end++;
      char saved = end ? *end : 0;
      if (end) *end = '\0';
      found = strstr(m2, frag) != NULL;
      if (end) *end = saved;
    }
    if (!found) print_error("%s: expected '%s%s' in:\n%s\n", c->name, want, frag, out);
    assert_true(found);
    nexpect++;
    any_error_expected |= !warning;
  }
  if (nexpect == 0) print_error("%s: the file states no '# expect:' line\n", c->name);
  assert_true(nexpect > 0);
  if (any_error_expected) assert_int_not_equal(rc, 0);
  for (int i = 0; i < nov; i++) free((char *)ov[i].name);
  free(out);
  free(text);
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const Case *)a)->name, ((const Case *)b)->name);
}

int main(void) {
  static Case cases[MAX_CASES];
  static struct CMUnitTest tests[MAX_CASES];
  int n = 0;
  DIR *dir = opendir(BAD_DIR);
  if (!dir) {
    fprintf(stderr, "cannot open %s\n", BAD_DIR);
    return 1;
  }
  for (struct dirent *e; (e = readdir(dir)) && n < MAX_CASES;) {
    size_t len = strlen(e->d_name);
    if (len < 6 || strcmp(e->d_name + len - 5, ".yaml") != 0) continue;
    snprintf(cases[n].path, sizeof cases[n].path, "%s/%s", BAD_DIR, e->d_name);
    snprintf(cases[n].name, sizeof cases[n].name, "%s", e->d_name);
    n++;
  }
  closedir(dir);
  qsort(cases, (size_t)n, sizeof cases[0], by_name);
  for (int i = 0; i < n; i++)
    tests[i] = (struct CMUnitTest){cases[i].name, run_case, NULL, NULL, &cases[i]};
  // The corpus is a requirement of its own: it must not silently shrink.
  if (n < 60) {
    fprintf(stderr, "only %d invalid models in %s; the corpus holds at least 60\n", n, BAD_DIR);
    return 1;
  }
  return _cmocka_run_group_tests("bad_models", tests, (size_t)n, NULL, NULL);
}
