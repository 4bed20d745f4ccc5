// Layer ops: the YAML ops that create their own parameters and lower to primitive
// IR ops. Parameters are named after the layer (NAME.weight, NAME.bias, ...), the
// way PyTorch names a module's state, so weights map across by name.
#include <math.h>
#include <string.h>

#include "compiler/compiler.h"

//
// Attribute helpers: each reports at the attribute's own location.
//
static int attr_int(KilnLower *l, const KilnYaml *attrs, const char *key, bool required,
                    int64_t dflt, int64_t lo, int64_t hi, KilnLoc loc, const char *layer,
                    int64_t *out) {
  const KilnYaml *v = attrs ? kiln_yaml_get(attrs, key) : NULL;
  *out = dflt;
  if (!v) {
    if (!required) return 0;
    kiln_error(l->d, loc, "'%s' needs the attribute '%s'", layer, key);
    return -1;
  }
  if (kiln_val_int(l->d, v, &l->m->dims, out) != 0) return -1;
  if (*out < lo || *out > hi) {
    kiln_error(l->d, v->loc, "'%s' must be between %lld and %lld, got %lld", key, (long long)lo,
               (long long)hi, (long long)*out);
    return -1;
  }
  return 0;
}

static int attr_bool(KilnLower *l, const KilnYaml *attrs, const char *key, bool dflt, bool *out) {
  const KilnYaml *v = attrs ? kiln_yaml_get(attrs, key) : NULL;
  *out = dflt;
  return v ? kiln_val_bool(l->d, v, out) : 0;
}

static int attr_init(KilnLower *l, const KilnYaml *attrs, KilnInit dflt, KilnInit *out) {
  const KilnYaml *v = attrs ? kiln_yaml_get(attrs, "init") : NULL;
  *out = dflt;
  return v ? kiln_val_init(l->d, v, out) : 0;
}

static const KilnNode *node(KilnLower *l, int32_t id) { return &l->m->graph.nodes[id]; }

static const char *sub(KilnLower *l, const char *name, const char *part) {
  return kiln_arena_printf(&l->m->arena, "%s.%s", name, part);
}

// Requires an f32 input of rank >= min_rank; says what the layer needs otherwise.
static int expect_f32(KilnLower *l, int32_t x, int min_rank, const char *layer, KilnLoc loc) {
  const KilnNode *n = node(l, x);
  char s[160];
  if (n->dtype == KILN_F32 && n->rank >= min_rank) return 0;
  kiln_error(l->d, loc, "'%s' needs an f32 input of rank at least %d, got '%s' %s", layer,
             min_rank, n->name, kiln_shape_str(n, s, sizeof s));
  return -1;
}

// y = x W (+ b): the shared core of dense, attention's projections.
static int32_t linear(KilnLower *l, int32_t x, int64_t units, bool bias, KilnInit init,
                      const char *name, const char *out_name, KilnLoc loc) {
  const KilnNode *n = node(l, x);
  int64_t wshape[2] = {n->shape[n->rank - 1], units};
  int32_t w = kiln_lower_param(l, sub(l, name, "weight"), wshape, 2, init, loc);
  int32_t mm_in[2] = {x, w};
  int32_t y = kiln_lower_emit(l, KILN_OP_MATMUL, mm_in, 2, bias ? sub(l, name, "matmul") : out_name,
                              NULL, loc);
  if (!bias || y < 0) return y;
  int32_t b = kiln_lower_param(l, sub(l, name, "bias"), &units, 1,
                               (KilnInit){KILN_INIT_ZEROS, 0, 0}, loc);
  int32_t add_in[2] = {y, b};
  return kiln_lower_emit(l, KILN_OP_ADD, add_in, 2, out_name, NULL, loc);
}

//
// dense: {units, activation, bias, init}
//
static const char *const activations[] = {"none", "relu", "sigmoid", "tanh", "gelu", "silu", NULL};
static const KilnOp activation_ops[] = {KILN_OP_COUNT, KILN_OP_RELU, KILN_OP_SIGMOID,
                                        KILN_OP_TANH,  KILN_OP_GELU, KILN_OP_SILU};

static int read_activation(KilnLower *l, const KilnYaml *attrs, KilnOp *out) {
  const KilnYaml *v = attrs ? kiln_yaml_get(attrs, "activation") : NULL;
  *out = KILN_OP_COUNT;
  if (!v) return 0;
  if (v->kind == KILN_YAML_SCALAR)
    for (int i = 0; activations[i]; i++)
      if (strcmp(v->str, activations[i]) == 0) return *out = activation_ops[i], 0;
  kiln_error(l->d, v->loc, "unknown activation '%s'", v->kind == KILN_YAML_SCALAR ? v->str : "?");
  const char *s = v->kind == KILN_YAML_SCALAR ? kiln_suggest(v->str, activations) : NULL;
  if (s) kiln_hint(l->d, "did you mean '%s'?", s);
  else kiln_hint(l->d, "activations are none, relu, sigmoid, tanh, gelu and silu");
  return -1;
}

