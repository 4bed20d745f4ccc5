// Checkpoints: everything a run needs to continue as if it had never stopped, in
// one safetensors file. The parameters keep their own names, so a checkpoint is
// also a weights file; the optimizer state uses the names of d->opt; the rest of
// the training state is string metadata:
//
//   kiln_model, kiln_version   the model and the compiler that built it
//   kiln_checkpoint            "1": this layout
//   step, epoch, pos           steps taken; the epoch (from 0) and batch within it
//   seed                       the run's seed (data order and step seeds)
//   data_rng                   the state of the current epoch's shuffling stream
//   samples                    training samples per epoch (other data is refused)
//   ranks                      data-parallel ranks of the run (absent: 1); a batch
//                              position means that many ranks' batches
//   total_steps, lr            the schedule's length and base rate (%.17g)
//   vocab                      text models: the training vocabulary, escaped
//
// Integers are decimal, data_rng hexadecimal. Writing goes through kiln_st_write,
// which replaces the file atomically.
#define _DEFAULT_SOURCE  // flock
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/runtime.h"

#define FORMAT "1"

// Every parameter and state value must be finite before it may replace a
// checkpoint: a run that diverged must not destroy the last good one.
static int check_finite(const KilnCtx *c, const KilnTensorDesc *t, int n, const char *path,
                        KilnStatus *st) {
  for (int i = 0; i < n; i++) {
    if (t[i].dtype != KILN_ABI_F32) continue;
    const float *v = (const float *)(c->weights + t[i].offset);
    for (int64_t j = 0; j < t[i].bytes / 4; j++)
      if (!isfinite(v[j]))
        return kiln_rt_fail(st, "%s not written: '%s' holds %s at element %lld after step %lld; "
                            "the previous file is kept", path, t[i].name,
                            isnan(v[j]) ? "NaN" : "an infinity", (long long)j, (long long)c->step);
  }
  return 0;
}

int kiln_ckpt_save(KilnCtx *c, const char *path, const KilnCkptState *s, KilnStatus *st) {
  const KilnModelDesc *d = c->d;
  KILN_TRY(kiln_ctx_weights_sync(c, st));
  KILN_TRY(check_finite(c, d->params, d->nparams, path, st));
  KILN_TRY(check_finite(c, d->opt, d->nopt, path, st));
  int n = d->nparams + d->nopt;
  KilnTensorDesc *descs = calloc((size_t)n + 1, sizeof *descs);
  const void **data = calloc((size_t)n + 1, sizeof *data);
  char *vocab = malloc(4 * 256 + 1);
  if (!descs || !data || !vocab) {
    free(descs), free(data), free(vocab);
    return kiln_rt_fail(st, "%s: out of memory", path);
  }
  for (int i = 0; i < n; i++) {
    descs[i] = i < d->nparams ? d->params[i] : d->opt[i - d->nparams];
    data[i] = c->weights + descs[i].offset;
  }
  char step[24], epoch[24], pos[24], seed[24], rng[24], samples[24], total[24], lr[32], ranks[24];
  snprintf(step, sizeof step, "%lld", (long long)c->step);
  snprintf(epoch, sizeof epoch, "%lld", (long long)s->epoch);
  snprintf(pos, sizeof pos, "%lld", (long long)s->pos);
  snprintf(seed, sizeof seed, "%" PRIu64, c->seed);
  snprintf(rng, sizeof rng, "%016" PRIx64, s->data_rng);
  snprintf(samples, sizeof samples, "%lld", (long long)s->samples);
  snprintf(total, sizeof total, "%lld", (long long)c->total_steps);
  snprintf(lr, sizeof lr, "%.17g", c->lr);
  snprintf(ranks, sizeof ranks, "%lld", (long long)(s->ranks > 0 ? s->ranks : 1));
  if (s->has_vocab) kiln_vocab_escape(&s->vocab, vocab);
  const char *keys[] = {"kiln_model", "kiln_version", "kiln_checkpoint", "step", "epoch", "pos",
                        "seed", "data_rng", "samples", "total_steps", "lr", "ranks", "vocab"};
  const char *vals[] = {d->name, d->kiln_version ? d->kiln_version : "", FORMAT, step, epoch, pos,
                        seed, rng, samples, total, lr, ranks, vocab};
  int nmeta = s->has_vocab ? 13 : 12;
  int rc = kiln_st_write(path, descs, data, n, keys, vals, nmeta, st);
  free(descs);
  free(data);
  free(vocab);
  return rc;
}

