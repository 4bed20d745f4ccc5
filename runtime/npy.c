// NumPy .npy: the magic "\x93NUMPY", a version (1.0: 2-byte header length;
// 2.0, 3.0: 4-byte), a header that is a Python dict literal
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// padded with spaces and a newline, then the data in C order.
//
// The header is parsed by a small strict grammar (no eval): exactly the three keys,
// little-endian f4/i4/f8/i8, C order, rank <= 6. The data size is checked against
// the file before anything is allocated.
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/runtime.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "npy data is read little-endian");

// Headers written by numpy are at most a few hundred bytes; numpy itself refuses
// more than 10000 by default.
#define MAX_HEADER (1 << 20)

typedef struct {
  int32_t dtype;     // after conversion
  int itemsize;      // in the file: 4 or 8
  bool fortran;
  int32_t rank;
  int64_t shape[KILN_ABI_MAX_RANK];
} Header;

// A cursor over the header text; base is its offset in the file, for messages.
typedef struct {
  const char *path;
  const char *s;
  size_t len, pos;
  int64_t base;
  KilnStatus *st;
} Cur;

static int fail_at(Cur *c, const char *what) {
  return kiln_rt_fail(c->st, "%s: header at file offset %lld: expected %s", c->path,
                      (long long)(c->base + (int64_t)c->pos), what);
}

static void skip_ws(Cur *c) {
  while (c->pos < c->len && (c->s[c->pos] == ' ' || c->s[c->pos] == '\t')) c->pos++;
}

static bool eat(Cur *c, char ch) {
  skip_ws(c);
  if (c->pos < c->len && c->s[c->pos] == ch) {
    c->pos++;
    return true;
  }
  return false;
}

// A quoted string without escapes; [*out, *out + *out_len) within the header.
static int string(Cur *c, const char **out, size_t *out_len) {
  skip_ws(c);
  char q = c->pos < c->len ? c->s[c->pos] : 0;
  if (q != '\'' && q != '"') return fail_at(c, "a quoted string");
  size_t start = ++c->pos;
  while (c->pos < c->len && c->s[c->pos] != q && c->s[c->pos] != '\\') c->pos++;
  if (c->pos >= c->len || c->s[c->pos] != q) return fail_at(c, "a closing quote");
  *out = c->s + start;
  *out_len = c->pos - start;
  c->pos++;
  return 0;
}

static bool is_word(Cur *c, const char *w) {
  size_t n = strlen(w);
  return c->len - c->pos >= n && memcmp(c->s + c->pos, w, n) == 0;
}

static int descr(Cur *c, Header *h) {
  const char *s;
  size_t n;
  size_t at = c->pos;
  KILN_TRY(string(c, &s, &n));
  static const struct {
    const char *name;
    int32_t dtype;
    int itemsize;
  } known[] = {{"<f4", KILN_ABI_F32, 4}, {"<i4", KILN_ABI_I32, 4},
               {"<f8", KILN_ABI_F32, 8}, {"<i8", KILN_ABI_I32, 8}};
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    if (n == 3 && memcmp(s, known[i].name, 3) == 0) {
      h->dtype = known[i].dtype;
      h->itemsize = known[i].itemsize;
      return 0;
    }
  }
  c->pos = at;
  skip_ws(c);
  return kiln_rt_fail(c->st,
                      "%s: header at file offset %lld: descr '%.*s' is not supported (expected "
                      "'<f4', '<i4', '<f8' or '<i8')",
                      c->path, (long long)(c->base + (int64_t)c->pos), (int)(n > 32 ? 32 : n), s);
}

static int fortran_order(Cur *c, Header *h) {
  skip_ws(c);
  if (is_word(c, "False")) {
    c->pos += 5;
    h->fortran = false;
    return 0;
  }
  if (is_word(c, "True"))
    return kiln_rt_fail(c->st, "%s: header at file offset %lld: fortran_order True is not "
                        "supported (save a C-order array: np.ascontiguousarray)",
                        c->path, (long long)(c->base + (int64_t)c->pos));
  return fail_at(c, "False");
}

