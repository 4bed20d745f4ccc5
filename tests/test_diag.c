// Diagnostics: message shape, source quoting and carets, the error limit,
// "did you mean" suggestions and reading files.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compiler/compiler.h"

// Diagnostics go to a memory stream so tests can read them back.
typedef struct {
  char *buf;
  size_t len;
  FILE *f;
  KilnDiag d;
  KilnArena a;
} Cap;

static int setup(void **state) {
  Cap *c = calloc(1, sizeof(*c));
  c->f = open_memstream(&c->buf, &c->len);
  kiln_diag_init(&c->d, c->f);
  *state = c;
  return 0;
}

static int teardown(void **state) {
  Cap *c = *state;
  fclose(c->f);
  free(c->buf);
  kiln_arena_free(&c->a);
  free(c);
  return 0;
}

static const char *out(Cap *c) {
  fflush(c->f);
  return c->buf;
}

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
  return n;
}

static const char MLP[] = "kiln: 1\n"
                          "layers:\n"
                          "  - dense: {unit: 16}\n";

static void test_error_with_source(void **state) {
  Cap *c = *state;
  kiln_diag_source(&c->d, "m.yaml", MLP, strlen(MLP));
  kiln_error(&c->d, (KilnLoc){"m.yaml", 3, 13}, "unknown attribute '%s' of '%s'", "unit", "dense");
  kiln_hint(&c->d, "did you mean '%s'?", "units");
  assert_string_equal(out(c), "m.yaml:3:13: error: unknown attribute 'unit' of 'dense'\n"
                              "    3 |   - dense: {unit: 16}\n"
                              "      |             ^\n"
                              "  hint: did you mean 'units'?\n");
  assert_int_equal(c->d.nerrors, 1);
  assert_int_equal(c->d.nwarnings, 0);
}

// A name holding terminal escapes is shown escaped, not sent to the terminal.
static void test_control_characters_escaped(void **state) {
  Cap *c = *state;
  kiln_error(&c->d, (KilnLoc){"m.yaml", 0, 0}, "unknown value '%s'", "a\033[31mb\tc");
  kiln_hint(&c->d, "did you mean '%s'?", "\007");
  assert_string_equal(out(c), "m.yaml: error: unknown value 'a\\x1b[31mb\\x09c'\n"
                              "  hint: did you mean '\\x07'?\n");
}

static void test_warning(void **state) {
  Cap *c = *state;
  kiln_diag_source(&c->d, "m.yaml", MLP, strlen(MLP));
  kiln_warning(&c->d, (KilnLoc){"m.yaml", 1, 1}, "old format");
  assert_string_equal(out(c), "m.yaml:1:1: warning: old format\n"
                              "    1 | kiln: 1\n"
                              "      | ^\n");
  assert_int_equal(c->d.nwarnings, 1);
  assert_int_equal(c->d.nerrors, 0);
}

static void test_no_source_or_no_line(void **state) {
  Cap *c = *state;
  kiln_error(&c->d, (KilnLoc){"other.yaml", 2, 3}, "a");
  kiln_diag_source(&c->d, "m.yaml", MLP, strlen(MLP));
  kiln_error(&c->d, (KilnLoc){"m.yaml", 9, 1}, "b");
  assert_string_equal(out(c), "other.yaml:2:3: error: a\n"
                              "m.yaml:9:1: error: b\n");
}

static void test_file_only_and_no_file(void **state) {
  Cap *c = *state;
  kiln_diag_source(&c->d, "m.yaml", MLP, strlen(MLP));
  kiln_error(&c->d, (KilnLoc){"m.yaml", 0, 0}, "cannot read: %s", "oops");
  kiln_error(&c->d, (KilnLoc){"m.yaml", 2, 0}, "whole line");
  kiln_error(&c->d, (KilnLoc){NULL, 0, 0}, "no place");
  assert_string_equal(out(c), "m.yaml: error: cannot read: oops\n"
                              "m.yaml:2: error: whole line\n"
                              "    2 | layers:\n"
                              "error: no place\n");
}

// Tabs before the column are copied so the caret sits under the same character.
static void test_caret_under_tabs(void **state) {
  Cap *c = *state;
  const char *src = "a: 1\n\tb:\tbad\n";
  kiln_diag_source(&c->d, "t.yaml", src, strlen(src));
  kiln_error(&c->d, (KilnLoc){"t.yaml", 2, 5}, "bad value");
  assert_string_equal(out(c), "t.yaml:2:5: error: bad value\n"
                              "    2 | \tb:\tbad\n"
                              "      | \t  \t^\n");
}

