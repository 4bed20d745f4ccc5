// Runtime training: learning-rate schedules computed by hand, step seeds,
// checkpoints (round trip, metadata, refusals, NaN never written), the trainer's
// lock, and the loop itself on a hand-written model whose train_step is a small C
// function: linear regression by SGD with momentum, plus a "dropout" term drawn
// from the header's seed. With it: a resumed run equals the uninterrupted one bit
// for bit (after --stop-after and after SIGINT), a NaN loss stops training and
// keeps the last good checkpoint, evaluation counts full batches for the loss and
// every row for accuracy, and the library's train_step and state files.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime.h"
#include "tests/fixtures.h"
#include "tests/helpers.h"

static char dir[64];

#define P(name) kiln_test_join(dir, (name))

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open %s", path);
  static char buf[4][1 << 16];
  static int k;
  k = (k + 1) % 4;
  size_t n = fread(buf[k], 1, sizeof buf[k] - 1, f);
  buf[k][n] = '\0';
  fclose(f);
  return buf[k];
}

#define EXPECT_ERROR(rc, st, frag)                                                     \
  do {                                                                               \
    int rc__ = (rc);                                                                 \
    if (rc__ == 0 || (st).code != 1 || !strstr((st).msg, (frag)))                    \
      fail_msg("rc %d, message '%s'; expected a message containing '%s'", rc__,      \
               (st).msg, (frag));                                                    \
  } while (0)

#define EXPECT_OK(rc, st)                                           \
  do {                                                            \
    if ((rc) != 0) fail_msg("unexpected error: %s", (st).msg);     \
  } while (0)

//
// The model: pred = x . w + b, loss = mean (pred - y)^2, SGD with momentum 0.9
// (state v), gradients clipped to norm 10. The arena holds the header, then x
// [B, 2], y [B], pred [B].
//
enum { B = 4, OX = 64, OY = OX + B * 8, OP = OY + B * 4, ARENA = OP + B * 4 };

// The weights w, b and their momentum are tests/fixtures.h's kiln_fake_params
// and kiln_fake_opt.
static const KilnTensorDesc inputs[] = {
    {.name = "x", .dtype = KILN_ABI_F32, .rank = 2, .shape = {B, 2}, .offset = OX, .bytes = B * 8,
     .flags = KILN_ABI_LIVE},
    {.name = "y", .dtype = KILN_ABI_F32, .rank = 1, .shape = {B}, .offset = OY, .bytes = B * 4},
};
static const KilnTensorDesc outputs[] = {
    {.name = "pred", .dtype = KILN_ABI_F32, .rank = 1, .shape = {B}, .offset = OP, .bytes = B * 4},
};

static int64_t raise_at = -1, nan_at = -1;  // header steps at which the step misbehaves

static void fake_forward(char *weights, char *arena, void *rt) {
  (void)rt;
  const float *w = (const float *)weights, *x = (const float *)(arena + OX);
  float *pred = (float *)(arena + OP);
  for (int r = 0; r < B; r++) pred[r] = w[0] * x[2 * r] + w[1] * x[2 * r + 1] + w[2];
}

static float fake_loss(char *weights, char *arena, float g[3]) {
  fake_forward(weights, arena, NULL);
  const float *x = (const float *)(arena + OX), *y = (const float *)(arena + OY);
  const float *pred = (const float *)(arena + OP);
  float loss = 0;
  g[0] = g[1] = g[2] = 0;
  for (int r = 0; r < B; r++) {
    float e = pred[r] - y[r];
    loss += e * e / B;
    g[0] += 2 * e * x[2 * r] / B;
    g[1] += 2 * e * x[2 * r + 1] / B;
    g[2] += 2 * e / B;
  }
  return loss;
}

static void fake_train(char *weights, char *arena, void *rt) {
  (void)rt;
  KilnStepHeader *h = (KilnStepHeader *)arena;
  float *w = (float *)weights, *v = (float *)(weights + 12), g[3];
  float loss = fake_loss(weights, arena, g);
  // A seeded perturbation, as dropout would make: resuming must reproduce seeds.
  g[0] += (float)((h->seed >> 40) & 0xffff) / 65536.0f * 1e-3f;
  h->grad_norm = sqrt((double)g[0] * g[0] + (double)g[1] * g[1] + (double)g[2] * g[2]);
  h->grad_scale = h->grad_norm > 10 ? (float)(10 / h->grad_norm) : 1;
  for (int i = 0; i < 3; i++) {
    v[i] = 0.9f * v[i] + g[i] * h->grad_scale;
    w[i] -= h->lr * v[i];
  }
  h->loss = h->step == nan_at ? NAN : loss;
  if (h->step == raise_at) raise(SIGINT);
}

static void fake_eval(char *weights, char *arena, void *rt) {
  (void)rt;
  float g[3];
  ((KilnStepHeader *)arena)->loss = fake_loss(weights, arena, g);
}

