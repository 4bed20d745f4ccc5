// Training and evaluation data. A source (one line of KilnTrainDesc's format) is
// read whole and checked once, before the first step, so a bad value stops the run
// with its file and line instead of surfacing as a NaN a thousand steps later.
// Afterwards data only hands out samples: rows of CSV and .npy files, windows of
// text and token files.
#define _GNU_SOURCE  // asprintf
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/runtime.h"

// Text and token files are read whole; larger ones want a streaming reader.
#define MAX_SEQ_FILE ((int64_t)4 << 30)
#define MAX_FIELDS 72

// The fields of a source line, split at tabs in a private copy.
typedef struct {
  char *buf;
  char *f[MAX_FIELDS];
  int n;
} Fields;

static int split(const char *line, Fields *out, KilnStatus *st) {
  memset(out, 0, sizeof *out);
  out->buf = strdup(line);
  if (!out->buf) return kiln_rt_fail(st, "out of memory");
  for (char *s = out->buf;;) {
    if (out->n == MAX_FIELDS) {
      free(out->buf);
      return kiln_rt_fail(st, "data source has more than %d fields", MAX_FIELDS);
    }
    out->f[out->n++] = s;
    char *tab = strchr(s, '\t');
    if (!tab) break;
    *tab = '\0';
    s = tab + 1;
  }
  return 0;
}

static int find_input(const KilnModelDesc *d, const char *name) {
  for (int i = 0; i < d->ninputs; i++)
    if (strcmp(d->inputs[i].name, name) == 0) return i;
  return -1;
}

// Checks that every input leads with the batch and records values per sample.
static int layout(const KilnModelDesc *d, KilnData *dt, KilnStatus *st) {
  dt->col = calloc((size_t)d->ninputs + 1, sizeof *dt->col);
  dt->per = calloc((size_t)d->ninputs + 1, sizeof *dt->per);
  if (!dt->col || !dt->per) return kiln_rt_fail(st, "out of memory");
  for (int i = 0; i < d->ninputs; i++) {
    const KilnTensorDesc *t = &d->inputs[i];
    if (t->rank < 1 || t->shape[0] != d->batch || d->batch < 1)
      return kiln_rt_fail(st, "input '%s' does not lead with the batch (%lld): it cannot be fed "
                          "from data", t->name, (long long)d->batch);
    dt->per[i] = t->bytes / 4 / d->batch;
  }
  return 0;
}

//
// CSV: columns to inputs.
//

// Checks and stores value v of row r (file line `line`, column col) for input i.
static int put_value(KilnData *dt, int i, int64_t at, float v, const char *path, int64_t line,
                     int64_t col, KilnStatus *st) {
  const KilnTensorDesc *t = &dt->d->inputs[i];
  if (t->dtype == KILN_ABI_F32) {
    ((float *)dt->col[i])[at] = v;
    return 0;
  }
  if (v != floorf(v) || fabsf(v) > 2147483520.0f)
    return kiln_rt_fail(st, "%s:%lld: column %lld: input '%s' takes integers, got %g", path,
                        (long long)line, (long long)col, t->name, (double)v);
  if (t->bound && (v < 0 || v >= (float)t->bound))
    return kiln_rt_fail(st, "%s:%lld: column %lld: %g is outside [0, %lld) of input '%s'", path,
                        (long long)line, (long long)col, (double)v, (long long)t->bound, t->name);
  ((int32_t *)dt->col[i])[at] = (int32_t)v;
  return 0;
}

// "INPUT:BEGIN:END", the name possibly holding colons itself.
static int column_spec(const char *spec, char *name, size_t len, int64_t *b, int64_t *e) {
  const char *c2 = strrchr(spec, ':');
  if (!c2 || c2 == spec) return -1;
  const char *c1 = c2 - 1;
  while (c1 > spec && *c1 != ':') c1--;
  if (*c1 != ':' || (size_t)(c1 - spec) >= len) return -1;
  char *end;
  *b = strtoll(c1 + 1, &end, 10);
  if (end != c2) return -1;
  *e = strtoll(c2 + 1, &end, 10);
  if (*end || c2[1] == '\0') return -1;
  snprintf(name, len, "%.*s", (int)(c1 - spec), spec);
  return 0;
}

