// Dim expressions: values, precedence, errors with positions. Expected values are
// worked out by hand.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "compiler/compiler.h"

static KilnDim dims[] = {{"d", 256}, {"heads", 4}, {"ctx", 128}, {"n_2", 3}};
static const KilnDimTable table = {dims, 4};

static int64_t eval_ok(const char *s) {
  int64_t v = -12345;
  char err[128];
  int pos;
  if (kiln_expr_eval(s, &table, &v, err, sizeof err, &pos) != 0) fail_msg("%s: %s", s, err);
  return v;
}

static void expect_err(const char *s, const char *frag, int want_pos) {
  int64_t v;
  char err[128] = "";
  int pos = -1;
  assert_int_equal(kiln_expr_eval(s, &table, &v, err, sizeof err, &pos), -1);
  if (!strstr(err, frag)) fail_msg("%s: got '%s', want '%s'", s, err, frag);
  assert_int_equal(pos, want_pos);
}

static void values(void **state) {
  (void)state;
  assert_int_equal(eval_ok("42"), 42);
  assert_int_equal(eval_ok("d"), 256);
  assert_int_equal(eval_ok("4*d"), 1024);
  assert_int_equal(eval_ok("(d/heads)"), 64);
  assert_int_equal(eval_ok("d / heads * 2"), 128);   // left to right
  assert_int_equal(eval_ok("1 + 2 * 3"), 7);         // * binds tighter
  assert_int_equal(eval_ok("(1 + 2) * 3"), 9);
  assert_int_equal(eval_ok("ctx - 1"), 127);
  assert_int_equal(eval_ok("-n_2 + 5"), 2);
  assert_int_equal(eval_ok("ctx % 5"), 3);
  assert_int_equal(eval_ok("9223372036854775807"), INT64_MAX);
}

static void errors(void **state) {
  (void)state;
  expect_err("d/3", "256 / 3 is not exact", 1);
  expect_err("d/(heads-4)", "division by zero", 1);
  expect_err("4*", "ends too early", 2);
  expect_err("4*dd", "unknown dim 'dd'", 2);
  expect_err("(d", "expected ')'", 2);
  expect_err("d)", "unexpected ')'", 1);
  expect_err("9223372036854775808", "too large", 0);
  expect_err("4294967296*4294967296", "overflow", 10);
  expect_err("2.5", "unexpected '.'", 1);
  expect_err("", "ends too early", 0);
  // Deep nesting is bounded, not a stack overflow.
  char deep[200];
  memset(deep, '(', sizeof deep - 1);
  deep[sizeof deep - 1] = '\0';
  expect_err(deep, "nested too deeply", 32);  // the 33rd "(" is at offset 32
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(values), cmocka_unit_test(errors)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