static KilnTrainDesc train_desc = {
    .optimizer = KILN_ABI_SGD, .schedule = KILN_ABI_SCHED_COSINE, .lr = 0.05, .momentum = 0.9,
    .warmup = 3, .min_lr = 0.001, .steps = 20, .shuffle = 1, .val_split = 0.2,
    .clip_grad_norm = 10, .loss_kind = KILN_ABI_LOSS_MSE, .loss_pred_output = 0,
    .loss_target_input = 1};

static const KilnModelDesc fake = {
    .abi_version = KILN_ABI_VERSION, .name = "fake", .kiln_version = "test", .target = "cpu",
    .seed = 42, .batch = B, .weights_bytes = 12, .arena_bytes = ARENA, .nparams = 2, .ninputs = 2,
    .noutputs = 1, .params = kiln_fake_params, .inputs = inputs, .outputs = outputs,
    .forward = fake_forward, .train_step = fake_train, .eval_step = fake_eval, .opt_bytes = 12,
    .nopt = 2, .opt = kiln_fake_opt, .train = &train_desc};

// 23 rows of y = 2 x0 - x1 + 0.5 + noise: 5 held out (val_split 0.2), 18 to train
// on, 4 steps per epoch and two samples left over.
static void write_data(void) {
  FILE *f = fopen(P("d.csv"), "w");
  KilnRng r;
  kiln_rng_seed(&r, 1, "data");
  for (int i = 0; i < 23; i++) {
    double a = kiln_rng_normal(&r), b = kiln_rng_normal(&r);
    fprintf(f, "%.6f,%.6f,%.6f\n", a, b, 2 * a - b + 0.5 + 0.01 * kiln_rng_normal(&r));
  }
  fclose(f);
  static char line[600];
  snprintf(line, sizeof line, "csv\t%s\t0\tx:0:2\ty:2:3", P("d.csv"));
  train_desc.data_train = line;
}

static KilnTrainOpts opts(void) { return (KilnTrainOpts){.threads = 1}; }

static int train(const KilnTrainOpts *o, KilnStatus *st) {
  FILE *out = fopen(P("out.txt"), "w");
  *st = (KilnStatus){0};
  int rc = kiln_train(&fake, o, out, st);
  fclose(out);
  return rc;
}

// The log without the samples_per_s column (a timing).
static char *log_values(const char *path) {
  char *text = slurp(path);
  static char out[2][1 << 16];
  static int k;
  k = (k + 1) % 2;
  size_t at = 0;
  for (char *line = text; *line;) {
    char *nl = strchr(line, '\n');
    size_t len = nl ? (size_t)(nl - line) : strlen(line);
    int field = 0;
    for (size_t i = 0; i < len; i++) {
      if (line[i] == ',') field++;
      if (field != 5) out[k][at++] = line[i];
    }
    out[k][at++] = '\n';
    line += len + (nl != NULL);
  }
  out[k][at] = '\0';
  return out[k];
}

static void expect_same_tensors(const char *a, const char *b) {
  KilnStatus st = {0};
  KilnStFile fa, fb;
  EXPECT_OK(kiln_st_read(a, &fa, &st), st);
  EXPECT_OK(kiln_st_read(b, &fb, &st), st);
  assert_int_equal(fa.n, 4);
  assert_int_equal(fb.n, 4);
  assert_int_equal(fa.data_len, fb.data_len);
  assert_memory_equal(fa.data, fb.data, (size_t)fa.data_len);
  kiln_st_free(&fa);
  kiln_st_free(&fb);
}

static const char *meta(const char *path, const char *key) {
  KilnStatus st = {0};
  KilnStFile f;
  EXPECT_OK(kiln_st_read(path, &f, &st), st);
  static char val[256];
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = f.metadata_json ? strstr(f.metadata_json, pat) : NULL;
  val[0] = '\0';
  if (p) {
    p += strlen(pat);
    size_t n = strcspn(p, "\"");
    snprintf(val, sizeof val, "%.*s", (int)n, p);
  }
  kiln_st_free(&f);
  return val;
}

