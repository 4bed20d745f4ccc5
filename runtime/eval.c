// Evaluation: the loss and, for classifiers, the accuracy over a data set, and
// the `NAME eval` command.
//
// The loss is the mean of the eval step's loss over every full batch: a padded
// batch would count its padding rows. Accuracy counts every row: the last batch
// is padded and only its real rows are compared. Accuracy applies to models whose
// loss is cross-entropy between an output (logits [..., C]) and an i32 input
// (labels [...]): a position is right when its largest logit (the first, on ties)
// is at the label.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

static bool has_accuracy(const KilnModelDesc *d) {
  const KilnTrainDesc *t = d->train;
  if (!t || t->loss_kind != KILN_ABI_LOSS_CE || t->loss_pred_output < 0 ||
      t->loss_pred_output >= d->noutputs || t->loss_target_input < 0 ||
      t->loss_target_input >= d->ninputs)
    return false;
  const KilnTensorDesc *lo = &d->outputs[t->loss_pred_output];
  const KilnTensorDesc *la = &d->inputs[t->loss_target_input];
  return lo->dtype == KILN_ABI_F32 && la->dtype == KILN_ABI_I32 && lo->rank >= 1 &&
         la->bytes > 0 && lo->bytes == la->bytes * lo->shape[lo->rank - 1];
}

// Correct predictions among the first `rows` rows of the batch in the arena.
static int64_t count_correct(const KilnCtx *c, const int32_t *labels, int64_t rows) {
  const KilnModelDesc *d = c->d;
  const KilnTensorDesc *lo = &d->outputs[d->train->loss_pred_output];
  const KilnTensorDesc *la = &d->inputs[d->train->loss_target_input];
  int64_t classes = lo->shape[lo->rank - 1], per = la->bytes / 4 / d->batch;
  const float *logits = kiln_ctx_output(c, d->train->loss_pred_output);
  int64_t correct = 0;
  for (int64_t p = 0; p < rows * per; p++) {
    const float *v = logits + p * classes;
    int64_t best = 0;
    for (int64_t k = 1; k < classes; k++)
      if (v[k] > v[best]) best = k;
    correct += best == labels[p];
  }
  return correct;
}

int kiln_eval_data(KilnCtx *c, const KilnData *dt, const int64_t *idx, int64_t n,
                   KilnEvalResult *out, KilnStatus *st) {
  const KilnModelDesc *d = c->d;
  bool acc = has_accuracy(d);
  memset(out, 0, sizeof *out);
  int32_t *labels = NULL;
  if (acc) {
    labels = malloc((size_t)d->inputs[d->train->loss_target_input].bytes);
    if (!labels) return kiln_rt_fail(st, "out of memory");
  }
  double sum = 0;
  for (int64_t b0 = 0; b0 < n; b0 += d->batch) {
    int64_t rows = n - b0 < d->batch ? n - b0 : d->batch;
    // Each pass refills the inputs: a plan may reuse an input's memory after its
    // last reader.
    if (rows == d->batch && d->eval_step) {
      kiln_data_fill(dt, c, idx + b0, rows);
      sum += kiln_ctx_eval_step(c);
      out->batches++;
      if (kiln_ctx_check(c, st) != 0) break;
    }
    if (acc) {
      kiln_data_fill(dt, c, idx + b0, rows);
      int t = d->train->loss_target_input;
      memcpy(labels, kiln_ctx_input(c, t), (size_t)d->inputs[t].bytes);
      kiln_ctx_forward(c);
      if (kiln_ctx_check(c, st) != 0) break;
      out->correct += count_correct(c, labels, rows);
      out->total += rows * (d->inputs[t].bytes / 4 / d->batch);
    }
  }
  free(labels);
  out->loss = out->batches ? sum / (double)out->batches : NAN;
  return kiln_ctx_check(c, st);
}

//
// `NAME eval`.
//

// The vocabulary of a text model: the weights file's, else the training text's,
// else (with a warning) the evaluation text's own.
static int eval_vocab(const KilnModelDesc *d, const KilnEvalOpts *o, const char *train_line,
                      KilnVocab *out, bool *found, FILE *f, KilnStatus *st) {
  *found = false;
  if (o->weights) KILN_TRY(kiln_ckpt_vocab(o->weights, out, found, st));
  if (*found || !train_line || strncmp(train_line, "text\t", 5) != 0) return 0;
  KilnData tr;
  KilnStatus ignore = {0};
  if (kiln_data_open(d, train_line, NULL, &tr, &ignore) == 0) {
    *out = tr.vocab;
    *found = true;
    kiln_data_free(&tr);
    return 0;
  }
  fprintf(f, "warning: the weights hold no vocabulary and the training text cannot be read (%s); "
          "the evaluation text's own characters are used\n", ignore.msg);
  return 0;
}

