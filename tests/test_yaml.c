// YAML reading: the tree and its locations, and every construct the reader refuses,
// each with its message at the offending node.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compiler/compiler.h"

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

// Starts a fresh capture and a fresh error count, for a test with several parses.
static void reset(Cap *c) {
  fclose(c->f);
  free(c->buf);
  c->f = open_memstream(&c->buf, &c->len);
  kiln_diag_init(&c->d, c->f);
}

static const char *out(Cap *c) {
  fflush(c->f);
  return c->buf;
}

static KilnYaml *parse_n(Cap *c, const char *text, size_t len) {
  kiln_diag_source(&c->d, "t.yaml", text, len);
  return kiln_yaml_parse(&c->a, &c->d, "t.yaml", text, len);
}

static KilnYaml *parse(Cap *c, const char *text) { return parse_n(c, text, strlen(text)); }

static int count(const char *s, const char *needle) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, needle)); p += strlen(needle)) n++;
  return n;
}

// The first line of the output: "file:line:col: error: message".
static void assert_first_line(Cap *c, const char *want) {
  const char *o = out(c);
  size_t n = strcspn(o, "\n");
  char line[512];
  snprintf(line, sizeof(line), "%.*s", (int)n, o);
  assert_string_equal(line, want);
}

static void assert_loc(const KilnYaml *y, int line, int col) {
  assert_non_null(y);
  assert_string_equal(y->loc.file, "t.yaml");
  assert_int_equal(y->loc.line, line);
  assert_int_equal(y->loc.col, col);
}

static void assert_scalar(const KilnYaml *y, const char *s, bool plain) {
  assert_non_null(y);
  assert_int_equal(y->kind, KILN_YAML_SCALAR);
  assert_string_equal(y->str, s);
  assert_int_equal(y->len, strlen(s));
  assert_int_equal(y->plain, plain);
}

//
// Valid documents.
//

static const char MODEL[] = "kiln: 1\n"
                            "name: \"mlp\"\n"
                            "layers:\n"
                            "  - dense: {units: 16, act: relu}\n"
                            "  - 'relu'\n"
                            "empty:\n"
                            "list: [1, [2, 3]]\n";

static void test_nested_document(void **state) {
  Cap *c = *state;
  KilnYaml *root = parse(c, MODEL);
  assert_non_null(root);
  assert_string_equal(out(c), "");
  assert_int_equal(root->kind, KILN_YAML_MAP);
  assert_loc(root, 1, 1);
  assert_int_equal(root->n, 5);
  assert_scalar(root->keys[0], "kiln", true);
  assert_loc(root->keys[0], 1, 1);
  assert_scalar(kiln_yaml_get(root, "kiln"), "1", true);
  assert_loc(kiln_yaml_get(root, "kiln"), 1, 7);
  assert_scalar(kiln_yaml_get(root, "name"), "mlp", false);
  assert_loc(kiln_yaml_get(root, "name"), 2, 7);

  const KilnYaml *layers = kiln_yaml_get(root, "layers");
  assert_int_equal(layers->kind, KILN_YAML_SEQ);
  assert_loc(layers, 4, 3);
  assert_int_equal(layers->n, 2);
  const KilnYaml *dense = layers->items[0];
  assert_int_equal(dense->kind, KILN_YAML_MAP);
  assert_loc(dense, 4, 5);
  const KilnYaml *attrs = kiln_yaml_get(dense, "dense");
  assert_int_equal(attrs->kind, KILN_YAML_MAP);
  assert_loc(attrs, 4, 12);
  assert_int_equal(attrs->n, 2);
  assert_loc(attrs->keys[0], 4, 13);
  assert_scalar(kiln_yaml_get(attrs, "units"), "16", true);
  assert_loc(kiln_yaml_get(attrs, "units"), 4, 20);
  assert_loc(attrs->keys[1], 4, 24);
  assert_scalar(kiln_yaml_get(attrs, "act"), "relu", true);
  assert_scalar(layers->items[1], "relu", false);
  assert_loc(layers->items[1], 5, 5);

  // "empty:" has a null value: an empty plain scalar.
  assert_scalar(kiln_yaml_get(root, "empty"), "", true);
  const KilnYaml *list = kiln_yaml_get(root, "list");
  assert_int_equal(list->kind, KILN_YAML_SEQ);
  assert_int_equal(list->n, 2);
  assert_int_equal(list->items[1]->kind, KILN_YAML_SEQ);
  assert_scalar(list->items[1]->items[1], "3", true);
  assert_loc(list->items[1]->items[1], 7, 15);
}