//
// Schedules and seeds
//
static void test_schedules(void **state) {
  (void)state;
  KilnTrainDesc t = {.schedule = KILN_ABI_SCHED_CONSTANT};
  assert_true(kiln_train_lr(&t, 0.5, 0, 100) == 0.5);
  assert_true(kiln_train_lr(&t, 0.5, 99, 100) == 0.5);
  assert_true(kiln_train_lr(NULL, 0.5, 7, 0) == 0.5);
  // step: every 3 steps times 0.5.
  t = (KilnTrainDesc){.schedule = KILN_ABI_SCHED_STEP, .step_every = 3, .gamma = 0.5};
  assert_true(kiln_train_lr(&t, 1, 0, 0) == 1);
  assert_true(kiln_train_lr(&t, 1, 2, 0) == 1);
  assert_true(kiln_train_lr(&t, 1, 3, 0) == 0.5);
  assert_true(kiln_train_lr(&t, 1, 8, 0) == 0.25);
  assert_true(kiln_train_lr(&t, 1, 9, 0) == 0.125);
  // cosine: warmup 4 (0.25, 0.5, 0.75, 1), then from 1 at step 4 towards 0.1 at
  // step 14 (the end): halfway, step 9, is 0.1 + 0.9 / 2.
  t = (KilnTrainDesc){.schedule = KILN_ABI_SCHED_COSINE, .warmup = 4, .min_lr = 0.1};
  assert_true(fabs(kiln_train_lr(&t, 1, 0, 14) - 0.25) < 1e-15);
  assert_true(fabs(kiln_train_lr(&t, 1, 1, 14) - 0.5) < 1e-15);
  assert_true(fabs(kiln_train_lr(&t, 1, 3, 14) - 1.0) < 1e-15);
  assert_true(fabs(kiln_train_lr(&t, 1, 4, 14) - 1.0) < 1e-15);
  assert_true(fabs(kiln_train_lr(&t, 1, 9, 14) - 0.55) < 1e-15);
  // step 6: p = 0.2, 0.1 + 0.45 (1 + cos(0.2 pi)) = 0.1 + 0.45 * 1.80901699...
  assert_true(fabs(kiln_train_lr(&t, 1, 6, 14) - 0.914057647468726) < 1e-12);
  assert_true(fabs(kiln_train_lr(&t, 1, 13, 14) - (0.1 + 0.45 * (1 + cos(0.9 * 3.14159265358979323846)))) < 1e-15);
  assert_true(fabs(kiln_train_lr(&t, 1, 14, 14) - 0.1) < 1e-15);
  assert_true(fabs(kiln_train_lr(&t, 1, 50, 14) - 0.1) < 1e-15);
  // No warmup: full rate at step 0. No known end: the rate holds after warmup.
  t.warmup = 0;
  assert_true(kiln_train_lr(&t, 1, 0, 10) == 1);
  t.warmup = 2;
  assert_true(kiln_train_lr(&t, 1, 100, 0) == 1);
}

static void test_step_seed(void **state) {
  (void)state;
  // Output `step` of the stream (seed, "step").
  KilnRng r;
  kiln_rng_seed(&r, 42, "step");
  for (int s = 0; s < 5; s++) assert_true(kiln_train_step_seed(42, s) == kiln_rng_next(&r));
  assert_true(kiln_train_step_seed(42, 0) != kiln_train_step_seed(43, 0));
  assert_true(kiln_train_step_seed(42, 1000000) == kiln_train_step_seed(42, 1000000));
}

//
// Checkpoints
//
static void fill_ctx(KilnCtx *c) {
  float *w = (float *)c->weights;
  for (int i = 0; i < 6; i++) w[i] = (float)i * 0.25f - 0.3f;
  c->step = 17;
  c->seed = 0xFFFFFFFFFFFFFFF1ull;
  c->lr = 0.1;
  c->total_steps = 40;
}

static void test_ckpt_round_trip(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnCtx *a = kiln_ctx_create(&fake, 1, &st), *b = kiln_ctx_create(&fake, 1, &st);
  fill_ctx(a);
  KilnCkptState s = {.epoch = 3, .pos = 2, .data_rng = 0x0123456789abcdefull, .samples = 21,
                     .has_vocab = true};
  unsigned char present[256] = {0};
  present['\n'] = present['a'] = present['\\'] = present[0xe9] = 1;
  kiln_vocab_from_bytes(present, &s.vocab);
  EXPECT_OK(kiln_ckpt_save(a, P("c.st"), &s, &st), st);
  assert_string_equal(meta(P("c.st"), "kiln_model"), "fake");
  assert_string_equal(meta(P("c.st"), "step"), "17");
  assert_string_equal(meta(P("c.st"), "seed"), "18446744073709551601");
  assert_string_equal(meta(P("c.st"), "data_rng"), "0123456789abcdef");
  KilnCkptState t;
  EXPECT_OK(kiln_ckpt_load(b, P("c.st"), &t, &st), st);
  assert_memory_equal(a->weights, b->weights, 24);
  assert_true(b->step == 17 && b->seed == a->seed && b->lr == 0.1 && b->total_steps == 40);
  assert_true(t.epoch == 3 && t.pos == 2 && t.data_rng == s.data_rng && t.samples == 21);
  assert_true(t.has_vocab);
  assert_memory_equal(&t.vocab, &s.vocab, sizeof s.vocab);
  // A checkpoint is also a weights file.
  kiln_ctx_init_params(b, 1);
  EXPECT_OK(kiln_ctx_load(b, P("c.st"), &st), st);
  assert_memory_equal(a->weights, b->weights, 12);
  bool found;
  KilnVocab v;
  EXPECT_OK(kiln_ckpt_vocab(P("c.st"), &v, &found, &st), st);
  assert_true(found && v.n == 4);
  // A weights file is not a checkpoint.
  EXPECT_OK(kiln_ctx_save(a, P("w.st"), &st), st);
  EXPECT_ERROR(kiln_ckpt_load(b, P("w.st"), &t, &st), st,
               "w.st is a weights file, not a checkpoint");
  EXPECT_OK(kiln_ckpt_vocab(P("w.st"), &v, &found, &st), st);
  assert_false(found);
  kiln_ctx_destroy(a);
  kiln_ctx_destroy(b);
}

