// Lowering graph lists to IR: scopes of names, `in` resolution, primitive ops read
// generically through the op table's attribute schemas, and block calls with
// `repeat`. Shapes are inferred as each node is added, so a mismatch is reported
// at the YAML node that caused it.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "compiler/compiler.h"

// Names to ints by open addressing, in the arena: a list of a hundred thousand
// nodes must not make lowering quadratic.
typedef struct {
  const char **keys;   // NULL: an empty slot
  int *vals;
  int cap, n;          // cap: 0 or a power of two
} Index;

struct KilnScope {
  int n, cap;
  const char **names;
  int32_t *ids;        // -1: defined, but its node failed; suppresses cascades
  KilnLoc *locs;
  Index index;         // name -> position in names
  const KilnYaml *named_list;  // the graph list whose explicit names are in `named`
  Index named;         // explicit `name:` -> first item of named_list that gives it
  int ncounters;
  const char **counter_ops;  // default names: "<op>_<k>", k counting per op
  int *counters;
};

typedef struct {
  const char *name;
  KilnLoc loc;
  const char **inputs;
  const KilnYaml *input_list;  // where the inputs are written, for messages
  int ninputs;
  const KilnYaml *params, *graph, *output;
  bool ok, used;
} Block;

struct KilnBlocks {
  Block *b;
  int n;
};

static const char *const common_attrs[] = {"in", "name"};

#define MAX_CALL_DEPTH 32  // block calls inside block calls

//
// Scopes.
//
static void *grow(KilnArena *a, void *old, int n, int cap, size_t size) {
  void *p = kiln_arena_alloc(a, (size_t)cap * size);
  if (n) memcpy(p, old, (size_t)n * size);
  return p;
}

static uint32_t hash_name(const char *s) {
  uint32_t h = 2166136261u;  // FNV-1a
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h;
}

// Where name is, or the empty slot where it would go.
static int index_slot(const Index *x, const char *name) {
  int j = (int)(hash_name(name) & (uint32_t)(x->cap - 1));
  while (x->keys[j] && strcmp(x->keys[j], name) != 0) j = (j + 1) & (x->cap - 1);
  return j;
}

static int index_get(const Index *x, const char *name) {
  if (x->cap == 0) return -1;
  int j = index_slot(x, name);
  return x->keys[j] ? x->vals[j] : -1;
}

// Adds name -> v; a name already there keeps its first value.
static void index_put(KilnArena *a, Index *x, const char *name, int v) {
  if (2 * (x->n + 1) > x->cap) {
    Index old = *x;
    x->cap = old.cap ? 2 * old.cap : 64;
    x->keys = kiln_arena_alloc(a, (size_t)x->cap * sizeof *x->keys);
    x->vals = kiln_arena_alloc(a, (size_t)x->cap * sizeof *x->vals);
    x->n = 0;
    for (int i = 0; i < old.cap; i++)
      if (old.keys[i]) index_put(a, x, old.keys[i], old.vals[i]);
  }
  int j = index_slot(x, name);
  if (x->keys[j]) return;
  x->keys[j] = name;
  x->vals[j] = v;
  x->n++;
}

static KilnScope *scope_new(KilnArena *a) { return kiln_arena_alloc(a, sizeof(KilnScope)); }

static int scope_find(const KilnScope *s, const char *name) { return index_get(&s->index, name); }

static int bind(KilnLower *l, const char *name, int32_t id, KilnLoc loc) {
  KilnScope *s = l->scope;
  int prev = scope_find(s, name);
  if (prev >= 0) {
    if (s->locs[prev].line)
      kiln_error(l->d, loc, "'%s' is already defined at line %d", name, s->locs[prev].line);
    else
      kiln_error(l->d, loc, "'%s' is already defined", name);
    return -1;
  }
  if (strcmp(name, "loss") == 0 && !*l->prefix) {
    kiln_error(l->d, loc, "the name 'loss' is reserved for the model's loss");
    return -1;
  }
  if (s->n == s->cap) {
    KilnArena *a = &l->m->arena;
    int cap = s->cap ? 2 * s->cap : 32;
    s->names = grow(a, s->names, s->n, cap, sizeof *s->names);
    s->ids = grow(a, s->ids, s->n, cap, sizeof *s->ids);
    s->locs = grow(a, s->locs, s->n, cap, sizeof *s->locs);
    s->cap = cap;
  }
  index_put(&l->m->arena, &s->index, name, s->n);
  s->names[s->n] = name;
  s->ids[s->n] = id;
  s->locs[s->n++] = loc;
  return 0;
}

// The first item of the current list written with `name: NAME`, or -1. Default
// names skip these, so a generated name never takes one the user gives later.
// The list's names are indexed on first use.
static int item_named(KilnLower *l, const char *name) {
  KilnScope *s = l->scope;
  if (!l->list) return -1;
  if (s->named_list != l->list) {
    s->named = (Index){0};
    s->named_list = l->list;
    for (int i = 0; i < l->list->n; i++) {
      const KilnYaml *it = l->list->items[i];
      if (it->kind != KILN_YAML_MAP || it->n != 1 || it->items[0]->kind != KILN_YAML_MAP)
        continue;
      const KilnYaml *nm = kiln_yaml_get(it->items[0], "name");
      if (nm && nm->kind == KILN_YAML_SCALAR) index_put(&l->m->arena, &s->named, nm->str, i);
    }
  }
  return index_get(&s->named, name);
}

