// safetensors: an 8-byte little-endian header length N, N bytes of JSON mapping
// tensor names to {dtype, shape, data_offsets}, then the raw little-endian data;
// data_offsets are relative to the start of the data section (file offset 8 + N).
//
// Reading is strict and happens in two steps: the header is parsed and every entry
// checked against the file's size before the data section is allocated, so a
// corrupt or hostile file costs at most the header's (bounded) size. Every F32
// value must be finite: weights holding NaN or an infinity are refused when read,
// not discovered as a NaN loss after the first step.
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/runtime.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

// The reference implementation's own bound on the header.
#define MAX_HEADER 100000000

// Sizes of the dtypes Kiln reads; both are 4 bytes.
#define ITEMSIZE 4

// Longest tensor name, as KilnStEntry holds it.
#define NAME_MAX_LEN (sizeof ((KilnStEntry *)0)->name - 1)

static const char *dtype_name(int32_t dtype) {
  return dtype == KILN_ABI_I32 ? "I32" : "F32";
}

static int parse_dtype(const char *path, const char *name, json_t *v, KilnStEntry *e,
                       KilnStatus *st) {
  const char *s = json_string_value(v);
  if (!s) return kiln_rt_fail(st, "%s: tensor '%s': field 'dtype' is not a string", path, name);
  if (strcmp(s, "F32") == 0)
    e->dtype = KILN_ABI_F32;
  else if (strcmp(s, "I32") == 0)
    e->dtype = KILN_ABI_I32;
  else
    return kiln_rt_fail(st, "%s: tensor '%s': dtype '%s' is not supported (Kiln reads F32 and I32)",
                        path, name, s);
  return 0;
}

// Fills e->rank and e->shape; *out_numel is the element count, checked so that
// numel * ITEMSIZE fits an int64.
static int parse_shape(const char *path, const char *name, json_t *v, KilnStEntry *e,
                       int64_t *out_numel, KilnStatus *st) {
  if (!json_is_array(v))
    return kiln_rt_fail(st, "%s: tensor '%s': field 'shape' is not an array", path, name);
  size_t rank = json_array_size(v);
  if (rank > KILN_ABI_MAX_RANK)
    return kiln_rt_fail(st, "%s: tensor '%s': shape has rank %zu, at most %d", path, name, rank,
                        KILN_ABI_MAX_RANK);
  int64_t numel = 1;
  for (size_t i = 0; i < rank; i++) {
    json_t *d = json_array_get(v, i);
    if (!json_is_integer(d) || json_integer_value(d) < 0)
      return kiln_rt_fail(st, "%s: tensor '%s': shape[%zu] is not a non-negative integer", path,
                          name, i);
    int64_t n = json_integer_value(d);
    if (n != 0 && numel > INT64_MAX / ITEMSIZE / n)
      return kiln_rt_fail(st, "%s: tensor '%s': shape's element count overflows at shape[%zu]",
                          path, name, i);
    e->shape[i] = n;
    numel *= n;
  }
  e->rank = (int32_t)rank;
  *out_numel = numel;
  return 0;
}

static int parse_offsets(const char *path, const char *name, json_t *v, int64_t numel,
                         int64_t data_len, int64_t data_off, KilnStEntry *e, KilnStatus *st) {
  if (!json_is_array(v) || json_array_size(v) != 2)
    return kiln_rt_fail(st, "%s: tensor '%s': field 'data_offsets' is not an array [begin, end]",
                        path, name);
  json_t *b = json_array_get(v, 0), *x = json_array_get(v, 1);
  if (!json_is_integer(b) || !json_is_integer(x) || json_integer_value(b) < 0 ||
      json_integer_value(x) < 0)
    return kiln_rt_fail(st, "%s: tensor '%s': data_offsets are not non-negative integers", path,
                        name);
  int64_t begin = json_integer_value(b), end = json_integer_value(x);
  if (begin > end)
    return kiln_rt_fail(st, "%s: tensor '%s': data_offsets [%lld, %lld] begin after end", path,
                        name, (long long)begin, (long long)end);
  if (end > data_len)
    return kiln_rt_fail(st,
                        "%s: tensor '%s': data_offsets [%lld, %lld] end past the data section "
                        "(%lld bytes at file offset %lld)",
                        path, name, (long long)begin, (long long)end, (long long)data_len,
                        (long long)data_off);
  if (end - begin != numel * ITEMSIZE)
    return kiln_rt_fail(st,
                        "%s: tensor '%s': data_offsets [%lld, %lld] hold %lld bytes, but dtype %s "
                        "and shape need %lld",
                        path, name, (long long)begin, (long long)end, (long long)(end - begin),
                        dtype_name(e->dtype), (long long)(numel * ITEMSIZE));
  e->begin = begin;
  e->end = end;
  return 0;
}

