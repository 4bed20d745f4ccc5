// Typed reading of YAML values. Every check reports at the value's own location,
// so a wrong number points at the number, not at the node that holds it.
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compiler/compiler.h"

int kiln_val_kind(KilnDiag *d, const KilnYaml *y, KilnYamlKind k, const char *what) {
  if (y->kind == k) return 0;
  kiln_error(d, y->loc, "expected a %s for %s, got a %s", kiln_yaml_kind_name(k), what,
             kiln_yaml_kind_name(y->kind));
  return -1;
}

static int want_scalar(KilnDiag *d, const KilnYaml *y, const char *what) {
  if (y->kind == KILN_YAML_SCALAR) return 0;
  kiln_error(d, y->loc, "expected %s, got a %s", what, kiln_yaml_kind_name(y->kind));
  return -1;
}

// "did you mean ...?" for the unknown dim name at the start of s.
static void suggest_dim(KilnDiag *d, const char *s, const KilnDimTable *dims) {
  char word[65];
  int n = 0;
  while (n < 64 && (isalnum((unsigned char)s[n]) || s[n] == '_')) n++;
  if (n == 64 || dims->ndims == 0) return;
  memcpy(word, s, (size_t)n);
  word[n] = '\0';
  const char **names = calloc((size_t)dims->ndims + 1, sizeof *names);
  if (!names) return;
  for (int i = 0; i < dims->ndims; i++) names[i] = dims->dims[i].name;
  const char *best = kiln_suggest(word, names);
  if (best) kiln_hint(d, "did you mean '%s'?", best);
  free(names);
}

// Plain integers are read directly; anything else must be a dim expression.
int kiln_val_int(KilnDiag *d, const KilnYaml *y, const KilnDimTable *dims, int64_t *out) {
  if (want_scalar(d, y, "an integer or a dim expression") != 0) return -1;
  if (y->len == 0) {
    kiln_error(d, y->loc, "expected an integer or a dim expression, got nothing");
    return -1;
  }
  char err[160];
  int pos = 0;
  if (kiln_expr_eval(y->str, dims, out, err, sizeof err, &pos) == 0) return 0;
  KilnLoc at = y->loc;
  // A plain or quoted scalar on one line: point at the offending character.
  if (!strchr(y->str, '\n')) at.col += pos + (y->plain ? 0 : 1);
  kiln_error(d, at, "%s", err);
  // Only a whole number such as "2.5" or "1e3" gets the hint: "2*heads" is an
  // expression with a typo, not a float.
  char *end;
  if ((strchr(y->str, '.') || strchr(y->str, 'e')) && (strtod(y->str, &end), *end == '\0'))
    kiln_hint(d, "this value must be an integer");
  else if (strncmp(err, "unknown dim", 11) == 0)
    suggest_dim(d, y->str + pos, dims);
  return -1;
}

int kiln_val_float(KilnDiag *d, const KilnYaml *y, double *out) {
  if (want_scalar(d, y, "a number") != 0) return -1;
  const char *s = y->str;
  if (!y->plain) goto bad;
  if (strcmp(s, ".inf") == 0 || strcmp(s, "inf") == 0) return *out = HUGE_VAL, 0;
  if (strcmp(s, "-.inf") == 0 || strcmp(s, "-inf") == 0) return *out = -HUGE_VAL, 0;
  // strtod accepts hex, nan and infinity spellings; a model file has no use for them.
  for (const char *p = s; *p; p++)
    if (!isdigit((unsigned char)*p) && !strchr("+-.eE", *p)) goto bad;
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end != '\0') goto bad;
  if (errno == ERANGE && fabs(v) > 1) {
    kiln_error(d, y->loc, "number '%s' is out of range", s);
    return -1;
  }
  *out = v;
  return 0;
bad:
  kiln_error(d, y->loc, "expected a number, got '%s'", s);
  return -1;
}

int kiln_val_bool(KilnDiag *d, const KilnYaml *y, bool *out) {
  if (want_scalar(d, y, "true or false") != 0) return -1;
  if (y->plain && strcmp(y->str, "true") == 0) return *out = true, 0;
  if (y->plain && strcmp(y->str, "false") == 0) return *out = false, 0;
  kiln_error(d, y->loc, "expected true or false, got '%s'", y->str);
  return -1;
}

// What makes s not an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 64 characters),
// naming the offending character; NULL if it is one.
static const char *ident_problem(const char *s, char *buf, size_t len) {
  if (!*s) return "it is empty";
  if (isdigit((unsigned char)*s)) return "it starts with a digit";
  for (const char *p = s; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (isalnum(c) || c == '_') continue;
    if (c >= 0x80) return "it contains a non-ASCII character";
    if (c < 0x20 || c == 0x7F) snprintf(buf, len, "it contains the control character 0x%02X", c);
    else snprintf(buf, len, "it %s '%c'", p == s ? "starts with" : "contains", c);
    return buf;
  }
  if (strlen(s) > 64) return "it is longer than 64 characters";
  return NULL;
}

int kiln_val_ident(KilnDiag *d, const KilnYaml *y, const char *what, const char **out) {
  if (want_scalar(d, y, what) != 0) return -1;
  char buf[64];
  const char *why = ident_problem(y->str, buf, sizeof buf);
  if (why) {
    kiln_error(d, y->loc, "'%s' cannot be used as %s: %s", y->str, what, why);
    kiln_hint(d, "names are letters, digits and '_', not starting with a digit");
    return -1;
  }
  *out = y->str;
  return 0;
}