// A non-negative decimal integer (Python 2's numpy may add an 'L').
static int integer(Cur *c, int64_t *out) {
  skip_ws(c);
  if (c->pos >= c->len || c->s[c->pos] < '0' || c->s[c->pos] > '9')
    return fail_at(c, "a non-negative integer");
  int64_t v = 0;
  while (c->pos < c->len && c->s[c->pos] >= '0' && c->s[c->pos] <= '9') {
    int d = c->s[c->pos] - '0';
    if (v > (INT64_MAX - d) / 10) return fail_at(c, "a dimension that fits 64 bits");
    v = v * 10 + d;
    c->pos++;
  }
  if (c->pos < c->len && c->s[c->pos] == 'L') c->pos++;
  *out = v;
  return 0;
}

// A tuple: "()", "(3,)", "(3, 4)" or "(3, 4,)"; "(3)" is an int in Python, not a tuple.
static int shape(Cur *c, Header *h) {
  if (!eat(c, '(')) return fail_at(c, "'(' opening the shape tuple");
  h->rank = 0;
  if (eat(c, ')')) return 0;
  for (;;) {
    if (h->rank == KILN_ABI_MAX_RANK) return fail_at(c, "a shape of rank at most 6");
    KILN_TRY(integer(c, &h->shape[h->rank]));
    h->rank++;
    bool comma = eat(c, ',');
    if (eat(c, ')')) {
      if (h->rank == 1 && !comma) return fail_at(c, "',' in a one-element shape tuple");
      return 0;
    }
    if (!comma) return fail_at(c, "',' or ')' in the shape tuple");
  }
}

// The dict: each of descr, fortran_order and shape exactly once, nothing else.
static int header_dict(Cur *c, Header *h) {
  bool seen[3] = {false, false, false};
  static const char *const keys[3] = {"descr", "fortran_order", "shape"};
  if (!eat(c, '{')) return fail_at(c, "'{' opening the header dict");
  while (!eat(c, '}')) {
    const char *k;
    size_t n, at = c->pos;
    KILN_TRY(string(c, &k, &n));
    int which = -1;
    for (int i = 0; i < 3; i++)
      if (strlen(keys[i]) == n && memcmp(k, keys[i], n) == 0) which = i;
    c->pos = at;
    skip_ws(c);
    if (which < 0) return fail_at(c, "one of the keys 'descr', 'fortran_order', 'shape'");
    if (seen[which]) return fail_at(c, "each key once");
    seen[which] = true;
    KILN_TRY(string(c, &k, &n));
    if (!eat(c, ':')) return fail_at(c, "':'");
    KILN_TRY(which == 0 ? descr(c, h) : which == 1 ? fortran_order(c, h) : shape(c, h));
    if (!eat(c, ',')) {
      if (!eat(c, '}')) return fail_at(c, "',' or '}'");
      break;
    }
  }
  for (int i = 0; i < 3; i++)
    if (!seen[i]) return fail_at(c, i == 0 ? "a 'descr' key" : i == 1 ? "a 'fortran_order' key"
                                                                   : "a 'shape' key");
  while (c->pos < c->len && (c->s[c->pos] == ' ' || c->s[c->pos] == '\n')) c->pos++;
  if (c->pos != c->len) return fail_at(c, "only padding after the header dict");
  return 0;
}

