// Runtime file I/O: safetensors, .npy and CSV reading (every rejection with its
// message), writing, atomic replacement, and a cross-check of both binary formats
// against Python's numpy (and the safetensors package, where installed).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/runtime.h"
#include "tests/helpers.h"

// Every test writes under one fresh temporary folder, removed at the end.
static char dir[64];

#define P(name) kiln_test_join(dir, (name))

static char *get(const char *path, size_t *out_len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  static char buf[1 << 16];
  *out_len = fread(buf, 1, sizeof buf, f);
  fclose(f);
  return buf;
}

// Fails unless the call failed with a message containing frag.
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

// Files in dir whose names contain ".tmp.": what a failed atomic write must not leave.
static int temps(void) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) n += strstr(e->d_name, ".tmp.") != NULL;
  closedir(d);
  return n;
}

static const char *python(void) {
  const char *p = getenv("KILN_PYTHON");  // e.g. a venv with the safetensors package
  return p && *p ? p : "/usr/bin/python3";
}

static bool have_numpy(void) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "%s -c 'import numpy' >/dev/null 2>&1", python());
  return system(cmd) == 0;
}

static int run_python(const char *script, const char *args) {
  kiln_test_write(P("check.py"), script, strlen(script));
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "%s %s %s", python(), P("check.py"), args);
  return system(cmd);
}

//
// safetensors
//

// A file with the given header (length prefixed) and datalen zero bytes of data.
static void put_st(const char *path, const char *hdr, size_t datalen) {
  size_t hl = strlen(hdr);
  unsigned char *buf = calloc(1, 8 + hl + datalen);
  for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, hdr, hl);
  kiln_test_write(path, buf, 8 + hl + datalen);
  free(buf);
}

static float W[6] = {-1, -0.5f, 0, 0.5f, 1, 1.5f};  // fc.weight [2, 3]
static float B[3] = {0.25f, -0.125f, 1e-8f};        // fc.bias [3]
static int32_t TOK[4] = {-2, 0, 7, 2147483647};     // tok [4]
static float S = 3.25f;                             // scalar []

static int write_sample(const char *path, KilnStatus *st) {
  KilnTensorDesc d[5] = {
      {.name = "fc.weight", .dtype = KILN_ABI_F32, .rank = 2, .shape = {2, 3}, .bytes = 24},
      {.name = "tok", .dtype = KILN_ABI_I32, .rank = 1, .shape = {4}},
      {.name = "fc.bias", .dtype = KILN_ABI_F32, .rank = 1, .shape = {3}},
      {.name = "scalar", .dtype = KILN_ABI_F32, .rank = 0},
      {.name = "empty", .dtype = KILN_ABI_F32, .rank = 2, .shape = {0, 3}},
  };
  const void *data[5] = {W, TOK, B, &S, NULL};
  const char *keys[2] = {"format", "kiln"}, *vals[2] = {"pt", "0.1"};
  return kiln_st_write(path, d, data, 5, keys, vals, 2, st);
}

static void test_st_round_trip(void **state) {
  (void)state;
  KilnStatus st = {0};
  EXPECT_OK(write_sample(P("w.safetensors"), &st), st);
  assert_int_equal(temps(), 0);

  size_t len;
  const unsigned char *raw = (const unsigned char *)get(P("w.safetensors"), &len);
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | raw[i];
  assert_int_equal(hl % 8, 0);  // the data section starts 8-byte aligned
  assert_int_equal(raw[8], '{');
  assert_int_equal(len, 8 + hl + 24 + 12 + 16 + 4);

  KilnStFile f;
  EXPECT_OK(kiln_st_read(P("w.safetensors"), &f, &st), st);
  assert_int_equal(f.n, 5);
  assert_string_equal(f.entries[0].name, "empty");  // sorted by name
  assert_string_equal(f.metadata_json, "{\"format\":\"pt\",\"kiln\":\"0.1\"}");
  const KilnStEntry *w = kiln_st_find(&f, "fc.weight"), *t = kiln_st_find(&f, "tok");
  const KilnStEntry *s = kiln_st_find(&f, "scalar"), *e = kiln_st_find(&f, "empty");
  assert_non_null(w);
  assert_non_null(t);
  assert_non_null(s);
  assert_null(kiln_st_find(&f, "nope"));
  assert_int_equal(w->dtype, KILN_ABI_F32);
  assert_int_equal(w->rank, 2);
  assert_int_equal(w->shape[1], 3);
  assert_memory_equal(f.data + w->begin, W, sizeof W);
  assert_int_equal(t->dtype, KILN_ABI_I32);
  assert_memory_equal(f.data + t->begin, TOK, sizeof TOK);
  assert_int_equal(s->rank, 0);
  assert_memory_equal(f.data + s->begin, &S, 4);
  assert_int_equal(e->end - e->begin, 0);
  assert_memory_equal(f.data + kiln_st_find(&f, "fc.bias")->begin, B, sizeof B);
  kiln_st_free(&f);
}