static int feed_columns(KilnData *dt, const KilnCsv *csv, const char *path, bool header,
                        const char *spec, KilnStatus *st) {
  const KilnModelDesc *d = dt->d;
  char name[256];
  int64_t b, e;
  if (column_spec(spec, name, sizeof name, &b, &e) != 0)
    return kiln_rt_fail(st, "%s: bad column mapping '%s' (expected INPUT:BEGIN:END)", path, spec);
  int i = find_input(d, name);
  if (i < 0) return kiln_rt_fail(st, "%s: the model has no input '%s' to feed", path, name);
  if (dt->col[i]) return kiln_rt_fail(st, "%s: input '%s' is fed twice", path, name);
  if (b < 0 || e <= b || e > csv->cols)
    return kiln_rt_fail(st, "%s: input '%s' takes columns [%lld, %lld), the file has %lld", path,
                        name, (long long)b, (long long)e, (long long)csv->cols);
  if (e - b != dt->per[i])
    return kiln_rt_fail(st, "%s: input '%s' takes %lld values per sample, columns [%lld, %lld) "
                        "hold %lld", path, name, (long long)dt->per[i], (long long)b, (long long)e,
                        (long long)(e - b));
  dt->col[i] = malloc((size_t)(csv->rows * dt->per[i]) * 4 + 4);
  if (!dt->col[i]) return kiln_rt_fail(st, "%s: out of memory", path);
  for (int64_t r = 0; r < csv->rows; r++)
    for (int64_t k = 0; k < e - b; k++)
      KILN_TRY(put_value(dt, i, r * (e - b) + k, csv->v[r * csv->cols + b + k], path,
                         r + 1 + header, b + k, st));
  return 0;
}

static int open_csv(KilnData *dt, const Fields *f, KilnStatus *st) {
  if (f->n < 4 || (strcmp(f->f[2], "0") != 0 && strcmp(f->f[2], "1") != 0))
    return kiln_rt_fail(st, "bad csv data source (expected csv PATH HEADER INPUT:BEGIN:END...)");
  const char *path = f->f[1];
  bool header = f->f[2][0] == '1';
  KilnCsv csv;
  KILN_TRY(kiln_csv_read(path, header, &csv, st));
  int rc = 0;
  for (int k = 3; k < f->n && rc == 0; k++) rc = feed_columns(dt, &csv, path, header, f->f[k], st);
  dt->n = csv.rows;
  kiln_csv_free(&csv);
  return rc;
}

//
// npy: one array per input, the first axis indexing samples.
//
static int feed_array(KilnData *dt, int i, const KilnArray *a, const char *path, KilnStatus *st) {
  const KilnTensorDesc *t = &dt->d->inputs[i];
  int64_t rows = a->rank ? a->shape[0] : 0;
  if (rows < 1 || a->count != rows * dt->per[i])
    return kiln_rt_fail(st, "%s: input '%s' takes %lld values per sample; an array of %lld values "
                        "in %lld samples does not fit", path, t->name, (long long)dt->per[i],
                        (long long)a->count, (long long)rows);
  if (dt->n && rows != dt->n)
    return kiln_rt_fail(st, "%s has %lld samples, %s has %lld", dt->what, (long long)dt->n, path,
                        (long long)rows);
  dt->n = rows;
  dt->col[i] = malloc((size_t)a->count * 4 + 4);
  if (!dt->col[i]) return kiln_rt_fail(st, "%s: out of memory", path);
  for (int64_t j = 0; j < a->count; j++) {
    int64_t s = j / dt->per[i];
    if (a->dtype == KILN_ABI_I32) {
      int32_t v = ((const int32_t *)a->data)[j];
      if (t->dtype == KILN_ABI_F32) {
        ((float *)dt->col[i])[j] = (float)v;
      } else if (t->bound && (v < 0 || v >= t->bound)) {
        return kiln_rt_fail(st, "%s: sample %lld: %d at element %lld is outside [0, %lld) of "
                            "input '%s'", path, (long long)s, v, (long long)j,
                            (long long)t->bound, t->name);
      } else {
        ((int32_t *)dt->col[i])[j] = v;
      }
      continue;
    }
    float v = ((const float *)a->data)[j];
    if (!isfinite(v))
      return kiln_rt_fail(st, "%s: sample %lld: element %lld is %s", path, (long long)s,
                          (long long)j, isnan(v) ? "NaN" : "infinite");
    if (t->dtype == KILN_ABI_F32) {
      ((float *)dt->col[i])[j] = v;
      continue;
    }
    if (v != floorf(v) || fabsf(v) > 2147483520.0f)
      return kiln_rt_fail(st, "%s: sample %lld: input '%s' takes integers, got %g at element %lld",
                          path, (long long)s, t->name, (double)v, (long long)j);
    if (t->bound && (v < 0 || v >= (float)t->bound))
      return kiln_rt_fail(st, "%s: sample %lld: %g at element %lld is outside [0, %lld) of input "
                          "'%s'", path, (long long)s, (double)v, (long long)j,
                          (long long)t->bound, t->name);
    ((int32_t *)dt->col[i])[j] = (int32_t)v;
  }
  return 0;
}