static void test_get_and_kind_name(void **state) {
  Cap *c = *state;
  KilnYaml *root = parse(c, "a: [1]\nb: {}\n");
  assert_non_null(root);
  assert_null(kiln_yaml_get(root, "c"));
  assert_null(kiln_yaml_get(root, ""));
  assert_null(kiln_yaml_get(kiln_yaml_get(root, "a"), "1"));  // not a map
  assert_null(kiln_yaml_get(NULL, "a"));
  const KilnYaml *b = kiln_yaml_get(root, "b");
  assert_int_equal(b->n, 0);
  assert_null(kiln_yaml_get(b, "x"));
  assert_string_equal(kiln_yaml_kind_name(KILN_YAML_SCALAR), "scalar");
  assert_string_equal(kiln_yaml_kind_name(KILN_YAML_SEQ), "sequence");
  assert_string_equal(kiln_yaml_kind_name(KILN_YAML_MAP), "mapping");
}

// Columns count characters (as libyaml does), CRLF ends lines, a BOM is skipped.
static void test_locations_utf8_crlf_bom(void **state) {
  Cap *c = *state;
  KilnYaml *root = parse(c, "\xEF\xBB\xBF" "caf\xC3\xA9: 1\r\nb: 2\r\n");
  assert_non_null(root);
  assert_loc(kiln_yaml_get(root, "caf\xC3\xA9"), 1, 7);
  assert_loc(kiln_yaml_get(root, "b"), 2, 4);
}

// A single explicit document, with "---" and "...", is one document.
static void test_explicit_document(void **state) {
  Cap *c = *state;
  KilnYaml *root = parse(c, "%YAML 1.1\n---\na: 1\n...\n");
  assert_non_null(root);
  assert_scalar(kiln_yaml_get(root, "a"), "1", true);
}

// A duplicate key is per map: the same key in two maps is fine.
static void test_same_key_in_different_maps(void **state) {
  Cap *c = *state;
  KilnYaml *root = parse(c, "a: {x: 1}\nb: {x: 2}\nc: [{x: 3}, {x: 4}]\n");
  assert_non_null(root);
  assert_string_equal(out(c), "");
}

//
// Refused constructs.
//

static void test_alias_and_anchor(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a: 1\nb: *x\n"));
  assert_first_line(c, "t.yaml:2:4: error: YAML aliases are not supported ('*x')");
  assert_int_equal(c->d.nerrors, 1);
  reset(c);
  assert_null(parse(c, "a: &anchor\n  b: 1\nc: *anchor\n"));
  assert_first_line(c, "t.yaml:1:4: error: YAML anchors are not supported ('&anchor')");
  assert_int_equal(c->d.nerrors, 1);  // stops at the first
}

// The billion-laughs document is refused at its first anchor, without expanding.
static void test_billion_laughs(void **state) {
  Cap *c = *state;
  static const char lol[] =
      "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
      "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
      "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
      "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
      "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
      "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
      "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
      "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
      "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
  clock_t t0 = clock();
  assert_null(parse(c, lol));
  assert_true((double)(clock() - t0) / CLOCKS_PER_SEC < 1.0);
  assert_first_line(c, "t.yaml:1:4: error: YAML anchors are not supported ('&a')");
  assert_int_equal(c->d.nerrors, 1);
}

static void test_tags(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a: !foo 1\n"
                       "b: !!python/object:os.system {}\n"
                       "c: !!str x\n"
                       "d: !<tag:example.com,2000:x> [1]\n"
                       "e: 1\n"));
  const char *o = out(c);
  assert_non_null(strstr(o, "t.yaml:1:4: error: YAML tags are not supported ('!foo')\n"));
  assert_non_null(
      strstr(o, "t.yaml:2:4: error: YAML tags are not supported ('!!python/object:os.system')\n"));
  assert_non_null(strstr(o, "t.yaml:3:4: error: YAML tags are not supported ('!!str')\n"));
  assert_non_null(
      strstr(o, "t.yaml:4:4: error: YAML tags are not supported ('tag:example.com,2000:x')\n"));
  assert_int_equal(c->d.nerrors, 4);  // every tag is reported, not just the first
}