#define T1 "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

static const struct {
  const char *header;
  size_t data;
  const char *frag;
} st_bad[] = {
    {"{\"a\": ", 0, "header is not valid JSON at file offset"},
    {"[1, 2]", 0, "header is not a JSON object"},
    {"{\"w\":" T1 ",\"w\":" T1 "}", 8, "duplicate object key"},
    {"{\"w\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
     "tensor 'w': dtype 'F16' is not supported"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,8]}}", 16,
     "tensor 'w': data_offsets [0, 8] hold 8 bytes, but dtype F32 and shape need 16"},
    {"{\"a\":" T1 ",\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12,
     "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]"},
    {"{\"fc.weight\":{\"dtype\":\"F32\",\"shape\":[256],\"data_offsets\":[0,1024]}}", 512,
     "tensor 'fc.weight': data_offsets [0, 1024] end past the data section (512 bytes at file "
     "offset 75)"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin after end"},
    {"{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "tensor 'w': missing field 'shape'"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8,
     "tensor 'w': unexpected field 'x'"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8,
     "tensor 'w': shape[0] is not a non-negative integer"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8,
     "shape has rank 7, at most 6"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
     "tensor 'w': shape's element count overflows at shape[1]"},
    {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "not an array [begin, end]"},
    {"{\"w\":[1]}", 0, "tensor 'w': entry is not an object"},
    {"{\"__metadata__\":{\"k\":1}}", 0, "'__metadata__': value of 'k' is not a string"},
};

static void test_st_rejections(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof st_bad / sizeof st_bad[0]; i++) {
    KilnStatus st = {0};
    KilnStFile f;
    put_st(P("bad.safetensors"), st_bad[i].header, st_bad[i].data);
    int rc = kiln_st_read(P("bad.safetensors"), &f, &st);
    print_message("case %zu: %s\n", i, st.msg);
    EXPECT_ERROR(rc, st, st_bad[i].frag);
    EXPECT_ERROR(rc, st, P("bad.safetensors"));  // every message names the file
    assert_null(f.entries);
    assert_null(f.data);
  }
}

// Damage at the level of bytes: truncations and impossible header lengths.
static void test_st_truncated(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnStFile f;
  kiln_test_write(P("t.safetensors"), "\x10\0\0\0\0", 5);
  EXPECT_ERROR(kiln_st_read(P("t.safetensors"), &f, &st), st,
               "file is 5 bytes, too short for the 8-byte header length");

  put_st(P("t.safetensors"), "{}", 0);  // then lie about the length
  FILE *fp = fopen(P("t.safetensors"), "r+b");
  fputc(0xe8, fp), fputc(0x03, fp);       // 1000
  fclose(fp);
  EXPECT_ERROR(kiln_st_read(P("t.safetensors"), &f, &st), st,
               "header length 1000 at file offset 0 runs past the end of the file (10 bytes)");

  unsigned char huge[16] = {0, 0, 0, 0, 0, 0, 0, 0x10, '{', '}'};  // 2^60
  kiln_test_write(P("t.safetensors"), huge, 16);
  EXPECT_ERROR(kiln_st_read(P("t.safetensors"), &f, &st), st, "exceeds the 100000000-byte limit");

  // A good file cut inside its data section.
  EXPECT_OK(write_sample(P("t.safetensors"), &st), st);
  struct stat sb;
  stat(P("t.safetensors"), &sb);
  assert_int_equal(truncate(P("t.safetensors"), sb.st_size - 3), 0);
  EXPECT_ERROR(kiln_st_read(P("t.safetensors"), &f, &st), st, "end past the data section");

  EXPECT_ERROR(kiln_st_read(P("missing.safetensors"), &f, &st), st,
               "missing.safetensors: cannot open: No such file or directory");
}

