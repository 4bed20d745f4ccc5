// The `train` and `data` sections: read, validated and stored in the model for the
// backends and the runtime. Data files are only checked for existence here (a
// missing one is a warning: the user may name another on the command line).
#include <math.h>
#include <string.h>
#include <sys/stat.h>

#include "compiler/compiler.h"

// Reads key of map as a float in [lo, hi] when present.
static int get_float(KilnDiag *d, const KilnYaml *map, const char *key, double lo, double hi,
                     double *out) {
  const KilnYaml *v = map ? kiln_yaml_get(map, key) : NULL;
  if (!v) return 0;
  if (kiln_val_float(d, v, out) != 0) return -1;
  if (*out < lo || *out > hi) {
    kiln_error(d, v->loc, "'%s' must be between %g and %g, got %g", key, lo, hi, *out);
    return -1;
  }
  return 0;
}

static int get_int(KilnDiag *d, const KilnYaml *map, const KilnDimTable *dims, const char *key,
                   int64_t lo, int64_t hi, int64_t *out) {
  const KilnYaml *v = map ? kiln_yaml_get(map, key) : NULL;
  if (!v) return 0;
  if (kiln_val_int(d, v, dims, out) != 0) return -1;
  if (*out < lo || *out > hi) {
    kiln_error(d, v->loc, "'%s' must be between %lld and %lld, got %lld", key, (long long)lo,
               (long long)hi, (long long)*out);
    return -1;
  }
  return 0;
}

// `sgd`, or {sgd: {lr: ...}}: returns the name and its arguments (or NULL).
static int one_of(KilnDiag *d, const KilnYaml *y, const char *const *names, const char *what,
                  int *out_k, const KilnYaml **out_args) {
  const KilnYaml *key = y;
  *out_args = NULL;
  if (y->kind == KILN_YAML_MAP && y->n == 1) {
    key = y->keys[0];
    *out_args = y->items[0];
    if (kiln_val_kind(d, *out_args, KILN_YAML_MAP, what) != 0) return -1;
  } else if (y->kind != KILN_YAML_SCALAR) {
    kiln_error(d, y->loc, "expected one %s, written as a name or '{name: {...}}'", what);
    return -1;
  }
  for (int k = 0; names[k]; k++)
    if (strcmp(key->str, names[k]) == 0) return *out_k = k, 0;
  kiln_error(d, key->loc, "unknown %s '%s'", what, key->str);
  const char *s = kiln_suggest(key->str, names);
  if (s) kiln_hint(d, "did you mean '%s'?", s);
  return -1;
}

static int read_optimizer(KilnDiag *d, const KilnYaml *y, KilnTrainCfg *t) {
  static const char *const names[] = {"sgd", "adam", "adamw", NULL};
  static const char *const sgd_keys[] = {"lr", "momentum", "nesterov", "weight_decay", NULL};
  static const char *const adam_keys[] = {"lr", "beta1", "beta2", "eps", "weight_decay", NULL};
  int k;
  const KilnYaml *a;
  if (one_of(d, y, names, "optimizer", &k, &a) != 0) return -1;
  t->opt = (KilnOptKind)k;
  t->lr = k == 0 ? 0.01 : 0.001;
  t->weight_decay = k == 2 ? 0.01 : 0;
  if (!a) return 0;
  if (kiln_val_keys(d, a, k == 0 ? sgd_keys : adam_keys, "argument", names[k]) != 0) return -1;
  int bad = get_float(d, a, "lr", 0, 1e3, &t->lr) != 0;
  bad += get_float(d, a, "weight_decay", 0, 1, &t->weight_decay) != 0;
  if (k == 0) {
    bad += get_float(d, a, "momentum", 0, 1, &t->momentum) != 0;
    const KilnYaml *n = kiln_yaml_get(a, "nesterov");
    bad += n && kiln_val_bool(d, n, &t->nesterov) != 0;
    if (t->nesterov && t->momentum == 0) {
      kiln_error(d, n->loc, "nesterov needs a momentum above 0");
      bad++;
    }
  } else {
    bad += get_float(d, a, "beta1", 0, 0.999999, &t->beta1) != 0;
    bad += get_float(d, a, "beta2", 0, 0.999999999, &t->beta2) != 0;
    bad += get_float(d, a, "eps", 1e-30, 1, &t->eps) != 0;
  }
  return bad ? -1 : 0;
}