static void test_ckpt_refusals(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnCtx *a = kiln_ctx_create(&fake, 1, &st);
  fill_ctx(a);
  KilnCkptState s = {.samples = 21};
  EXPECT_OK(kiln_ckpt_save(a, P("r.st"), &s, &st), st);
  // Another model's checkpoint.
  KilnModelDesc other = fake;
  other.name = "other";
  KilnCtx *b = kiln_ctx_create(&other, 1, &st);
  KilnCkptState t;
  EXPECT_ERROR(kiln_ckpt_load(b, P("r.st"), &t, &st), st,
               "r.st is a checkpoint of model 'fake', not of 'other'");
  kiln_ctx_destroy(b);
  // Same name, other shapes or another optimizer.
  KilnTensorDesc p2[2] = {kiln_fake_params[0], kiln_fake_params[1]};
  p2[0].shape[0] = 3, p2[0].bytes = 12, p2[1].offset = 12;
  KilnTensorDesc o2[2] = {kiln_fake_opt[0], kiln_fake_opt[1]};
  o2[0].name = "adam.m.w", o2[1].name = "adam.m.b";
  other = fake;
  other.params = p2, other.opt = o2, other.weights_bytes = 16;
  b = kiln_ctx_create(&other, 1, &st);
  EXPECT_ERROR(kiln_ckpt_load(b, P("r.st"), &t, &st), st,
               "r.st does not fit model 'fake': 'w' is f32[2], the model has f32[3]; missing "
               "'adam.m.w'; missing 'adam.m.b'; unexpected 'sgd.v.b'; unexpected 'sgd.v.w'");
  kiln_ctx_destroy(b);
  // Non-finite values never replace a checkpoint.
  ((float *)a->weights)[4] = NAN;
  EXPECT_ERROR(kiln_ckpt_save(a, P("r.st"), &s, &st), st,
               "r.st not written: 'sgd.v.w' holds NaN at element 1 after step 17; the previous "
               "file is kept");
  ((float *)a->weights)[4] = 0;
  ((float *)a->weights)[1] = -INFINITY;
  EXPECT_ERROR(kiln_ckpt_save(a, P("r.st"), &s, &st), st, "'w' holds an infinity at element 1");
  KilnCtx *c = kiln_ctx_create(&fake, 1, &st);
  EXPECT_OK(kiln_ckpt_load(c, P("r.st"), &t, &st), st);
  assert_true(((float *)c->weights)[1] == 0.25f - 0.3f);
  kiln_ctx_destroy(c);
  kiln_ctx_destroy(a);
}

static void test_lock(void **state) {
  (void)state;
  KilnStatus st = {0};
  int fd, fd2;
  // Holding the lock, the temporaries of killed writers go; nothing else does.
  fclose(fopen(P("l.st.tmp.12345"), "w"));
  fclose(fopen(P("l.st.tmp.12x"), "w"));
  fclose(fopen(P("l.stx.tmp.1"), "w"));
  EXPECT_OK(kiln_ckpt_lock(P("l.st"), &fd, &st), st);
  assert_int_equal(access(P("l.st.lock"), F_OK), 0);
  assert_int_not_equal(access(P("l.st.tmp.12345"), F_OK), 0);
  assert_int_equal(access(P("l.st.tmp.12x"), F_OK), 0);
  assert_int_equal(access(P("l.stx.tmp.1"), F_OK), 0);
  EXPECT_ERROR(kiln_ckpt_lock(P("l.st"), &fd2, &st), st,
               "l.st is in use by another trainer (it holds");
  // A trainer saving there is refused before it starts.
  KilnTrainOpts o = opts();
  o.save = P("l.st");
  EXPECT_ERROR(train(&o, &st), st, "l.st is in use by another trainer");
  assert_int_not_equal(access(P("l.st"), F_OK), 0);
  kiln_ckpt_unlock(P("l.st"), fd);
  assert_int_not_equal(access(P("l.st.lock"), F_OK), 0);
  EXPECT_OK(kiln_ckpt_lock(P("l.st"), &fd, &st), st);
  kiln_ckpt_unlock(P("l.st"), fd);
}