static int open_npy(KilnData *dt, const Fields *f, KilnStatus *st) {
  if (f->n < 2) return kiln_rt_fail(st, "bad npy data source (expected npy INPUT=PATH...)");
  for (int k = 1; k < f->n; k++) {
    char *eq = strchr(f->f[k], '=');
    if (!eq) return kiln_rt_fail(st, "bad npy data source field '%s' (expected INPUT=PATH)", f->f[k]);
    *eq = '\0';
    const char *path = eq + 1;
    int i = find_input(dt->d, f->f[k]);
    if (i < 0) return kiln_rt_fail(st, "%s: the model has no input '%s' to feed", path, f->f[k]);
    if (dt->col[i]) return kiln_rt_fail(st, "%s: input '%s' is fed twice", path, f->f[k]);
    if (!dt->what && !(dt->what = strdup(path))) return kiln_rt_fail(st, "out of memory");
    KilnArray a;
    KILN_TRY(kiln_npy_read(path, &a, st));
    int rc = feed_array(dt, i, &a, path, st);
    kiln_array_free(&a);
    KILN_TRY(rc);
  }
  return 0;
}

//
// text and tokens: one sequence of ids, windows of the input's length.
//
static int read_file(const char *path, unsigned char **out, int64_t *out_len, KilnStatus *st) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return kiln_rt_fail(st, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    close(fd);
    return kiln_rt_fail(st, "%s: not a regular file", path);
  }
  if (sb.st_size > MAX_SEQ_FILE) {
    close(fd);
    return kiln_rt_fail(st, "%s: %lld bytes, over the %lld-byte limit", path,
                        (long long)sb.st_size, (long long)MAX_SEQ_FILE);
  }
  unsigned char *buf = malloc((size_t)sb.st_size + 1);
  if (!buf) {
    close(fd);
    return kiln_rt_fail(st, "%s: out of memory reading %lld bytes", path, (long long)sb.st_size);
  }
  int64_t len = 0;
  while (len < sb.st_size) {
    ssize_t r = read(fd, buf + len, (size_t)(sb.st_size - len));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int err = errno;
      close(fd);
      free(buf);
      return kiln_rt_fail(st, "%s: read failed: %s", path, r ? strerror(err) : "file shrank");
    }
    len += r;
  }
  close(fd);
  *out = buf;
  *out_len = len;
  return 0;
}

// The smaller non-zero bound of the two sequence inputs; 0 if neither has one.
static int64_t seq_bound(const KilnData *dt, const char **out_name) {
  const KilnTensorDesc *a = &dt->d->inputs[dt->in], *b = &dt->d->inputs[dt->target];
  const KilnTensorDesc *t = !a->bound ? b : !b->bound ? a : a->bound <= b->bound ? a : b;
  *out_name = t->name;
  return t->bound;
}