//
// Reading.
//
static const char *meta_str(json_t *meta, const char *key) {
  return json_string_value(json_object_get(meta, key));
}

static int meta_int(json_t *meta, const char *key, int64_t *out, const char *path, KilnStatus *st) {
  const char *s = meta_str(meta, key);
  char *end;
  errno = 0;
  long long v = s ? strtoll(s, &end, 10) : 0;
  if (!s || !*s || *end || errno || v < 0)
    return kiln_rt_fail(st, "%s: checkpoint metadata '%s' is %s", path, key,
                        s ? "not a count" : "missing");
  *out = v;
  return 0;
}

static int meta_u64(json_t *meta, const char *key, int base, uint64_t *out, const char *path,
                    KilnStatus *st) {
  const char *s = meta_str(meta, key);
  char *end;
  errno = 0;
  unsigned long long v = s ? strtoull(s, &end, base) : 0;
  if (!s || !*s || *end || errno || *s == '-')
    return kiln_rt_fail(st, "%s: checkpoint metadata '%s' is %s", path, key,
                        s ? "not a number" : "missing");
  *out = v;
  return 0;
}

static int parse_state(json_t *meta, const char *path, KilnCkptState *s, uint64_t *seed,
                       KilnStatus *st) {
  KILN_TRY(meta_int(meta, "step", &s->step, path, st));
  KILN_TRY(meta_int(meta, "epoch", &s->epoch, path, st));
  KILN_TRY(meta_int(meta, "pos", &s->pos, path, st));
  KILN_TRY(meta_int(meta, "samples", &s->samples, path, st));
  KILN_TRY(meta_int(meta, "total_steps", &s->total_steps, path, st));
  s->ranks = 1;
  if (meta_str(meta, "ranks")) KILN_TRY(meta_int(meta, "ranks", &s->ranks, path, st));
  KILN_TRY(meta_u64(meta, "seed", 10, seed, path, st));
  KILN_TRY(meta_u64(meta, "data_rng", 16, &s->data_rng, path, st));
  s->seed = *seed;
  const char *lr = meta_str(meta, "lr");
  char *end = NULL;
  s->lr = lr ? strtod(lr, &end) : NAN;
  if (!lr || !*lr || *end || !isfinite(s->lr) || s->lr < 0)
    return kiln_rt_fail(st, "%s: checkpoint metadata 'lr' is %s", path, lr ? "not a rate" : "missing");
  const char *vocab = meta_str(meta, "vocab");
  s->has_vocab = vocab != NULL;
  if (vocab && kiln_vocab_parse(vocab, &s->vocab) != 0)
    return kiln_rt_fail(st, "%s: checkpoint metadata 'vocab' is not an escaped vocabulary", path);
  return 0;
}

static int read_meta(const KilnStFile *f, const char *path, json_t **out, KilnStatus *st) {
  json_error_t err;
  *out = f->metadata_json ? json_loads(f->metadata_json, 0, &err) : json_object();
  if (!*out) return kiln_rt_fail(st, "%s: bad metadata: %s", path, err.text);
  return 0;
}

static int load_file(KilnCtx *c, const char *path, const KilnStFile *f, KilnCkptState *s,
                     KilnStatus *st) {
  const KilnModelDesc *d = c->d;
  json_t *meta;
  KILN_TRY(read_meta(f, path, &meta, st));
  const char *model = meta_str(meta, "kiln_model"), *format = meta_str(meta, "kiln_checkpoint");
  int rc = 0;
  uint64_t seed = 0;
  if (model && strcmp(model, d->name) != 0)
    rc = kiln_rt_fail(st, "%s is a checkpoint of model '%s', not of '%s'", path, model, d->name);
  else if (!format)
    rc = kiln_rt_fail(st, "%s is a weights file, not a checkpoint: it holds no training state "
                      "(start a new run with it instead of resuming)", path);
  else if (strcmp(format, FORMAT) != 0)
    rc = kiln_rt_fail(st, "%s: checkpoint layout '%s', this runtime reads '%s'", path, format, FORMAT);
  if (rc == 0) rc = kiln_ctx_check_file(d, f, path, true, st);
  if (rc == 0) rc = parse_state(meta, path, s, &seed, st);
  json_decref(meta);
  KILN_TRY(rc);
  for (int i = 0; i < d->nparams + d->nopt; i++) {
    const KilnTensorDesc *t = i < d->nparams ? &d->params[i] : &d->opt[i - d->nparams];
    const KilnStEntry *e = kiln_st_find(f, t->name);
    memcpy(c->weights + t->offset, f->data + e->begin, (size_t)(e->end - e->begin));
  }
  kiln_ctx_weights_changed(c);
  c->step = s->step;
  c->seed = seed;
  c->lr = s->lr;
  c->total_steps = s->total_steps;
  return 0;
}