// Columns count characters, as libyaml's do: 'é' is two bytes but one column.
static void test_caret_after_utf8(void **state) {
  Cap *c = *state;
  const char *src = "caf\xC3\xA9: x\n";
  kiln_diag_source(&c->d, "u.yaml", src, strlen(src));
  kiln_error(&c->d, (KilnLoc){"u.yaml", 1, 7}, "e");
  assert_string_equal(out(c), "u.yaml:1:7: error: e\n"
                              "    1 | caf\xC3\xA9: x\n"
                              "      |       ^\n");
}

// \r\n and a lone \r end lines, as in libyaml; the \r is not printed.
static void test_crlf_lines(void **state) {
  Cap *c = *state;
  const char *src = "a: 1\r\nb: 2\rc: 3";
  kiln_diag_source(&c->d, "w.yaml", src, strlen(src));
  kiln_error(&c->d, (KilnLoc){"w.yaml", 2, 4}, "x");
  kiln_error(&c->d, (KilnLoc){"w.yaml", 3, 1}, "y");
  assert_string_equal(out(c), "w.yaml:2:4: error: x\n"
                              "    2 | b: 2\n"
                              "      |    ^\n"
                              "w.yaml:3:1: error: y\n"
                              "    3 | c: 3\n"
                              "      | ^\n");
}

// A 1000-character line is shown as a window around the column, marked with "...",
// and the caret still points at the right character.
static void test_long_line_is_cut(void **state) {
  Cap *c = *state;
  char src[1002];
  for (int i = 0; i < 1000; i++) src[i] = (char)('a' + i % 26);
  src[700] = '@';
  src[1000] = '\n';
  src[1001] = 0;
  kiln_diag_source(&c->d, "l.yaml", src, strlen(src));
  kiln_error(&c->d, (KilnLoc){"l.yaml", 1, 701}, "here");
  const char *o = out(c);
  const char *line = strchr(o, '\n') + 1, *caret = strchr(line, '\n') + 1;
  assert_non_null(strstr(line, " | ..."));
  assert_true(strchr(line, '\n') - line < 220);
  const char *hat = strchr(caret, '^');
  assert_non_null(hat);
  assert_int_equal(line[hat - caret], '@');
  // Near the start of a long line only the end is cut.
  kiln_error(&c->d, (KilnLoc){"l.yaml", 1, 2}, "start");
  o = out(c);
  assert_non_null(strstr(o, "    1 | abcd"));
  assert_non_null(strstr(o, "...\n      |  ^\n"));
}

// Past the limit, errors are counted but not printed, and one line says so.
static void test_too_many_errors(void **state) {
  Cap *c = *state;
  for (int i = 1; i <= 25; i++) {
    kiln_error(&c->d, (KilnLoc){"m.yaml", i, 1}, "error number %d", i);
    kiln_hint(&c->d, "hint %d", i);
    assert_int_equal(kiln_diag_full(&c->d), i >= 20);
  }
  kiln_warning(&c->d, (KilnLoc){"m.yaml", 1, 1}, "late warning");
  const char *o = out(c);
  assert_int_equal(count(o, ": error: "), 20);
  assert_int_equal(count(o, "  hint: "), 20);
  assert_non_null(strstr(o, "error number 20\n  hint: hint 20\ntoo many errors; stopping\n"));
  assert_int_equal(count(o, "too many errors; stopping"), 1);
  assert_null(strstr(o, "error number 21"));
  assert_null(strstr(o, "late warning"));
  assert_int_equal(c->d.nerrors, 25);
  assert_int_equal(c->d.nwarnings, 1);
}

static void test_source_slots(void **state) {
  Cap *c = *state;
  kiln_diag_source(&c->d, "a", "old\n", 4);
  kiln_diag_source(&c->d, "a", "new\n", 4);  // replaces, does not take a slot
  assert_int_equal(c->d.nsrc, 1);
  const char *names[] = {"b", "c", "d", "e"};
  for (int i = 0; i < 4; i++) kiln_diag_source(&c->d, names[i], "x\n", 2);
  assert_int_equal(c->d.nsrc, KILN_MAX_SOURCES);
  kiln_error(&c->d, (KilnLoc){"e", 1, 1}, "kept");
  kiln_error(&c->d, (KilnLoc){"a", 1, 1}, "dropped");  // the oldest went
  assert_string_equal(out(c), "e:1:1: error: kept\n"
                              "    1 | x\n"
                              "      | ^\n"
                              "a:1:1: error: dropped\n");
}