//
// The loop
//
static void test_train_runs(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnTrainOpts o = opts();
  o.save = P("t.st");
  o.log = P("t.csv");
  o.print_every = 5;
  EXPECT_OK(train(&o, &st), st);
  const char *out = slurp(P("out.txt"));
  if (!strstr(out, "18 samples (5 more held out for validation); batch 4, 4 steps per epoch "
                   "(the last 2 samples of each epoch, a partial batch, are left out)") ||
      !strstr(out, "20 steps (5 epochs); sgd, cosine schedule, lr 0.05; seed 42") ||
      !strstr(out, "step 5/20  epoch 2  loss ") || !strstr(out, "step 20/20  epoch 5") ||
      !strstr(out, "eval loss ") || !strstr(out, "done: 20 steps (to step 20)"))
    fail_msg("output:\n%s", out);
  // One row per step; the evaluation on the last one.
  const char *log = slurp(P("t.csv"));
  const char *head = "step,epoch,loss,lr,grad_norm,samples_per_s,val_loss,val_acc\n";
  assert_true(strncmp(log, head, strlen(head)) == 0);
  assert_non_null(strstr(log, "\n1,1,"));
  assert_non_null(strstr(log, "\n6,2,"));
  assert_non_null(strstr(log, "\n20,5,"));
  const char *last = strstr(log, "\n20,5,") + 1;
  int commas = 0;
  for (const char *p = last; *p && *p != '\n'; p++) commas += *p == ',';
  assert_int_equal(commas, 7);
  assert_true(last[strlen(last) - 2] == ',');  // no accuracy for an MSE model
  assert_true(last[strlen(last) - 3] != ',');  // a loss: one full held-out batch
  // The last row, evaluated, still logs its own step's rate and gradient norm.
  char want[64];
  snprintf(want, sizeof want, ",%.9g,", (double)(float)kiln_train_lr(&train_desc, 0.05, 19, 20));
  assert_true(strncmp(strchr(last + 5, ','), want, strlen(want)) == 0);
  assert_true(strchr(last + 5, ',')[strlen(want)] != ',');
  assert_string_equal(meta(P("t.st"), "step"), "20");
  assert_string_equal(meta(P("t.st"), "epoch"), "5");
  assert_string_equal(meta(P("t.st"), "pos"), "0");
  // The loss went down.
  float first, lastl;
  assert_int_equal(sscanf(strstr(log, "\n1,1,") + 5, "%f", &first), 1);
  assert_int_equal(sscanf(last + 5, "%f", &lastl), 1);
  assert_true(lastl < first / 4);
  // On a terminal: one line redrawn in place, ended before the summary.
  KilnTrainOpts ob = opts();
  ob.bar = true;
  ob.steps = 8;
  EXPECT_OK(train(&ob, &st), st);
  out = slurp(P("out.txt"));
  if (!strstr(out, "\r\033[K8/8 [####################] loss ") || !strstr(out, " samples/s  ETA 0:00") ||
      !strstr(out, "\ndone: 8 steps"))
    fail_msg("output:\n%s", out);
  // Already done: nothing to do, nothing rewritten.
  o.resume = P("t.st");
  EXPECT_OK(train(&o, &st), st);
  assert_non_null(strstr(slurp(P("out.txt")), "already at step 20 of 20: nothing to do"));
}

// 20 steps in one run, and 10 + checkpoint + resume + 10: the same weights, state
// and logged losses, learning rates and gradient norms, to the bit.
static void test_resume_identical(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnTrainOpts o = opts();
  o.save = P("a.st");
  o.log = P("a.csv");
  o.eval_every = 4;
  EXPECT_OK(train(&o, &st), st);

  o.save = P("b.st");
  o.log = P("b.csv");
  o.stop_after = 7;  // mid-epoch: epoch 1 (from 0), batch 3
  EXPECT_OK(train(&o, &st), st);
  assert_non_null(strstr(slurp(P("out.txt")), "stopped after 7 steps, at step 7 of 20"));
  assert_string_equal(meta(P("b.st"), "step"), "7");
  assert_string_equal(meta(P("b.st"), "pos"), "3");
  o.stop_after = 0;
  o.save = NULL;  // back to the file it resumes from
  o.resume = P("b.st");
  EXPECT_OK(train(&o, &st), st);
  expect_same_tensors(P("a.st"), P("b.st"));
  assert_string_equal(log_values(P("a.csv")), log_values(P("b.csv")));

  // The same after SIGINT in the 13th step: it finishes, checkpoints, stops.
  o = opts();
  o.save = P("c.st");
  o.log = P("c.csv");
  o.eval_every = 4;
  raise_at = 12;
  int rc = train(&o, &st);
  raise_at = -1;
  assert_int_equal(rc, KILN_TRAIN_INTERRUPTED);
  assert_non_null(strstr(st.msg, "interrupted after step 13 of 20; checkpoint written to"));
  assert_string_equal(meta(P("c.st"), "step"), "13");
  o.resume = P("c.st");
  EXPECT_OK(train(&o, &st), st);
  expect_same_tensors(P("a.st"), P("c.st"));
  assert_string_equal(log_values(P("a.csv")), log_values(P("c.csv")));
  // The SIGINT handler is gone again.
  struct sigaction sa;
  sigaction(SIGINT, NULL, &sa);
  assert_true(sa.sa_handler == SIG_DFL);

  // A run that dies after its checkpoint of step 12 (every 6) has logged steps 13
  // and 14 too; resuming takes them again, and its log keeps each row once.
  o = opts();
  o.save = P("f.st");
  o.log = P("f.csv");
  o.eval_every = 4;
  o.checkpoint_every = 6;
  nan_at = 14;
  rc = train(&o, &st);
  nan_at = -1;
  EXPECT_ERROR(rc, st, "step 15: the loss is NaN");
  assert_non_null(strstr(slurp(P("f.csv")), "\n14,4,"));
  o.resume = P("f.st");
  EXPECT_OK(train(&o, &st), st);
  expect_same_tensors(P("a.st"), P("f.st"));
  assert_string_equal(log_values(P("a.csv")), log_values(P("f.csv")));

  // Another seed: another run, and resuming with a conflicting seed is refused.
  o = opts();
  o.save = P("d.st");
  o.has_seed = true, o.seed = 7;
  o.steps = 5;
  EXPECT_OK(train(&o, &st), st);
  o.steps = 10;
  o.seed = 8;
  o.resume = P("d.st");
  EXPECT_ERROR(train(&o, &st), st, "--seed 8: ");
}

