// The model file, format version 1: top-level keys, dims (with --dim overrides),
// then lowering (lower.c) and the train/data sections (config.c).
#include <string.h>

#include "compiler/compiler.h"

static const char *const top_keys[] = {"kiln", "name", "dims", "inputs", "params", "blocks",
                                       "graph", "outputs", "loss", "train", "data", NULL};
static const char *const required_keys[] = {"kiln", "name", "inputs", "graph", "outputs", NULL};

static int read_version(KilnDiag *d, const KilnYaml *v) {
  if (v->kind == KILN_YAML_SCALAR && v->plain && strcmp(v->str, "1") == 0) return 0;
  if (v->kind == KILN_YAML_SCALAR && !v->plain)
    kiln_error(d, v->loc, "the format version must be the integer 1, not the string \"%s\"",
               v->str);
  else
    kiln_error(d, v->loc, "unsupported format version '%s'",
               v->kind == KILN_YAML_SCALAR ? v->str : kiln_yaml_kind_name(v->kind));
  kiln_hint(d, "this kiln reads format version 1: write 'kiln: 1'");
  return -1;
}

static const KilnDimOverride *find_override(const KilnDimOverride *ov, int nov, const char *name,
                                            bool *used) {
  for (int i = 0; i < nov; i++)
    if (strcmp(ov[i].name, name) == 0) return used[i] = true, &ov[i];
  return NULL;
}