static void test_st_write_rejections(void **state) {
  (void)state;
  KilnStatus st = {0};
  float x[2] = {1, 2};
  const void *data[2] = {x, x};
  KilnTensorDesc two[2] = {{.name = "a", .dtype = KILN_ABI_F32, .rank = 1, .shape = {2}},
                           {.name = "a", .dtype = KILN_ABI_F32, .rank = 1, .shape = {2}}};
  EXPECT_ERROR(kiln_st_write(P("x.safetensors"), two, data, 2, NULL, NULL, 0, &st), st,
               "tensor 'a' appears twice");
  two[1].name = "__metadata__";
  EXPECT_ERROR(kiln_st_write(P("x.safetensors"), two, data, 2, NULL, NULL, 0, &st), st,
               "tensor name '__metadata__' cannot be written");
  two[1].name = "b";
  two[1].bytes = 12;
  EXPECT_ERROR(kiln_st_write(P("x.safetensors"), two, data, 2, NULL, NULL, 0, &st), st,
               "tensor 'b': descriptor says 12 bytes, shape says 8");
  two[1].bytes = 0;
  two[1].dtype = 7;
  EXPECT_ERROR(kiln_st_write(P("x.safetensors"), two, data, 2, NULL, NULL, 0, &st), st,
               "tensor 'b': dtype 7 cannot be written");
  assert_int_equal(access(P("x.safetensors"), F_OK), -1);
  assert_int_equal(temps(), 0);
}

// Reads the file kiln wrote with safetensors.numpy (or, without that package, a
// reader that makes the same checks: contiguous tensors, data ending with the last),
// and writes one for kiln to read.
static const char ST_PY[] =
    "import json, sys\n"
    "import numpy as np\n"
    "try:\n"
    "    from safetensors.numpy import load_file, save_file\n"
    "    from safetensors import safe_open\n"
    "    have = True\n"
    "except ImportError:\n"
    "    have = False\n"
    "DT = {'F32': '<f4', 'I32': '<i4'}\n"
    "def ref_load(path):\n"
    "    raw = open(path, 'rb').read()\n"
    "    n = int.from_bytes(raw[:8], 'little')\n"
    "    assert raw[8:9] == b'{'\n"
    "    hdr = json.loads(raw[8:8 + n].decode('utf-8'))\n"
    "    data, meta, pos, out = raw[8 + n:], hdr.pop('__metadata__', None), 0, {}\n"
    "    for k, v in sorted(hdr.items(), key=lambda kv: kv[1]['data_offsets']):\n"
    "        b, e = v['data_offsets']\n"
    "        assert b == pos, 'tensors are not contiguous'\n"
    "        out[k] = np.frombuffer(data[b:e], DT[v['dtype']]).reshape(v['shape'])\n"
    "        pos = e\n"
    "    assert pos == len(data), 'data section does not end with the last tensor'\n"
    "    return out, meta\n"
    "def ref_save(t, path, meta):\n"
    "    hdr, pos = {'__metadata__': meta}, 0\n"
    "    for k in sorted(t):\n"
    "        a = t[k]\n"
    "        hdr[k] = {'dtype': 'F32' if a.dtype == np.float32 else 'I32',\n"
    "                  'shape': list(a.shape), 'data_offsets': [pos, pos + a.nbytes]}\n"
    "        pos += a.nbytes\n"
    "    h = json.dumps(hdr).encode()\n"
    "    h += b' ' * (-len(h) % 8)\n"
    "    with open(path, 'wb') as f:\n"
    "        f.write(len(h).to_bytes(8, 'little') + h)\n"
    "        for k in sorted(t): f.write(t[k].tobytes())\n"
    "mode, path = sys.argv[1], sys.argv[2]\n"
    "if mode == 'check':\n"
    "    if have:\n"
    "        t = load_file(path)\n"
    "        with safe_open(path, 'np') as f: meta = f.metadata()\n"
    "    else:\n"
    "        t, meta = ref_load(path)\n"
    "    assert meta == {'format': 'pt', 'kiln': '0.1'}, meta\n"
    "    assert t['fc.weight'].dtype == np.float32 and t['fc.weight'].shape == (2, 3)\n"
    "    assert (t['fc.weight'] == np.array([[-1, -0.5, 0], [0.5, 1, 1.5]], np.float32)).all()\n"
    "    assert (t['fc.bias'] == np.array([0.25, -0.125, 1e-8], np.float32)).all()\n"
    "    assert t['tok'].dtype == np.int32 and list(t['tok']) == [-2, 0, 7, 2147483647]\n"
    "    assert t['scalar'].shape == () and t['scalar'] == 3.25\n"
    "    assert t['empty'].shape == (0, 3)\n"
    "else:\n"
    "    t = {'a.weight': np.arange(6, dtype=np.float32).reshape(2, 3) / 4,\n"
    "         'a.ids': np.array([1, -1, 5], np.int32)}\n"
    "    (save_file if have else ref_save)(t, path, {'made_by': 'python'})\n"
    "print('safetensors cross-check, %s (%s): ok' % (mode, 'safetensors package' if have else\n"
    "      'reference reader; the safetensors package is not installed'))\n";