static const char *default_name(KilnLower *l, const char *op) {
  KilnScope *s = l->scope;
  int i = 0;
  while (i < s->ncounters && strcmp(s->counter_ops[i], op) != 0) i++;
  if (i == s->ncounters) {
    KilnArena *a = &l->m->arena;
    s->counter_ops = grow(a, s->counter_ops, s->ncounters, s->ncounters + 1, sizeof(char *));
    s->counters = grow(a, s->counters, s->ncounters, s->ncounters + 1, sizeof(int));
    s->counter_ops[i] = op;
    s->counters[i] = 0;
    s->ncounters++;
  }
  for (;;) {
    const char *name = kiln_arena_printf(&l->m->arena, "%s_%d", op, s->counters[i]++);
    if (scope_find(s, name) < 0 && item_named(l, name) < 0) return name;
  }
}

//
// Use before definition and cycles, for a name that is not (yet) in scope.
//
// The item that item i takes its k-th input from (of *out_n), or -1.
static int input_item(KilnLower *l, int i, int k, int *out_n) {
  const KilnYaml *it = l->list->items[i];
  const KilnYaml *attrs = it->kind == KILN_YAML_MAP && it->n == 1 ? it->items[0] : NULL;
  const KilnYaml *in = attrs && attrs->kind == KILN_YAML_MAP ? kiln_yaml_get(attrs, "in") : NULL;
  *out_n = !in || in->kind != KILN_YAML_SEQ ? 1 : in->n;
  if (!in) return i - 1;
  if (in->kind == KILN_YAML_SEQ && in->n == 0) return -1;
  const KilnYaml *v = in->kind == KILN_YAML_SEQ ? in->items[k] : in;
  return v->kind == KILN_YAML_SCALAR ? item_named(l, v->str) : -1;
}

// Does item `from` depend, through `in` references and implicit previous-node
// inputs, on item `target`? Depth-first with an explicit stack: a chain of
// implicit inputs is as long as the list, too deep to recurse on.
static bool depends_on(KilnLower *l, int from, int target) {
  char *seen = calloc((size_t)l->list->n, 1);
  int *stack = malloc((size_t)l->list->n * sizeof *stack);  // each item is pushed once
  int top = 0;
  bool found = false;
  if (seen && stack) {
    seen[from] = 1;
    stack[top++] = from;
  }
  while (top > 0 && !found) {
    int i = stack[--top], n = 1;
    found = i == target;
    for (int k = 0; k < n && !found; k++) {
      int dep = input_item(l, i, k, &n);
      if (dep < 0 || seen[dep]) continue;
      seen[dep] = 1;
      stack[top++] = dep;
    }
  }
  free(seen);
  free(stack);
  return found;
}

static void report_unknown_value(KilnLower *l, const KilnYaml *v) {
  int later = item_named(l, v->str);
  if (later >= 0 && later == l->item) {
    kiln_error(l->d, v->loc, "'%s' uses its own output as an input", v->str);
    return;
  }
  if (later > l->item) {
    if (depends_on(l, later, l->item))
      kiln_error(l->d, v->loc, "cycle: '%s' (line %d) depends on this node, which uses it",
                 v->str, l->list->items[later]->loc.line);
    else
      kiln_error(l->d, v->loc, "'%s' is used before it is defined (line %d)", v->str,
                 l->list->items[later]->loc.line);
    kiln_hint(l->d, "graph nodes run in the order they are listed");
    return;
  }
  kiln_error(l->d, v->loc, "unknown value '%s'", v->str);
  const char **cands = calloc((size_t)l->scope->n + 1, sizeof *cands);
  if (!cands) return;
  memcpy(cands, l->scope->names, (size_t)l->scope->n * sizeof *cands);
  const char *s = kiln_suggest(v->str, cands);
  if (s) kiln_hint(l->d, "did you mean '%s'?", s);
  free(cands);
}

//
// Nodes.
//
int32_t kiln_lower_emit(KilnLower *l, KilnOp op, const int32_t *in, int nin, const char *local,
                        const KilnAttrs *attr, KilnLoc loc) {
  for (int i = 0; i < nin; i++)
    if (in[i] < 0) return -1;  // an input already failed and was reported
  KilnGraph *g = &l->m->graph;
  if (g->nnodes >= KILN_MAX_NODES) {
    if (g->nnodes == KILN_MAX_NODES)
      kiln_error(l->d, loc, "the model lowers to more than %d nodes", KILN_MAX_NODES);
    return -1;
  }
  const char *name = kiln_arena_printf(&l->m->arena, "%s%s", l->prefix, local);
  int32_t id = kiln_graph_add(g, op, in, nin, name, loc);
  if (attr) g->nodes[id].attr = *attr;
  char err[256];
  if (kiln_graph_infer(g, id, err, sizeof err) != 0) {
    kiln_error(l->d, loc, "'%s': %s", local, err);
    return -1;
  }
  return id;
}

