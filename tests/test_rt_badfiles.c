// The malformed-file corpus (tests/badbin, written by tests/badbin/gen.py): every
// file in its manifest EXPECT must be refused by the reader its name selects,
// with a message containing the fragment stated there by hand, and without
// touching the model's parameters. The valid seeds next to them (ok-*) must load,
// so a reader that refuses everything fails here too.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/fixtures.h"
#include "tests/helpers.h"

#define DIR KILN_SOURCE_DIR "/tests/badbin"

// Files are checked against tests/fixtures.h: kiln_fake_model is the model of gen.py.

static bool starts(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

// Reads path with the reader its name selects; 0 on success.
static int load(KilnCtx *c, const char *name, const char *path, KilnStatus *st) {
  char source[1024];
  if (strstr(name, ".npy")) {
    KilnArray a;
    int rc = kiln_npy_read(path, &a, st);
    kiln_array_free(&a);
    return rc;
  }
  if (strstr(name, ".csv")) {
    KilnCsv csv;
    int rc = kiln_csv_read(path, false, &csv, st);
    kiln_csv_free(&csv);
    return rc;
  }
  if (strstr(name, ".txt") || strstr(name, ".bin")) {
    snprintf(source, sizeof source, "%s\t%s\tidx\ttgt", strstr(name, ".txt") ? "text" : "tokens",
             path);
    KilnData dt;
    int rc = kiln_data_open(&kiln_seq_model, source, NULL, &dt, st);
    if (rc == 0) kiln_data_free(&dt);
    return rc;
  }
  if (starts(name, "w-")) return kiln_ctx_load(c, path, st);
  if (starts(name, "ckpt-") || starts(name, "ok-ckpt")) {
    KilnCkptState s;
    return kiln_ckpt_load(c, path, &s, st);
  }
  KilnStFile f;
  int rc = kiln_st_read(path, &f, st);
  kiln_st_free(&f);
  return rc;
}

static void every_bad_file_is_refused(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(&kiln_fake_model, 1, &st);
  assert_non_null(c);
  char before[24];
  memcpy(before, c->weights, sizeof before);
  char *manifest = kiln_test_slurp(DIR "/EXPECT", NULL);
  assert_non_null(manifest);
  int n = 0, binary = 0, bad = 0;
  for (char *line = strtok(manifest, "\n"); line; line = strtok(NULL, "\n")) {
    if (line[0] == '#') continue;
    char *tab = strchr(line, '\t');
    assert_non_null(tab);
    *tab = '\0';
    const char *name = line, *frag = tab + 1;
    st = (KilnStatus){0};
    int rc = load(c, name, kiln_test_join(DIR, name), &st);
    n++;
    binary += !strstr(name, ".csv") && !strstr(name, ".txt");
    if (rc == 0 || st.code != 1 || !strstr(st.msg, frag)) {
      print_error("%s: expected an error containing '%s', got %s'%s'\n", name, frag,
                  rc == 0 ? "success " : "", st.msg);
      bad++;
    } else if (memcmp(before, c->weights, sizeof before) != 0) {
      print_error("%s: refused, but the parameters changed\n", name);
      bad++;
    }
  }
  free(manifest);
  print_message("%d files refused as expected (%d binary), %d not\n", n - bad, binary, bad);
  assert_int_equal(bad, 0);
  assert_true(binary >= 30);

  // The seeds are good files: each must load.
  static const char *const good[] = {"ok-f4.npy", "ok-i8.npy", "ok-weights.safetensors",
                                     "ok-ckpt.safetensors", "ok.csv", "ok.bin", "ok.txt"};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
    st = (KilnStatus){0};
    if (load(c, good[i], kiln_test_join(DIR, good[i]), &st) != 0)
      fail_msg("%s: %s", good[i], st.msg);
  }
  kiln_ctx_destroy(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(every_bad_file_is_refused)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