static int seq_inputs(KilnData *dt, const Fields *f, const char *kind, KilnStatus *st) {
  if (f->n != 4)
    return kiln_rt_fail(st, "bad %s data source (expected %s PATH INPUT TARGET)", kind, kind);
  dt->in = find_input(dt->d, f->f[2]);
  dt->target = find_input(dt->d, f->f[3]);
  for (int k = 0; k < 2; k++) {
    int i = k ? dt->target : dt->in;
    const char *name = f->f[2 + k];
    if (i < 0) return kiln_rt_fail(st, "%s: the model has no input '%s' to feed", f->f[1], name);
    if (dt->d->inputs[i].dtype != KILN_ABI_I32)
      return kiln_rt_fail(st, "%s: input '%s' is f32; %s data feeds i32 ids", f->f[1], name, kind);
  }
  if (dt->in == dt->target)
    return kiln_rt_fail(st, "%s: input and target are both '%s'", f->f[1], f->f[2]);
  if (dt->per[dt->in] != dt->per[dt->target])
    return kiln_rt_fail(st, "%s: inputs '%s' and '%s' take windows of different lengths (%lld, %lld)",
                        f->f[1], f->f[2], f->f[3], (long long)dt->per[dt->in],
                        (long long)dt->per[dt->target]);
  dt->window = dt->per[dt->in];
  return 0;
}

static int windows(KilnData *dt, const char *what, KilnStatus *st) {
  dt->n = dt->nids > 0 ? (dt->nids - 1) / dt->window : 0;
  if (dt->n == 0)
    return kiln_rt_fail(st, "%s: %lld %s make no window of %lld plus one", dt->what,
                        (long long)dt->nids, what, (long long)dt->window);
  return 0;
}

void kiln_vocab_from_bytes(const unsigned char *present, KilnVocab *out) {
  memset(out, 0, sizeof *out);
  for (int b = 0; b < 256; b++) {
    out->id[b] = -1;
    if (present[b]) {
      out->id[b] = (int16_t)out->n;
      out->sym[out->n++] = (unsigned char)b;
    }
  }
}

static void describe_byte(unsigned char b, char *buf, size_t len) {
  if (b >= 0x20 && b < 0x7f) snprintf(buf, len, "'%c' (0x%02x)", b, b);
  else snprintf(buf, len, "0x%02x", b);
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

// A text source that is a folder: its regular files (symbolic links and
// subfolders left out, as the links in /usr/share/common-licenses repeat files),
// in name order, concatenated. starts[k] is where file k begins, names[k] its path.
typedef struct {
  int n;
  char **names;
  int64_t *starts;
} TextFiles;

static void text_files_free(TextFiles *t) {
  for (int i = 0; i < t->n; i++) free(t->names[i]);
  free(t->names);
  free(t->starts);
}

static int read_folder(const char *dir, unsigned char **out, int64_t *out_len, TextFiles *tf,
                       KilnStatus *st) {
  DIR *d = opendir(dir);
  if (!d) return kiln_rt_fail(st, "%s: cannot open: %s", dir, strerror(errno));
  int cap = 0, rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d))) {
    char *path;
    struct stat sb;
    if (e->d_name[0] == '.' || asprintf(&path, "%s/%s", dir, e->d_name) < 0) continue;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) {
      free(path);
      continue;
    }
    if (tf->n == cap) {
      cap = cap ? 2 * cap : 16;
      char **grown = realloc(tf->names, (size_t)cap * sizeof *grown);
      if (!grown) rc = kiln_rt_fail(st, "out of memory");
      else tf->names = grown;
    }
    if (rc == 0) tf->names[tf->n++] = path;
    else free(path);
  }
  closedir(d);
  KILN_TRY(rc);
  if (tf->n == 0) return kiln_rt_fail(st, "%s: the folder holds no regular files", dir);
  qsort(tf->names, (size_t)tf->n, sizeof *tf->names, by_name);
  if (!(tf->starts = malloc((size_t)tf->n * sizeof *tf->starts))) return kiln_rt_fail(st, "out of memory");
  unsigned char *all = NULL;
  int64_t len = 0;
  for (int i = 0; i < tf->n && rc == 0; i++) {
    unsigned char *part, *grown;
    int64_t n;
    tf->starts[i] = len;
    if ((rc = read_file(tf->names[i], &part, &n, st)) != 0) break;
    if (len + n > MAX_SEQ_FILE) rc = kiln_rt_fail(st, "%s: over the %lld-byte limit together",
                                                  dir, (long long)MAX_SEQ_FILE);
    else if (!(grown = realloc(all, (size_t)(len + n + 1)))) rc = kiln_rt_fail(st, "out of memory");
    else memcpy(grown + len, part, (size_t)n), all = grown, len += n;
    free(part);
  }
  if (rc != 0) return free(all), rc;
  *out = all;
  *out_len = len;
  return 0;
}