// A source node (param, input): its type is given, not inferred.
static int32_t source(KilnLower *l, KilnOp op, const char *local, KilnDType dt,
                      const int64_t *shape, int rank, const KilnAttrs *a, KilnLoc loc) {
  int32_t id = kiln_lower_emit(l, op, NULL, 0, local, a, loc);
  if (id < 0) return -1;
  KilnNode *n = &l->m->graph.nodes[id];
  n->dtype = dt;
  n->rank = rank;
  memcpy(n->shape, shape, sizeof(int64_t) * (size_t)rank);
  return id;
}

int32_t kiln_lower_param(KilnLower *l, const char *local, const int64_t *shape, int rank,
                         KilnInit init, KilnLoc loc) {
  char dims[128];
  if (kiln_numel(shape, rank) < 0) {
    kiln_error(l->d, loc, "parameter '%s' of shape %s is too large", local,
               kiln_dims_str(shape, rank, dims, sizeof dims));
    return -1;
  }
  KilnAttrs a = {.init = init};
  return source(l, KILN_OP_PARAM, local, KILN_F32, shape, rank, &a, loc);
}

int32_t kiln_lower_input(KilnLower *l, const char *local, KilnDType dt, const int64_t *shape,
                         int rank, bool state, KilnLoc loc) {
  KilnAttrs a = {.state = state};
  return source(l, KILN_OP_INPUT, local, dt, shape, rank, &a, loc);
}

static int32_t constant(KilnLower *l, const KilnYaml *v, double value) {
  KilnAttrs a = {.value = value};
  int32_t id = kiln_lower_emit(l, KILN_OP_CONST, NULL, 0, default_name(l, "const"), &a, v->loc);
  if (id >= 0) l->m->graph.nodes[id].dtype = KILN_F32;  // rank 0: a scalar
  return id;
}

// One entry of `in`: a value name or a number. Returns the node, -1 (reported) or
// -2 for a name whose definition failed (already reported).
static int32_t resolve(KilnLower *l, const KilnYaml *v) {
  if (v->kind != KILN_YAML_SCALAR) {
    kiln_error(l->d, v->loc, "expected a value name or a number in 'in', got a %s",
               kiln_yaml_kind_name(v->kind));
    return -1;
  }
  int i = scope_find(l->scope, v->str);
  if (i >= 0) return l->scope->ids[i] >= 0 ? l->scope->ids[i] : -2;
  char *end;
  double x = strtod(v->str, &end);
  bool number = v->plain && *v->str && *end == '\0' && !strchr(v->str, 'x') &&
                !strchr(v->str, 'X') && !strpbrk(v->str, "nN");  // no hex, nan or inf
  if (number && isfinite(x)) return constant(l, v, x);
  if (number) {
    kiln_error(l->d, v->loc, "number '%s' is out of range", v->str);
    return -1;
  }
  report_unknown_value(l, v);
  return -1;
}

// Fills in[] from `in` (or the previous output). Returns the count, or -1.
static int resolve_inputs(KilnLower *l, const KilnYaml *attrs, KilnLoc loc, int32_t *in) {
  const KilnYaml *y = attrs ? kiln_yaml_get(attrs, "in") : NULL;
  if (!y) {
    if (l->prev == -1) return -1;  // the previous node failed
    if (l->prev < -1) {
      kiln_error(l->d, loc, "this node has no input: name one with 'in'");
      return -1;
    }
    in[0] = l->prev;
    return 1;
  }
  int n = y->kind == KILN_YAML_SEQ ? y->n : 1;
  if (n > KILN_MAX_INPUTS) {
    kiln_error(l->d, y->loc, "at most %d inputs are allowed, got %d", KILN_MAX_INPUTS, n);
    return -1;
  }
  if (n == 0) {
    kiln_error(l->d, y->loc, "'in' is empty");
    return -1;
  }
  int bad = 0;
  for (int i = 0; i < n; i++) {
    in[i] = resolve(l, y->kind == KILN_YAML_SEQ ? y->items[i] : y);
    if (in[i] < 0) bad++;
  }
  return bad ? -1 : n;
}

//
// Primitive ops: attributes read through the op table's schema.
//
static void set_defaults(const KilnAttrSpec *spec, KilnAttrs *a) {
  for (const KilnAttrSpec *s = spec; s && s->name; s++) {
    char *p = (char *)a + s->offset;
    switch (s->type) {
    case KILN_ATTR_INT: {
      // (double)INT64_MAX rounds up past the range; it means "to the end".
      int64_t v = s->dflt >= 9.2e18 ? INT64_MAX : (int64_t)s->dflt;
      memcpy(p, &v, sizeof v);
      break;
    }
    case KILN_ATTR_FLOAT:
      memcpy(p, &s->dflt, sizeof(double));
      break;
    case KILN_ATTR_BOOL: {
      bool v = s->dflt != 0;
      memcpy(p, &v, sizeof v);
      break;
    }
    case KILN_ATTR_INTS:
      a->nints = 0;
      break;
    }
  }
}

