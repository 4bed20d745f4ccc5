// Numeric CSV: decimal numbers separated by commas, spaces or tabs around them
// allowed, '\n' or "\r\n" line ends, every row the same width, an optional header
// line that is skipped, blank lines at the end ignored. NaN and infinities are
// refused: a data file that holds them is a bug upstream, better caught here.
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/runtime.h"

// Larger files are refused; data sets that big want .npy or a binary format.
#define MAX_FILE ((int64_t)2 << 30)

// Reads the whole file, NUL-terminated, growing the buffer geometrically (the
// file may be a pipe, so its size is not trusted).
static int slurp(const char *path, char **out, size_t *out_len, KilnStatus *st) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return kiln_rt_fail(st, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && sb.st_size > MAX_FILE) {
    close(fd);
    return kiln_rt_fail(st, "%s: file is %lld bytes, over the %lld-byte limit for CSV", path,
                        (long long)sb.st_size, (long long)MAX_FILE);
  }
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  int rc = buf ? 0 : kiln_rt_fail(st, "%s: out of memory", path);
  while (rc == 0) {
    if (len + 1 == cap) {
      // The last size holds MAX_FILE bytes, a NUL and one byte more to see past it.
      size_t ncap = cap * 2 < (size_t)MAX_FILE + 2 ? cap * 2 : (size_t)MAX_FILE + 2;
      if (len > (size_t)MAX_FILE) {
        rc = kiln_rt_fail(st, "%s: over the %lld-byte limit for CSV", path, (long long)MAX_FILE);
        break;
      }
      char *nb = realloc(buf, ncap);
      if (!nb) {
        rc = kiln_rt_fail(st, "%s: out of memory reading %zu bytes", path, ncap);
        break;
      }
      buf = nb;
      cap = ncap;
    }
    ssize_t r = read(fd, buf + len, cap - 1 - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) rc = kiln_rt_fail(st, "%s: read failed: %s", path, strerror(errno));
    if (r <= 0) break;
    len += (size_t)r;
  }
  close(fd);
  if (rc != 0) {
    free(buf);
    return rc;
  }
  buf[len] = '\0';
  *out = buf;
  *out_len = len;
  return 0;
}

// The parse state: the text, where we are, and the values so far.
typedef struct {
  const char *path;
  const char *line;     // start of the current line
  int64_t lineno;
  float *v;
  int64_t n, cap;
  int64_t cols;         // width of the first data row; 0 before it
  KilnStatus *st;
} Parse;

static bool is_space(char c) { return c == ' ' || c == '\t'; }

// Length of the decimal number at s: [+-]digits[.digits][(e|E)[+-]digits], with at
// least one digit in the mantissa; 0 if there is none. Hex, "inf" and "nan", which
// strtof would take, are not numbers here.
static size_t number_len(const char *s) {
  size_t i = 0, digits = 0;
  if (s[i] == '+' || s[i] == '-') i++;
  while (s[i] >= '0' && s[i] <= '9') i++, digits++;
  if (s[i] == '.') {
    i++;
    while (s[i] >= '0' && s[i] <= '9') i++, digits++;
  }
  if (digits == 0) return 0;
  if (s[i] == 'e' || s[i] == 'E') {
    size_t j = i + 1;
    if (s[j] == '+' || s[j] == '-') j++;
    if (s[j] >= '0' && s[j] <= '9') {
      while (s[j] >= '0' && s[j] <= '9') j++;
      i = j;
    }
  }
  return i;
}

static int push(Parse *p, float x) {
  if (p->n == p->cap) {
    int64_t cap = p->cap ? p->cap * 2 : 1024;
    float *nv = realloc(p->v, (size_t)cap * sizeof *nv);
    if (!nv) return kiln_rt_fail(p->st, "%s: out of memory", p->path);
    p->v = nv;
    p->cap = cap;
  }
  p->v[p->n++] = x;
  return 0;
}

static const char *special(const char *s, const char *e);