static void test_non_scalar_keys(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "? [a, b]\n: 1\nok: {[x]: 2, {y: 1}: 3}\n"));
  const char *o = out(c);
  assert_non_null(strstr(o, "t.yaml:1:3: error: a mapping key must be a scalar, not a sequence\n"));
  assert_non_null(strstr(o, "t.yaml:3:6: error: a mapping key must be a scalar, not a sequence\n"));
  assert_non_null(strstr(o, "t.yaml:3:14: error: a mapping key must be a scalar, not a mapping\n"));
  assert_int_equal(c->d.nerrors, 3);
}

static void test_duplicate_keys(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "units: 1\n"
                       "act: relu\n"
                       "units: 2\n"
                       "sub: {x: 1, \"x\": 2}\n"
                       "act: tanh\n"));
  const char *o = out(c);
  assert_non_null(strstr(o, "t.yaml:3:1: error: duplicate key 'units' (first defined at 1:1)\n"
                            "    3 | units: 2\n"
                            "      | ^\n"));
  assert_non_null(strstr(o, "t.yaml:4:13: error: duplicate key 'x' (first defined at 4:7)\n"));
  assert_non_null(strstr(o, "t.yaml:5:1: error: duplicate key 'act' (first defined at 2:1)\n"));
  assert_int_equal(c->d.nerrors, 3);
}

// A map with many keys: duplicate detection must not be quadratic, and must find
// a duplicate far from its first occurrence.
static void test_many_keys(void **state) {
  Cap *c = *state;
  size_t cap = 200000 * 16;
  char *text = malloc(cap);
  size_t n = 0;
  for (int i = 0; i < 200000; i++) n += (size_t)sprintf(text + n, "k%d: %d\n", i, i);
  KilnYaml *root = parse_n(c, text, n);
  assert_non_null(root);
  assert_int_equal(root->n, 200000);
  assert_scalar(kiln_yaml_get(root, "k199999"), "199999", true);
  n += (size_t)sprintf(text + n, "k7: again\n");
  assert_null(parse_n(c, text, n));
  assert_first_line(c, "t.yaml:200001:1: error: duplicate key 'k7' (first defined at 8:1)");
  free(text);
}

static void test_second_document(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a: 1\n---\nb: 2\n"));
  assert_first_line(c, "t.yaml:2:1: error: only one YAML document is allowed");
  assert_int_equal(c->d.nerrors, 1);
}

// Nesting up to the bound is fine; one level more is refused at that level.
static void test_depth_bound(void **state) {
  Cap *c = *state;
  char text[200];
  int n = KILN_YAML_MAX_DEPTH;
  memset(text, '[', (size_t)n);
  memset(text + n, ']', (size_t)n);
  text[2 * n] = 0;
  KilnYaml *root = parse(c, text);
  assert_non_null(root);
  memset(text, '[', (size_t)n + 1);
  memset(text + n + 1, ']', (size_t)n + 1);
  text[2 * n + 2] = 0;
  assert_null(parse(c, text));
  assert_first_line(c, "t.yaml:1:33: error: nesting is deeper than 32 levels");
}

static void test_block_depth_bound(void **state) {
  Cap *c = *state;
  char text[4096];
  size_t n = 0;
  for (int i = 0; i < 40; i++) n += (size_t)sprintf(text + n, "%*sk%d:\n", i, "", i);
  assert_null(parse_n(c, text, n));
  assert_first_line(c, "t.yaml:33:33: error: nesting is deeper than 32 levels");
  assert_int_equal(c->d.nerrors, 1);
}

// 10000 unclosed brackets: refused at the bound, no deep recursion, no crash.
static void test_ten_thousand_brackets(void **state) {
  Cap *c = *state;
  size_t n = 10000;
  char *text = malloc(n + 1);
  memset(text, '[', n);
  text[n] = 0;
  assert_null(parse(c, text));
  assert_first_line(c, "t.yaml:1:33: error: nesting is deeper than 32 levels");
  assert_int_equal(c->d.nerrors, 1);
  free(text);
}