static int read_attr(KilnLower *l, const KilnAttrSpec *s, const KilnYaml *v, KilnAttrs *a) {
  char *p = (char *)a + s->offset;
  const KilnDimTable *dims = &l->m->dims;
  switch (s->type) {
  case KILN_ATTR_INT: {
    int64_t x;
    if (kiln_val_int(l->d, v, dims, &x) != 0) return -1;
    memcpy(p, &x, sizeof x);
    return 0;
  }
  case KILN_ATTR_FLOAT: {
    double x;
    if (kiln_val_float(l->d, v, &x) != 0) return -1;
    memcpy(p, &x, sizeof x);
    return 0;
  }
  case KILN_ATTR_BOOL: {
    bool x;
    if (kiln_val_bool(l->d, v, &x) != 0) return -1;
    memcpy(p, &x, sizeof x);
    return 0;
  }
  case KILN_ATTR_INTS:
    if (kiln_val_kind(l->d, v, KILN_YAML_SEQ, "a list of integers") != 0) return -1;
    if (v->n > KILN_MAX_RANK) {
      kiln_error(l->d, v->loc, "at most %d entries are allowed, got %d", KILN_MAX_RANK, v->n);
      return -1;
    }
    for (int i = 0; i < v->n; i++)
      if (kiln_val_int(l->d, v->items[i], dims, &a->ints[i]) != 0) return -1;
    a->nints = v->n;
    return 0;
  }
  return -1;
}

static int read_attrs(KilnLower *l, const KilnOpInfo *info, const KilnYaml *attrs, KilnLoc loc,
                      KilnAttrs *a) {
  const char *allowed[16];
  int n = 0;
  allowed[n++] = common_attrs[0];
  allowed[n++] = common_attrs[1];
  for (const KilnAttrSpec *s = info->attrs; s && s->name && n < 15; s++) allowed[n++] = s->name;
  allowed[n] = NULL;
  char owner[64];
  snprintf(owner, sizeof owner, "'%s'", info->name);
  int bad = attrs ? kiln_val_keys(l->d, attrs, allowed, "attribute", owner) : 0;
  set_defaults(info->attrs, a);
  for (const KilnAttrSpec *s = info->attrs; s && s->name; s++) {
    const KilnYaml *v = attrs ? kiln_yaml_get(attrs, s->name) : NULL;
    if (v) {
      bad += read_attr(l, s, v, a) != 0;
    } else if (s->required) {
      kiln_error(l->d, loc, "'%s' needs the attribute '%s'", info->name, s->name);
      bad++;
    }
  }
  return bad ? -1 : 0;
}

static int32_t lower_primitive(KilnLower *l, KilnOp op, const KilnYaml *attrs, const char *name,
                               KilnLoc loc) {
  KilnAttrs a = {0};
  int32_t in[KILN_MAX_INPUTS];
  int bad = read_attrs(l, kiln_op(op), attrs, loc, &a) != 0;
  int nin = resolve_inputs(l, attrs, loc, in);
  if (bad || nin < 0) return -1;
  return kiln_lower_emit(l, op, in, nin, name, &a, loc);
}

//
// Blocks.
//
static int lower_list(KilnLower *l, const KilnYaml *list);

static int find_block(const KilnBlocks *b, const char *name) {
  for (int i = 0; i < b->n; i++)
    if (strcmp(b->b[i].name, name) == 0) return i;
  return -1;
}

static int lower_params(KilnLower *l, const KilnYaml *params);

// Copy i of a block call: a fresh scope whose inputs are bound to `in`.
static int32_t lower_copy(KilnLower *outer, const Block *b, int bi, const int32_t *in,
                          const char *call, int copy) {
  KilnLower l = *outer;
  l.scope = scope_new(&outer->m->arena);
  l.block_limit = bi;
  l.prefix = kiln_arena_printf(&outer->m->arena, "%s%s.%d.", outer->prefix, call, copy);
  l.list = b->graph;
  for (int j = 0; j < b->ninputs; j++) bind(&l, b->inputs[j], in[j], b->input_list->items[j]->loc);
  l.prev = in[0];
  if (b->params && lower_params(&l, b->params) != 0) return -1;
  if (lower_list(&l, b->graph) != 0) return -1;
  if (!b->output) return l.prev;
  int i = scope_find(l.scope, b->output->str);
  if (i < 0) {
    kiln_error(outer->d, b->output->loc, "block '%s' has no value '%s' to output", b->name,
               b->output->str);
    return -1;
  }
  return l.scope->ids[i];
}

// Block calls inside block calls, counted from the prefix: each level adds
// "CALL.COPY." and a call name holds no dots.
static int call_depth(const char *prefix) {
  int dots = 0;
  for (const char *p = prefix; *p; p++) dots += *p == '.';
  return dots / 2;
}

