// Training: the learning-rate schedule, one step, and the loop behind `NAME train`.
//
// A run is a function of (model, data, seed, options): the data order of an epoch
// comes from the stream (seed, "data.shuffle.EPOCH"), each step's header seed from
// (seed, "step") and the step count, the rate from the schedule and the step count.
// A checkpoint records the step, the epoch and batch within it, and the epoch's
// shuffling state, so a resumed run takes exactly the steps the uninterrupted one
// would have taken (on the same threads count: kernels may split reductions by it).
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

#define PI 3.14159265358979323846

double kiln_train_lr(const KilnTrainDesc *t, double lr, int64_t step, int64_t total) {
  switch (t ? t->schedule : KILN_ABI_SCHED_CONSTANT) {
  case KILN_ABI_SCHED_STEP:
    return t->step_every > 0 ? lr * pow(t->gamma, (double)(step / t->step_every)) : lr;
  case KILN_ABI_SCHED_COSINE: {
    if (step < t->warmup) return lr * (double)(step + 1) / (double)t->warmup;
    if (total <= t->warmup) return lr;
    double p = (double)(step - t->warmup) / (double)(total - t->warmup);
    if (p > 1) p = 1;
    return t->min_lr + 0.5 * (lr - t->min_lr) * (1 + cos(PI * p));
  }
  default:
    return lr;
  }
}

uint64_t kiln_train_step_seed(uint64_t seed, int64_t step) {
  KilnRng r;
  kiln_rng_seed(&r, seed, "step");
  r.state += (uint64_t)step * 0x9E3779B97F4A7C15ull;
  return kiln_rng_next(&r);
}

// Only the fields up to `loss` are written: the padding after it is not the
// runtime's to touch.
static KilnStepHeader *set_header(KilnCtx *c, int training) {
  KilnStepHeader *h = (KilnStepHeader *)c->arena;
  const KilnTrainDesc *t = c->d->train;
  double tt = (double)(c->step + 1);
  h->seed = kiln_train_step_seed(c->seed, c->step);
  // Ranks draw different dropout masks for their different rows.
  if (c->dist) h->seed ^= (uint64_t)c->dist->rank * 0xD1B54A32D192ED03ull;
  h->training = training;
  h->step = (int32_t)c->step;
  h->lr = (float)kiln_train_lr(t, c->lr, c->step, c->total_steps);
  h->grad_scale = 1;
  h->bias1 = t ? (float)(1 - pow(t->beta1, tt)) : 1;
  h->bias2 = t ? (float)(1 - pow(t->beta2, tt)) : 1;
  h->grad_norm = 0;
  h->loss = 0;
  return h;
}

float kiln_ctx_train_step(KilnCtx *c) {
  KilnStepHeader *h = set_header(c, 1);
  kiln_rt_run_step(c, c->d->train_step, "train_step");
  c->step++;
  return h->loss;
}

float kiln_ctx_eval_step(KilnCtx *c) {
  KilnStepHeader *h = set_header(c, 0);
  kiln_rt_run_step(c, c->d->eval_step, "eval_step");
  return h->loss;
}

//
// SIGINT: finish the step, checkpoint, stop. A second ^C kills as usual.
//
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
  if (interrupted) {
    signal(sig, SIG_DFL);
    raise(sig);
  }
  interrupted = 1;
}

//
// The run.
//
typedef struct {
  const KilnModelDesc *d;
  const KilnTrainOpts *o;
  FILE *out, *log;
  KilnCtx *c;
  KilnData train, eval;
  const KilnData *eval_src;     // &eval, &train (the held-out split) or NULL
  int64_t *train_idx, ntrain;   // samples trained on, ascending
  int64_t *eval_idx, neval;
  int64_t *perm;                // this epoch's order of train_idx
  int64_t spe, total, first;    // steps per epoch, to take, taken before this run
  KilnDist *dist;               // the ranks, or NULL: one process
  int rank, size;               // this process's rank (0: writes logs and checkpoints)
  int64_t gbatch;               // rows per step over all ranks
  KilnCkptState cs;             // the data position (epoch, pos, data_rng)
  const char *save;
  int lock_fd;
  int64_t last_ckpt;            // step of the last checkpoint written or loaded; -1: none
  // Progress: since the last printed line, and over the current epoch.
  double t0, tprint, loss_sum, epoch_sum, last_epoch_mean;
  int64_t nprint, epoch_n, print_every;
  bool line_open;               // a progress bar is on screen
  KilnEvalResult ev;
  bool has_ev;
  float lr;                     // the last training step's rate and gradient norm, read
  double grad_norm;             // from the header before an evaluation rewrites it
} Run;