// Reads the preamble and header; *out_data_off is where the data starts.
static int read_header(const char *path, int fd, int64_t size, Header *h, int64_t *out_data_off,
                       KilnStatus *st) {
  unsigned char pre[12];
  if (size < 10 || kiln_rt_read_at(fd, pre, 10, 0) != 0 || memcmp(pre, "\x93NUMPY", 6) != 0)
    return kiln_rt_fail(st, "%s: not a .npy file (no \\x93NUMPY magic at file offset 0)", path);
  int major = pre[6], minor = pre[7];
  if ((major != 1 && major != 2 && major != 3) || minor != 0)
    return kiln_rt_fail(st, "%s: .npy version %d.%d at file offset 6 (expected 1.0, 2.0 or 3.0)",
                        path, major, minor);
  int64_t prefix = major == 1 ? 10 : 12;
  if (size < prefix || (major > 1 && kiln_rt_read_at(fd, pre + 10, 2, 10) != 0))
    return kiln_rt_fail(st, "%s: file ends inside the header length", path);
  int64_t hlen = pre[8] | pre[9] << 8;
  if (major > 1) hlen |= (int64_t)pre[10] << 16 | (int64_t)pre[11] << 24;
  if (hlen > MAX_HEADER || hlen > size - prefix)
    return kiln_rt_fail(st, "%s: header length %lld at file offset 8 is past the end of the file "
                        "(%lld bytes) or over the %d-byte limit",
                        path, (long long)hlen, (long long)size, MAX_HEADER);
  char *text = malloc(hlen ? (size_t)hlen : 1);
  if (!text) return kiln_rt_fail(st, "%s: out of memory", path);
  int rc = 0;
  if (kiln_rt_read_at(fd, text, (size_t)hlen, prefix) != 0) {
    rc = kiln_rt_fail(st, "%s: cannot read the header: %s", path, kiln_rt_read_error());
  } else {
    Cur c = {path, text, (size_t)hlen, 0, prefix, st};
    rc = header_dict(&c, h);
  }
  free(text);
  *out_data_off = prefix + hlen;
  return rc;
}

// Element count, checked so that count * 8 fits an int64.
static int count_of(const char *path, const Header *h, int64_t *out, KilnStatus *st) {
  int64_t n = 1;
  for (int i = 0; i < h->rank; i++) {
    if (h->shape[i] != 0 && n > INT64_MAX / 8 / h->shape[i])
      return kiln_rt_fail(st, "%s: shape's element count overflows at dim %d", path, i);
    n *= h->shape[i];
  }
  *out = n;
  return 0;
}

// Converts n 8-byte values starting at flat index first: doubles to floats
// (finite values must stay finite), int64s to int32s when they fit.
static int narrow(const char *path, const Header *h, const unsigned char *src, int64_t n,
                  int64_t first, void *dst, KilnStatus *st) {
  for (int64_t i = 0; i < n; i++) {
    if (h->dtype == KILN_ABI_F32) {
      double v;
      memcpy(&v, src + 8 * i, 8);
      if (isfinite(v) && fabs(v) > FLT_MAX)
        return kiln_rt_fail(st, "%s: value %g at index %lld does not fit f32", path, v,
                            (long long)(first + i));
      ((float *)dst)[i] = (float)v;
    } else {
      int64_t v;
      memcpy(&v, src + 8 * i, 8);
      if (v < INT32_MIN || v > INT32_MAX)
        return kiln_rt_fail(st, "%s: value %lld at index %lld does not fit i32", path,
                            (long long)v, (long long)(first + i));
      ((int32_t *)dst)[i] = (int32_t)v;
    }
  }
  return 0;
}

// Reads count values at data_off into out, narrowing 8-byte values in chunks.
static int read_data(const char *path, int fd, const Header *h, int64_t data_off, int64_t count,
                     void *out, KilnStatus *st) {
  if (h->itemsize == 4) {
    if (kiln_rt_read_at(fd, out, (size_t)count * 4, data_off) != 0)
      return kiln_rt_fail(st, "%s: cannot read the data: %s", path, kiln_rt_read_error());
    return 0;
  }
  enum { CHUNK = 4096 };
  unsigned char buf[CHUNK * 8];
  for (int64_t i = 0; i < count; i += CHUNK) {
    int64_t n = count - i < CHUNK ? count - i : CHUNK;
    if (kiln_rt_read_at(fd, buf, (size_t)n * 8, data_off + 8 * i) != 0)
      return kiln_rt_fail(st, "%s: cannot read the data: %s", path, kiln_rt_read_error());
    KILN_TRY(narrow(path, h, buf, n, i, (char *)out + 4 * i, st));
  }
  return 0;
}