static void test_st_python(void **state) {
  (void)state;
  if (!have_numpy()) {
    print_message("SKIPPED: %s has no numpy\n", python());
    skip();
  }
  KilnStatus st = {0};
  EXPECT_OK(write_sample(P("k.safetensors"), &st), st);
  char args[600];
  snprintf(args, sizeof args, "check %s", P("k.safetensors"));
  assert_int_equal(run_python(ST_PY, args), 0);

  snprintf(args, sizeof args, "make %s", P("p.safetensors"));
  assert_int_equal(run_python(ST_PY, args), 0);
  KilnStFile f;
  EXPECT_OK(kiln_st_read(P("p.safetensors"), &f, &st), st);
  assert_int_equal(f.n, 2);
  assert_string_equal(f.metadata_json, "{\"made_by\":\"python\"}");
  const KilnStEntry *w = kiln_st_find(&f, "a.weight"), *ids = kiln_st_find(&f, "a.ids");
  assert_non_null(w);
  assert_non_null(ids);
  const float *wv = (const float *)(f.data + w->begin);
  for (int i = 0; i < 6; i++) assert_true(wv[i] == (float)i / 4);
  int32_t want_ids[3] = {1, -1, 5};
  assert_int_equal(ids->dtype, KILN_ABI_I32);
  assert_memory_equal(f.data + ids->begin, want_ids, sizeof want_ids);
  kiln_st_free(&f);
}

//
// .npy
//

// A .npy file: preamble of the given version, the header padded to 64, data.
static void put_npy(const char *path, int major, const char *dict, const void *data,
                    size_t len) {
  char buf[4096];
  int pre = major == 1 ? 10 : 12;
  size_t hl = strlen(dict);
  size_t total = (pre + hl + 1 + 63) / 64 * 64;
  memcpy(buf, "\x93NUMPY", 6);
  buf[6] = (char)major, buf[7] = 0;
  uint32_t h = (uint32_t)(total - (size_t)pre);
  for (int i = 0; i < pre - 8; i++) buf[8 + i] = (char)(h >> (8 * i));
  memcpy(buf + pre, dict, hl);
  memset(buf + pre + hl, ' ', total - pre - hl - 1);
  buf[total - 1] = '\n';
  memcpy(buf + total, data, len);
  kiln_test_write(path, buf, total + len);
}

static void test_npy_round_trip(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnArray a;
  int64_t shape[2] = {2, 3};
  EXPECT_OK(kiln_npy_write(P("a.npy"), KILN_ABI_F32, shape, 2, W, &st), st);
  size_t len;
  get(P("a.npy"), &len);
  assert_int_equal(len, 128 + sizeof W);  // header padded to a multiple of 64 bytes
  EXPECT_OK(kiln_npy_read(P("a.npy"), &a, &st), st);
  assert_int_equal(a.dtype, KILN_ABI_F32);
  assert_int_equal(a.rank, 2);
  assert_int_equal(a.shape[0], 2);
  assert_int_equal(a.shape[1], 3);
  assert_int_equal(a.count, 6);
  assert_memory_equal(a.data, W, sizeof W);
  kiln_array_free(&a);

  EXPECT_OK(kiln_npy_write(P("t.npy"), KILN_ABI_I32, (int64_t[]){4}, 1, TOK, &st), st);
  EXPECT_OK(kiln_npy_read(P("t.npy"), &a, &st), st);
  assert_int_equal(a.dtype, KILN_ABI_I32);
  assert_int_equal(a.rank, 1);
  assert_memory_equal(a.data, TOK, sizeof TOK);
  kiln_array_free(&a);

  EXPECT_OK(kiln_npy_write(P("s.npy"), KILN_ABI_F32, NULL, 0, &S, &st), st);
  EXPECT_OK(kiln_npy_read(P("s.npy"), &a, &st), st);
  assert_int_equal(a.rank, 0);
  assert_int_equal(a.count, 1);
  assert_true(*(float *)a.data == S);
  kiln_array_free(&a);
  assert_int_equal(temps(), 0);

  // Version 2.0 and 3.0 headers, a two-space dict, and no trailing comma.
  put_npy(P("v2.npy"), 2, "{\"descr\":'<f4',  'shape':(1, 2) ,'fortran_order':False}", B, 8);
  EXPECT_OK(kiln_npy_read(P("v2.npy"), &a, &st), st);
  assert_int_equal(a.count, 2);
  assert_memory_equal(a.data, B, 8);
  kiln_array_free(&a);
}