static void test_scalar_length(void **state) {
  Cap *c = *state;
  size_t n = KILN_YAML_MAX_SCALAR;
  char *text = malloc(n + 16);
  memcpy(text, "a: ", 3);
  memset(text + 3, 'x', n);
  strcpy(text + 3 + n, "\n");
  KilnYaml *root = parse(c, text);
  assert_non_null(root);
  assert_int_equal(kiln_yaml_get(root, "a")->len, n);
  strcpy(text + 3 + n, "y\nb: [1, 2]\n");
  assert_null(parse(c, text));
  assert_first_line(c, "t.yaml:1:4: error: scalar is too long (4097 bytes; the limit is 4096)");
  assert_int_equal(c->d.nerrors, 1);
  free(text);
}

static void test_file_too_large(void **state) {
  Cap *c = *state;
  size_t n = KILN_YAML_MAX_FILE + 1;
  char *text = malloc(n);
  memset(text, '#', n);
  assert_null(parse_n(c, text, n));
  assert_string_equal(out(c),
                      "t.yaml: error: file is too large (4194305 bytes; the limit is 4194304)\n");
  free(text);
}

static void test_nul_byte(void **state) {
  Cap *c = *state;
  static const char text[] = "a: 1\nb: x\0y\n";
  assert_null(parse_n(c, text, sizeof(text) - 1));
  assert_string_equal(out(c), "t.yaml:2:5: error: the file contains a NUL byte\n"
                              "    2 | b: x?y\n"
                              "      |     ^\n");
}

// "\0" in a quoted string would make str shorter than len.
static void test_escaped_nul(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a: \"x\\0y\"\n"));
  assert_first_line(c, "t.yaml:1:4: error: a string must not contain a NUL character");
}

static void test_empty_files(void **state) {
  const char *empties[] = {"", "# only a comment\n", "---\n", "\n\n", "--- # c\n...\n"};
  Cap *c = *state;
  for (size_t i = 0; i < sizeof(empties) / sizeof(*empties); i++) {
    reset(c);
    assert_null(parse(c, empties[i]));
    assert_string_equal(out(c), "t.yaml: error: empty model file\n");
  }
}