// Reports the field at s (up to the next comma or the line's end) as not a number.
static int bad_field(Parse *p, const char *s, const char *end) {
  const char *e = s;
  while (e < end && *e != ',') e++;
  while (e > s && is_space(e[-1])) e--;
  long long col = (long long)(s - p->line) + 1;
  if (e == s)
    return kiln_rt_fail(p->st, "%s:%lld:%lld: expected a number, got an empty field", p->path,
                        (long long)p->lineno, col);
  int n = e - s > 40 ? 40 : (int)(e - s);
  return kiln_rt_fail(p->st, "%s:%lld:%lld: expected a number, got '%.*s'%s%s", p->path,
                      (long long)p->lineno, col, n, s, e - s > 40 ? "..." : "",
                      special(s, e));
}

// Why strtof's special values are refused, when the field is one.
static const char *special(const char *s, const char *e) {
  if (s < e && (*s == '+' || *s == '-')) s++;
  size_t n = (size_t)(e - s);
  if (n == 3 && strncasecmp(s, "nan", 3) == 0) return " (NaN is not allowed in data)";
  if ((n == 3 && strncasecmp(s, "inf", 3) == 0) || (n == 8 && strncasecmp(s, "infinity", 8) == 0))
    return " (infinities are not allowed in data)";
  return "";
}

// One data line [p->line, end): numbers separated by commas.
static int row(Parse *p, const char *end) {
  const char *s = p->line;
  int64_t cols = 0;
  for (;;) {
    while (s < end && is_space(*s)) s++;
    size_t k = number_len(s);
    const char *after = s + k;
    while (after < end && is_space(*after)) after++;
    if (k == 0 || (after < end && *after != ',')) return bad_field(p, s, end);
    float x = strtof(s, NULL);  // stops at the same place: the text after is not numeric
    if (isinf(x))
      return kiln_rt_fail(p->st, "%s:%lld:%lld: %.*s is out of range for f32", p->path,
                          (long long)p->lineno, (long long)(s - p->line) + 1, (int)k, s);
    KILN_TRY(push(p, x));
    cols++;
    if (after == end) break;
    s = after + 1;
  }
  if (p->cols == 0) p->cols = cols;
  if (cols != p->cols)
    return kiln_rt_fail(p->st, "%s:%lld: row has %lld columns, expected %lld", p->path,
                        (long long)p->lineno, (long long)cols, (long long)p->cols);
  return 0;
}

static bool blank(const char *s, const char *end) {
  while (s < end && is_space(*s)) s++;
  return s == end;
}

static int parse(Parse *p, const char *text, size_t len, bool header) {
  const char *s = text, *stop = text + len;
  if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3;  // a UTF-8 byte-order mark
  int64_t blank_at = 0;  // the first blank line since the last row
  for (p->lineno = 1; s < stop; p->lineno++) {
    const char *nl = memchr(s, '\n', (size_t)(stop - s));
    const char *end = nl ? nl : stop;
    if (end > s && end[-1] == '\r') end--;
    p->line = s;
    s = nl ? nl + 1 : stop;
    if (header && p->lineno == 1) continue;
    if (blank(p->line, end)) {
      if (!blank_at) blank_at = p->lineno;
      continue;
    }
    if (blank_at)
      return kiln_rt_fail(p->st, "%s:%lld: blank line between rows", p->path,
                          (long long)blank_at);
    KILN_TRY(row(p, end));
  }
  if (p->n == 0) return kiln_rt_fail(p->st, "%s: no data rows", p->path);
  return 0;
}

int kiln_csv_read(const char *path, bool header, KilnCsv *out, KilnStatus *st) {
  memset(out, 0, sizeof *out);
  char *text = NULL;
  size_t len = 0;
  KILN_TRY(slurp(path, &text, &len, st));
  Parse p = {.path = path, .st = st};
  int rc = parse(&p, text, len, header);
  free(text);
  if (rc != 0) {
    free(p.v);
    return rc;
  }
  out->v = p.v;
  out->cols = p.cols;
  out->rows = p.n / p.cols;
  return 0;
}

void kiln_csv_free(KilnCsv *c) {
  if (!c) return;
  free(c->v);
  memset(c, 0, sizeof *c);
}

void kiln_csv_write(FILE *f, const float *v, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      fprintf(f, c + 1 < cols ? "%.9g," : "%.9g\n", (double)v[r * cols + c]);
}