static void test_suggest(void **state) {
  (void)state;
  const char *const attrs[] = {"units", "act", "bias", "init", NULL};
  assert_string_equal(kiln_suggest("unit", attrs), "units");
  assert_string_equal(kiln_suggest("untis", attrs), "units");  // a swap is one edit
  assert_string_equal(kiln_suggest("bais", attrs), "bias");
  assert_string_equal(kiln_suggest("Units", attrs), "units");
  assert_null(kiln_suggest("learning_rate", attrs));
  assert_null(kiln_suggest("xyz", attrs));
  assert_null(kiln_suggest("", attrs));
  // Equally close: the longer common prefix wins; a true tie gets no guess.
  const char *const ops[] = {"add", "and", "mean", "meat", NULL};
  assert_string_equal(kiln_suggest("ad", ops), "add");
  assert_null(kiln_suggest("mea", ops));
  const char *const none[] = {NULL};
  assert_null(kiln_suggest("x", none));
  char long_word[200];
  memset(long_word, 'u', sizeof(long_word) - 1);
  long_word[sizeof(long_word) - 1] = 0;
  assert_null(kiln_suggest(long_word, attrs));
}

// A fresh directory for one test's files.
static char *tmp_dir(Cap *c) {
  char *dir = kiln_arena_strdup(&c->a, "/tmp/kiln-test-diag-XXXXXX");
  assert_non_null(mkdtemp(dir));
  return dir;
}

static char *tmp_file(Cap *c, const char *dir, const char *name, const char *text, size_t len) {
  char *path = kiln_arena_printf(&c->a, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(text, 1, len, f), len);
  fclose(f);
  return path;
}

static void test_read_file(void **state) {
  Cap *c = *state;
  char *dir = tmp_dir(c);
  char *path = tmp_file(c, dir, "ok.yaml", "kiln: 1\n", 8);
  size_t len = 0;
  char *text = kiln_read_file(&c->a, &c->d, path, 100, &len);
  assert_non_null(text);
  assert_int_equal(len, 8);
  assert_string_equal(text, "kiln: 1\n");
  // Exactly at the limit is fine; one byte over is not.
  assert_non_null(kiln_read_file(&c->a, &c->d, path, 8, &len));
  assert_null(kiln_read_file(&c->a, &c->d, path, 7, &len));
  char *empty = tmp_file(c, dir, "empty.yaml", "", 0);
  text = kiln_read_file(&c->a, &c->d, empty, 100, &len);
  assert_non_null(text);
  assert_int_equal(len, 0);
  assert_string_equal(text, "");
  char *expect =
      kiln_arena_printf(&c->a, "%s: error: file is too large (8 bytes; the limit is 7)\n", path);
  assert_string_equal(out(c), expect);
  remove(path);
  remove(empty);
  rmdir(dir);
}

static void test_read_file_errors(void **state) {
  Cap *c = *state;
  size_t len = 0;
  char *dir = tmp_dir(c);
  char *missing = kiln_arena_printf(&c->a, "%s/missing.yaml", dir);
  assert_null(kiln_read_file(&c->a, &c->d, missing, 100, &len));
  assert_null(kiln_read_file(&c->a, &c->d, dir, 100, &len));
  char *expect = kiln_arena_printf(&c->a,
                                   "%s: error: cannot read: No such file or directory\n"
                                   "%s: error: cannot read: Is a directory\n",
                                   missing, dir);
  assert_string_equal(out(c), expect);
  assert_int_equal(c->d.nerrors, 2);
  rmdir(dir);
}

// A pipe has no size up front: the limit is enforced while reading.
static void test_read_pipe_over_limit(void **state) {
  Cap *c = *state;
  size_t len = 0;
  assert_null(kiln_read_file(&c->a, &c->d, "/dev/zero", 1000, &len));
  assert_string_equal(out(c), "/dev/zero: error: file is too large (over 1000 bytes)\n");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_error_with_source, setup, teardown),
      cmocka_unit_test_setup_teardown(test_warning, setup, teardown),
      cmocka_unit_test_setup_teardown(test_control_characters_escaped, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_source_or_no_line, setup, teardown),
      cmocka_unit_test_setup_teardown(test_file_only_and_no_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_caret_under_tabs, setup, teardown),
      cmocka_unit_test_setup_teardown(test_caret_after_utf8, setup, teardown),
      cmocka_unit_test_setup_teardown(test_crlf_lines, setup, teardown),
      cmocka_unit_test_setup_teardown(test_long_line_is_cut, setup, teardown),
      cmocka_unit_test_setup_teardown(test_too_many_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_source_slots, setup, teardown),
      cmocka_unit_test(test_suggest),
      cmocka_unit_test_setup_teardown(test_read_file, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_file_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(test_read_pipe_over_limit, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