static int read_npy(const char *path, int fd, int64_t size, KilnArray *out, KilnStatus *st) {
  Header h = {0};
  int64_t data_off = 0, count = 0;
  KILN_TRY(read_header(path, fd, size, &h, &data_off, st));
  KILN_TRY(count_of(path, &h, &count, st));
  int64_t want = count * h.itemsize, have = size - data_off;
  if (want != have)
    return kiln_rt_fail(st, "%s: shape needs %lld data bytes at file offset %lld, the file has %lld",
                        path, (long long)want, (long long)data_off, (long long)have);
  out->data = malloc(count ? (size_t)count * 4 : 1);
  if (!out->data) return kiln_rt_fail(st, "%s: out of memory for %lld values", path,
                                      (long long)count);
  out->dtype = h.dtype;
  out->rank = h.rank;
  memcpy(out->shape, h.shape, sizeof h.shape);
  out->count = count;
  return read_data(path, fd, &h, data_off, count, out->data, st);
}

int kiln_npy_read(const char *path, KilnArray *out, KilnStatus *st) {
  memset(out, 0, sizeof *out);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return kiln_rt_fail(st, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  int rc;
  if (fstat(fd, &sb) != 0)
    rc = kiln_rt_fail(st, "%s: cannot stat: %s", path, strerror(errno));
  else if (!S_ISREG(sb.st_mode))
    rc = kiln_rt_fail(st, "%s: not a regular file", path);
  else
    rc = read_npy(path, fd, (int64_t)sb.st_size, out, st);
  close(fd);
  if (rc != 0) kiln_array_free(out);
  return rc;
}

void kiln_array_free(KilnArray *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

// Version 1.0, the header padded with spaces and a newline so that the data starts
// at a multiple of 64 bytes, as numpy writes it.
int kiln_npy_write(const char *path, int32_t dtype, const int64_t *shape, int rank,
                   const void *data, KilnStatus *st) {
  if (dtype != KILN_ABI_F32 && dtype != KILN_ABI_I32)
    return kiln_rt_fail(st, "%s: dtype %d cannot be written", path, (int)dtype);
  if (rank < 0 || rank > KILN_ABI_MAX_RANK)
    return kiln_rt_fail(st, "%s: rank %d (at most %d)", path, rank, KILN_ABI_MAX_RANK);
  char shp[KILN_ABI_MAX_RANK * 22 + 4] = "";
  int n = 0;
  int64_t count = 1;
  for (int i = 0; i < rank; i++) {
    if (shape[i] < 0 || (shape[i] != 0 && count > INT64_MAX / 4 / shape[i]))
      return kiln_rt_fail(st, "%s: bad shape[%d] = %lld", path, i, (long long)shape[i]);
    count *= shape[i];
    n += snprintf(shp + n, sizeof shp - (size_t)n, i ? ", %lld" : "%lld", (long long)shape[i]);
  }
  if (rank == 1) n += snprintf(shp + n, sizeof shp - (size_t)n, ",");
  char hdr[256 + sizeof shp];
  int len = snprintf(hdr + 10, sizeof hdr - 10, "{'descr': '%s', 'fortran_order': False, "
                     "'shape': (%s), }", dtype == KILN_ABI_F32 ? "<f4" : "<i4", shp);
  int total = (10 + len + 1 + 63) / 64 * 64;  // +1: the newline
  memset(hdr + 10 + len, ' ', (size_t)(total - 10 - len - 1));
  hdr[total - 1] = '\n';
  memcpy(hdr, "\x93NUMPY\x01\x00", 8);
  hdr[8] = (char)((total - 10) & 0xff);
  hdr[9] = (char)((total - 10) >> 8);
  const void *parts[2] = {hdr, data};
  size_t lens[2] = {(size_t)total, (size_t)count * 4};
  return kiln_rt_write_atomic(path, parts, lens, 2, st);
}