static int32_t lower_dense(KilnLower *l, const KilnYaml *attrs, const int32_t *in, int nin,
                           const char *name, KilnLoc loc) {
  (void)nin;
  int64_t units;
  bool bias;
  KilnOp act;
  KilnInit init;
  int bad = attr_int(l, attrs, "units", true, 0, 1, KILN_MAX_ELEMS, loc, "dense", &units) != 0;
  bad += attr_bool(l, attrs, "bias", true, &bias) != 0;
  bad += read_activation(l, attrs, &act) != 0;
  bad += attr_init(l, attrs, (KilnInit){KILN_INIT_XAVIER, 0, 0}, &init) != 0;
  if (bad || expect_f32(l, in[0], 2, "dense", loc) != 0) return -1;
  bool has_act = act != KILN_OP_COUNT;
  int32_t y = linear(l, in[0], units, bias, init, name,
                     has_act ? sub(l, name, bias ? "bias_add" : "matmul") : name, loc);
  if (!has_act || y < 0) return y;
  return kiln_lower_emit(l, act, &y, 1, name, NULL, loc);
}

//
// embedding: {vocab, dim, init}; ids [...] i32 -> [..., dim]
//
static int32_t lower_embedding(KilnLower *l, const KilnYaml *attrs, const int32_t *in, int nin,
                               const char *name, KilnLoc loc) {
  (void)nin;
  int64_t shape[2];
  KilnInit init;
  int bad = attr_int(l, attrs, "vocab", true, 0, 1, KILN_MAX_ELEMS, loc, "embedding", &shape[0]);
  bad += attr_int(l, attrs, "dim", true, 0, 1, KILN_MAX_ELEMS, loc, "embedding", &shape[1]) != 0;
  bad += attr_init(l, attrs, (KilnInit){KILN_INIT_NORMAL, 0.02, 0}, &init) != 0;
  if (bad) return -1;
  const KilnNode *ids = node(l, in[0]);
  if (ids->dtype != KILN_I32) {
    char s[160];
    kiln_error(l->d, loc, "'embedding' needs i32 token ids, got '%s' %s", ids->name,
               kiln_shape_str(ids, s, sizeof s));
    kiln_hint(l->d, "declare the input with 'dtype: i32'");
    return -1;
  }
  int32_t table = kiln_lower_param(l, sub(l, name, "weight"), shape, 2, init, loc);
  int32_t ein[2] = {in[0], table};
  return kiln_lower_emit(l, KILN_OP_EMBEDDING, ein, 2, name, NULL, loc);
}

//
// position_embedding: {init}; x [..., T, D] + weight [T, D]
//
static int32_t lower_position(KilnLower *l, const KilnYaml *attrs, const int32_t *in, int nin,
                              const char *name, KilnLoc loc) {
  (void)nin;
  KilnInit init;
  if (attr_init(l, attrs, (KilnInit){KILN_INIT_NORMAL, 0.02, 0}, &init) != 0) return -1;
  if (expect_f32(l, in[0], 2, "position_embedding", loc) != 0) return -1;
  const KilnNode *x = node(l, in[0]);
  int64_t shape[2] = {x->shape[x->rank - 2], x->shape[x->rank - 1]};
  if (l->m->gen == KILN_GEN_DECODE) shape[0] = l->m->context;
  int32_t pos = kiln_lower_param(l, sub(l, name, "weight"), shape, 2, init, loc);
  if (l->m->gen == KILN_GEN_DECODE) {  // the row of the position being decoded
    int32_t ein[2] = {l->m->position, pos};
    pos = kiln_lower_emit(l, KILN_OP_EMBEDDING, ein, 2, sub(l, name, "row"), NULL, loc);
  }
  int32_t add_in[2] = {in[0], pos};
  return kiln_lower_emit(l, KILN_OP_ADD, add_in, 2, name, NULL, loc);
}