static const char *opt_name(int32_t o) {
  return o == KILN_ABI_ADAM ? "adam" : o == KILN_ABI_ADAMW ? "adamw" : "sgd";
}

static const char *sched_name(int32_t s) {
  return s == KILN_ABI_SCHED_STEP ? "step" : s == KILN_ABI_SCHED_COSINE ? "cosine" : "constant";
}

// The context: initial parameters from the seed, or a checkpoint.
static int setup_ctx(Run *r, KilnStatus *st) {
  const KilnModelDesc *d = r->d;
  const KilnTrainOpts *o = r->o;
  if (!d->train_step || !d->train)
    return kiln_rt_fail(st, "model '%s' has no loss: it can run inference but not train", d->name);
  if (!(r->c = kiln_ctx_create(d, o->threads, st))) return -1;
  if (!r->c->header)
    return kiln_rt_fail(st, "model '%s' was planned without a step header; rebuild it with this kiln",
                        d->name);
  r->save = o->save ? o->save : o->resume;
  if ((o->checkpoint_every || o->stop_after) && !r->save)
    return kiln_rt_fail(st, "--%s needs --save FILE (where the checkpoint goes)",
                        o->checkpoint_every ? "checkpoint-every" : "stop-after");
  if (r->save && r->rank == 0) KILN_TRY(kiln_ckpt_lock(r->save, &r->lock_fd, st));
  if (o->resume) {
    KILN_TRY(kiln_ckpt_load(r->c, o->resume, &r->cs, st));
    if (r->cs.ranks != r->size)
      return kiln_rt_fail(st, "%s was written by a run on %lld rank%s, this one has %d: resume it "
                          "on as many (its batch position counts theirs)", o->resume,
                          (long long)r->cs.ranks, r->cs.ranks == 1 ? "" : "s", r->size);
    if (o->has_seed && o->seed != r->c->seed)
      return kiln_rt_fail(st, "--seed %llu: %s was trained with seed %llu",
                          (unsigned long long)o->seed, o->resume,
                          (unsigned long long)r->c->seed);
    r->last_ckpt = r->c->step;
  } else if (o->has_seed && o->seed != d->seed) {
    r->c->seed = o->seed;
    kiln_ctx_init_params(r->c, o->seed);
  }
  if (o->lr > 0) r->c->lr = o->lr;
  if (r->dist) KILN_TRY(kiln_dist_attach(r->dist, r->c, st));
  return 0;
}