static int32_t lower_call(KilnLower *l, int bi, const KilnYaml *attrs, const char *name,
                          KilnLoc loc) {
  Block *b = &l->blocks->b[bi];
  b->used = true;
  // Each level recurses and lengthens every name, so a chain of thousands of
  // blocks would overflow the stack.
  if (call_depth(l->prefix) >= MAX_CALL_DEPTH) {
    kiln_error(l->d, loc, "block calls are nested more than %d deep", MAX_CALL_DEPTH);
    kiln_hint(l->d, "'%s' is called inside %d nested block calls", b->name,
              call_depth(l->prefix));
    return -1;
  }
  static const char *const allowed[] = {"in", "name", "repeat", NULL};
  char owner[80];
  snprintf(owner, sizeof owner, "block '%s'", b->name);
  int bad = attrs ? kiln_val_keys(l->d, attrs, allowed, "attribute", owner) : 0;
  int64_t repeat = 1;
  const KilnYaml *r = attrs ? kiln_yaml_get(attrs, "repeat") : NULL;
  if (r && kiln_val_int(l->d, r, &l->m->dims, &repeat) == 0 &&
      (repeat < 1 || repeat > KILN_MAX_REPEAT)) {
    kiln_error(l->d, r->loc, "repeat must be between 1 and %d, got %lld", KILN_MAX_REPEAT,
               (long long)repeat);
    bad++;
  }
  int32_t in[KILN_MAX_INPUTS];
  int nin = resolve_inputs(l, attrs, loc, in);
  if (bad || nin < 0 || !b->ok) return -1;
  if (nin != b->ninputs) {
    kiln_error(l->d, loc, "block '%s' takes %d input%s, got %d", b->name, b->ninputs,
               b->ninputs == 1 ? "" : "s", nin);
    return -1;
  }
  for (int64_t c = 0; c < repeat; c++) {
    in[0] = lower_copy(l, b, bi, in, name, (int)c);
    if (in[0] < 0) return -1;
  }
  return in[0];
}

static const char *const block_keys[] = {"inputs", "params", "graph", "output", NULL};

static void read_block(KilnLower *l, const KilnYaml *key, const KilnYaml *def, Block *b) {
  KilnDiag *d = l->d;
  b->loc = key->loc;
  if (kiln_val_ident(d, key, "a block name", &b->name) != 0) b->name = key->str;
  if (kiln_val_kind(d, def, KILN_YAML_MAP, "a block") != 0) return;
  int bad = kiln_val_keys(d, def, block_keys, "key", "a block");
  const KilnYaml *in = kiln_yaml_get(def, "inputs");
  b->params = kiln_yaml_get(def, "params");
  b->graph = kiln_yaml_get(def, "graph");
  b->output = kiln_yaml_get(def, "output");
  KilnOp op;
  if (kiln_op_lookup(b->name, &op) || kiln_layer_lookup(b->name)) {
    kiln_error(d, key->loc, "block name '%s' is the name of an op", b->name);
    bad++;
  }
  if (!in) {
    kiln_error(d, def->loc, "block '%s' needs 'inputs', the names its callers bind", b->name);
    bad++;
  } else if (kiln_val_kind(d, in, KILN_YAML_SEQ, "'inputs'") != 0) {
    bad++;
  } else if (in->n < 1 || in->n > KILN_MAX_INPUTS) {
    kiln_error(d, in->loc, "a block takes 1 to %d inputs, got %d", KILN_MAX_INPUTS, in->n);
    bad++;
  } else {
    b->inputs = kiln_arena_alloc(&l->m->arena, (size_t)in->n * sizeof(char *));
    b->input_list = in;
    b->ninputs = in->n;
    for (int i = 0; i < in->n; i++) {
      if (kiln_val_ident(d, in->items[i], "an input name", &b->inputs[i]) != 0) {
        bad++;
        continue;
      }
      for (int j = 0; j < i; j++)
        if (b->inputs[j] && strcmp(b->inputs[j], b->inputs[i]) == 0) {
          kiln_error(d, in->items[i]->loc, "block input '%s' is listed twice", b->inputs[i]);
          bad++;
          break;
        }
    }
  }
  if (!b->graph) {
    kiln_error(d, def->loc, "block '%s' needs a 'graph'", b->name);
    bad++;
  } else if (kiln_val_kind(d, b->graph, KILN_YAML_SEQ, "a block's 'graph'") != 0) {
    bad++;
  } else if (b->graph->n == 0) {
    kiln_error(d, b->graph->loc, "block '%s' has an empty graph", b->name);
    bad++;
  }
  if (b->params) bad += kiln_val_kind(d, b->params, KILN_YAML_MAP, "'params'") != 0;
  const char *out;
  if (b->output) bad += kiln_val_ident(d, b->output, "an output name", &out) != 0;
  b->ok = !bad;
}

static int read_blocks(KilnLower *l, const KilnYaml *y, KilnBlocks *out) {
  if (!y) return 0;
  if (kiln_val_kind(l->d, y, KILN_YAML_MAP, "'blocks'") != 0) return -1;
  out->b = kiln_arena_alloc(&l->m->arena, (size_t)y->n * sizeof(Block));
  for (int i = 0; i < y->n; i++) {
    read_block(l, y->keys[i], y->items[i], &out->b[i]);
    out->n = i + 1;
  }
  return 0;
}

