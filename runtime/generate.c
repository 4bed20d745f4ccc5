// Text generation with a language model's sub-models (include/kiln/abi.h):
// decode runs one token per step against its state (key/value caches, LSTM h and
// c) kept in its arena; window recomputes the whole context for every token, the
// baseline the cache is checked and measured against.
//
// Decode positions run 0..context-1. When the caches are full the state restarts
// on the last context/2 tokens, fed again one by one; the window model instead
// slides by one token. Both see the same tokens until the context first fills,
// so their greedy outputs agree up to there.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

struct KilnGen {
  KilnCtx *c;             // a view of the model's context onto the sub-model
  const KilnModelDesc *d; // decode or window
  bool window;
  int tok, pos;           // input indices: the token(s), the position (decode)
  int64_t limit;          // decode: positions the state holds (INT64_MAX: unbounded)
  int64_t next;           // decode: the position of the next token fed
  int64_t vocab;          // logits per position
  int32_t *hist;          // every token so far
  int64_t n, cap;
  double *prob;           // [vocab]: sampling scratch
  float *sorted;          // [vocab]: top-k scratch
};

static int find_inputs(KilnGen *g, KilnStatus *st) {
  const KilnModelDesc *d = g->d;
  g->tok = g->pos = -1;
  for (int i = 0; i < d->ninputs; i++) {
    const KilnTensorDesc *t = &d->inputs[i];
    if (t->flags & KILN_ABI_STATE) continue;
    if (!g->window && strcmp(t->name, "decode.position") == 0) g->pos = i;
    else if (g->tok < 0 && t->dtype == KILN_ABI_I32 && (t->flags & KILN_ABI_LIVE)) g->tok = i;
  }
  const KilnTensorDesc *out = d->noutputs ? &d->outputs[0] : NULL;
  if (g->tok < 0 || (!g->window && g->pos < 0) || !out || out->rank != 3)
    return kiln_rt_fail(st, "model '%s': its generation model lacks a token input or logits",
                        d->name);
  g->vocab = out->shape[2];
  // Without a live position (an LSTM) the state has no length limit.
  g->limit = !g->window && (d->inputs[g->pos].flags & KILN_ABI_LIVE) ? d->context : INT64_MAX;
  if (g->limit < 2) return kiln_rt_fail(st, "model '%s': a context of %lld positions is too short",
                                        d->name, (long long)g->limit);
  return 0;
}

KilnGen *kiln_gen_create(KilnCtx *c, bool window, KilnStatus *st) {
  const KilnModelDesc *sub = window ? c->d->window : c->d->decode;
  if (!sub) {
    kiln_rt_fail(st, "model '%s' cannot generate text: it is not a language model (an i32 token "
                 "input [batch, time] read by an embedding, logits [batch, time, vocab] first), "
                 "or its layers cannot run one token at a time (kiln build said why)", c->d->name);
    return NULL;
  }
  KilnGen *g = calloc(1, sizeof *g);
  if (!g) return kiln_rt_fail(st, "out of memory"), NULL;
  g->d = sub;
  g->window = window;
  if (find_inputs(g, st) != 0 || !(g->c = kiln_ctx_create_view(sub, c, st))) {
    free(g);
    return NULL;
  }
  g->prob = malloc((size_t)g->vocab * sizeof *g->prob);
  g->sorted = malloc((size_t)g->vocab * sizeof *g->sorted);
  if (!g->prob || !g->sorted) {
    kiln_gen_destroy(g);
    kiln_rt_fail(st, "out of memory");
    return NULL;
  }
  return g;
}

void kiln_gen_destroy(KilnGen *g) {
  if (!g) return;
  kiln_ctx_destroy(g->c);
  free(g->hist);
  free(g->prob);
  free(g->sorted);
  free(g);
}

KilnCtx *kiln_gen_ctx(KilnGen *g) { return g->c; }

// Decode: zero every state tensor; the next token goes to position 0.
static void reset(KilnGen *g) {
  kiln_ctx_state_reset(g->c);
  g->next = 0;
}

// Decode: one token in, its logits out (the decode model's output).
static void feed(KilnGen *g, int32_t id) {
  if (g->next == g->limit) {  // full: restart on the last limit/2 tokens
    int64_t keep = g->limit / 2;
    reset(g);
    for (int64_t i = g->n - keep; i < g->n; i++) feed(g, g->hist[i]);
  }
  *(int32_t *)kiln_ctx_input(g->c, g->tok) = id;
  *(int32_t *)kiln_ctx_input(g->c, g->pos) = (int32_t)g->next++;
  kiln_ctx_forward(g->c);
}

// Window: the logits after the last min(n, T) tokens.
static const float *window_logits(KilnGen *g) {
  const KilnTensorDesc *t = &g->d->inputs[g->tok];
  int64_t T = t->shape[1], len = g->n < T ? g->n : T;
  int32_t *in = kiln_ctx_input(g->c, g->tok);
  memcpy(in, g->hist + g->n - len, (size_t)len * sizeof *in);
  memset(in + len, 0, (size_t)(T - len) * sizeof *in);  // causal: never read for row len - 1
  kiln_ctx_forward(g->c);
  return (const float *)kiln_ctx_output(g->c, 0) + (len - 1) * g->vocab;
}