// The file (of a folder source) that holds offset *at, which becomes relative to it.
static const char *text_file_at(const TextFiles *tf, const char *path, int64_t *at) {
  int k = tf->n - 1;
  while (k > 0 && tf->starts[k] > *at) k--;
  if (tf->n == 0) return path;
  *at -= tf->starts[k];
  return tf->names[k];
}

static int open_text(KilnData *dt, const Fields *f, const KilnVocab *vocab, KilnStatus *st) {
  KILN_TRY(seq_inputs(dt, f, "text", st));
  unsigned char *text = NULL;
  int64_t len = 0;
  TextFiles tf = {0};
  struct stat sb;
  int read = stat(f->f[1], &sb) == 0 && S_ISDIR(sb.st_mode) ? read_folder(f->f[1], &text, &len, &tf, st)
                                                            : read_file(f->f[1], &text, &len, st);
  if (read != 0) {
    text_files_free(&tf);
    return read;
  }
  if (vocab) {
    dt->vocab = *vocab;
  } else {
    unsigned char present[256] = {0};
    for (int64_t i = 0; i < len; i++) present[text[i]] = 1;
    kiln_vocab_from_bytes(present, &dt->vocab);
  }
  const char *bname;
  int64_t bound = seq_bound(dt, &bname);
  int rc = 0;
  if (bound && dt->vocab.n > bound)
    rc = kiln_rt_fail(st, "%s: the text has %d distinct characters, more than the %lld ids of "
                      "input '%s' (its embedding rows); a larger vocabulary or a smaller "
                      "character set is needed", f->f[1], dt->vocab.n, (long long)bound, bname);
  if (rc == 0 && !(dt->ids = malloc((size_t)len * 4 + 4))) rc = kiln_rt_fail(st, "out of memory");
  for (int64_t i = 0; rc == 0 && i < len; i++) {
    if (dt->vocab.id[text[i]] < 0) {
      char b[32];
      describe_byte(text[i], b, sizeof b);
      int64_t at = i;
      const char *file = text_file_at(&tf, f->f[1], &at);
      rc = kiln_rt_fail(st, "%s: offset %lld: character %s is not in the training vocabulary",
                        file, (long long)at, b);
    } else {
      dt->ids[i] = dt->vocab.id[text[i]];
    }
  }
  free(text);
  text_files_free(&tf);
  dt->nids = len;
  return rc ? rc : windows(dt, "characters", st);
}

static int open_tokens(KilnData *dt, const Fields *f, KilnStatus *st) {
  KILN_TRY(seq_inputs(dt, f, "tokens", st));
  unsigned char *raw;
  int64_t len;
  KILN_TRY(read_file(f->f[1], &raw, &len, st));
  int rc = 0;
  if (len % 2)
    rc = kiln_rt_fail(st, "%s: %lld bytes is not a whole number of uint16 tokens", f->f[1],
                      (long long)len);
  const char *bname;
  int64_t bound = seq_bound(dt, &bname);
  if (rc == 0 && !(dt->ids = malloc((size_t)len * 2 + 4))) rc = kiln_rt_fail(st, "out of memory");
  for (int64_t i = 0; rc == 0 && i < len / 2; i++) {
    int32_t v = raw[2 * i] | raw[2 * i + 1] << 8;
    if (bound && v >= bound)
      rc = kiln_rt_fail(st, "%s: byte offset %lld: token %d is outside the vocabulary [0, %lld) "
                        "of input '%s'", f->f[1], (long long)(2 * i), v, (long long)bound, bname);
    else
      dt->ids[i] = v;
  }
  free(raw);
  dt->nids = len / 2;
  return rc ? rc : windows(dt, "tokens", st);
}