static void test_npy_convert(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnArray a;
  double d[3] = {0.1, -2.5, 1e-3};
  put_npy(P("f8.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", d,
          sizeof d);
  EXPECT_OK(kiln_npy_read(P("f8.npy"), &a, &st), st);
  assert_int_equal(a.dtype, KILN_ABI_F32);
  for (int i = 0; i < 3; i++) assert_true(((float *)a.data)[i] == (float)d[i]);
  kiln_array_free(&a);

  int64_t q[4] = {-2147483648LL, 0, 5, 2147483647LL};
  put_npy(P("i8.npy"), 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }", q,
          sizeof q);
  EXPECT_OK(kiln_npy_read(P("i8.npy"), &a, &st), st);
  assert_int_equal(a.dtype, KILN_ABI_I32);
  for (int i = 0; i < 4; i++) assert_int_equal(((int32_t *)a.data)[i], q[i]);
  kiln_array_free(&a);
}

static const struct {
  const char *dict;
  size_t data;
  const char *frag;
} npy_bad[] = {
    {"{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8,
     "descr '>f4' is not supported (expected '<f4', '<i4', '<f8' or '<i8')"},
    {"{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", 4, "descr '<f2' is not supported"},
    {"{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 8,
     "fortran_order True is not supported"},
    {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1, 2), }", 8,
     "a shape of rank at most 6"},
    {"{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", 8,
     "',' in a one-element shape tuple"},
    {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 8, "a non-negative integer"},
    {"{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 8,
     "shape needs 16 data bytes at file offset 128, the file has 8"},
    {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 8,
     "shape needs 4 data bytes at file offset 128, the file has 8"},
    {"{'descr': '<f4', 'shape': (2,), }", 8, "a 'fortran_order' key"},
    {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8,
     "one of the keys 'descr', 'fortran_order', 'shape'"},
    {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8, "each key once"},
    {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } x", 8,
     "only padding after the header dict"},
    {"{'descr': '<f4' 'fortran_order': False, 'shape': (2,), }", 8, "expected ',' or '}'"},
    {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 8,
     "a dimension that fits 64 bits"},
};

static void test_npy_rejections(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnArray a;
  static const char zeros[64];
  for (size_t i = 0; i < sizeof npy_bad / sizeof npy_bad[0]; i++) {
    put_npy(P("bad.npy"), 1, npy_bad[i].dict, zeros, npy_bad[i].data);
    int rc = kiln_npy_read(P("bad.npy"), &a, &st);
    print_message("case %zu: %s\n", i, st.msg);
    EXPECT_ERROR(rc, st, npy_bad[i].frag);
    EXPECT_ERROR(rc, st, P("bad.npy"));
    assert_null(a.data);
  }
  int64_t q[3] = {1, 2, 1LL << 40};
  put_npy(P("bad.npy"), 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", q,
          sizeof q);
  EXPECT_ERROR(kiln_npy_read(P("bad.npy"), &a, &st), st,
               "value 1099511627776 at index 2 does not fit i32");
  double big[2] = {1, 1e300};
  put_npy(P("bad.npy"), 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", big,
          sizeof big);
  EXPECT_ERROR(kiln_npy_read(P("bad.npy"), &a, &st), st, "at index 1 does not fit f32");

  kiln_test_write(P("bad.npy"), "\x93NUMPX\x01\x00", 8);
  EXPECT_ERROR(kiln_npy_read(P("bad.npy"), &a, &st), st, "not a .npy file");
  kiln_test_write(P("bad.npy"), "\x93NUMPY\x04\x00\x10\x00{}", 12);
  EXPECT_ERROR(kiln_npy_read(P("bad.npy"), &a, &st), st, ".npy version 4.0 at file offset 6");
  kiln_test_write(P("bad.npy"), "\x93NUMPY\x01\x00\xff\x00{}", 12);
  EXPECT_ERROR(kiln_npy_read(P("bad.npy"), &a, &st), st,
               "header length 255 at file offset 8 is past the end of the file (12 bytes)");
}