//
// Graph lists.
//
static const char **all_op_names(KilnLower *l) {
  int n = 0;
  const char *const *layers = kiln_layer_names();
  while (layers[n]) n++;
  const char **c = kiln_arena_alloc(&l->m->arena,
                                    (size_t)(n + KILN_OP_COUNT + l->blocks->n + 1) * sizeof *c);
  memcpy(c, layers, (size_t)n * sizeof *c);
  for (int i = 0; i < KILN_OP_COUNT; i++)
    if (kiln_ops[i].fuse != KILN_FUSE_SOURCE && !(kiln_ops[i].flags & (KILN_OPF_LOSS | KILN_OPF_INTERNAL)))
      c[n++] = kiln_ops[i].name;
  for (int i = 0; i < l->block_limit; i++) c[n++] = l->blocks->b[i].name;
  return c;
}

static void unknown_op(KilnLower *l, const char *op, KilnLoc loc) {
  int bi = find_block(l->blocks, op);
  if (bi >= 0 && bi == l->block_limit && *l->prefix) {
    kiln_error(l->d, loc, "block '%s' cannot call itself", op);
    return;
  }
  if (bi >= l->block_limit) {
    kiln_error(l->d, loc, "block '%s' cannot be called here", op);
    kiln_hint(l->d, "a block may call only blocks defined before it");
    return;
  }
  KilnOp k;
  if (kiln_op_lookup(op, &k) && (kiln_op(k)->flags & KILN_OPF_LOSS)) {
    kiln_error(l->d, loc, "'%s' is a loss; write it under the top-level 'loss' key", op);
    return;
  }
  kiln_error(l->d, loc, "unknown op '%s'", op);
  const char *s = kiln_suggest(op, all_op_names(l));
  if (s) kiln_hint(l->d, "did you mean '%s'?", s);
}

static int32_t lower_layer(KilnLower *l, const KilnLayer *ly, const KilnYaml *attrs,
                           const char *name, KilnLoc loc) {
  const char *allowed[16];
  int n = 0;
  allowed[n++] = common_attrs[0];
  allowed[n++] = common_attrs[1];
  for (int i = 0; ly->attrs[i] && n < 15; i++) allowed[n++] = ly->attrs[i];
  allowed[n] = NULL;
  char owner[64];
  snprintf(owner, sizeof owner, "'%s'", ly->name);
  int bad = attrs ? kiln_val_keys(l->d, attrs, allowed, "attribute", owner) : 0;
  int32_t in[KILN_MAX_INPUTS];
  int nin = resolve_inputs(l, attrs, loc, in);
  if (bad || nin < 0) return -1;
  if (nin < ly->min_in || nin > ly->max_in) {
    kiln_error(l->d, loc, "'%s' takes %d input%s, got %d", ly->name, ly->min_in,
               ly->min_in == 1 ? "" : "s", nin);
    return -1;
  }
  return ly->lower(l, attrs, in, nin, name, loc);
}

// Lowers one graph item; *out_name is the name it binds (NULL if none), written at
// *out_loc.
static int32_t lower_item(KilnLower *l, const KilnYaml *it, const char **out_name,
                          KilnLoc *out_loc) {
  const KilnYaml *key = it, *attrs = NULL;
  *out_name = NULL;
  *out_loc = it->loc;
  if (it->kind == KILN_YAML_MAP && it->n == 1) {
    key = it->keys[0];
    attrs = it->items[0];
    if (attrs->kind == KILN_YAML_SCALAR && attrs->plain &&
        (attrs->len == 0 || !strcmp(attrs->str, "null") || !strcmp(attrs->str, "~")))
      attrs = NULL;
    else if (kiln_val_kind(l->d, attrs, KILN_YAML_MAP, "the attributes of a node") != 0)
      return -1;
  } else if (it->kind != KILN_YAML_SCALAR) {
    kiln_error(l->d, it->loc, "expected a node '- OP: {attributes}', got a %s%s",
               kiln_yaml_kind_name(it->kind),
               it->kind == KILN_YAML_MAP ? " with several keys" : "");
    if (it->kind == KILN_YAML_MAP) kiln_hint(l->d, "each list item holds exactly one op");
    return -1;
  }
  const char *op = key->str;
  const KilnYaml *nm = attrs ? kiln_yaml_get(attrs, "name") : NULL;
  const char *name;
  if (nm && kiln_val_ident(l->d, nm, "a value name", &name) != 0) return -1;
  if (!nm) name = default_name(l, op);
  *out_name = name;
  if (nm) *out_loc = nm->loc;

  const KilnLayer *ly = kiln_layer_lookup(op);
  if (ly) return lower_layer(l, ly, attrs, name, key->loc);
  int bi = find_block(l->blocks, op);
  if (bi >= 0 && bi < l->block_limit) return lower_call(l, bi, attrs, name, key->loc);
  KilnOp k;
  if (kiln_op_lookup(op, &k) && kiln_op(k)->fuse != KILN_FUSE_SOURCE &&
      !(kiln_op(k)->flags & (KILN_OPF_LOSS | KILN_OPF_INTERNAL)))
    return lower_primitive(l, k, attrs, name, key->loc);
  unknown_op(l, op, key->loc);
  return -1;
}