// Which data, and which of its samples: --data (all of it), the model's eval
// source, or the held-out split of its training source.
static int eval_source(const KilnModelDesc *d, const KilnEvalOpts *o, char **out_line,
                       bool *out_split, KilnStatus *st) {
  const KilnTrainDesc *t = d->train;
  *out_split = false;
  if (o->ndata) {
    *out_line = kiln_data_source(d, t->data_eval ? t->data_eval : t->data_train, o->data,
                                 o->ndata, st);
    return *out_line ? 0 : -1;
  }
  if (t->data_eval) return (*out_line = kiln_data_source(d, t->data_eval, NULL, 0, st)) ? 0 : -1;
  if (t->data_train && t->val_split > 0) {
    *out_split = true;
    return (*out_line = kiln_data_source(d, t->data_train, NULL, 0, st)) ? 0 : -1;
  }
  return kiln_rt_fail(st, "no evaluation data: give --data FILE, or set data.eval or "
                      "data.val_split in the model");
}

static void print_result(const KilnModelDesc *d, const KilnEvalResult *r, FILE *f) {
  if (r->batches)
    fprintf(f, "loss      %.6f  (mean over %lld full batches of %lld)\n", r->loss,
            (long long)r->batches, (long long)d->batch);
  else
    fprintf(f, "loss      n/a  (fewer samples than one batch of %lld)\n", (long long)d->batch);
  if (r->total)
    fprintf(f, "accuracy  %.4f  (%lld of %lld)\n", (double)r->correct / (double)r->total,
            (long long)r->correct, (long long)r->total);
}

static int run_eval(KilnCtx *c, const KilnEvalOpts *o, FILE *f, KilnStatus *st) {
  const KilnModelDesc *d = c->d;
  char *line = NULL;
  bool split, found;
  KilnVocab vocab;
  KilnData dt = {0};
  int64_t *idx = NULL, *rest = NULL, n = 0, nrest = 0;
  int rc = eval_source(d, o, &line, &split, st);
  if (rc == 0) rc = eval_vocab(d, o, d->train->data_train, &vocab, &found, f, st);
  if (rc == 0) rc = kiln_data_open(d, line, found ? &vocab : NULL, &dt, st);
  if (rc == 0 && split) rc = kiln_data_split(dt.n, d->train->val_split, d->seed, &rest, &nrest, &idx, &n, st);
  if (rc == 0 && !split) {
    n = dt.n;
    if (!(idx = malloc((size_t)n * sizeof *idx))) rc = kiln_rt_fail(st, "out of memory");
    for (int64_t i = 0; rc == 0 && i < n; i++) idx[i] = i;
  }
  KilnEvalResult r;
  if (rc == 0) rc = kiln_eval_data(c, &dt, idx, n, &r, st);
  if (rc == 0) {
    fprintf(f, "eval %s on %s: %lld samples%s\n", d->name, dt.what, (long long)n,
            split ? " (the held-out validation split)" : "");
    print_result(d, &r, f);
  }
  free(line);
  free(idx);
  free(rest);
  kiln_data_free(&dt);
  return rc;
}

int kiln_eval(const KilnModelDesc *d, const KilnEvalOpts *o, FILE *out, KilnStatus *st) {
  if (!d->train || !d->eval_step)
    return kiln_rt_fail(st, "model '%s' has no loss: there is nothing to evaluate (use infer)",
                        d->name);
  KilnCtx *c = kiln_ctx_create(d, o->threads, st);
  if (!c) return -1;
  int rc = 0;
  if (!c->header)
    rc = kiln_rt_fail(st, "model '%s' was planned without a step header; rebuild it with this kiln",
                      d->name);
  if (rc == 0 && o->weights) rc = kiln_ctx_load(c, o->weights, st);
  if (rc == 0 && !o->weights)
    fprintf(out, "note: no --weights: evaluating the parameters as initialized from seed %llu\n",
            (unsigned long long)d->seed);
  if (rc == 0) rc = run_eval(c, o, out, st);
  kiln_ctx_destroy(c);
  return rc;
}