// A NaN loss in step 16 stops training there; the checkpoint of step 14 (every 7)
// is kept, not replaced by the diverged weights.
static void test_nan_stops(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnTrainOpts o = opts();
  o.save = P("n.st");
  o.checkpoint_every = 7;
  nan_at = 15;
  int rc = train(&o, &st);
  nan_at = -1;
  EXPECT_ERROR(rc, st, "step 16: the loss is NaN; training stopped");
  assert_non_null(strstr(st.msg, "the last good checkpoint, of step 14, is kept in"));
  assert_string_equal(meta(P("n.st"), "step"), "14");
  // Without a checkpoint yet, the message says so.
  o.save = P("n2.st");
  nan_at = 2;
  rc = train(&o, &st);
  nan_at = -1;
  EXPECT_ERROR(rc, st, "step 3: the loss is NaN; training stopped");
  assert_non_null(strstr(st.msg, "no checkpoint had been written yet"));
  assert_int_not_equal(access(P("n2.st"), F_OK), 0);
  assert_int_not_equal(access(P("n2.st.lock"), F_OK), 0);
}

static void test_train_errors(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnTrainOpts o = opts();
  KilnModelDesc m = fake;
  m.train_step = NULL;
  EXPECT_ERROR(kiln_train(&m, &o, stdout, &st), st,
               "model 'fake' has no loss: it can run inference but not train");
  o.checkpoint_every = 3;
  EXPECT_ERROR(train(&o, &st), st, "--checkpoint-every needs --save FILE");
  o = opts();
  FILE *f = fopen(P("few.csv"), "w");
  fprintf(f, "1,2,3\n4,5,6\n7,8,9\n");
  fclose(f);
  o.data[0] = P("few.csv"), o.ndata = 1;
  EXPECT_ERROR(train(&o, &st), st, "few.csv: 2 training samples, fewer than one batch of 4");
  o = opts();
  o.data[0] = P("missing.csv"), o.ndata = 1;
  EXPECT_ERROR(train(&o, &st), st, "missing.csv: cannot open");
  // Resuming on other data is refused.
  o = opts();
  o.save = P("e.st");
  o.steps = 3;
  EXPECT_OK(train(&o, &st), st);
  f = fopen(P("more.csv"), "w");
  for (int i = 0; i < 40; i++) fprintf(f, "%d,1,2\n", i);
  fclose(f);
  o.data[0] = P("more.csv"), o.ndata = 1;
  o.resume = P("e.st");
  o.steps = 6;
  EXPECT_ERROR(train(&o, &st), st, "was trained on 18 samples per epoch, this data has 32");
  // No evaluation data for --eval-every.
  train_desc.val_split = 0;
  o = opts();
  o.eval_every = 2;
  EXPECT_ERROR(train(&o, &st), st, "--eval-every needs evaluation data");
  train_desc.val_split = 0.2;
}

//
// Evaluation: a classifier whose logits are its input x, and whose loss is the
// mean of x[:, 0] (so each batch's loss is known).
//
static void cls_forward(char *weights, char *arena, void *rt) {
  (void)weights, (void)rt;
  memcpy(arena + OP, arena + OX, B * 8);
}

static void cls_eval(char *weights, char *arena, void *rt) {
  (void)weights, (void)rt;
  const float *x = (const float *)(arena + OX);
  float s = 0;
  for (int r = 0; r < B; r++) s += x[2 * r] / B;
  ((KilnStepHeader *)arena)->loss = s;
}