static int lower_list(KilnLower *l, const KilnYaml *list) {
  int bad = 0;
  const KilnYaml *saved_list = l->list;
  l->list = list;
  for (int i = 0; i < list->n && !kiln_diag_full(l->d); i++) {
    l->item = i;
    const char *name;
    KilnLoc at;
    int32_t id = lower_item(l, list->items[i], &name, &at);
    if (id < 0) bad++;
    // A failed node still binds its name (to -1), so uses of it stay quiet.
    if (name && bind(l, name, id, at) != 0) bad++;
    l->prev = id;
  }
  l->list = saved_list;
  return bad || l->d->nerrors ? -1 : 0;
}

//
// Inputs, params, outputs, loss.
//
static int lower_inputs(KilnLower *l, const KilnYaml *y) {
  KilnModel *m = l->m;
  if (kiln_val_kind(l->d, y, KILN_YAML_MAP, "'inputs'") != 0) return -1;
  if (y->n == 0) {
    kiln_error(l->d, y->loc, "a model needs at least one input");
    return -1;
  }
  m->inputs = kiln_arena_alloc(&m->arena, (size_t)y->n * sizeof(int32_t));
  static const char *const keys[] = {"shape", "dtype", NULL};
  int bad = 0;
  for (int i = 0; i < y->n; i++) {
    const KilnYaml *k = y->keys[i], *v = y->items[i];
    const char *name;
    int64_t shape[KILN_MAX_RANK];
    int rank = 0;
    KilnDType dt = KILN_F32;
    if (kiln_val_ident(l->d, k, "an input name", &name) != 0 ||
        kiln_val_kind(l->d, v, KILN_YAML_MAP, "an input") != 0 ||
        kiln_val_keys(l->d, v, keys, "key", "an input") != 0) {
      bad++;
      continue;
    }
    const KilnYaml *sh = kiln_yaml_get(v, "shape"), *t = kiln_yaml_get(v, "dtype");
    if (!sh) {
      kiln_error(l->d, v->loc, "input '%s' needs a 'shape'", name);
      bad++;
      continue;
    }
    if (kiln_val_shape(l->d, sh, &m->dims, shape, &rank) != 0) {
      bad++;
      continue;
    }
    if (t && t->kind == KILN_YAML_SCALAR && strcmp(t->str, "i32") == 0) {
      dt = KILN_I32;
    } else if (t && t->kind != KILN_YAML_SCALAR) {
      kiln_error(l->d, t->loc, "expected a dtype (f32 or i32), got a %s",
                 kiln_yaml_kind_name(t->kind));
      bad++;
      continue;
    } else if (t && strcmp(t->str, "f32") != 0) {
      kiln_error(l->d, t->loc, "unknown dtype '%s'", t->str);
      kiln_hint(l->d, "inputs are f32 (numbers) or i32 (labels, token ids)");
      bad++;
      continue;
    }
    // Generation: one sequence; when decoding, one position of it.
    if (m->gen != KILN_GEN_NONE && rank >= 2) shape[0] = 1;
    if (m->gen == KILN_GEN_DECODE && rank >= 2) shape[1] = 1;
    int32_t id = kiln_lower_input(l, name, dt, shape, rank, false, k->loc);
    if (id < 0 || bind(l, name, id, k->loc) != 0) {
      bad++;
      continue;
    }
    m->inputs[m->ninputs++] = id;
  }
  if (m->gen == KILN_GEN_DECODE && !bad)
    m->position = kiln_lower_input(l, "decode.position", KILN_I32, (int64_t[]){1, 1}, 2, false,
                                   y->loc);
  return bad ? -1 : 0;
}

static int lower_params(KilnLower *l, const KilnYaml *y) {
  if (kiln_val_kind(l->d, y, KILN_YAML_MAP, "'params'") != 0) return -1;
  static const char *const keys[] = {"shape", "init", NULL};
  int bad = 0;
  for (int i = 0; i < y->n; i++) {
    const KilnYaml *k = y->keys[i], *v = y->items[i];
    const char *name;
    int64_t shape[KILN_MAX_RANK];
    int rank = 0;
    if (kiln_val_ident(l->d, k, "a parameter name", &name) != 0 ||
        kiln_val_kind(l->d, v, KILN_YAML_MAP, "a parameter") != 0 ||
        kiln_val_keys(l->d, v, keys, "key", "a parameter") != 0) {
      bad++;
      continue;
    }
    const KilnYaml *sh = kiln_yaml_get(v, "shape"), *in = kiln_yaml_get(v, "init");
    if (!sh) {
      kiln_error(l->d, v->loc, "parameter '%s' needs a 'shape'", name);
      bad++;
      continue;
    }
    KilnInit init = {KILN_INIT_ZEROS, 0, 0};
    if (kiln_val_shape(l->d, sh, &l->m->dims, shape, &rank) != 0 ||
        (in && kiln_val_init(l->d, in, &init) != 0)) {
      bad++;
      continue;
    }
    if (!in && rank >= 2) init.kind = KILN_INIT_XAVIER;
    int32_t id = kiln_lower_param(l, name, shape, rank, init, k->loc);
    if (id < 0 || bind(l, name, id, k->loc) != 0) bad++;
  }
  return bad ? -1 : 0;
}