// One tensor entry: exactly the fields dtype, shape and data_offsets.
static int parse_entry(const char *path, const char *name, json_t *v, int64_t data_len,
                       int64_t data_off, KilnStEntry *e, KilnStatus *st) {
  size_t len = strlen(name);
  if (len == 0 || len >= sizeof e->name)
    return kiln_rt_fail(st, "%s: tensor name of %zu bytes: expected 1 to %zu", path, len,
                        sizeof e->name - 1);
  memcpy(e->name, name, len + 1);
  if (!json_is_object(v))
    return kiln_rt_fail(st, "%s: tensor '%s': entry is not an object", path, name);
  const char *key;
  json_t *f;
  json_object_foreach(v, key, f) {
    if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 && strcmp(key, "data_offsets") != 0)
      return kiln_rt_fail(st,
                          "%s: tensor '%s': unexpected field '%s' (expected dtype, shape, "
                          "data_offsets)",
                          path, name, key);
  }
  static const char *const fields[] = {"dtype", "shape", "data_offsets"};
  for (int i = 0; i < 3; i++)
    if (!json_object_get(v, fields[i]))
      return kiln_rt_fail(st, "%s: tensor '%s': missing field '%s'", path, name, fields[i]);
  int64_t numel = 0;
  KILN_TRY(parse_dtype(path, name, json_object_get(v, "dtype"), e, st));
  KILN_TRY(parse_shape(path, name, json_object_get(v, "shape"), e, &numel, st));
  return parse_offsets(path, name, json_object_get(v, "data_offsets"), numel, data_len, data_off,
                       e, st);
}

// "__metadata__": a flat string-to-string map, kept as compact JSON text.
static int parse_metadata(const char *path, json_t *v, KilnStFile *out, KilnStatus *st) {
  if (!json_is_object(v))
    return kiln_rt_fail(st, "%s: '__metadata__' is not an object", path);
  const char *key;
  json_t *f;
  json_object_foreach(v, key, f) {
    if (!json_is_string(f))
      return kiln_rt_fail(st, "%s: '__metadata__': value of '%s' is not a string", path, key);
  }
  out->metadata_json = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
  if (!out->metadata_json) return kiln_rt_fail(st, "%s: out of memory", path);
  return 0;
}

static int by_begin(const void *a, const void *b) {
  const KilnStEntry *x = a, *y = b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return (x->end > y->end) - (x->end < y->end);
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const KilnStEntry *)a)->name, ((const KilnStEntry *)b)->name);
}

// No two tensors may share a byte. Empty tensors own no bytes and may sit anywhere.
static int check_overlap(const char *path, KilnStFile *out, int64_t data_off, KilnStatus *st) {
  qsort(out->entries, (size_t)out->n, sizeof *out->entries, by_begin);
  const KilnStEntry *prev = NULL;
  for (int i = 0; i < out->n; i++) {
    const KilnStEntry *e = &out->entries[i];
    if (e->begin == e->end) continue;
    if (prev && e->begin < prev->end)
      return kiln_rt_fail(st,
                          "%s: tensor '%s': data_offsets [%lld, %lld] overlap tensor '%s' "
                          "[%lld, %lld] (file offset %lld)",
                          path, e->name, (long long)e->begin, (long long)e->end, prev->name,
                          (long long)prev->begin, (long long)prev->end,
                          (long long)(data_off + e->begin));
    prev = e;
  }
  qsort(out->entries, (size_t)out->n, sizeof *out->entries, by_name);
  return 0;
}