static void test_eval_counts(void **state) {
  (void)state;
  KilnTensorDesc in[2] = {inputs[0], inputs[1]};
  in[1].dtype = KILN_ABI_I32, in[1].bound = 2;
  KilnTensorDesc out = {.name = "logits", .dtype = KILN_ABI_F32, .rank = 2, .shape = {B, 2},
                        .offset = OP, .bytes = B * 8};
  KilnTrainDesc t = {.loss_kind = KILN_ABI_LOSS_CE, .loss_pred_output = 0, .loss_target_input = 1};
  KilnModelDesc m = {.abi_version = KILN_ABI_VERSION, .name = "cls", .batch = B,
                     .arena_bytes = OP + B * 8, .ninputs = 2, .noutputs = 1, .inputs = in,
                     .outputs = &out, .forward = cls_forward, .eval_step = cls_eval, .train = &t};
  // 7 rows: one full batch (loss: mean of x0 over rows 0-3 = 2.5) and 3 more.
  // Predictions (argmax of x0, x1) against labels: right in rows 0, 2, 3, 5, 6.
  FILE *f = fopen(P("cls.csv"), "w");
  fprintf(f, "1,0,0\n2,5,0\n3,9,1\n4,0,0\n5,1,1\n6,7,1\n0,1,1\n");
  fclose(f);
  KilnStatus st = {0};
  KilnData dt;
  char line[600];
  snprintf(line, sizeof line, "csv\t%s\t0\tx:0:2\ty:2:3", P("cls.csv"));
  EXPECT_OK(kiln_data_open(&m, line, NULL, &dt, &st), st);
  KilnCtx *c = kiln_ctx_create(&m, 1, &st);
  assert_non_null(c);
  int64_t idx[7] = {0, 1, 2, 3, 4, 5, 6};
  KilnEvalResult r;
  EXPECT_OK(kiln_eval_data(c, &dt, idx, 7, &r, &st), st);
  assert_int_equal(r.batches, 1);
  assert_true(r.loss == 2.5);
  assert_int_equal(r.total, 7);
  assert_int_equal(r.correct, 5);
  // Fewer rows than a batch: no loss, accuracy still counted.
  EXPECT_OK(kiln_eval_data(c, &dt, idx + 4, 3, &r, &st), st);
  assert_int_equal(r.batches, 0);
  assert_true(isnan(r.loss));
  assert_int_equal(r.total, 3);
  assert_int_equal(r.correct, 2);
  kiln_ctx_destroy(c);
  kiln_data_free(&dt);

  // The command: --data, all of it.
  KilnEvalOpts eo = {.threads = 1, .data = {P("cls.csv")}, .ndata = 1};
  FILE *o = fopen(P("eval.txt"), "w");
  EXPECT_OK(kiln_eval(&m, &eo, o, &st), st);
  fclose(o);
  const char *text = slurp(P("eval.txt"));
  if (!strstr(text, "loss      2.500000  (mean over 1 full batches of 4)") ||
      !strstr(text, "accuracy  0.7143  (5 of 7)"))
    fail_msg("eval output:\n%s", text);
  // No data anywhere.
  eo.ndata = 0;
  EXPECT_ERROR(kiln_eval(&m, &eo, stdout, &st), st, "no evaluation data");
}

//
// A text model: windows of 3 ids; its "loss" is the mean id of the input window,
// which shows how the text was mapped.
//
enum { T = 3 };

static void seq_loss(char *weights, char *arena, void *rt) {
  (void)rt;
  const int32_t *idx = (const int32_t *)(arena + 64);
  float s = 0;
  for (int i = 0; i < B * T; i++) s += (float)idx[i] / (B * T);
  ((KilnStepHeader *)arena)->loss = s + ((float *)weights)[0];
}

static void seq_train(char *weights, char *arena, void *rt) {
  seq_loss(weights, arena, rt);
  ((float *)weights)[0] -= 0.5f * ((KilnStepHeader *)arena)->lr * ((float *)weights)[0];
}