static int32_t lookup_top(KilnLower *l, const KilnYaml *v) {
  if (v->kind != KILN_YAML_SCALAR) {
    kiln_error(l->d, v->loc, "expected a value name, got a %s", kiln_yaml_kind_name(v->kind));
    return -1;
  }
  int i = scope_find(l->scope, v->str);
  if (i >= 0) return l->scope->ids[i];
  l->list = NULL;
  report_unknown_value(l, v);
  return -1;
}

static int lower_outputs(KilnLower *l, const KilnYaml *y) {
  KilnGraph *g = &l->m->graph;
  int n = y->kind == KILN_YAML_SEQ ? y->n : 1;
  if (n == 0) {
    kiln_error(l->d, y->loc, "'outputs' is empty");
    return -1;
  }
  int bad = 0;
  for (int i = 0; i < n; i++) {
    const KilnYaml *v = y->kind == KILN_YAML_SEQ ? y->items[i] : y;
    int32_t id = lookup_top(l, v);
    if (id < 0) {
      bad++;
      continue;
    }
    for (int j = 0; j < g->noutputs; j++)
      if (g->outputs[j] == id) {
        kiln_error(l->d, v->loc, "'%s' is listed twice in 'outputs'", v->str);
        id = -1;
      }
    if (id >= 0) kiln_graph_add_output(g, id);
    else bad++;
  }
  return bad ? -1 : 0;
}

static int lower_loss(KilnLower *l, const KilnYaml *y) {
  static const char *const kinds[] = {"cross_entropy", "mse", "binary_cross_entropy", NULL};
  static const char *const args[][3] = {
      {"logits", "labels", NULL}, {"pred", "target", NULL}, {"logits", "labels", NULL}};
  static const KilnOp ops[] = {KILN_OP_CROSS_ENTROPY, KILN_OP_MSE, KILN_OP_BCE};
  if (kiln_val_kind(l->d, y, KILN_YAML_MAP, "'loss'") != 0) return -1;
  if (y->n != 1) {
    kiln_error(l->d, y->loc, "'loss' holds exactly one loss, got %d", y->n);
    return -1;
  }
  int k = 0;
  while (kinds[k] && strcmp(kinds[k], y->keys[0]->str) != 0) k++;
  if (!kinds[k]) {
    kiln_error(l->d, y->keys[0]->loc, "unknown loss '%s'", y->keys[0]->str);
    const char *s = kiln_suggest(y->keys[0]->str, kinds);
    if (s) kiln_hint(l->d, "did you mean '%s'?", s);
    else kiln_hint(l->d, "losses are cross_entropy, mse and binary_cross_entropy");
    return -1;
  }
  const KilnYaml *a = y->items[0];
  char owner[64];
  snprintf(owner, sizeof owner, "'%s'", kinds[k]);
  if (kiln_val_kind(l->d, a, KILN_YAML_MAP, owner) != 0 ||
      kiln_val_keys(l->d, a, args[k], "argument", owner) != 0)
    return -1;
  int32_t in[2];
  for (int i = 0; i < 2; i++) {
    const KilnYaml *v = kiln_yaml_get(a, args[k][i]);
    if (!v) {
      kiln_error(l->d, a->loc, "%s needs '%s'", owner, args[k][i]);
      return -1;
    }
    if ((in[i] = lookup_top(l, v)) < 0) return -1;
  }
  const char *saved = l->prefix;
  l->prefix = "";
  int32_t id = kiln_lower_emit(l, ops[k], in, 2, "loss", NULL, y->keys[0]->loc);
  l->prefix = saved;
  if (id < 0) return -1;
  l->m->graph.loss = id;
  return 0;
}

int kiln_lower_model(KilnModel *m, KilnDiag *d, const KilnYaml *root) {
  KilnBlocks blocks = {0};
  KilnLower l = {.m = m, .d = d, .scope = scope_new(&m->arena), .blocks = &blocks,
                 .prefix = "", .prev = -2};
  const KilnYaml *inputs = kiln_yaml_get(root, "inputs"), *params = kiln_yaml_get(root, "params");
  const KilnYaml *graph = kiln_yaml_get(root, "graph"), *outputs = kiln_yaml_get(root, "outputs");
  const KilnYaml *loss = kiln_yaml_get(root, "loss");
  int bad = 0;
  bad += read_blocks(&l, kiln_yaml_get(root, "blocks"), &blocks) != 0;
  l.block_limit = blocks.n;
  if (inputs) bad += lower_inputs(&l, inputs) != 0;
  if (params) bad += lower_params(&l, params) != 0;
  if (bad || !graph) return -1;
  if (kiln_val_kind(d, graph, KILN_YAML_SEQ, "'graph'") != 0) return -1;
  if (graph->n == 0) {
    kiln_error(d, graph->loc, "'graph' is empty");
    return -1;
  }
  l.prev = m->ninputs ? m->inputs[0] : -2;
  if (lower_list(&l, graph) != 0) return -1;
  if (outputs) bad += lower_outputs(&l, outputs) != 0;
  if (loss) bad += lower_loss(&l, loss) != 0;
  for (int i = 0; i < blocks.n; i++)
    if (blocks.b[i].ok && !blocks.b[i].used)
      kiln_warning(d, blocks.b[i].loc, "block '%s' is never called", blocks.b[i].name);
  return bad ? -1 : 0;
}