// After an "unknown dim" error in the expression of dim i: if the name is a dim
// further down, say so, since the order of dims matters.
static void hint_later_dim(KilnDiag *d, const KilnYaml *y, int i, const KilnDimTable *dims) {
  char err[160];
  int pos = 0;
  int64_t v;
  const char *s = y->items[i]->str;
  if (y->items[i]->kind != KILN_YAML_SCALAR ||
      kiln_expr_eval(s, dims, &v, err, sizeof err, &pos) == 0 ||
      strncmp(err, "unknown dim", 11) != 0)
    return;
  size_t n = strspn(s + pos, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_");
  for (int j = i + 1; j < y->n; j++)
    if (strlen(y->keys[j]->str) == n && memcmp(y->keys[j]->str, s + pos, n) == 0) {
      kiln_hint(d, "'%s' is defined later (line %d); a dim may use only the dims above it",
                y->keys[j]->str, y->keys[j]->loc.line);
      return;
    }
}

static void unknown_override(KilnModel *m, KilnDiag *d, const char *name) {
  kiln_error(d, (KilnLoc){m->path, 0, 0}, "--dim %s: the model has no dim '%s'", name, name);
  const char **names = kiln_arena_alloc(&m->arena, (size_t)(m->dims.ndims + 1) * sizeof *names);
  for (int i = 0; i < m->dims.ndims; i++) names[i] = m->dims.dims[i].name;
  const char *s = kiln_suggest(name, names);
  if (s) kiln_hint(d, "did you mean '%s'?", s);
}

// Dims are read in order, so an expression may use the dims above it, and an
// override changes every dim computed from it.
static int read_dims(KilnModel *m, KilnDiag *d, const KilnYaml *y, const KilnDimOverride *ov,
                     int nov) {
  bool used[64] = {0};
  int bad = 0;
  if (nov > 64) nov = 64;
  if (y && kiln_val_kind(d, y, KILN_YAML_MAP, "'dims'") != 0) return -1;
  int n = y ? y->n : 0;
  m->dims.dims = kiln_arena_alloc(&m->arena, (size_t)(n + 1) * sizeof(KilnDim));
  for (int i = 0; i < n; i++) {
    KilnDim *dim = &m->dims.dims[m->dims.ndims];
    dim->loc = y->keys[i]->loc;
    if (kiln_val_ident(d, y->keys[i], "a dim name", &dim->name) != 0) {
      bad++;
      continue;
    }
    // The file's own value must be valid even where --dim replaces it.
    if (kiln_val_int(d, y->items[i], &m->dims, &dim->value) != 0) {
      hint_later_dim(d, y, i, &m->dims);
      bad++;
      continue;
    }
    const KilnDimOverride *o = find_override(ov, nov, dim->name, used);
    if (o) {
      dim->value = o->value;
      dim->overridden = true;
    }
    if (dim->value < 1 || dim->value > KILN_MAX_ELEMS) {
      kiln_error(d, o ? dim->loc : y->items[i]->loc, "dim '%s' must be between 1 and 2^31, got %lld%s",
                 dim->name, (long long)dim->value, o ? " (from --dim)" : "");
      bad++;
      continue;
    }
    m->dims.ndims++;
  }
  for (int i = 0; i < nov; i++) {
    if (used[i]) continue;
    int j = 0;
    while (j < i && strcmp(ov[j].name, ov[i].name) != 0) j++;
    if (j < i)
      kiln_error(d, (KilnLoc){m->path, 0, 0}, "--dim %s is given more than once", ov[i].name);
    else
      unknown_override(m, d, ov[i].name);
    bad++;
  }
  return bad ? -1 : 0;
}

static int check_top(KilnModel *m, KilnDiag *d, const KilnYaml *root) {
  if (root->kind != KILN_YAML_MAP) {
    kiln_error(d, root->loc, "a model file is a mapping of keys (kiln, name, inputs, ...), "
                             "not a %s", kiln_yaml_kind_name(root->kind));
    return -1;
  }
  int bad = kiln_val_keys(d, root, top_keys, "top-level key", NULL);
  for (int i = 0; required_keys[i]; i++)
    if (!kiln_yaml_get(root, required_keys[i])) {
      kiln_error(d, root->loc, "the model has no '%s'", required_keys[i]);
      bad++;
    }
  const KilnYaml *v = kiln_yaml_get(root, "kiln");
  if (v) bad += read_version(d, v) != 0;
  v = kiln_yaml_get(root, "name");
  if (v && kiln_val_ident(d, v, "a model name", &m->name) != 0) bad++;
  return bad ? -1 : 0;
}

static const char *dir_of(KilnArena *a, const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return ".";
  if (slash == path) return "/";
  return kiln_arena_printf(a, "%.*s", (int)(slash - path), path);
}

// Generation: the dims named by the shape of the first i32 input of rank 2 (the
// tokens, [batch, time]) become 1 (time only when decoding), replacing the caller's
// values for them.
static int gen_overrides(KilnModel *m, const KilnYaml *root, const KilnDimOverride *ov, int nov,
                         const KilnDimOverride **out) {
  const KilnYaml *in = kiln_yaml_get(root, "inputs");
  KilnDimOverride *all = kiln_arena_alloc(&m->arena, (size_t)(nov + 2) * sizeof *all);
  int n = 0;
  for (int i = 0; in && in->kind == KILN_YAML_MAP && i < in->n; i++) {
    const KilnYaml *t = kiln_yaml_get(in->items[i], "dtype"), *sh = kiln_yaml_get(in->items[i], "shape");
    if (in->items[i]->kind != KILN_YAML_MAP || !t || !sh || t->kind != KILN_YAML_SCALAR ||
        strcmp(t->str, "i32") != 0 || sh->kind != KILN_YAML_SEQ || sh->n != 2)
      continue;
    for (int j = 0; j < (m->gen == KILN_GEN_DECODE ? 2 : 1); j++)
      if (sh->items[j]->kind == KILN_YAML_SCALAR && kiln_name_problem(sh->items[j]->str) == NULL)
        all[n++] = (KilnDimOverride){sh->items[j]->str, 1};
    break;
  }
  int ngen = n;
  for (int i = 0; i < nov; i++) {
    bool replaced = false;
    for (int j = 0; j < ngen; j++) replaced |= strcmp(all[j].name, ov[i].name) == 0;
    if (!replaced) all[n++] = ov[i];
  }
  *out = all;
  return n;
}

int kiln_model_load(KilnModel *m, KilnDiag *d, const char *path, const KilnDimOverride *ov,
                    int nov) {
  return kiln_model_load_gen(m, d, path, ov, nov, KILN_GEN_NONE, 0);
}

int kiln_model_load_gen(KilnModel *m, KilnDiag *d, const char *path, const KilnDimOverride *ov,
                        int nov, KilnGenMode gen, int64_t context) {
  memset(m, 0, sizeof(*m));
  m->gen = gen;
  m->context = context;
  m->position = -1;
  m->path = kiln_arena_strdup(&m->arena, path);
  m->dir = dir_of(&m->arena, m->path);
  m->name = "model";
  kiln_graph_init(&m->graph, &m->arena, m->name);
  size_t len;
  char *text = kiln_read_file(&m->arena, d, m->path, KILN_YAML_MAX_FILE, &len);
  if (!text) return -1;
  kiln_diag_source(d, m->path, text, len);
  KilnYaml *root = kiln_yaml_parse(&m->arena, d, m->path, text, len);
  if (!root) return -1;
  int top = check_top(m, d, root);
  m->graph.name = m->name;
  if (gen != KILN_GEN_NONE) nov = gen_overrides(m, root, ov, nov, &ov);
  if (read_dims(m, d, kiln_yaml_get(root, "dims"), ov, nov) != 0 || top != 0) return -1;
  int bad = kiln_lower_model(m, d, root) != 0;
  const KilnYaml *v;
  if ((v = kiln_yaml_get(root, "train"))) bad += kiln_config_train(m, d, v) != 0;
  if ((v = kiln_yaml_get(root, "data"))) bad += kiln_config_data(m, d, v) != 0;
  if (m->train.present && m->graph.loss < 0 && !bad) {
    kiln_error(d, kiln_yaml_get(root, "train")->loc, "'train' needs a 'loss' to minimise");
    bad++;
  }
  if (bad || d->nerrors) return -1;
  // The front end built the graph node by node; the verifier confirms it.
  if (kiln_graph_verify(&m->graph, d->out) != 0) {
    kiln_error(d, (KilnLoc){m->path, 0, 0}, "internal error: the lowered IR is invalid");
    return -1;
  }
  return 0;
}

void kiln_model_free(KilnModel *m) { kiln_arena_free(&m->arena); }