static int open_source(KilnData *dt, const char *source, const KilnVocab *vocab, KilnStatus *st) {
  Fields f;
  KILN_TRY(split(source, &f, st));
  int rc;
  bool npy = strcmp(f.f[0], "npy") == 0;  // names its files per input
  if (!npy && f.n >= 2 && !(dt->what = strdup(f.f[1])))
    rc = kiln_rt_fail(st, "out of memory");
  else if (strcmp(f.f[0], "csv") == 0)
    rc = (dt->kind = KILN_DATA_CSV, open_csv(dt, &f, st));
  else if (strcmp(f.f[0], "npy") == 0)
    rc = (dt->kind = KILN_DATA_NPY, open_npy(dt, &f, st));
  else if (strcmp(f.f[0], "text") == 0)
    rc = (dt->kind = KILN_DATA_TEXT, open_text(dt, &f, vocab, st));
  else if (strcmp(f.f[0], "tokens") == 0)
    rc = (dt->kind = KILN_DATA_TOKENS, open_tokens(dt, &f, st));
  else
    rc = kiln_rt_fail(st, "unknown kind of data source '%s'", f.f[0]);
  free(f.buf);
  return rc;
}

// Every input must be fed: a training step reads them all.
static int check_fed(const KilnData *dt, KilnStatus *st) {
  bool seq = dt->kind == KILN_DATA_TEXT || dt->kind == KILN_DATA_TOKENS;
  for (int i = 0; i < dt->d->ninputs; i++) {
    bool fed = seq ? (i == dt->in || i == dt->target) : dt->col[i] != NULL;
    if (!fed)
      return kiln_rt_fail(st, "%s: the data feeds no input '%s'", dt->what ? dt->what : "data",
                          dt->d->inputs[i].name);
  }
  return 0;
}

int kiln_data_open(const KilnModelDesc *d, const char *source, const KilnVocab *vocab,
                   KilnData *out, KilnStatus *st) {
  memset(out, 0, sizeof *out);
  out->d = d;
  out->in = out->target = -1;
  int rc = layout(d, out, st);
  if (rc == 0) rc = open_source(out, source, vocab, st);
  if (rc == 0) rc = check_fed(out, st);
  if (rc != 0) kiln_data_free(out);
  return rc;
}

void kiln_data_free(KilnData *dt) {
  if (!dt) return;
  if (dt->col)
    for (int i = 0; i < dt->d->ninputs; i++) free(dt->col[i]);
  free(dt->col);
  free(dt->per);
  free(dt->ids);
  free(dt->what);
  memset(dt, 0, sizeof *dt);
}

void kiln_data_fill(const KilnData *dt, KilnCtx *c, const int64_t *idx, int64_t n) {
  const KilnModelDesc *d = dt->d;
  if (dt->kind == KILN_DATA_TEXT || dt->kind == KILN_DATA_TOKENS) {
    int32_t *in = kiln_ctx_input(c, dt->in), *tg = kiln_ctx_input(c, dt->target);
    int64_t w = dt->window;
    for (int64_t r = 0; r < n; r++) {
      memcpy(in + r * w, dt->ids + idx[r] * w, (size_t)w * 4);
      memcpy(tg + r * w, dt->ids + idx[r] * w + 1, (size_t)w * 4);
    }
    memset(in + n * w, 0, (size_t)((d->batch - n) * w) * 4);
    memset(tg + n * w, 0, (size_t)((d->batch - n) * w) * 4);
    return;
  }
  for (int i = 0; i < d->ninputs; i++) {
    if (!dt->col[i]) continue;
    char *dst = kiln_ctx_input(c, i);
    size_t row = (size_t)dt->per[i] * 4;
    for (int64_t r = 0; r < n; r++) memcpy(dst + (size_t)r * row, (char *)dt->col[i] + (size_t)idx[r] * row, row);
    memset(dst + (size_t)n * row, 0, (size_t)(d->batch - n) * row);
  }
}