static int read_schedule(KilnDiag *d, const KilnYaml *y, const KilnDimTable *dims,
                         KilnTrainCfg *t) {
  static const char *const names[] = {"constant", "step", "cosine", NULL};
  static const char *const step_keys[] = {"every", "gamma", NULL};
  static const char *const cos_keys[] = {"warmup", "min_lr", NULL};
  static const char *const none[] = {NULL};
  int k;
  const KilnYaml *a;
  if (one_of(d, y, names, "schedule", &k, &a) != 0) return -1;
  t->sched = (KilnSchedKind)k;
  if (k == 1 && !a) {
    kiln_error(d, y->loc, "the step schedule needs {step: {every: N, gamma: G}}");
    return -1;
  }
  if (!a) return 0;
  const char *const *keys = k == 1 ? step_keys : k == 2 ? cos_keys : none;
  if (kiln_val_keys(d, a, keys, "argument", names[k]) != 0) return -1;
  int bad = 0;
  if (k == 1) {
    if (!kiln_yaml_get(a, "every")) {
      kiln_error(d, a->loc, "the step schedule needs 'every'");
      bad++;
    }
    bad += get_int(d, a, dims, "every", 1, INT32_MAX, &t->step_every) != 0;
    bad += get_float(d, a, "gamma", 0, 1, &t->gamma) != 0;
  } else if (k == 2) {
    bad += get_int(d, a, dims, "warmup", 0, INT32_MAX, &t->warmup) != 0;
    bad += get_float(d, a, "min_lr", 0, 1e3, &t->min_lr) != 0;
  }
  return bad ? -1 : 0;
}

int kiln_config_train(KilnModel *m, KilnDiag *d, const KilnYaml *y) {
  static const char *const keys[] = {"optimizer", "schedule", "epochs", "steps",
                                     "clip_grad_norm", "seed", NULL};
  KilnTrainCfg *t = &m->train;
  *t = (KilnTrainCfg){.present = true, .opt = KILN_OPT_SGD, .lr = 0.01, .beta1 = 0.9,
                      .beta2 = 0.999, .eps = 1e-8, .sched = KILN_SCHED_CONSTANT, .gamma = 0.1};
  if (kiln_val_kind(d, y, KILN_YAML_MAP, "'train'") != 0) return -1;
  if (kiln_val_keys(d, y, keys, "key", "'train'") != 0) return -1;
  int bad = 0;
  const KilnYaml *v;
  if ((v = kiln_yaml_get(y, "optimizer"))) bad += read_optimizer(d, v, t) != 0;
  if ((v = kiln_yaml_get(y, "schedule"))) bad += read_schedule(d, v, &m->dims, t) != 0;
  bad += get_int(d, y, &m->dims, "epochs", 1, INT32_MAX, &t->epochs) != 0;
  bad += get_int(d, y, &m->dims, "steps", 1, INT64_MAX / 2, &t->steps) != 0;
  if (kiln_yaml_get(y, "epochs") && kiln_yaml_get(y, "steps")) {
    kiln_error(d, kiln_yaml_get(y, "steps")->loc, "give 'epochs' or 'steps', not both");
    bad++;
  }
  if (!t->epochs && !t->steps) t->epochs = 1;
  bad += get_float(d, y, "clip_grad_norm", 0, 1e9, &t->clip_grad_norm) != 0;
  int64_t seed = 0;
  bad += get_int(d, y, &m->dims, "seed", 0, INT64_MAX, &seed) != 0;
  t->seed = (uint64_t)seed;
  return bad ? -1 : 0;
}

//
// data
//
static int32_t find_input(const KilnModel *m, const char *name) {
  for (int i = 0; i < m->ninputs; i++)
    if (strcmp(m->graph.nodes[m->inputs[i]].name, name) == 0) return m->inputs[i];
  return -1;
}