// Training and evaluation data, and the held-out split.
static int setup_data(Run *r, KilnStatus *st) {
  const KilnModelDesc *d = r->d;
  const KilnTrainDesc *t = d->train;
  char *src = kiln_data_source(d, t->data_train, r->o->data, r->o->ndata, st);
  if (!src)
    return st->code ? -1
                    : kiln_rt_fail(st, "no training data: the model file names none; give --data FILE");
  int rc = kiln_data_open(d, src, r->cs.has_vocab ? &r->cs.vocab : NULL, &r->train, st);
  free(src);
  KILN_TRY(rc);
  src = kiln_data_source(d, t->data_eval, r->o->eval_data, r->o->neval, st);
  if (!src && st->code) return -1;
  if (src) {
    rc = kiln_data_open(d, src, r->train.kind == KILN_DATA_TEXT ? &r->train.vocab : NULL, &r->eval, st);
    free(src);
    KILN_TRY(rc);
    r->eval_src = &r->eval;
    r->train_idx = malloc((size_t)r->train.n * sizeof *r->train_idx);
    r->eval_idx = malloc((size_t)r->eval.n * sizeof *r->eval_idx);
    if (!r->train_idx || !r->eval_idx) return kiln_rt_fail(st, "out of memory");
    for (int64_t i = 0; i < r->train.n; i++) r->train_idx[i] = i;
    for (int64_t i = 0; i < r->eval.n; i++) r->eval_idx[i] = i;
    r->ntrain = r->train.n;
    r->neval = r->eval.n;
  } else {
    // The split uses the model file's seed, so --seed never moves samples
    // between the training and the held-out set.
    KILN_TRY(kiln_data_split(r->train.n, t->val_split, d->seed, &r->train_idx, &r->ntrain,
                             &r->eval_idx, &r->neval, st));
    if (r->neval > 0) r->eval_src = &r->train;
  }
  r->spe = r->ntrain / r->gbatch;
  if (r->spe == 0)
    return kiln_rt_fail(st, "%s: %lld training samples, fewer than one batch of %lld%s",
                        r->train.what, (long long)r->ntrain, (long long)r->gbatch,
                        r->size > 1 ? " (every rank's rows)" : "");
  if (r->o->eval_every && !r->eval_src)
    return kiln_rt_fail(st, "--eval-every needs evaluation data: give --eval-data FILE, or set "
                        "data.eval or data.val_split in the model");
  return 0;
}

// Length, position and this epoch's order.
static void epoch_order(Run *r) {
  memcpy(r->perm, r->train_idx, (size_t)r->ntrain * sizeof *r->perm);
  if (r->d->train->shuffle) kiln_data_shuffle(r->perm, r->ntrain, r->cs.data_rng);
}

static int setup_position(Run *r, KilnStatus *st) {
  const KilnTrainOpts *o = r->o;
  const KilnTrainDesc *t = r->d->train;
  if (o->steps) r->total = o->steps;
  else if (o->epochs) r->total = o->epochs * r->spe;
  else if (o->resume) r->total = r->cs.total_steps;
  else if (t->steps) r->total = t->steps;
  else r->total = (t->epochs ? t->epochs : 1) * r->spe;
  r->c->total_steps = r->total;
  if (o->resume) {
    if (r->cs.samples != r->ntrain || r->cs.pos >= r->spe)
      return kiln_rt_fail(st, "%s was trained on %lld samples per epoch, this data has %lld: resume "
                          "with the same data", o->resume, (long long)r->cs.samples,
                          (long long)r->ntrain);
  } else {
    r->cs.data_rng = kiln_data_epoch_rng(r->c->seed, 0);
  }
  r->cs.samples = r->ntrain;
  r->cs.ranks = r->size;
  r->cs.has_vocab = r->train.kind == KILN_DATA_TEXT;
  r->cs.vocab = r->train.vocab;
  r->first = r->c->step;
  if (!(r->perm = malloc((size_t)r->ntrain * sizeof *r->perm))) return kiln_rt_fail(st, "out of memory");
  epoch_order(r);
  return 0;
}

// A resumed run continues its log from the checkpoint's step: rows a crashed run
// wrote after its last checkpoint are dropped, as those steps are taken again.
static int trim_log(Run *r, KilnStatus *st) {
  FILE *f = fopen(r->o->log, "r");
  if (!f) return 0;
  char *text = NULL;
  size_t cap = 0, len = 0;
  for (;;) {
    if (len + 4096 > cap) {
      char *t = realloc(text, cap = 2 * cap + 8192);
      if (!t) {
        free(text);
        fclose(f);
        return kiln_rt_fail(st, "%s: out of memory", r->o->log);
      }
      text = t;
    }
    size_t n = fread(text + len, 1, cap - len - 1, f);
    if (n == 0) break;
    len += n;
  }
  fclose(f);
  text[len] = '\0';
  size_t keep = 0;
  for (char *line = text; *line;) {
    char *nl = strchr(line, '\n');
    if (!nl) break;  // a torn last row
    long long step = strtoll(line, NULL, 10);
    if (line != text && (step < 1 || step > r->first)) break;
    line = nl + 1;
    keep = (size_t)(line - text);
  }
  int rc = 0;
  if (keep < len) {
    f = fopen(r->o->log, "w");
    if (!f || fwrite(text, 1, keep, f) != keep) rc = kiln_rt_fail(st, "cannot write %s", r->o->log);
    if (f && fclose(f) != 0 && rc == 0) rc = kiln_rt_fail(st, "cannot write %s", r->o->log);
  }
  free(text);
  return rc;
}