// numpy writes files for kiln to read, and reads back what kiln wrote.
static const char NPY_PY[] =
    "import sys\n"
    "import numpy as np\n"
    "mode, d = sys.argv[1], sys.argv[2]\n"
    "if mode == 'make':\n"
    "    np.save(d + '/np_f4.npy', (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 3)\n"
    "    np.save(d + '/np_i4.npy', np.array([-7, 0, 2**31 - 1], np.int32))\n"
    "    np.save(d + '/np_f8.npy', np.array([[0.1, -2.5], [1e-3, 7]]))\n"
    "    np.save(d + '/np_i8.npy', np.arange(-3, 3, dtype=np.int64).reshape(2, 1, 3))\n"
    "    np.save(d + '/np_scalar.npy', np.float32(2.5))\n"
    "    with open(d + '/np_v3.npy', 'wb') as f:\n"
    "        np.lib.format.write_array(f, np.ones((2, 2), np.float32), version=(3, 0))\n"
    "    np.save(d + '/np_fortran.npy', np.asfortranarray(np.ones((2, 3), np.float32)))\n"
    "    np.save(d + '/np_f2.npy', np.ones(3, np.float16))\n"
    "    np.save(d + '/np_be.npy', np.ones(3, '>f4'))\n"
    "    np.save(d + '/np_i8_big.npy', np.array([1, 2, 2**40], np.int64))\n"
    "else:\n"
    "    a = np.load(d + '/k_f4.npy')\n"
    "    want = (np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5) / 3\n"
    "    assert a.dtype == np.float32 and a.shape == (3, 4) and (a == want).all(), a\n"
    "    b = np.load(d + '/k_i4.npy')\n"
    "    assert b.dtype == np.int32 and b.shape == (4,), b\n"
    "    assert list(b) == [-2, 0, 7, 2147483647], b\n"
    "    c = np.load(d + '/k_scalar.npy')\n"
    "    assert c.shape == () and c == np.float32(3.25), c\n"
    "    e = np.load(d + '/k_empty.npy')\n"
    "    assert e.shape == (0, 3) and e.dtype == np.float32, e\n"
    "    print('numpy read what kiln wrote: ok')\n";

static void expect_npy(const char *name, int32_t dtype, int rank, const int64_t *shape) {
  KilnStatus st = {0};
  KilnArray a;
  EXPECT_OK(kiln_npy_read(P(name), &a, &st), st);
  assert_int_equal(a.dtype, dtype);
  assert_int_equal(a.rank, rank);
  for (int i = 0; i < rank; i++) assert_int_equal(a.shape[i], shape[i]);
  kiln_array_free(&a);
}

static void test_npy_python(void **state) {
  (void)state;
  if (!have_numpy()) {
    print_message("SKIPPED: %s has no numpy\n", python());
    skip();
  }
  char args[600];
  snprintf(args, sizeof args, "make %s", dir);
  assert_int_equal(run_python(NPY_PY, args), 0);

  KilnStatus st = {0};
  KilnArray a;
  EXPECT_OK(kiln_npy_read(P("np_f4.npy"), &a, &st), st);
  assert_int_equal(a.rank, 2);
  assert_int_equal(a.shape[0], 3);
  assert_int_equal(a.shape[1], 4);
  for (int i = 0; i < 12; i++) assert_true(((float *)a.data)[i] == ((float)i - 5.5f) / 3.0f);
  kiln_array_free(&a);
  EXPECT_OK(kiln_npy_read(P("np_i4.npy"), &a, &st), st);
  assert_int_equal(((int32_t *)a.data)[0], -7);
  assert_int_equal(((int32_t *)a.data)[2], 2147483647);
  kiln_array_free(&a);
  EXPECT_OK(kiln_npy_read(P("np_f8.npy"), &a, &st), st);
  assert_true(((float *)a.data)[0] == (float)0.1);
  assert_true(((float *)a.data)[3] == 7.0f);
  kiln_array_free(&a);
  EXPECT_OK(kiln_npy_read(P("np_i8.npy"), &a, &st), st);
  for (int i = 0; i < 6; i++) assert_int_equal(((int32_t *)a.data)[i], i - 3);
  kiln_array_free(&a);
  expect_npy("np_i8.npy", KILN_ABI_I32, 3, (int64_t[]){2, 1, 3});
  expect_npy("np_scalar.npy", KILN_ABI_F32, 0, NULL);
  expect_npy("np_v3.npy", KILN_ABI_F32, 2, (int64_t[]){2, 2});
  EXPECT_ERROR(kiln_npy_read(P("np_fortran.npy"), &a, &st), st, "fortran_order True");
  EXPECT_ERROR(kiln_npy_read(P("np_f2.npy"), &a, &st), st, "descr '<f2' is not supported");
  EXPECT_ERROR(kiln_npy_read(P("np_be.npy"), &a, &st), st, "descr '>f4' is not supported");
  EXPECT_ERROR(kiln_npy_read(P("np_i8_big.npy"), &a, &st), st, "at index 2 does not fit i32");

  float f4[12];
  for (int i = 0; i < 12; i++) f4[i] = ((float)i - 5.5f) / 3.0f;
  EXPECT_OK(kiln_npy_write(P("k_f4.npy"), KILN_ABI_F32, (int64_t[]){3, 4}, 2, f4, &st), st);
  EXPECT_OK(kiln_npy_write(P("k_i4.npy"), KILN_ABI_I32, (int64_t[]){4}, 1, TOK, &st), st);
  EXPECT_OK(kiln_npy_write(P("k_scalar.npy"), KILN_ABI_F32, NULL, 0, &S, &st), st);
  EXPECT_OK(kiln_npy_write(P("k_empty.npy"), KILN_ABI_F32, (int64_t[]){0, 3}, 2, NULL, &st), st);
  snprintf(args, sizeof args, "check %s", dir);
  assert_int_equal(run_python(NPY_PY, args), 0);
}

