// Integer expressions over dims: "4*d", "(d/heads)", "ctx-1". Grammar:
//   expr := term (('+'|'-') term)*      term := unary (('*'|'/'|'%') unary)*
//   unary := '-' unary | atom            atom := INT | NAME | '(' expr ')'
// Arithmetic is checked: overflow, division by zero and inexact division are errors.
#include <ctype.h>
#include <stdarg.h>
#include <string.h>

#include "compiler/compiler.h"

#define MAX_NEST 32

typedef struct {
  const char *s;
  int pos;
  const KilnDimTable *dims;
  char *err;
  size_t errlen;
  int errpos;
  int depth;
  bool failed;
} Parser;

static int64_t fail(Parser *p, const char *fmt, ...) {
  if (!p->failed) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, p->errlen, fmt, ap);
    va_end(ap);
    p->errpos = p->pos;
    p->failed = true;
  }
  return 0;
}

static void skip_space(Parser *p) {
  while (p->s[p->pos] == ' ' || p->s[p->pos] == '\t') p->pos++;
}

static int64_t expr(Parser *p);

// Errors point at the start of the number, or at the operator that overflowed.
static int64_t number(Parser *p) {
  int64_t v = 0;
  int start = p->pos;
  while (isdigit((unsigned char)p->s[p->pos])) {
    int d = p->s[p->pos++] - '0';
    if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, d, &v)) {
      p->pos = start;
      return fail(p, "integer is too large");
    }
  }
  return v;
}

static int64_t name(Parser *p) {
  int start = p->pos;
  while (isalnum((unsigned char)p->s[p->pos]) || p->s[p->pos] == '_') p->pos++;
  int len = p->pos - start;
  for (int i = 0; i < p->dims->ndims; i++) {
    const char *n = p->dims->dims[i].name;
    if ((int)strlen(n) == len && memcmp(n, p->s + start, (size_t)len) == 0)
      return p->dims->dims[i].value;
  }
  p->pos = start;
  return fail(p, "unknown dim '%.*s'", len, p->s + start);
}

static int64_t atom(Parser *p) {
  skip_space(p);
  char c = p->s[p->pos];
  if (isdigit((unsigned char)c)) return number(p);
  if (isalpha((unsigned char)c) || c == '_') return name(p);
  if (c == '(') {
    if (++p->depth > MAX_NEST) return fail(p, "expression is nested too deeply");
    p->pos++;
    int64_t v = expr(p);
    skip_space(p);
    if (p->s[p->pos] != ')') return fail(p, "expected ')'");
    p->pos++;
    p->depth--;
    return v;
  }
  if (c == '\0') return fail(p, "expression ends too early");
  return fail(p, "unexpected '%c' in expression", c);
}

static int64_t unary(Parser *p) {
  skip_space(p);
  if (p->s[p->pos] != '-') return atom(p);
  if (++p->depth > MAX_NEST) return fail(p, "expression is nested too deeply");
  p->pos++;
  int64_t v = unary(p), r = 0;
  p->depth--;
  if (__builtin_sub_overflow((int64_t)0, v, &r)) return fail(p, "integer overflow");
  return r;
}

static int64_t term(Parser *p) {
  int64_t v = unary(p);
  for (;;) {
    skip_space(p);
    char op = p->s[p->pos];
    if (p->failed || (op != '*' && op != '/' && op != '%')) return v;
    int at = p->pos++;
    int64_t r = unary(p);
    if (p->failed) return 0;
    if (op == '*') {
      if (!__builtin_mul_overflow(v, r, &v)) continue;
      p->pos = at;
      return fail(p, "integer overflow");
    }
    if (r == 0) {
      p->pos = at;
      return fail(p, "division by zero");
    }
    if (op == '%') {
      v %= r;
    } else if (v % r != 0) {
      p->pos = at;
      return fail(p, "%lld / %lld is not exact", (long long)v, (long long)r);
    } else {
      v /= r;
    }
  }
}

static int64_t expr(Parser *p) {
  int64_t v = term(p);
  for (;;) {
    skip_space(p);
    char op = p->s[p->pos];
    if (p->failed || (op != '+' && op != '-')) return v;
    int at = p->pos++;
    int64_t r = term(p);
    if (p->failed) return 0;
    bool ovf = op == '+' ? __builtin_add_overflow(v, r, &v) : __builtin_sub_overflow(v, r, &v);
    if (ovf) {
      p->pos = at;
      return fail(p, "integer overflow");
    }
  }
}

int kiln_expr_eval(const char *text, const KilnDimTable *dims, int64_t *out_value, char *err,
                   size_t errlen, int *out_pos) {
  Parser p = {.s = text, .dims = dims, .err = err, .errlen = errlen};
  int64_t v = expr(&p);
  skip_space(&p);
  if (!p.failed && p.s[p.pos] != '\0') fail(&p, "unexpected '%c' in expression", p.s[p.pos]);
  if (p.failed) {
    if (out_pos) *out_pos = p.errpos;
    return -1;
  }
  *out_value = v;
  return 0;
}