static int open_log(Run *r, KilnStatus *st) {
  if (!r->o->log || r->rank != 0) return 0;
  if (r->o->resume) KILN_TRY(trim_log(r, st));
  r->log = fopen(r->o->log, r->o->resume ? "a" : "w");
  if (!r->log) return kiln_rt_fail(st, "cannot write %s", r->o->log);
  fseek(r->log, 0, SEEK_END);
  if (ftell(r->log) == 0)
    fprintf(r->log, "step,epoch,loss,lr,grad_norm,samples_per_s%s\n",
            r->eval_src ? ",val_loss,val_acc" : "");
  return 0;
}

static void start_line(Run *r) {
  const KilnModelDesc *d = r->d;
  FILE *f = r->out;
  if (r->o->quiet) return;
  fprintf(f, "training %s on %s: %lld samples", d->name, r->train.what, (long long)r->ntrain);
  if (r->eval_src == &r->train) fprintf(f, " (%lld more held out for validation)", (long long)r->neval);
  else if (r->eval_src) fprintf(f, ", evaluating on %s (%lld samples)", r->eval.what, (long long)r->neval);
  int64_t drop = r->ntrain - r->spe * r->gbatch;
  fprintf(f, "; batch %lld, %lld steps per epoch", (long long)r->gbatch, (long long)r->spe);
  if (r->size > 1)
    fprintf(f, "\n  %d ranks over %s, %lld rows each%s", r->size, r->dist->ops->name,
            (long long)d->batch, r->dist->shard ? ", optimizer state sharded" : "");
  if (drop) fprintf(f, " (the last %lld samples of each epoch, a partial batch, are left out)", (long long)drop);
  fprintf(f, "\n  %lld steps (%.4g epochs); %s, %s schedule, lr %g; seed %llu", (long long)r->total,
          (double)r->total / (double)r->spe, opt_name(d->train->optimizer),
          sched_name(d->train->schedule), r->c->lr, (unsigned long long)r->c->seed);
  if (r->o->resume) fprintf(f, "; resuming at step %lld from %s", (long long)r->first, r->o->resume);
  fprintf(f, "\n");
  fflush(f);
}