//
// layernorm: {eps}; over the last axis, with weight (ones) and bias (zeros)
//
static int32_t lower_layernorm(KilnLower *l, const KilnYaml *attrs, const int32_t *in, int nin,
                               const char *name, KilnLoc loc) {
  (void)nin;
  KilnAttrs a = {.eps = 1e-5};
  const KilnYaml *e = attrs ? kiln_yaml_get(attrs, "eps") : NULL;
  if (e && kiln_val_float(l->d, e, &a.eps) != 0) return -1;
  if (!(a.eps > 0 && a.eps < 1)) {
    kiln_error(l->d, e->loc, "'eps' must be between 0 and 1, got %g", a.eps);
    return -1;
  }
  if (expect_f32(l, in[0], 1, "layernorm", loc) != 0) return -1;
  const KilnNode *x = node(l, in[0]);
  int64_t d = x->shape[x->rank - 1];
  int32_t g = kiln_lower_param(l, sub(l, name, "weight"), &d, 1, (KilnInit){KILN_INIT_ONES}, loc);
  int32_t b = kiln_lower_param(l, sub(l, name, "bias"), &d, 1, (KilnInit){KILN_INIT_ZEROS}, loc);
  int32_t ln_in[3] = {in[0], g, b};
  return kiln_lower_emit(l, KILN_OP_LAYERNORM, ln_in, 3, name, &a, loc);
}

//
// lstm: {hidden, layers}; x [B, T, I] -> [B, T, H], gates i, f, g, o
//
static int32_t lower_lstm(KilnLower *l, const KilnYaml *attrs, const int32_t *in, int nin,
                          const char *name, KilnLoc loc) {
  (void)nin;
  int64_t h, layers;
  int bad = attr_int(l, attrs, "hidden", true, 0, 1, 1 << 16, loc, "lstm", &h) != 0;
  bad += attr_int(l, attrs, "layers", false, 1, 1, 16, loc, "lstm", &layers) != 0;
  if (bad || expect_f32(l, in[0], 3, "lstm", loc) != 0) return -1;
  if (node(l, in[0])->rank != 3) {
    char s[160];
    kiln_error(l->d, loc, "'lstm' needs input [batch, time, features], got %s",
               kiln_shape_str(node(l, in[0]), s, sizeof s));
    return -1;
  }
  // PyTorch's default: uniform in +-1/sqrt(hidden) for every weight and bias.
  double k = 1.0 / sqrt((double)h);
  KilnInit init = {KILN_INIT_UNIFORM, -k, k};
  int32_t x = in[0];
  for (int64_t i = 0; i < layers && x >= 0; i++) {
    const char *pn = kiln_arena_printf(&l->m->arena, "%s.l%lld", name, (long long)i);
    int64_t ih[2] = {node(l, x)->shape[2], 4 * h}, hh[2] = {h, 4 * h}, b = 4 * h;
    int32_t args[4] = {x, kiln_lower_param(l, sub(l, pn, "weight_ih"), ih, 2, init, loc),
                       kiln_lower_param(l, sub(l, pn, "weight_hh"), hh, 2, init, loc),
                       kiln_lower_param(l, sub(l, pn, "bias"), &b, 1, init, loc)};
    const char *out = i == layers - 1 ? name : pn;
    if (l->m->gen == KILN_GEN_DECODE) {  // h and c carried from the previous token
      int64_t st[3] = {2, node(l, x)->shape[0], h};
      int32_t sargs[5] = {args[0], args[1], args[2], args[3],
                          kiln_lower_input(l, sub(l, pn, "state"), KILN_F32, st, 3, true, loc)};
      x = sargs[4] < 0 ? -1 : kiln_lower_emit(l, KILN_OP_LSTM_STEP, sargs, 5, out, NULL, loc);
    } else {
      x = kiln_lower_emit(l, KILN_OP_LSTM, args, 4, out, NULL, loc);
    }
  }
  return x;
}