// libyaml's own errors keep its message and its position, with the context.
static void test_syntax_error(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a: 1\nb: [1, 2\nc: 3\n"));
  const char *o = out(c);
  assert_non_null(strstr(o, "t.yaml:3:2: error: did not find expected ',' or ']' "
                            "(while parsing a flow sequence at 2:4)\n"));
  assert_int_equal(c->d.nerrors, 1);
}

static void test_scanner_error(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a: 1\n  b: 2\n"));
  assert_first_line(c, "t.yaml:2:4: error: mapping values are not allowed in this context");
}

#define TAB_HINT "  hint: YAML does not allow tabs in indentation; indent with spaces\n"

static void test_tab_indent_hint(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a:\n\tb: 1\n"));
  assert_string_equal(out(c), "t.yaml:2:1: error: found character that cannot start any token\n"
                              "    2 | \tb: 1\n"
                              "      | ^\n"
                              TAB_HINT);
  reset(c);
  assert_null(parse(c, "a:\n  b: 1\n\tc: 2\n"));
  const char *o = out(c);
  assert_non_null(strstr(o, "t.yaml:3:1: error: found a tab character that violates indentation "
                            "(while scanning a plain scalar at 2:6)\n"));
  assert_non_null(strstr(o, TAB_HINT));
}

// Invalid UTF-8 is reported at its byte, converted to line:col.
static void test_bad_utf8(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a: 1\nb: x\xFFy\n"));
  assert_first_line(c, "t.yaml:2:5: error: invalid leading UTF-8 octet (0xFF)");
  reset(c);
  assert_null(parse(c, "\xEF\xBB\xBF" "ab: \xFF\n"));  // the offset counts from after a BOM
  assert_first_line(c, "t.yaml:1:5: error: invalid leading UTF-8 octet (0xFF)");
}

// Errors that leave the tree intact are collected; the first syntax error stops.
static void test_collects_until_syntax_error(void **state) {
  Cap *c = *state;
  assert_null(parse(c, "a: 1\na: 2\nb: !t 3\nc: [\nd: 1\nd: 2\n"));
  const char *o = out(c);
  assert_non_null(strstr(o, "t.yaml:2:1: error: duplicate key 'a'"));
  assert_non_null(strstr(o, "t.yaml:3:4: error: YAML tags are not supported ('!t')"));
  assert_int_equal(count(o, ": error: "), 3);
  assert_null(strstr(o, "duplicate key 'd'"));
  assert_int_equal(c->d.nerrors, 3);
}

// More errors than the limit: the reader goes on counting, the diag stops printing.
static void test_error_limit(void **state) {
  Cap *c = *state;
  char text[2048];
  size_t n = 0;
  for (int i = 0; i < 30; i++) n += (size_t)sprintf(text + n, "k: %d\n", i);
  assert_null(parse_n(c, text, n));
  const char *o = out(c);
  assert_int_equal(count(o, ": error: duplicate key 'k'"), 20);
  assert_int_equal(count(o, "too many errors; stopping\n"), 1);
  assert_int_equal(c->d.nerrors, 29);
}

// A failed parse leaves nothing in the arena; user text in messages is sanitized.
static void test_failure_rewinds_arena(void **state) {
  Cap *c = *state;
  KilnYaml *ok = parse(c, "a: 1\n");
  assert_non_null(ok);
  KilnArenaMark before = kiln_arena_mark(&c->a);
  assert_null(parse(c, "x: [1, 2, {y: 3}]\n\"a\\tb\": 1\n\"a\\tb\": 2\n"));
  KilnArenaMark after = kiln_arena_mark(&c->a);
  assert_ptr_equal(after.block, before.block);
  assert_int_equal(after.used, before.used);
  assert_non_null(strstr(out(c), "duplicate key 'a?b'"));
  // A long key is cut whole characters at a time: 'é' is two bytes.
  reset(c);
  char text[300] = "";
  for (int i = 0; i < 2; i++) {
    strcat(text, "x");
    for (int j = 0; j < 40; j++) strcat(text, "\xC3\xA9");
    strcat(text, ": 1\n");
  }
  assert_null(parse(c, text));
  char want[200] = "t.yaml:2:1: error: duplicate key 'x";
  for (int j = 0; j < 29; j++) strcat(want, "\xC3\xA9");
  strcat(want, "...' (first defined at 1:1)");
  assert_first_line(c, want);
  assert_scalar(kiln_yaml_get(ok, "a"), "1", true);
}

// Arbitrary bytes never crash the reader (ASan and valgrind watch the rest).
static void test_random_input(void **state) {
  Cap *c = *state;
  static const char alphabet[] = "ab:-[]{},&*!?#'\"|>\n \t\\%@`0.";
  unsigned seed = 12345;
  char text[256];
  for (int iter = 0; iter < 3000; iter++) {
    size_t n = 0;
    seed = seed * 1103515245u + 12345u;
    size_t len = (seed >> 16) % sizeof(text);
    for (; n < len; n++) {
      seed = seed * 1103515245u + 12345u;
      text[n] = alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
    }
    reset(c);
    parse_n(c, text, n);
  }
}

int main(void) {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(test_nested_document),
      T(test_get_and_kind_name),
      T(test_locations_utf8_crlf_bom),
      T(test_explicit_document),
      T(test_same_key_in_different_maps),
      T(test_alias_and_anchor),
      T(test_billion_laughs),
      T(test_tags),
      T(test_non_scalar_keys),
      T(test_duplicate_keys),
      T(test_many_keys),
      T(test_second_document),
      T(test_depth_bound),
      T(test_block_depth_bound),
      T(test_ten_thousand_brackets),
      T(test_scalar_length),
      T(test_file_too_large),
      T(test_nul_byte),
      T(test_escaped_nul),
      T(test_empty_files),
      T(test_syntax_error),
      T(test_scanner_error),
      T(test_tab_indent_hint),
      T(test_bad_utf8),
      T(test_collects_until_syntax_error),
      T(test_error_limit),
      T(test_failure_rewinds_arena),
      T(test_random_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