static void test_text_model(void **state) {
  (void)state;
  static const KilnTensorDesc sp[] = {
      {.name = "p", .dtype = KILN_ABI_F32, .rank = 1, .shape = {1}, .bytes = 4,
       .init = KILN_ABI_INIT_ONES}};
  static const KilnTensorDesc si[] = {
      {.name = "idx", .dtype = KILN_ABI_I32, .rank = 2, .shape = {B, T}, .offset = 64,
       .bytes = B * T * 4, .flags = KILN_ABI_LIVE, .bound = 8},
      {.name = "tgt", .dtype = KILN_ABI_I32, .rank = 2, .shape = {B, T}, .offset = 128,
       .bytes = B * T * 4, .bound = 8}};
  char line[600];
  snprintf(line, sizeof line, "text\t%s\tidx\ttgt", P("train.txt"));
  KilnTrainDesc t = {.lr = 0.1, .steps = 6, .shuffle = 1, .data_train = line,
                     .loss_kind = KILN_ABI_LOSS_CE, .loss_pred_output = -1, .loss_target_input = 1};
  KilnModelDesc m = {.abi_version = KILN_ABI_VERSION, .name = "chars", .kiln_version = "test",
                     .batch = B, .weights_bytes = 4, .arena_bytes = 192, .nparams = 1,
                     .ninputs = 2, .params = sp, .inputs = si, .forward = seq_loss,
                     .train_step = seq_train, .eval_step = seq_loss, .train = &t};
  FILE *f = fopen(P("train.txt"), "w");
  for (int i = 0; i < 20; i++) fputs("abcdefgh", f);  // 160 chars: 53 windows
  fclose(f);
  f = fopen(P("eval.txt"), "w");
  fputs("hhhhhhhhhhhhhh", f);
  fclose(f);
  KilnStatus st = {0};
  KilnTrainOpts o = opts();
  o.save = P("chars.st");
  FILE *out = fopen(P("out.txt"), "w");
  int rc = kiln_train(&m, &o, out, &st);
  fclose(out);
  EXPECT_OK(rc, st);
  assert_string_equal(meta(P("chars.st"), "vocab"), "abcdefgh");
  // Evaluation text maps with the training vocabulary from the weights: 'h' is 7.
  KilnEvalOpts eo = {.threads = 1, .weights = P("chars.st"), .data = {P("eval.txt")}, .ndata = 1};
  out = fopen(P("eval.txt.out"), "w");
  rc = kiln_eval(&m, &eo, out, &st);
  fclose(out);
  EXPECT_OK(rc, st);
  float p;
  KilnStFile wf;
  EXPECT_OK(kiln_st_read(P("chars.st"), &wf, &st), st);
  memcpy(&p, wf.data, 4);
  kiln_st_free(&wf);
  char want[64];
  snprintf(want, sizeof want, "loss      %.6f  (mean over 1 full batches", 7 + (double)p);
  if (!strstr(slurp(P("eval.txt.out")), want)) fail_msg("want '%s' in:\n%s", want, slurp(P("eval.txt.out")));
  // A character the training text did not have.
  f = fopen(P("eval.txt"), "w");
  fputs("hhhhhhhhzhhhhhhh", f);
  fclose(f);
  EXPECT_ERROR(kiln_eval(&m, &eo, stdout, &st), st,
               "eval.txt: offset 8: character 'z' (0x7a) is not in the training vocabulary");
  // Resuming on a text with other characters is refused the same way.
  f = fopen(P("train.txt"), "a");
  fputs("xyz", f);
  fclose(f);
  o.resume = P("chars.st");
  o.steps = 8;
  EXPECT_ERROR(kiln_train(&m, &o, stdout, &st), st, "character 'x' (0x78) is not in the training vocabulary");
}

//
// The library API
//
static void test_lib(void **state) {
  (void)state;
  float x[B * 2] = {1, 0, 0, 1, 1, 1, -1, 2}, y[B] = {1, 2, 3, 4}, loss[8];
  const void *ins[] = {x, y};
  KilnCtx *a = kiln_lib_create(&fake, 1);
  for (int i = 0; i < 3; i++) assert_int_equal(kiln_lib_train_step(a, ins, &loss[i]), 0);
  assert_int_equal(a->step, 3);
  // The schedule over train.steps (20): step 2 is the last of warmup 3.
  assert_true(((KilnStepHeader *)a->arena)->lr == (float)0.05);
  assert_int_equal(kiln_lib_save_state(&fake, a, P("lib.st")), 0);
  for (int i = 3; i < 6; i++) assert_int_equal(kiln_lib_train_step(a, ins, &loss[i]), 0);
  assert_true(loss[5] < loss[0]);
  KilnCtx *b = kiln_lib_create(&fake, 1);
  assert_int_equal(kiln_lib_load_state(&fake, b, P("lib.st")), 0);
  assert_int_equal(b->step, 3);
  for (int i = 3; i < 6; i++) {
    float l;
    assert_int_equal(kiln_lib_train_step(b, ins, &l), 0);
    assert_memory_equal(&l, &loss[i], sizeof l);
  }
  assert_memory_equal(a->weights, b->weights, 24);
  // Errors: a NaN loss, a state file of another model, a model without a loss.
  nan_at = 6;
  float l;
  assert_int_equal(kiln_lib_train_step(b, ins, &l), -1);
  nan_at = -1;
  assert_true(isnan(l));
  assert_non_null(strstr(kiln_lib_last_error(&fake, b), "step 7: the loss is NaN"));
  assert_int_equal(kiln_lib_load_state(&fake, b, P("nothere.st")), -1);
  assert_non_null(strstr(kiln_lib_last_error(&fake, b), "nothere.st"));
  KilnModelDesc m = fake;
  m.train_step = NULL;
  KilnCtx *c = kiln_lib_create(&m, 1);
  assert_int_equal(kiln_lib_train_step(c, ins, &l), -1);
  assert_non_null(strstr(kiln_lib_last_error(&m, c), "has no loss"));
  kiln_lib_destroy(&m, c);
  kiln_lib_destroy(&fake, a);
  kiln_lib_destroy(&fake, b);
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/kiln-train-XXXXXX");
  if (!mkdtemp(dir)) return -1;
  write_data();
  return 0;
}

static int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schedules),      cmocka_unit_test(test_step_seed),
      cmocka_unit_test(test_ckpt_round_trip), cmocka_unit_test(test_ckpt_refusals),
      cmocka_unit_test(test_lock),           cmocka_unit_test(test_train_runs),
      cmocka_unit_test(test_resume_identical), cmocka_unit_test(test_nan_stops),
      cmocka_unit_test(test_train_errors),   cmocka_unit_test(test_eval_counts),
      cmocka_unit_test(test_text_model),
      cmocka_unit_test(test_lib),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