static int by_value_desc(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x < y) - (x > y);
}

// The next token: the argmax at temperature 0 (the lowest id on ties); else a draw
// from softmax(logits / temperature) over the top_k largest logits (every logit
// equal to the k-th is kept too).
static int32_t sample(KilnGen *g, const float *logits, const KilnSampling *s, KilnRng *rng) {
  int64_t v = g->vocab, best = 0;
  for (int64_t i = 1; i < v; i++)
    if (logits[i] > logits[best]) best = i;
  if (s->temperature <= 0) return (int32_t)best;
  float cut = -INFINITY;
  if (s->top_k > 0 && s->top_k < v) {
    memcpy(g->sorted, logits, (size_t)v * sizeof *g->sorted);
    qsort(g->sorted, (size_t)v, sizeof *g->sorted, by_value_desc);
    cut = g->sorted[s->top_k - 1];
  }
  double sum = 0;
  for (int64_t i = 0; i < v; i++) {
    g->prob[i] = logits[i] >= cut ? exp((logits[i] - logits[best]) / s->temperature) : 0;
    sum += g->prob[i];
  }
  double u = kiln_rng_uniform(rng) * sum;
  for (int64_t i = 0; i < v; i++) {
    if (g->prob[i] > 0 && (u -= g->prob[i]) < 0) return (int32_t)i;
  }
  return (int32_t)best;  // rounding left u at the end: the most likely token
}

int kiln_gen_run(KilnGen *g, const int32_t *prompt, int64_t nprompt, int64_t count,
                 const KilnSampling *s, void (*emit)(int32_t id, void *user), void *user,
                 KilnStatus *st) {
  if (nprompt < 1) return kiln_rt_fail(st, "generation needs a prompt of at least one token");
  for (int64_t i = 0; i < nprompt; i++)
    if (prompt[i] < 0 || prompt[i] >= g->vocab)
      return kiln_rt_fail(st, "prompt token %lld is %d, outside the vocabulary [0, %lld)",
                          (long long)i, prompt[i], (long long)g->vocab);
  if (count < 0 || nprompt > INT64_MAX / 4 - count) return kiln_rt_fail(st, "too many tokens");
  if (nprompt + count > g->cap) {
    int32_t *h = realloc(g->hist, (size_t)(nprompt + count) * sizeof *h);
    if (!h) return kiln_rt_fail(st, "out of memory for %lld tokens", (long long)(nprompt + count));
    g->hist = h, g->cap = nprompt + count;
  }
  KilnRng rng;
  kiln_rng_seed(&rng, s->seed, "generate");
  g->n = 0;
  if (!g->window) reset(g);
  for (int64_t i = 0; i < nprompt; i++) {
    if (!g->window) feed(g, prompt[i]);
    KILN_TRY(kiln_ctx_check(g->c, st));
    g->hist[g->n++] = prompt[i];
  }
  for (int64_t k = 0; k < count; k++) {
    const float *logits = g->window ? window_logits(g) : kiln_ctx_output(g->c, 0);
    KILN_TRY(kiln_ctx_check(g->c, st));
    int32_t id = sample(g, logits, s, &rng);
    if (emit) emit(id, user);
    if (!g->window && k + 1 < count) feed(g, id);
    g->hist[g->n++] = id;
  }
  return kiln_ctx_check(g->c, st);
}

// The vocabulary: from the weights file's metadata (train writes it), else the
// sorted set of bytes of the model's training text, as train builds it.
int kiln_gen_vocab(const KilnModelDesc *d, const char *weights, KilnVocab *out, KilnStatus *st) {
  bool found = false;
  if (weights) KILN_TRY(kiln_ckpt_vocab(weights, out, &found, st));
  if (found) return 0;
  const char *line = d->train ? d->train->data_train : NULL;
  if (!line || strncmp(line, "text\t", 5) != 0)
    return kiln_rt_fail(st, "no vocabulary: %s and the model names no training text; give "
                        "weights that train wrote from text (they carry it)",
                        weights ? "the weights file holds none" : "no weights were given");
  KilnData dt;
  char *src = kiln_data_source(d, line, NULL, 0, st);
  if (!src) return -1;
  int rc = kiln_data_open(d, src, NULL, &dt, st);
  free(src);
  KILN_TRY(rc);
  *out = dt.vocab;
  kiln_data_free(&dt);
  return 0;
}

// Bytes of text as ids; a byte outside the vocabulary is an error naming it.
int kiln_gen_encode(const KilnVocab *v, const char *text, int32_t *ids, KilnStatus *st) {
  for (size_t i = 0; text[i]; i++) {
    unsigned char b = (unsigned char)text[i];
    if (v->id[b] < 0) {
      char shown[16];
      if (b >= 0x20 && b < 0x7f) snprintf(shown, sizeof shown, "'%c'", b);
      else snprintf(shown, sizeof shown, "byte 0x%02x", b);
      return kiln_rt_fail(st, "the prompt's %s at offset %zu is not in the model's vocabulary "
                          "(%d characters of its training text)", shown, i, v->n);
    }
    ids[i] = v->id[b];
  }
  return 0;
}