//
// CSV
//

static int csv(const char *text, bool header, KilnCsv *c, KilnStatus *st) {
  kiln_test_write(P("t.csv"), text, strlen(text));
  return kiln_csv_read(P("t.csv"), header, c, st);
}

static void test_csv_good(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnCsv c;
  EXPECT_OK(csv("1, 2,3\n -4.5e1 ,+5,.25\n\n \n", false, &c, &st), st);
  assert_int_equal(c.rows, 2);
  assert_int_equal(c.cols, 3);
  float want[6] = {1, 2, 3, -45, 5, 0.25f};
  assert_memory_equal(c.v, want, sizeof want);
  kiln_csv_free(&c);

  EXPECT_OK(csv("x,y\r\n1,2\r\n3,4\r\n\r\n", true, &c, &st), st);  // header, CRLF
  assert_int_equal(c.rows, 2);
  assert_int_equal(c.cols, 2);
  assert_true(c.v[3] == 4);
  kiln_csv_free(&c);

  EXPECT_OK(csv("7", false, &c, &st), st);  // no final newline
  assert_int_equal(c.rows, 1);
  assert_true(c.v[0] == 7);
  kiln_csv_free(&c);

  // A file larger than the first buffer and the first value array.
  FILE *f = fopen(P("big.csv"), "w");
  for (int r = 0; r < 20000; r++) fprintf(f, "%d,%d.5,-%d\n", r, r, r);
  fclose(f);
  EXPECT_OK(kiln_csv_read(P("big.csv"), false, &c, &st), st);
  assert_int_equal(c.rows, 20000);
  assert_true(c.v[3 * 19999 + 1] == 19999.5f);
  kiln_csv_free(&c);
}

static const struct {
  const char *text;
  bool header;
  const char *frag;
} csv_bad[] = {
    {"1,2,3\n4,5\n", false, "t.csv:2: row has 2 columns, expected 3"},
    {"1,2,3,4,5,6\n1,2,3,4\n", false, "t.csv:2: row has 4 columns, expected 6"},
    {"1,abc,3\n", false, "t.csv:1:3: expected a number, got 'abc'"},
    {"1, 2x ,3\n", false, "t.csv:1:4: expected a number, got '2x'"},
    {"1,,3\n", false, "t.csv:1:3: expected a number, got an empty field"},
    {"1,2,\n", false, "t.csv:1:5: expected a number, got an empty field"},
    {"1,nan\n", false, "t.csv:1:3: expected a number, got 'nan'"},
    {"inf,1\n", false, "t.csv:1:1: expected a number, got 'inf'"},
    {"0x10,1\n", false, "t.csv:1:1: expected a number, got '0x10'"},
    {"1e999,1\n", false, "t.csv:1:1: 1e999 is out of range for f32"},
    {"a,b\n1,2\n", false, "t.csv:1:1: expected a number, got 'a'"},
    {"1,2\n\n3,4\n", false, "t.csv:2: blank line between rows"},
    {"x,y\n", true, "t.csv: no data rows"},
    {"", false, "t.csv: no data rows"},
};

static void test_csv_rejections(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof csv_bad / sizeof csv_bad[0]; i++) {
    KilnStatus st = {0};
    KilnCsv c;
    int rc = csv(csv_bad[i].text, csv_bad[i].header, &c, &st);
    print_message("case %zu: %s\n", i, st.msg);
    EXPECT_ERROR(rc, st, csv_bad[i].frag);
    assert_null(c.v);
  }
  // Too large: refused from its size alone (the file is sparse, nothing is read).
  KilnStatus st = {0};
  KilnCsv c;
  kiln_test_write(P("huge.csv"), "1\n", 2);
  assert_int_equal(truncate(P("huge.csv"), ((off_t)2 << 30) + 1), 0);
  EXPECT_ERROR(kiln_csv_read(P("huge.csv"), false, &c, &st), st,
               "huge.csv: file is 2147483649 bytes, over the 2147483648-byte limit for CSV");
  unlink(P("huge.csv"));
}