int kiln_val_shape(KilnDiag *d, const KilnYaml *y, const KilnDimTable *dims, int64_t *shape,
                   int *out_rank) {
  if (kiln_val_kind(d, y, KILN_YAML_SEQ, "a shape") != 0) return -1;
  if (y->n > KILN_MAX_RANK) {
    kiln_error(d, y->loc, "shape has %d dimensions; at most %d are supported", y->n,
               KILN_MAX_RANK);
    return -1;
  }
  int bad = 0;
  for (int i = 0; i < y->n; i++) {
    if (kiln_val_int(d, y->items[i], dims, &shape[i]) != 0) {
      bad++;
    } else if (shape[i] < 1) {
      kiln_error(d, y->items[i]->loc, "dimension must be at least 1, got %lld",
                 (long long)shape[i]);
      bad++;
    }
  }
  if (bad) return -1;
  if (kiln_numel(shape, y->n) < 0) {
    char buf[128];
    kiln_error(d, y->loc, "shape %s has more than 2^31 elements",
               kiln_dims_str(shape, y->n, buf, sizeof buf));
    return -1;
  }
  *out_rank = y->n;
  return 0;
}

static const char *const init_names[] = {"zeros", "ones", "xavier", "kaiming",
                                         "normal", "uniform", NULL};

static int init_args(KilnDiag *d, const KilnYaml *args, KilnInit *out) {
  bool normal = out->kind == KILN_INIT_NORMAL;
  static const char *const normal_keys[] = {"std", "mean", NULL};
  static const char *const uniform_keys[] = {"low", "high", NULL};
  const char *const *keys = normal ? normal_keys : uniform_keys;
  if (kiln_val_kind(d, args, KILN_YAML_MAP, normal ? "'normal'" : "'uniform'") != 0) return -1;
  if (kiln_val_keys(d, args, keys, "argument", normal ? "'normal'" : "'uniform'"))
    return -1;
  const KilnYaml *a = kiln_yaml_get(args, keys[0]), *b = kiln_yaml_get(args, keys[1]);
  out->a = normal ? 0.02 : -0.1;
  out->b = normal ? 0.0 : 0.1;
  if (a && kiln_val_float(d, a, &out->a) != 0) return -1;
  if (b && kiln_val_float(d, b, &out->b) != 0) return -1;
  if (normal && !(out->a >= 0 && isfinite(out->a))) {
    kiln_error(d, a->loc, "'std' must be a finite number >= 0");
    return -1;
  }
  if (normal && !isfinite(out->b)) {
    kiln_error(d, b->loc, "'mean' must be a finite number");
    return -1;
  }
  if (!normal && !(out->a < out->b && isfinite(out->a) && isfinite(out->b))) {
    kiln_error(d, args->loc, "'uniform' needs finite low < high, got %g and %g", out->a, out->b);
    return -1;
  }
  return 0;
}

// zeros | ones | xavier | kaiming | {normal: {std, mean}} | {uniform: {low, high}}
int kiln_val_init(KilnDiag *d, const KilnYaml *y, KilnInit *out) {
  const KilnYaml *args = NULL;
  const char *name;
  if (y->kind == KILN_YAML_MAP && y->n == 1) {
    name = y->keys[0]->str;
    args = y->items[0];
  } else if (y->kind == KILN_YAML_SCALAR) {
    name = y->str;
  } else {
    kiln_error(d, y->loc, "expected an initializer (zeros, ones, xavier, kaiming, "
                          "{normal: {std}} or {uniform: {low, high}})");
    return -1;
  }
  static const KilnInitKind kinds[] = {KILN_INIT_ZEROS,  KILN_INIT_ONES,   KILN_INIT_XAVIER,
                                       KILN_INIT_KAIMING, KILN_INIT_NORMAL, KILN_INIT_UNIFORM};
  for (int i = 0; init_names[i]; i++) {
    if (strcmp(name, init_names[i]) != 0) continue;
    *out = (KilnInit){kinds[i], 0, 0};
    if (i < 4) {
      if (!args) return 0;
      kiln_error(d, args->loc, "initializer '%s' takes no arguments", name);
      return -1;
    }
    if (!args) {  // bare normal / uniform: defaults
      out->a = i == 4 ? 0.02 : -0.1;
      out->b = i == 4 ? 0.0 : 0.1;
      return 0;
    }
    return init_args(d, args, out);
  }
  kiln_error(d, y->kind == KILN_YAML_MAP ? y->keys[0]->loc : y->loc,
             "unknown initializer '%s'", name);
  const char *s = kiln_suggest(name, init_names);
  if (s) kiln_hint(d, "did you mean '%s'?", s);
  else kiln_hint(d, "initializers are zeros, ones, xavier, kaiming, normal and uniform");
  return -1;
}

int kiln_val_keys(KilnDiag *d, const KilnYaml *map, const char *const *allowed,
                  const char *noun, const char *owner) {
  int bad = 0;
  for (int i = 0; i < map->n; i++) {
    const char *k = map->keys[i]->str;
    bool ok = false;
    for (int j = 0; allowed[j] && !ok; j++) ok = strcmp(k, allowed[j]) == 0;
    if (ok) continue;
    if (owner) kiln_error(d, map->keys[i]->loc, "unknown %s '%s' of %s", noun, k, owner);
    else kiln_error(d, map->keys[i]->loc, "unknown %s '%s'", noun, k);
    const char *s = kiln_suggest(k, allowed);
    if (s) kiln_hint(d, "did you mean '%s'?", s);
    bad++;
  }
  return bad;
}