static int parse_header(const char *path, json_t *root, int64_t data_len, int64_t data_off,
                        KilnStFile *out, KilnStatus *st) {
  if (!json_is_object(root)) return kiln_rt_fail(st, "%s: header is not a JSON object", path);
  size_t n = json_object_size(root);
  out->entries = calloc(n ? n : 1, sizeof *out->entries);
  if (!out->entries) return kiln_rt_fail(st, "%s: out of memory", path);
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (strcmp(key, "__metadata__") == 0) {
      KILN_TRY(parse_metadata(path, v, out, st));
      continue;
    }
    KILN_TRY(parse_entry(path, key, v, data_len, data_off, &out->entries[out->n], st));
    out->n++;
  }
  return check_overlap(path, out, data_off, st);
}

// Reads and parses the header; *out_hlen is its length N.
static int read_header(const char *path, int fd, int64_t size, KilnStFile *out, KilnStatus *st) {
  if (size < 8)
    return kiln_rt_fail(st, "%s: file is %lld bytes, too short for the 8-byte header length", path,
                        (long long)size);
  unsigned char lenbuf[8];
  if (kiln_rt_read_at(fd, lenbuf, 8, 0) != 0)
    return kiln_rt_fail(st, "%s: cannot read the header length: %s", path, kiln_rt_read_error());
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = hlen << 8 | lenbuf[i];
  if (hlen > MAX_HEADER)
    return kiln_rt_fail(st, "%s: header length %llu at file offset 0 exceeds the %d-byte limit",
                        path, (unsigned long long)hlen, MAX_HEADER);
  if ((int64_t)hlen > size - 8)
    return kiln_rt_fail(st, "%s: header length %llu at file offset 0 runs past the end of the "
                        "file (%lld bytes)",
                        path, (unsigned long long)hlen, (long long)size);
  char *text = malloc(hlen ? hlen : 1);
  if (!text) return kiln_rt_fail(st, "%s: out of memory for a %llu-byte header", path,
                                 (unsigned long long)hlen);
  if (kiln_rt_read_at(fd, text, hlen, 8) != 0) {
    free(text);
    return kiln_rt_fail(st, "%s: cannot read the header: %s", path, kiln_rt_read_error());
  }
  json_error_t jerr;
  json_t *root = json_loadb(text, hlen, JSON_REJECT_DUPLICATES, &jerr);
  free(text);
  if (!root)
    return kiln_rt_fail(st, "%s: header is not valid JSON at file offset %lld: %s", path,
                        8 + (long long)jerr.position, jerr.text);
  int64_t data_off = 8 + (int64_t)hlen;
  out->data_len = size - data_off;
  int rc = parse_header(path, root, out->data_len, data_off, out, st);
  json_decref(root);
  return rc;
}

static int check_finite(const char *path, const KilnStFile *f, int64_t data_off, KilnStatus *st) {
  for (int i = 0; i < f->n; i++) {
    const KilnStEntry *e = &f->entries[i];
    if (e->dtype != KILN_ABI_F32) continue;
    for (int64_t j = 0; j < (e->end - e->begin) / ITEMSIZE; j++) {
      float v;
      memcpy(&v, f->data + e->begin + ITEMSIZE * j, sizeof v);
      if (!isfinite(v))
        return kiln_rt_fail(st, "%s: tensor '%s' holds %s at element %lld (file offset %lld)",
                            path, e->name, isnan(v) ? "NaN" : "an infinity", (long long)j,
                            (long long)(data_off + e->begin + ITEMSIZE * j));
    }
  }
  return 0;
}