static const char *input_name(KilnModel *m, KilnDiag *d, const KilnYaml *v) {
  if (v->kind != KILN_YAML_SCALAR) {
    kiln_error(d, v->loc, "expected the name of a model input");
    return NULL;
  }
  if (find_input(m, v->str) >= 0) return v->str;
  kiln_error(d, v->loc, "'%s' is not an input of the model", v->str);
  const char **names = kiln_arena_alloc(&m->arena, (size_t)(m->ninputs + 1) * sizeof(char *));
  for (int i = 0; i < m->ninputs; i++) names[i] = m->graph.nodes[m->inputs[i]].name;
  const char *s = kiln_suggest(v->str, names);
  if (s) kiln_hint(d, "did you mean '%s'?", s);
  return NULL;
}

static const char *resolve_path(KilnModel *m, KilnDiag *d, const KilnYaml *v) {
  if (v->kind != KILN_YAML_SCALAR || v->len == 0) {
    kiln_error(d, v->loc, "expected a file path");
    return NULL;
  }
  const char *p = v->str[0] == '/' ? v->str : kiln_arena_printf(&m->arena, "%s/%s", m->dir, v->str);
  struct stat st;
  if (stat(p, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode)))
    kiln_warning(d, v->loc, "data file '%s' does not exist (yet)", p);
  return p;
}

// csv column: N or [begin, end)
static int csv_column(KilnModel *m, KilnDiag *d, const KilnYaml *v, KilnDataSrc *s) {
  int64_t *b = &s->bind[s->nbind].col_begin, *e = &s->bind[s->nbind].col_end;
  if (v->kind == KILN_YAML_SEQ) {
    if (v->n != 2) {
      kiln_error(d, v->loc, "a column range is [first, end), got %d numbers", v->n);
      return -1;
    }
    if (kiln_val_int(d, v->items[0], &m->dims, b) || kiln_val_int(d, v->items[1], &m->dims, e))
      return -1;
    s->bind[s->nbind].range = true;
  } else {
    if (kiln_val_int(d, v, &m->dims, b) != 0) return -1;
    *e = *b + 1;
  }
  if (*b < 0 || *e <= *b || *e > (1 << 20)) {
    kiln_error(d, v->loc, "bad column range [%lld, %lld)", (long long)*b, (long long)*e);
    return -1;
  }
  return 0;
}

static bool too_many_bindings(KilnDiag *d, const KilnYaml *key, const KilnDataSrc *s) {
  if (s->nbind < KILN_MAX_BINDINGS) return false;
  kiln_error(d, key->loc, "a data source binds at most %d inputs", KILN_MAX_BINDINGS);
  return true;
}

// Data rows are samples: the leading axis of an input is the batch, and one row
// holds the rest of the input (flattened).
static int64_t per_sample(const KilnModel *m, const char *input) {
  const KilnNode *n = &m->graph.nodes[find_input(m, input)];
  return n->rank ? kiln_node_numel(n) / n->shape[0] : 1;
}

static int csv_width(KilnModel *m, KilnDiag *d, const KilnYaml *v,
                     const KilnDataBinding *b) {
  int64_t want = per_sample(m, b->input), got = b->col_end - b->col_begin;
  if (want == got) return 0;
  kiln_error(d, v->loc, "input '%s' takes %lld value%s per sample, the columns give %lld",
             b->input, (long long)want, want == 1 ? "" : "s", (long long)got);
  return -1;
}

// text and tokens sources feed token ids: their inputs are i32.
static int want_ids(KilnModel *m, KilnDiag *d, const KilnYaml *v, const char *input) {
  if (m->graph.nodes[find_input(m, input)].dtype == KILN_I32) return 0;
  kiln_error(d, v->loc, "input '%s' is f32; text and token data feed i32 token ids", input);
  kiln_hint(d, "declare the input with 'dtype: i32'");
  return -1;
}