//
// attention: {heads, causal, bias}; x [B, T, D] -> qkv projection -> scaled dot
// product attention per head -> output projection
//
static int32_t lower_attention(KilnLower *l, const KilnYaml *attrs, const int32_t *in, int nin,
                               const char *name, KilnLoc loc) {
  (void)nin;
  KilnAttrs a = {0};
  bool bias;
  int bad = attr_int(l, attrs, "heads", true, 0, 1, 4096, loc, "attention", &a.heads) != 0;
  bad += attr_bool(l, attrs, "causal", false, &a.causal) != 0;
  bad += attr_bool(l, attrs, "bias", true, &bias) != 0;
  if (bad || expect_f32(l, in[0], 3, "attention", loc) != 0) return -1;
  const KilnNode *x = node(l, in[0]);
  int64_t d = x->shape[x->rank - 1];
  if (x->rank != 3 || d % a.heads != 0) {
    char s[160];
    kiln_error(l->d, loc, "'attention' needs input [batch, time, dim] with dim divisible by "
                          "heads (%lld), got %s", (long long)a.heads, kiln_shape_str(x, s, sizeof s));
    return -1;
  }
  KilnInit init = {KILN_INIT_XAVIER, 0, 0};
  int64_t cache[3] = {x->shape[0], l->m->context, d};  // x moves as nodes are added
  int32_t qkv = linear(l, in[0], 3 * d, bias, init, sub(l, name, "qkv"), sub(l, name, "qkv"), loc);
  if (qkv < 0) return -1;
  static const char *const parts[] = {"q", "k", "v"};
  int32_t qkv3[3];
  for (int i = 0; i < 3; i++) {
    KilnAttrs s = {.axis = -1, .start = i * d, .end = (i + 1) * d};
    qkv3[i] = kiln_lower_emit(l, KILN_OP_SLICE, &qkv, 1, sub(l, name, parts[i]), &s, loc);
  }
  int32_t att;
  if (l->m->gen == KILN_GEN_DECODE) {  // one query against the keys and values so far
    if (!a.causal) {
      kiln_error(l->d, loc, "attention without 'causal: true' sees later positions, so it cannot "
                            "decode one token at a time");
      return -1;
    }
    int32_t args[6] = {qkv3[0], qkv3[1], qkv3[2],
                       kiln_lower_input(l, sub(l, name, "k_cache"), KILN_F32, cache, 3, true, loc),
                       kiln_lower_input(l, sub(l, name, "v_cache"), KILN_F32, cache, 3, true, loc),
                       l->m->position};
    att = args[3] < 0 || args[4] < 0 ? -1
          : kiln_lower_emit(l, KILN_OP_ATTENTION_DECODE, args, 6, sub(l, name, "attn"), &a, loc);
  } else {
    att = kiln_lower_emit(l, KILN_OP_ATTENTION, qkv3, 3, sub(l, name, "attn"), &a, loc);
  }
  if (att < 0) return -1;
  return linear(l, att, d, bias, init, sub(l, name, "proj"), name, loc);
}

//
// dropout: {p}
//
static int32_t lower_dropout(KilnLower *l, const KilnYaml *attrs, const int32_t *in, int nin,
                             const char *name, KilnLoc loc) {
  (void)nin;
  KilnAttrs a = {.p = 0.1};
  const KilnYaml *p = attrs ? kiln_yaml_get(attrs, "p") : NULL;
  if (p && kiln_val_float(l->d, p, &a.p) != 0) return -1;
  if (!(a.p >= 0 && a.p < 1)) {
    kiln_error(l->d, p->loc, "dropout 'p' must be in [0, 1), got %g", a.p);
    return -1;
  }
  // The mask's random stream is keyed by the node's full name (FNV-1a), so it stays
  // the same when passes renumber nodes, and the gradient draws the same mask.
  a.key = (int64_t)1469598103934665603ull;
  for (const char *s = l->prefix; *s; s++) a.key = (int64_t)(((uint64_t)a.key ^ (unsigned char)*s) * 1099511628211ull);
  for (const char *s = name; *s; s++) a.key = (int64_t)(((uint64_t)a.key ^ (unsigned char)*s) * 1099511628211ull);
  return kiln_lower_emit(l, KILN_OP_DROPOUT, in, 1, name, &a, loc);
}

static const char *const dense_attrs[] = {"units", "activation", "bias", "init", NULL};
static const char *const embedding_attrs[] = {"vocab", "dim", "init", NULL};
static const char *const position_attrs[] = {"init", NULL};
static const char *const layernorm_attrs[] = {"eps", NULL};
static const char *const lstm_attrs[] = {"hidden", "layers", NULL};
static const char *const attention_attrs[] = {"heads", "causal", "bias", NULL};
static const char *const dropout_attrs[] = {"p", NULL};

static const KilnLayer layers[] = {
    {"dense", dense_attrs, 1, 1, lower_dense},
    {"embedding", embedding_attrs, 1, 1, lower_embedding},
    {"position_embedding", position_attrs, 1, 1, lower_position},
    {"layernorm", layernorm_attrs, 1, 1, lower_layernorm},
    {"lstm", lstm_attrs, 1, 1, lower_lstm},
    {"attention", attention_attrs, 1, 1, lower_attention},
    {"dropout", dropout_attrs, 1, 1, lower_dropout},
};

#define NLAYERS (sizeof layers / sizeof layers[0])

const KilnLayer *kiln_layer_lookup(const char *name) {
  for (size_t i = 0; i < NLAYERS; i++)
    if (strcmp(layers[i].name, name) == 0) return &layers[i];
  return NULL;
}

const char *const *kiln_layer_names(void) {
  static const char *names[NLAYERS + 1];
  for (size_t i = 0; i < NLAYERS; i++) names[i] = layers[i].name;
  return names;
}