int kiln_ckpt_load(KilnCtx *c, const char *path, KilnCkptState *s, KilnStatus *st) {
  memset(s, 0, sizeof *s);
  KilnStFile f;
  KILN_TRY(kiln_st_read(path, &f, st));
  int rc = load_file(c, path, &f, s, st);
  kiln_st_free(&f);
  return rc;
}

int kiln_ckpt_vocab(const char *path, KilnVocab *out, bool *found, KilnStatus *st) {
  *found = false;
  KilnStFile f;
  KILN_TRY(kiln_st_read(path, &f, st));
  json_t *meta;
  int rc = read_meta(&f, path, &meta, st);
  kiln_st_free(&f);
  KILN_TRY(rc);
  const char *v = meta_str(meta, "vocab");
  if (v && kiln_vocab_parse(v, out) != 0)
    rc = kiln_rt_fail(st, "%s: metadata 'vocab' is not an escaped vocabulary", path);
  *found = v && rc == 0;
  json_decref(meta);
  return rc;
}

//
// One trainer per checkpoint path.
//
static char *lock_path(const char *path) {
  size_t n = strlen(path);
  char *p = malloc(n + 6);
  if (p) memcpy(p, path, n), memcpy(p + n, ".lock", 6);
  return p;
}

// Temporary files of writes that a killed trainer left half done (PATH.tmp.PID).
// Only the holder of the lock writes PATH, so any there now are stale.
static void remove_stale(const char *path) {
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  size_t dlen = slash ? (size_t)(slash - path) + 1 : 0, blen = strlen(base);
  char *dir = !slash ? strdup(".") : slash == path ? strdup("/") : strndup(path, dlen - 1);
  DIR *d = dir ? opendir(dir) : NULL;
  free(dir);
  if (!d) return;
  for (struct dirent *e; (e = readdir(d));) {
    const char *n = e->d_name;
    if (strncmp(n, base, blen) != 0 || strncmp(n + blen, ".tmp.", 5) != 0 || !n[blen + 5] ||
        strspn(n + blen + 5, "0123456789") != strlen(n + blen + 5))
      continue;
    char *full = malloc(dlen + strlen(n) + 1);
    if (!full) break;
    memcpy(full, path, dlen);
    strcpy(full + dlen, n);
    unlink(full);
    free(full);
  }
  closedir(d);
}

// flock locks the open file, not the name: after taking the lock, the name must
// still lead to that file, else a finishing trainer removed it in between and the
// lock protects nothing; then try again on the new file.
int kiln_ckpt_lock(const char *path, int *out_fd, KilnStatus *st) {
  char *lp = lock_path(path);
  if (!lp) return kiln_rt_fail(st, "out of memory");
  for (int tries = 0; tries < 100; tries++) {
    int fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
    if (fd < 0) {
      kiln_rt_fail(st, "%s: cannot create lock file: %s", lp, strerror(errno));
      free(lp);
      return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int err = errno;
      close(fd);
      if (err == EWOULDBLOCK)
        kiln_rt_fail(st, "%s is in use by another trainer (it holds %s)", path, lp);
      else
        kiln_rt_fail(st, "%s: cannot lock: %s", lp, strerror(err));
      free(lp);
      return -1;
    }
    struct stat a, b;
    if (fstat(fd, &a) == 0 && stat(lp, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
      free(lp);
      remove_stale(path);
      *out_fd = fd;
      return 0;
    }
    close(fd);
  }
  kiln_rt_fail(st, "%s: cannot lock: the lock file keeps changing", lp);
  free(lp);
  return -1;
}

// Removes the name while still holding the lock, so no one can lock the old file
// after we let it go and believe they hold the name.
void kiln_ckpt_unlock(const char *path, int fd) {
  if (fd < 0) return;
  char *lp = lock_path(path);
  if (lp) unlink(lp);
  free(lp);
  close(fd);
}