static int read_source(KilnModel *m, KilnDiag *d, const KilnYaml *y, KilnDataSrc *s) {
  static const char *const kinds[] = {"csv", "npy", "text", "tokens", NULL};
  if (kiln_val_kind(d, y, KILN_YAML_MAP, "a data source") != 0) return -1;
  s->present = true;
  s->loc = y->loc;
  int k = -1;
  for (int i = 0; i < y->n; i++)
    for (int j = 0; kinds[j]; j++) {
      if (strcmp(y->keys[i]->str, kinds[j]) != 0) continue;
      if (k >= 0) {
        kiln_error(d, y->keys[i]->loc, "a data source holds one of 'csv', 'npy', 'text' or "
                   "'tokens', got both '%s' and '%s'", kinds[k], kinds[j]);
        return -1;
      }
      k = j;
    }
  if (k < 0) {
    kiln_error(d, y->loc, "a data source needs one of 'csv', 'npy', 'text' or 'tokens'");
    return -1;
  }
  s->kind = (KilnDataKind)k;
  int bad = 0;
  for (int i = 0; i < y->n; i++) {
    const char *key = y->keys[i]->str;
    const KilnYaml *v = y->items[i];
    if (strcmp(key, kinds[k]) == 0) {
      if (k == KILN_SOURCE_NPY) {
        if (kiln_val_kind(d, v, KILN_YAML_MAP, "'npy'") != 0) return -1;
        for (int j = 0; j < v->n; j++) {
          if (too_many_bindings(d, v->keys[j], s)) {
            bad++;
            break;
          }
          s->bind[s->nbind].input = input_name(m, d, v->keys[j]);
          s->bind[s->nbind].path = resolve_path(m, d, v->items[j]);
          bad += !s->bind[s->nbind].input || !s->bind[s->nbind].path;
          s->nbind++;
        }
      } else {
        bad += !(s->path = resolve_path(m, d, v));
      }
    } else if (k == KILN_SOURCE_CSV && strcmp(key, "header") == 0) {
      bad += kiln_val_bool(d, v, &s->header) != 0;
    } else if ((k == KILN_SOURCE_TEXT || k == KILN_SOURCE_TOKENS) &&
               (strcmp(key, "input") == 0 || strcmp(key, "target") == 0)) {
      const char *in = input_name(m, d, v);
      bad += !in || want_ids(m, d, v, in) != 0;
      *(key[0] == 'i' ? &s->input : &s->target) = in;
    } else if (k == KILN_SOURCE_CSV) {
      if (too_many_bindings(d, y->keys[i], s)) {
        bad++;
        break;
      }
      s->bind[s->nbind].input = input_name(m, d, y->keys[i]);
      bad += !s->bind[s->nbind].input || csv_column(m, d, v, s) != 0 ||
             csv_width(m, d, v, &s->bind[s->nbind]) != 0;
      s->nbind++;
    } else {
      kiln_error(d, y->keys[i]->loc, "unknown key '%s' of a %s source", key, kinds[k]);
      bad++;
    }
  }
  if ((k == KILN_SOURCE_TEXT || k == KILN_SOURCE_TOKENS) && (!s->input || !s->target) && !bad) {
    kiln_error(d, y->loc, "a %s source needs 'input' and 'target'", kinds[k]);
    bad++;
  }
  if (k == KILN_SOURCE_CSV && s->nbind == 0 && !bad) {
    kiln_error(d, y->loc, "a csv source needs at least one 'INPUT: column' binding");
    bad++;
  }
  if (k == KILN_SOURCE_NPY && s->nbind == 0 && !bad) {
    kiln_error(d, y->loc, "an npy source needs at least one 'INPUT: file' binding");
    bad++;
  }
  return bad ? -1 : 0;
}

int kiln_config_data(KilnModel *m, KilnDiag *d, const KilnYaml *y) {
  static const char *const keys[] = {"train", "eval", "val_split", "shuffle", NULL};
  KilnDataCfg *c = &m->data;
  c->shuffle = true;
  if (kiln_val_kind(d, y, KILN_YAML_MAP, "'data'") != 0) return -1;
  if (kiln_val_keys(d, y, keys, "key", "'data'") != 0) return -1;
  int bad = 0;
  const KilnYaml *v;
  if ((v = kiln_yaml_get(y, "train"))) {
    bad += read_source(m, d, v, &c->train) != 0;
  } else {
    kiln_error(d, y->loc, "'data' needs a 'train' source");
    bad++;
  }
  if ((v = kiln_yaml_get(y, "eval"))) bad += read_source(m, d, v, &c->eval) != 0;
  bad += get_float(d, y, "val_split", 0, 0.99, &c->val_split) != 0;
  if ((v = kiln_yaml_get(y, "shuffle"))) bad += kiln_val_bool(d, v, &c->shuffle) != 0;
  return bad ? -1 : 0;
}