static void fmt_eta(double s, char *buf, size_t len) {
  if (!isfinite(s) || s < 0) s = 0;
  long t = (long)(s + 0.5);
  if (t >= 3600) snprintf(buf, len, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else snprintf(buf, len, "%ld:%02ld", t / 60, t % 60);
}

// A plain line, or the bar redrawn in place.
static void progress(Run *r, bool force) {
  if (r->o->quiet || r->nprint == 0) return;
  double now = kiln_now();
  int64_t step = r->c->step;
  if (r->o->bar ? !force && now - r->tprint < 0.1 : !force && step % r->print_every != 0) return;
  double rate = (double)(r->nprint * r->gbatch) / fmax(now - r->tprint, 1e-9);
  double per_step = (now - r->t0) / (double)(step - r->first);
  char eta[32];
  fmt_eta(per_step * (double)(r->total - step), eta, sizeof eta);
  double loss = r->loss_sum / (double)r->nprint;
  if (r->o->bar) {
    char bar[21];
    int fill = (int)(20 * step / r->total);
    for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
    bar[20] = '\0';
    fprintf(r->out, "\r\033[K%lld/%lld [%s] loss %.4f  lr %.3g  %.0f samples/s  ETA %s",
            (long long)step, (long long)r->total, bar, loss, (double)r->lr, rate, eta);
    r->line_open = true;
  } else {
    fprintf(r->out, "step %lld/%lld  epoch %lld  loss %.6f  lr %.4g  %.0f samples/s  ETA %s\n",
            (long long)step, (long long)r->total, (long long)r->cs.epoch + (r->cs.pos > 0),
            loss, (double)r->lr, rate, eta);
  }
  fflush(r->out);
  r->tprint = now;
  r->loss_sum = 0;
  r->nprint = 0;
}

// Ends the progress bar's line before other output.
static void break_line(Run *r) {
  if (r->line_open) fputc('\n', r->out);
  r->line_open = false;
}

static void report_eval(Run *r, FILE *f, const char *prefix) {
  if (r->ev.batches) fprintf(f, "%seval loss %.6f", prefix, r->ev.loss);
  else fprintf(f, "%seval loss n/a (fewer samples than a batch)", prefix);
  if (r->ev.total)
    fprintf(f, ", accuracy %.4f (%lld of %lld)", (double)r->ev.correct / (double)r->ev.total,
            (long long)r->ev.correct, (long long)r->ev.total);
}

// With ranks, each evaluates a contiguous share of the batches and the sums are
// combined: the same loss (mean over full batches) and accuracy as one process.
static int evaluate(Run *r, KilnStatus *st) {
  if (!r->dist) {
    KILN_TRY(kiln_eval_data(r->c, r->eval_src, r->eval_idx, r->neval, &r->ev, st));
  } else {
    int64_t b = r->d->batch, nb = (r->neval + b - 1) / b;
    int64_t lo = nb * r->rank / r->size * b, hi = nb * (r->rank + 1) / r->size * b;
    if (hi > r->neval) hi = r->neval;
    KilnEvalResult e = {0};
    if (hi > lo) KILN_TRY(kiln_eval_data(r->c, r->eval_src, r->eval_idx + lo, hi - lo, &e, st));
    double v[4] = {e.batches ? e.loss * (double)e.batches : 0, (double)e.batches,
                   (double)e.correct, (double)e.total};
    KILN_TRY(kiln_dist_sum(r->dist, v, 4, st));
    r->ev = (KilnEvalResult){v[1] > 0 ? v[0] / v[1] : NAN, (int64_t)v[1], (int64_t)v[2],
                             (int64_t)v[3]};
  }
  r->has_ev = true;
  if (r->o->quiet) return 0;
  break_line(r);
  report_eval(r, r->out, "");
  fprintf(r->out, " at step %lld\n", (long long)r->c->step);
  return 0;
}

static void log_row(Run *r, int64_t epoch, float loss, double secs, bool evaluated) {
  if (!r->log) return;
  fprintf(r->log, "%lld,%lld,%.9g,%.9g,", (long long)r->c->step, (long long)epoch + 1,
          (double)loss, (double)r->lr);
  if (r->d->train->clip_grad_norm > 0) fprintf(r->log, "%.9g", r->grad_norm);
  fprintf(r->log, ",%.1f", (double)r->gbatch / fmax(secs, 1e-9));
  if (r->eval_src) {
    fputc(',', r->log);
    if (evaluated && r->ev.batches) fprintf(r->log, "%.9g", r->ev.loss);
    fputc(',', r->log);
    if (evaluated && r->ev.total)
      fprintf(r->log, "%.9g", (double)r->ev.correct / (double)r->ev.total);
  }
  fputc('\n', r->log);
}

// The log's rows so far reach the file, or the run stops: a full disk must not
// silently cost the record of a run.
static int flush_log(Run *r, KilnStatus *st) {
  if (r->log && (fflush(r->log) != 0 || ferror(r->log)))
    return kiln_rt_fail(st, "cannot write %s: %s", r->o->log, strerror(errno));
  return 0;
}

// With ranks: every rank's weights must be the same bits; rank 0 gathers the
// sharded optimizer state and writes the file.
static int checkpoint(Run *r, KilnStatus *st) {
  KILN_TRY(flush_log(r, st));
  if (r->dist) {
    KILN_TRY(kiln_dist_check_same(r->dist, st));
    KILN_TRY(kiln_dist_gather_state(r->dist, st));
  }
  if (r->rank == 0) KILN_TRY(kiln_ckpt_save(r->c, r->save, &r->cs, st));
  if (r->dist && r->rank == 0) kiln_dist_drop_state(r->dist);
  r->last_ckpt = r->c->step;
  return 0;
}

static int diverged(Run *r, float loss, KilnStatus *st) {
  char kept[600];
  if (!r->save) snprintf(kept, sizeof kept, "nothing was saved (no --save)");
  else if (r->last_ckpt < 0) snprintf(kept, sizeof kept, "no checkpoint had been written yet");
  else snprintf(kept, sizeof kept, "the last good checkpoint, of step %lld, is kept in %s",
                (long long)r->last_ckpt, r->save);
  return kiln_rt_fail(st, "step %lld: the loss is %s; training stopped (try a lower --lr or "
                      "clip_grad_norm); %s", (long long)r->c->step,
                      isnan(loss) ? "NaN" : "infinite", kept);
}

// After a step: next batch position, log, evaluation, checkpoint.
static int after_step(Run *r, float loss, double secs, KilnStatus *st) {
  const KilnTrainOpts *o = r->o;
  int64_t epoch = r->cs.epoch, step = r->c->step;
  if (!isfinite(loss)) return diverged(r, loss, st);
  r->loss_sum += loss, r->nprint++;
  r->epoch_sum += loss, r->epoch_n++;
  if (++r->cs.pos == r->spe) {
    r->last_epoch_mean = r->epoch_sum / (double)r->epoch_n;
    r->epoch_sum = 0, r->epoch_n = 0;
    r->cs.pos = 0;
    r->cs.data_rng = kiln_data_epoch_rng(r->c->seed, ++r->cs.epoch);
    epoch_order(r);
  }
  bool ev = r->eval_src && ((o->eval_every && step % o->eval_every == 0) || step == r->total);
  if (ev) KILN_TRY(evaluate(r, st));
  log_row(r, epoch, loss, secs, ev);
  progress(r, step == r->total);
  if (o->checkpoint_every && step % o->checkpoint_every == 0 && step < r->total)
    KILN_TRY(checkpoint(r, st));
  return 0;
}

static int summary(Run *r, KilnStatus *st) {
  double secs = kiln_now() - r->t0;
  int64_t steps = r->c->step - r->first;
  KILN_TRY(r->save ? checkpoint(r, st) : flush_log(r, st));
  if (r->dist && !r->save) KILN_TRY(kiln_dist_check_same(r->dist, st));
  if (r->rank != 0) return 0;
  break_line(r);
  FILE *f = r->out;
  double mean = r->epoch_n ? r->epoch_sum / (double)r->epoch_n : r->last_epoch_mean;
  fprintf(f, "done: %lld steps (to step %lld) in %.2f s, %.0f samples/s; training loss %.6f "
          "(mean of the last %s)", (long long)steps, (long long)r->c->step, secs,
          (double)(steps * r->gbatch) / fmax(secs, 1e-9), mean,
          r->epoch_n ? "partial epoch" : "epoch");
  if (r->has_ev) report_eval(r, f, "; ");
  if (r->dist && r->c->cuda)
    fprintf(f, "; %d ranks, gradients averaged by NCCL", r->size);
  else if (r->dist)
    fprintf(f, "; %d ranks, rank 0 waited %.2f s for gradient sums", r->size, r->dist->comm_s);
  if (r->save) fprintf(f, "; saved %s", r->save);
  else fprintf(f, "; not saved (no --save)");
  fprintf(f, "\n");
  fflush(f);
  return 0;
}

static int loop(Run *r, KilnStatus *st) {
  const KilnTrainOpts *o = r->o;
  r->t0 = r->tprint = kiln_now();
  r->print_every = o->print_every > 0 ? o->print_every : r->total / 20 > 0 ? r->total / 20 : 1;
  while (r->c->step < r->total) {
    double t = kiln_now();
    int64_t at = r->cs.pos * r->gbatch + (int64_t)r->rank * r->d->batch;
    kiln_data_fill(&r->train, r->c, r->perm + at, r->d->batch);
    float loss = kiln_ctx_train_step(r->c);
    KILN_TRY(kiln_ctx_check(r->c, st));
    if (r->dist) {
      bool stop = interrupted;
      KILN_TRY(kiln_dist_agree(r->dist, &loss, &stop, st));
      interrupted = stop;
    }
    const KilnStepHeader *h = (const KilnStepHeader *)r->c->arena;
    r->lr = h->lr;
    r->grad_norm = h->grad_norm;
    KILN_TRY(after_step(r, loss, kiln_now() - t, st));
    if (interrupted) {
      break_line(r);
      if (!r->save) {
        kiln_rt_fail(st, "interrupted after step %lld of %lld; nothing saved (no --save)",
                     (long long)r->c->step, (long long)r->total);
        return KILN_TRAIN_INTERRUPTED;
      }
      KILN_TRY(checkpoint(r, st));
      kiln_rt_fail(st, "interrupted after step %lld of %lld; checkpoint written to %s (continue "
                   "with --resume %s)", (long long)r->c->step, (long long)r->total, r->save, r->save);
      return KILN_TRAIN_INTERRUPTED;
    }
    if (o->stop_after && r->c->step - r->first == o->stop_after && r->c->step < r->total) {
      KILN_TRY(checkpoint(r, st));
      break_line(r);
      if (r->rank == 0)
        fprintf(r->out, "stopped after %lld steps, at step %lld of %lld; continue with --resume %s\n",
              (long long)o->stop_after, (long long)r->c->step, (long long)r->total, r->save);
      return 0;
    }
  }
  return summary(r, st);
}

static void run_free(Run *r) {
  if (r->log) fclose(r->log);
  if (r->lock_fd >= 0) kiln_ckpt_unlock(r->save, r->lock_fd);
  kiln_data_free(&r->train);
  kiln_data_free(&r->eval);
  free(r->train_idx);
  free(r->eval_idx);
  free(r->perm);
  kiln_ctx_destroy(r->c);
}

int kiln_train(const KilnModelDesc *d, const KilnTrainOpts *o, FILE *out, KilnStatus *st) {
  Run r = {.d = d, .o = o, .out = out, .lock_fd = -1, .last_ckpt = -1, .dist = o->dist,
           .rank = o->dist ? o->dist->rank : 0, .size = o->dist ? o->dist->size : 1};
  r.gbatch = d->batch * r.size;
  int rc = setup_ctx(&r, st);
  if (rc == 0) rc = setup_data(&r, st);
  if (rc == 0) rc = setup_position(&r, st);
  if (rc == 0 && r.c->step >= r.total) {
    if (r.rank == 0)
      fprintf(out, "already at step %lld of %lld: nothing to do (give a larger --steps or "
            "--epochs)\n", (long long)r.c->step, (long long)r.total);
    run_free(&r);
    return 0;
  }
  if (rc == 0) rc = open_log(&r, st);
  if (rc == 0 && o->profile) rc = kiln_rt_profile_begin(r.c, o->profile, st);
  if (rc == 0) {
    start_line(&r);
    struct sigaction sa = {.sa_handler = on_sigint, .sa_flags = 0}, old;
    sigemptyset(&sa.sa_mask);
    interrupted = 0;
    sigaction(SIGINT, &sa, &old);
    rc = loop(&r, st);
    sigaction(SIGINT, &old, NULL);
    KilnStatus pst = {0};
    if (kiln_rt_profile_end(r.c, &pst) != 0 && rc == 0) rc = -1, *st = pst;
    if (rc != 0) break_line(&r);
  }
  if (rc != 0 && r.log) fflush(r.log);
  run_free(&r);
  return rc;
}