//
// Sample order: the validation split and per-epoch shuffling.
//
static int by_value(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

int kiln_data_split(int64_t n, double frac, uint64_t seed, int64_t **out_train,
                    int64_t *out_ntrain, int64_t **out_val, int64_t *out_nval, KilnStatus *st) {
  int64_t nval = frac > 0 ? (int64_t)(frac * (double)n + 0.5) : 0;
  if (frac > 0 && nval == 0 && n > 1) nval = 1;
  if (nval >= n && frac > 0)
    return kiln_rt_fail(st, "a validation split of %g leaves none of %lld samples to train on",
                        frac, (long long)n);
  int64_t *all = malloc((size_t)(n + 1) * sizeof *all);
  int64_t *val = malloc((size_t)(nval + 1) * sizeof *val);
  int64_t *train = malloc((size_t)(n - nval + 1) * sizeof *train);
  if (!all || !val || !train) {
    free(all), free(val), free(train);
    return kiln_rt_fail(st, "out of memory");
  }
  for (int64_t i = 0; i < n; i++) all[i] = i;
  if (nval > 0) {
    KilnRng r;
    kiln_rng_seed(&r, seed, "data.val_split");
    kiln_data_shuffle(all, n, r.state);
  }
  memcpy(val, all, (size_t)nval * sizeof *val);
  memcpy(train, all + nval, (size_t)(n - nval) * sizeof *train);
  free(all);
  qsort(val, (size_t)nval, sizeof *val, by_value);
  qsort(train, (size_t)(n - nval), sizeof *train, by_value);
  *out_train = train, *out_ntrain = n - nval;
  *out_val = val, *out_nval = nval;
  return 0;
}

uint64_t kiln_data_epoch_rng(uint64_t seed, int64_t epoch) {
  char stream[48];
  snprintf(stream, sizeof stream, "data.shuffle.%lld", (long long)epoch);
  KilnRng r;
  kiln_rng_seed(&r, seed, stream);
  return r.state;
}

// Fisher-Yates from the top; j uniform in [0, i] from the top 53 bits (exact for
// any count a data set can have).
void kiln_data_shuffle(int64_t *idx, int64_t n, uint64_t rng) {
  KilnRng r = {rng};
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)(kiln_rng_uniform(&r) * (double)(i + 1));
    int64_t t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
}

//
// The vocabulary as metadata text.
//
void kiln_vocab_escape(const KilnVocab *v, char *out) {
  size_t at = 0;
  for (int i = 0; i < v->n; i++) {
    unsigned char b = v->sym[i];
    if (b == '\\') at += (size_t)sprintf(out + at, "\\\\");
    else if (b >= 0x20 && b < 0x7f) out[at++] = (char)b;
    else at += (size_t)sprintf(out + at, "\\x%02x", b);
  }
  out[at] = '\0';
}

static int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Bytes must come in ascending order, each once, as kiln_vocab_escape writes them.
int kiln_vocab_parse(const char *s, KilnVocab *out) {
  unsigned char present[256] = {0};
  int last = -1;
  while (*s) {
    int b = (unsigned char)*s++;
    if (b == '\\') {
      if (*s == '\\') {
        s++;
      } else if (*s == 'x' && hex(s[1]) >= 0 && hex(s[2]) >= 0) {
        b = hex(s[1]) * 16 + hex(s[2]);
        s += 3;
      } else {
        return -1;
      }
    }
    if (b <= last) return -1;
    present[b] = 1;
    last = b;
  }
  kiln_vocab_from_bytes(present, out);
  return 0;
}