int kiln_st_read(const char *path, KilnStFile *out, KilnStatus *st) {
  memset(out, 0, sizeof *out);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return kiln_rt_fail(st, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  int rc = 0;
  if (fstat(fd, &sb) != 0)
    rc = kiln_rt_fail(st, "%s: cannot stat: %s", path, strerror(errno));
  else if (!S_ISREG(sb.st_mode))
    rc = kiln_rt_fail(st, "%s: not a regular file", path);
  else
    rc = read_header(path, fd, (int64_t)sb.st_size, out, st);
  int64_t data_off = 0;
  if (rc == 0) {
    data_off = (int64_t)sb.st_size - out->data_len;
    out->data = malloc(out->data_len ? (size_t)out->data_len : 1);
    if (!out->data)
      rc = kiln_rt_fail(st, "%s: out of memory for %lld bytes of data", path,
                        (long long)out->data_len);
    else if (kiln_rt_read_at(fd, out->data, (size_t)out->data_len, data_off) != 0)
      rc = kiln_rt_fail(st, "%s: cannot read %lld bytes of data at file offset %lld: %s", path,
                        (long long)out->data_len, (long long)data_off,
                        kiln_rt_read_error());
  }
  close(fd);
  if (rc == 0) rc = check_finite(path, out, data_off, st);
  if (rc != 0) kiln_st_free(out);
  return rc;
}

void kiln_st_free(KilnStFile *f) {
  if (!f) return;
  free(f->entries);
  free(f->metadata_json);  // from json_dumps, which allocates with malloc
  free(f->data);
  memset(f, 0, sizeof *f);
}

const KilnStEntry *kiln_st_find(const KilnStFile *f, const char *name) {
  KilnStEntry key;
  size_t len = strlen(name);
  if (len >= sizeof key.name || f->n == 0) return NULL;
  memcpy(key.name, name, len + 1);
  return bsearch(&key, f->entries, (size_t)f->n, sizeof *f->entries, by_name);
}

//
// Writing.
//

// Bytes of one tensor, checked; -1 on a bad descriptor.
static int64_t desc_bytes(const char *path, const KilnTensorDesc *d, KilnStatus *st) {
  if (d->dtype != KILN_ABI_F32 && d->dtype != KILN_ABI_I32)
    return kiln_rt_fail(st, "%s: tensor '%s': dtype %d cannot be written", path, d->name,
                        (int)d->dtype);
  if (d->rank < 0 || d->rank > KILN_ABI_MAX_RANK)
    return kiln_rt_fail(st, "%s: tensor '%s': rank %d", path, d->name, (int)d->rank);
  int64_t numel = 1;
  for (int i = 0; i < d->rank; i++) {
    int64_t n = d->shape[i];
    if (n < 0 || (n != 0 && numel > INT64_MAX / ITEMSIZE / n))
      return kiln_rt_fail(st, "%s: tensor '%s': bad shape[%d] = %lld", path, d->name, i,
                          (long long)n);
    numel *= n;
  }
  int64_t bytes = numel * ITEMSIZE;
  if (d->bytes != 0 && d->bytes != bytes)
    return kiln_rt_fail(st, "%s: tensor '%s': descriptor says %lld bytes, shape says %lld", path,
                        d->name, (long long)d->bytes, (long long)bytes);
  return bytes;
}

typedef struct {
  const KilnTensorDesc *descs;
  int i;
} Order;

static int order_by_name(const void *a, const void *b) {
  const Order *x = a, *y = b;
  return strcmp(x->descs[x->i].name, y->descs[y->i].name);
}

static int check_names(const char *path, const KilnTensorDesc *descs, const Order *ord, int n,
                       KilnStatus *st) {
  for (int k = 0; k < n; k++) {
    const char *name = descs[ord[k].i].name;
    size_t len = strlen(name);
    if (len == 0 || len > NAME_MAX_LEN || strcmp(name, "__metadata__") == 0)
      return kiln_rt_fail(st, "%s: tensor name '%s' cannot be written", path, name);
    if (k > 0 && strcmp(name, descs[ord[k - 1].i].name) == 0)
      return kiln_rt_fail(st, "%s: tensor '%s' appears twice", path, name);
  }
  return 0;
}

// The header object: "__metadata__" first, then the tensors in name order with
// contiguous offsets, as the reference writer lays them out.
static json_t *build_header(const char *path, const KilnTensorDesc *descs, const Order *ord, int n,
                            const int64_t *bytes, const char *const *keys,
                            const char *const *vals, int nmeta, KilnStatus *st) {
  json_t *root = json_object();
  int bad = !root;
  if (nmeta > 0 && !bad) {
    json_t *meta = json_object();
    bad = json_object_set_new(root, "__metadata__", meta) != 0;
    for (int i = 0; i < nmeta && !bad; i++)
      bad = !keys[i] || !vals[i] || json_object_set_new(meta, keys[i], json_string(vals[i])) != 0;
  }
  int64_t off = 0;
  for (int k = 0; k < n && !bad; k++) {
    const KilnTensorDesc *d = &descs[ord[k].i];
    json_t *shape = json_array();
    bad = !shape;
    for (int j = 0; j < d->rank && !bad; j++)
      bad = json_array_append_new(shape, json_integer(d->shape[j])) != 0;
    json_t *e = bad ? NULL : json_pack("{s:s, s:O, s:[I, I]}", "dtype", dtype_name(d->dtype),
                                       "shape", shape, "data_offsets", (json_int_t)off,
                                       (json_int_t)(off + bytes[ord[k].i]));
    json_decref(shape);
    off += bytes[ord[k].i];
    bad = !e || json_object_set_new(root, d->name, e) != 0;
  }
  if (bad) {
    json_decref(root);
    kiln_rt_fail(st, "%s: cannot build the header (out of memory, or a name or metadata string "
                 "that is not UTF-8)", path);
    return NULL;
  }
  return root;
}

// Header text padded with spaces so that the data section starts 8-byte aligned.
// The text is parsed back and compared with root: jansson can drop part of its
// output when an allocation fails mid-dump, and a header missing a field must not
// replace a good file.
static char *header_text(json_t *root, size_t *out_len) {
  char *text = json_dumps(root, JSON_COMPACT);
  if (!text) return NULL;
  json_t *back = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
  bool same = back && json_equal(back, root);
  json_decref(back);
  if (!same) {
    free(text);
    return NULL;
  }
  size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
  char *buf = malloc(padded ? padded : 1);
  if (buf) {
    memcpy(buf, text, len);
    memset(buf + len, ' ', padded - len);
  }
  free(text);
  *out_len = padded;
  return buf;
}

static int write_file(const char *path, const char *header, size_t hlen, const Order *ord, int n,
                      const void *const *data, const int64_t *bytes, KilnStatus *st) {
  unsigned char lenbuf[8];
  for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  const void **parts = malloc(sizeof *parts * (size_t)(n + 2));
  size_t *lens = malloc(sizeof *lens * (size_t)(n + 2));
  int rc;
  if (!parts || !lens) {
    rc = kiln_rt_fail(st, "%s: out of memory", path);
  } else {
    parts[0] = lenbuf, lens[0] = 8;
    parts[1] = header, lens[1] = hlen;
    for (int k = 0; k < n; k++) parts[k + 2] = data[ord[k].i], lens[k + 2] = (size_t)bytes[ord[k].i];
    rc = kiln_rt_write_atomic(path, parts, lens, n + 2, st);
  }
  free(parts);
  free(lens);
  return rc;
}

int kiln_st_write(const char *path, const KilnTensorDesc *descs, const void *const *data, int n,
                  const char *const *keys, const char *const *vals, int nmeta, KilnStatus *st) {
  Order *ord = calloc(n > 0 ? (size_t)n : 1, sizeof *ord);
  int64_t *bytes = calloc(n > 0 ? (size_t)n : 1, sizeof *bytes);
  json_t *root = NULL;
  char *header = NULL;
  size_t hlen = 0;
  int rc = (!ord || !bytes) ? kiln_rt_fail(st, "%s: out of memory", path) : 0;
  for (int i = 0; i < n && rc == 0; i++) {
    ord[i] = (Order){descs, i};
    bytes[i] = desc_bytes(path, &descs[i], st);
    if (bytes[i] < 0) rc = -1;
    else if (bytes[i] > 0 && !data[i])
      rc = kiln_rt_fail(st, "%s: tensor '%s': no data", path, descs[i].name);
  }
  if (rc == 0) {
    qsort(ord, (size_t)n, sizeof *ord, order_by_name);
    rc = check_names(path, descs, ord, n, st);
  }
  if (rc == 0 && !(root = build_header(path, descs, ord, n, bytes, keys, vals, nmeta, st))) rc = -1;
  if (rc == 0 && !(header = header_text(root, &hlen)))
    rc = kiln_rt_fail(st, "%s: out of memory", path);
  if (rc == 0) rc = write_file(path, header, hlen, ord, n, data, bytes, st);
  free(header);
  json_decref(root);
  free(ord);
  free(bytes);
  return rc;
}