// %.9g round-trips every f32 exactly.
static void test_csv_write(void **state) {
  (void)state;
  float v[6] = {1.0f / 3, -1e-30f, 3.4028235e38f, 0, 123456789.0f, -0.1f};
  FILE *f = fopen(P("w.csv"), "w");
  kiln_csv_write(f, v, 2, 3);
  fclose(f);
  KilnStatus st = {0};
  KilnCsv c;
  EXPECT_OK(kiln_csv_read(P("w.csv"), false, &c, &st), st);
  assert_int_equal(c.rows, 2);
  assert_int_equal(c.cols, 3);
  assert_memory_equal(c.v, v, sizeof v);
  kiln_csv_free(&c);
}

//
// Atomic writes
//

static int write_text(const char *path, const char *text, KilnStatus *st) {
  const void *parts[2] = {text, "!"};
  size_t lens[2] = {strlen(text), 1};
  return kiln_rt_write_atomic(path, parts, lens, 2, st);
}

static void test_atomic(void **state) {
  (void)state;
  KilnStatus st = {0};
  size_t len;
  EXPECT_OK(write_text(P("ckpt"), "first", &st), st);
  EXPECT_OK(write_text(P("ckpt"), "second", &st), st);
  assert_memory_equal(get(P("ckpt"), &len), "second!", 7);
  assert_int_equal(len, 7);
  assert_int_equal(temps(), 0);

  // Into a folder that does not exist: nothing is created.
  EXPECT_ERROR(write_text(P("nope/ckpt"), "x", &st), st, "nope/ckpt: cannot create temporary file");
  EXPECT_ERROR(write_text(P("nope/ckpt"), "x", &st), st, "No such file or directory");

  // The rename fails (a folder is in the way) after the data was written: the
  // temporary is removed and the folder left alone.
  assert_int_equal(mkdir(P("taken"), 0755), 0);
  assert_int_equal(mkdir(P("taken/sub"), 0755), 0);
  EXPECT_ERROR(write_text(P("taken"), "x", &st), st, "cannot rename");
  assert_int_equal(temps(), 0);
  struct stat sb;
  assert_int_equal(stat(P("taken/sub"), &sb), 0);
}

// An unwritable folder: the old file survives and no temporary is left. Root
// writes anywhere, so there this cannot fail and is skipped (test_atomic covers
// the failure paths by other means).
static void test_atomic_unwritable(void **state) {
  (void)state;
  if (geteuid() == 0) {
    print_message("SKIPPED: running as root, which can write into a read-only folder; "
                  "failures are tested with a missing folder and a failed rename instead\n");
    skip();
  }
  KilnStatus st = {0};
  assert_int_equal(mkdir(P("ro"), 0755), 0);
  EXPECT_OK(write_text(P("ro/ckpt"), "old", &st), st);
  assert_int_equal(chmod(P("ro"), 0555), 0);
  EXPECT_ERROR(write_text(P("ro/ckpt"), "new", &st), st, "Permission denied");
  assert_int_equal(chmod(P("ro"), 0755), 0);
  size_t len;
  assert_memory_equal(get(P("ro/ckpt"), &len), "old!", 4);
  assert_int_equal(len, 4);
  DIR *d = opendir(P("ro"));
  int n = 0;
  for (struct dirent *e; (e = readdir(d));) n += e->d_name[0] != '.';
  closedir(d);
  assert_int_equal(n, 1);
}

static void test_fail(void **state) {
  (void)state;
  KilnStatus st = {0};
  assert_int_equal(kiln_rt_fail(&st, "%s:%d: %s", "f", 3, "bad"), -1);
  assert_int_equal(st.code, 1);
  assert_string_equal(st.msg, "f:3: bad");
  char longer[2000];
  memset(longer, 'x', sizeof longer - 1);
  longer[sizeof longer - 1] = 0;
  kiln_rt_fail(&st, "%s", longer);  // truncated, terminated
  assert_int_equal(strlen(st.msg), sizeof st.msg - 1);
  assert_int_equal(kiln_rt_fail(NULL, "ignored"), -1);
}

static int group_setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/kiln_rt_io_XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fail),
      cmocka_unit_test(test_st_round_trip),
      cmocka_unit_test(test_st_rejections),
      cmocka_unit_test(test_st_truncated),
      cmocka_unit_test(test_st_write_rejections),
      cmocka_unit_test(test_st_python),
      cmocka_unit_test(test_npy_round_trip),
      cmocka_unit_test(test_npy_convert),
      cmocka_unit_test(test_npy_rejections),
      cmocka_unit_test(test_npy_python),
      cmocka_unit_test(test_csv_good),
      cmocka_unit_test(test_csv_rejections),
      cmocka_unit_test(test_csv_write),
      cmocka_unit_test(test_atomic),
      cmocka_unit_test(test_atomic_unwritable),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