//
// The source to read, after command-line overrides.
//
static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static char *fail_null(KilnStatus *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *fail_null(KilnStatus *st, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char msg[sizeof st->msg];
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  kiln_rt_fail(st, "%s", msg);
  return NULL;
}

// s, or NULL with the out-of-memory error.
static char *or_oom(char *s, KilnStatus *st) { return s ? s : fail_null(st, "out of memory"); }

// Appends to a growing malloc'd string; NULL stays NULL (out of memory).
static char *append(char *s, const char *a, const char *b) {
  if (!s) return NULL;
  size_t n = strlen(s), la = strlen(a), lb = strlen(b);
  char *t = realloc(s, n + la + lb + 1);
  if (!t) {
    free(s);
    return NULL;
  }
  memcpy(t + n, a, la);
  memcpy(t + n + la, b, lb + 1);
  return t;
}

// A line for files the model file did not describe, from their names.
static char *guess_source(const KilnModelDesc *d, const char *const *args, int nargs,
                          KilnStatus *st) {
  const char *a = args[0];
  if (strchr(a, '=') || ends_with(a, ".npy")) {
    char *s = strdup("npy");
    for (int k = 0; k < nargs; k++) {
      if (!strchr(args[k], '=')) {
        free(s);
        return fail_null(st, "--data %s: name the input it feeds (INPUT=FILE)", args[k]);
      }
      s = append(s, "\t", args[k]);
    }
    return or_oom(s, st);
  }
  if (nargs > 1) return fail_null(st, "--data given %d times; only npy data takes several", nargs);
  if (ends_with(a, ".csv")) {
    char *s = append(strdup("csv"), "\t", a);
    s = append(s, "\t", "0");
    int64_t col = 0;
    for (int i = 0; i < d->ninputs; i++) {
      const KilnTensorDesc *t = &d->inputs[i];
      int64_t per = d->batch > 0 ? t->bytes / 4 / d->batch : 0;
      char spec[320];
      snprintf(spec, sizeof spec, "%s:%lld:%lld", t->name, (long long)col, (long long)(col + per));
      s = append(s, "\t", spec);
      col += per;
    }
    return or_oom(s, st);
  }
  bool text = ends_with(a, ".txt"), tokens = ends_with(a, ".bin");
  int target = d->train ? d->train->loss_target_input : -1;
  if ((text || tokens) && target >= 0 && d->ninputs == 2) {
    char *s = append(strdup(text ? "text" : "tokens"), "\t", a);
    s = append(s, "\t", d->inputs[target == 0 ? 1 : 0].name);
    s = append(s, "\t", d->inputs[target].name);
    return or_oom(s, st);
  }
  return fail_null(st, "--data %s: the model names no data source, and the kind of this file is "
                   "not clear from its name (.csv, INPUT=FILE.npy, .txt text, .bin tokens)", a);
}

// The model's line with its file(s) replaced.
static char *replace_paths(const char *line, const char *const *args, int nargs, KilnStatus *st) {
  Fields f;
  if (split(line, &f, st) != 0) return NULL;
  bool npy = strcmp(f.f[0], "npy") == 0;
  if (!npy && nargs > 1) {
    free(f.buf);
    return fail_null(st, "--data given %d times; only npy data takes several", nargs);
  }
  if (!npy && f.n >= 2) f.f[1] = (char *)args[0];
  if (npy && nargs == 1 && !strchr(args[0], '=')) {
    // A bare FILE replaces the only input's file.
    char *eq = f.n == 2 ? strchr(f.f[1], '=') : NULL;
    if (!eq) {
      free(f.buf);
      return fail_null(st, "--data %s: the model's npy data has several inputs; give INPUT=FILE",
                       args[0]);
    }
    eq[1] = '\0';
    char *s = append(append(strdup("npy"), "\t", f.f[1]), "", args[0]);
    free(f.buf);
    return or_oom(s, st);
  }
  for (int k = 0; npy && k < nargs; k++) {
    const char *eq = strchr(args[k], '=');
    int hit = -1;
    for (int j = 1; eq && j < f.n; j++) {
      const char *feq = strchr(f.f[j], '=');
      if (feq && feq - f.f[j] == eq - args[k] && strncmp(f.f[j], args[k], (size_t)(eq - args[k])) == 0)
        hit = j;
    }
    if (hit < 0) {
      free(f.buf);
      return fail_null(st, "--data %s: the model's npy data feeds no such input (give INPUT=FILE "
                       "for one of its inputs)", args[k]);
    }
    f.f[hit] = (char *)args[k];
  }
  char *s = strdup(f.f[0]);
  for (int j = 1; j < f.n; j++) s = append(s, "\t", f.f[j]);
  free(f.buf);
  return or_oom(s, st);
}

char *kiln_data_source(const KilnModelDesc *d, const char *line, const char *const *args,
                       int nargs, KilnStatus *st) {
  for (int k = 0; k < nargs; k++)
    if (strpbrk(args[k], "\t\n")) return fail_null(st, "--data: a file name with a tab or newline");
  if (nargs == 0) {
    if (!line) return NULL;
    char *s = strdup(line);
    return or_oom(s, st);
  }
  return line ? replace_paths(line, args, nargs, st) : guess_source(d, args, nargs, st);
}
