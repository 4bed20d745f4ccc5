// Runtime data: CSV, .npy, text and token sources read into samples and batches,
// every rejection with its message, the validation split and per-epoch shuffling
// (deterministic per seed), the vocabulary's metadata form, and --data overrides.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include "runtime/runtime.h"
#include "tests/helpers.h"

static char dir[64];

#define P(name) kiln_test_join(dir, (name))

static void puts_file(const char *path, const char *text) { kiln_test_write(path, text, strlen(text)); }

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
// Models: only the inputs matter here. The arena holds them from offset 64.
//
enum { B = 4 };

static const KilnTensorDesc tab_inputs[] = {
    {.name = "x", .dtype = KILN_ABI_F32, .rank = 2, .shape = {B, 2}, .offset = 64, .bytes = B * 8,
     .flags = KILN_ABI_LIVE},
    {.name = "label", .dtype = KILN_ABI_I32, .rank = 1, .shape = {B}, .offset = 128, .bytes = B * 4,
     .bound = 3},
};
static const KilnTrainDesc tab_train = {.loss_kind = KILN_ABI_LOSS_CE, .loss_pred_output = -1,
                                        .loss_target_input = 1};
static const KilnModelDesc tab = {.abi_version = KILN_ABI_VERSION, .name = "tab", .batch = B,
                                  .arena_bytes = 256, .ninputs = 2, .inputs = tab_inputs,
                                  .train = &tab_train};

enum { T = 3 };
static const KilnTensorDesc seq_inputs[] = {
    {.name = "idx", .dtype = KILN_ABI_I32, .rank = 2, .shape = {B, T}, .offset = 64,
     .bytes = B * T * 4, .flags = KILN_ABI_LIVE, .bound = 16},
    {.name = "tgt", .dtype = KILN_ABI_I32, .rank = 2, .shape = {B, T}, .offset = 128,
     .bytes = B * T * 4, .bound = 16},
};
static const KilnTrainDesc seq_train = {.loss_kind = KILN_ABI_LOSS_CE, .loss_pred_output = -1,
                                        .loss_target_input = 1};
static const KilnModelDesc seq = {.abi_version = KILN_ABI_VERSION, .name = "seq", .batch = B,
                                  .arena_bytes = 256, .ninputs = 2, .inputs = seq_inputs,
                                  .train = &seq_train};

static char *line(const char *fmt, ...) {
  static char buf[4][1024];
  static int k;
  k = (k + 1) % 4;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf[k], sizeof buf[k], fmt, ap);
  va_end(ap);
  return buf[k];
}

//
// CSV
//
static void test_csv(void **state) {
  (void)state;
  puts_file(P("a.csv"), "x0,x1,y\n0.5,1.5,2\n-1,2,0\n3,4,1\n5,6,2\n7,8,0\n");
  KilnStatus st = {0};
  KilnData dt;
  EXPECT_OK(kiln_data_open(&tab, line("csv\t%s\t1\tx:0:2\tlabel:2:3", P("a.csv")), NULL, &dt, &st), st);
  assert_int_equal(dt.kind, KILN_DATA_CSV);
  assert_int_equal(dt.n, 5);
  assert_string_equal(dt.what, P("a.csv"));
  // A batch of samples 4, 0 and 2: three rows, the fourth zeroed.
  KilnCtx c = {.d = &tab, .arena = calloc(1, 256)};
  memset(c.arena, 0x7f, 256);
  int64_t idx[] = {4, 0, 2};
  kiln_data_fill(&dt, &c, idx, 3);
  const float *x = kiln_ctx_input(&c, 0);
  const int32_t *y = kiln_ctx_input(&c, 1);
  float wx[] = {7, 8, 0.5f, 1.5f, 3, 4, 0, 0};
  int32_t wy[] = {0, 2, 1, 0};
  assert_memory_equal(x, wx, sizeof wx);
  assert_memory_equal(y, wy, sizeof wy);
  free(c.arena);
  kiln_data_free(&dt);
}

static void test_csv_errors(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnData dt;
  puts_file(P("ragged.csv"), "1,2,0\n1,2\n");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2\tlabel:2:3", P("ragged.csv")), NULL, &dt, &st),
               st, "ragged.csv:2: row has 2 columns, expected 3");
  puts_file(P("nan.csv"), "1,2,0\n1,nan,0\n");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2\tlabel:2:3", P("nan.csv")), NULL, &dt, &st),
               st, "nan.csv:2:3: expected a number, got 'nan' (NaN is not allowed in data)");
  puts_file(P("inf.csv"), "1,2,0\n1,-inf,0\n");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2\tlabel:2:3", P("inf.csv")), NULL, &dt, &st),
               st, "inf.csv:2:3: expected a number, got '-inf' (infinities are not allowed in data)");
  puts_file(P("frac.csv"), "h\n1,2,0\n1,2,0.5\n");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t1\tx:0:2\tlabel:2:3", P("frac.csv")), NULL, &dt, &st),
               st, "frac.csv:3: column 2: input 'label' takes integers, got 0.5");
  puts_file(P("big.csv"), "1,2,0\n1,2,3\n");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2\tlabel:2:3", P("big.csv")), NULL, &dt, &st),
               st, "big.csv:2: column 2: 3 is outside [0, 3) of input 'label'");
  puts_file(P("ok.csv"), "1,2,0\n");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2\tlabel:2:4", P("ok.csv")), NULL, &dt, &st),
               st, "input 'label' takes columns [2, 4), the file has 3");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:1\tlabel:2:3", P("ok.csv")), NULL, &dt, &st),
               st, "input 'x' takes 2 values per sample, columns [0, 1) hold 1");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2", P("ok.csv")), NULL, &dt, &st),
               st, "the data feeds no input 'label'");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2\tlab:2:3", P("ok.csv")), NULL, &dt, &st),
               st, "the model has no input 'lab'");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2\tx:0:2", P("ok.csv")), NULL, &dt, &st),
               st, "input 'x' is fed twice");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0", P("ok.csv")), NULL, &dt, &st),
               st, "bad column mapping 'x:0'");
  EXPECT_ERROR(kiln_data_open(&tab, line("csv\t%s\t0\tx:0:2\tlabel:2:3", P("none.csv")), NULL, &dt, &st),
               st, "none.csv: cannot open");
  EXPECT_ERROR(kiln_data_open(&tab, "parquet\tx", NULL, &dt, &st), st,
               "unknown kind of data source 'parquet'");
}

//
// npy
//
static void test_npy(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnData dt;
  float x[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  int32_t y[5] = {0, 1, 2, 0, 1};
  float yf[5] = {0, 1, 2, 0, 1};
  EXPECT_OK(kiln_npy_write(P("x.npy"), KILN_ABI_F32, (int64_t[]){5, 2}, 2, x, &st), st);
  EXPECT_OK(kiln_npy_write(P("y.npy"), KILN_ABI_I32, (int64_t[]){5}, 1, y, &st), st);
  EXPECT_OK(kiln_npy_write(P("yf.npy"), KILN_ABI_F32, (int64_t[]){5}, 1, yf, &st), st);
  // f32 labels holding integers are taken as such.
  EXPECT_OK(kiln_data_open(&tab, line("npy\tx=%s\tlabel=%s", P("x.npy"), P("yf.npy")), NULL, &dt, &st), st);
  assert_int_equal(dt.n, 5);
  KilnCtx c = {.d = &tab, .arena = calloc(1, 256)};
  int64_t idx[] = {3, 1, 4, 0};
  kiln_data_fill(&dt, &c, idx, 4);
  float wx[] = {6, 7, 2, 3, 8, 9, 0, 1};
  int32_t wy[] = {0, 1, 1, 0};
  assert_memory_equal(kiln_ctx_input(&c, 0), wx, sizeof wx);
  assert_memory_equal(kiln_ctx_input(&c, 1), wy, sizeof wy);
  free(c.arena);
  kiln_data_free(&dt);
  EXPECT_OK(kiln_data_open(&tab, line("npy\tx=%s\tlabel=%s", P("x.npy"), P("y.npy")), NULL, &dt, &st), st);
  kiln_data_free(&dt);

  // Rejections.
  x[3] = NAN;
  EXPECT_OK(kiln_npy_write(P("xnan.npy"), KILN_ABI_F32, (int64_t[]){5, 2}, 2, x, &st), st);
  EXPECT_ERROR(kiln_data_open(&tab, line("npy\tx=%s\tlabel=%s", P("xnan.npy"), P("y.npy")), NULL, &dt, &st),
               st, "xnan.npy: sample 1: element 3 is NaN");
  x[3] = INFINITY;
  EXPECT_OK(kiln_npy_write(P("xinf.npy"), KILN_ABI_F32, (int64_t[]){5, 2}, 2, x, &st), st);
  EXPECT_ERROR(kiln_data_open(&tab, line("npy\tx=%s\tlabel=%s", P("xinf.npy"), P("y.npy")), NULL, &dt, &st),
               st, "xinf.npy: sample 1: element 3 is infinite");
  yf[2] = 1.5f;
  EXPECT_OK(kiln_npy_write(P("yh.npy"), KILN_ABI_F32, (int64_t[]){5}, 1, yf, &st), st);
  EXPECT_ERROR(kiln_data_open(&tab, line("npy\tx=%s\tlabel=%s", P("x.npy"), P("yh.npy")), NULL, &dt, &st),
               st, "yh.npy: sample 2: input 'label' takes integers, got 1.5");
  y[4] = 3;
  EXPECT_OK(kiln_npy_write(P("yb.npy"), KILN_ABI_I32, (int64_t[]){5}, 1, y, &st), st);
  EXPECT_ERROR(kiln_data_open(&tab, line("npy\tx=%s\tlabel=%s", P("x.npy"), P("yb.npy")), NULL, &dt, &st),
               st, "yb.npy: sample 4: 3 at element 4 is outside [0, 3) of input 'label'");
  EXPECT_OK(kiln_npy_write(P("y4.npy"), KILN_ABI_I32, (int64_t[]){4}, 1, y, &st), st);
  EXPECT_ERROR(kiln_data_open(&tab, line("npy\tx=%s\tlabel=%s", P("x.npy"), P("y4.npy")), NULL, &dt, &st),
               st, "has 5 samples");
  EXPECT_OK(kiln_npy_write(P("x3.npy"), KILN_ABI_F32, (int64_t[]){3, 3}, 2, x, &st), st);
  EXPECT_ERROR(kiln_data_open(&tab, line("npy\tx=%s\tlabel=%s", P("x3.npy"), P("y.npy")), NULL, &dt, &st),
               st, "input 'x' takes 2 values per sample");
  EXPECT_ERROR(kiln_data_open(&tab, line("npy\tx%s", P("x.npy")), NULL, &dt, &st), st,
               "expected INPUT=PATH");
}

//
// text and tokens
//
static void test_text(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnData dt;
  puts_file(P("t.txt"), "hello world\n");  // 12 bytes: 3 windows of 3 plus one
  EXPECT_OK(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("t.txt")), NULL, &dt, &st), st);
  assert_int_equal(dt.kind, KILN_DATA_TEXT);
  // The vocabulary: the sorted distinct bytes; id = rank.
  assert_int_equal(dt.vocab.n, 9);
  assert_memory_equal(dt.vocab.sym, "\n dehlorw", 9);
  assert_int_equal(dt.vocab.id['h'], 4);
  assert_int_equal(dt.vocab.id['z'], -1);
  assert_int_equal(dt.n, 3);
  assert_int_equal(dt.window, T);
  KilnCtx c = {.d = &seq, .arena = calloc(1, 256)};
  int64_t idx[] = {1, 2};  // "lo " -> "o w"; "wor" -> "orl"
  kiln_data_fill(&dt, &c, idx, 2);
  const int32_t *in = kiln_ctx_input(&c, 0), *tg = kiln_ctx_input(&c, 1);
  const char *want_in = "lo wor", *want_tg = "o worl";
  for (int i = 0; i < 6; i++) {
    assert_int_equal(in[i], dt.vocab.id[(unsigned char)want_in[i]]);
    assert_int_equal(tg[i], dt.vocab.id[(unsigned char)want_tg[i]]);
  }
  for (int i = 6; i < B * T; i++) assert_int_equal(in[i] | tg[i], 0);
  free(c.arena);
  KilnVocab v = dt.vocab;
  kiln_data_free(&dt);

  // Another text mapped with that vocabulary: every byte must be in it.
  puts_file(P("u.txt"), "hello wold\n");
  EXPECT_OK(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("u.txt")), &v, &dt, &st), st);
  assert_int_equal(dt.vocab.n, 9);
  kiln_data_free(&dt);
  puts_file(P("z.txt"), "hello\tzed\n");
  EXPECT_ERROR(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("z.txt")), &v, &dt, &st), st,
               "z.txt: offset 5: character 0x09 is not in the training vocabulary");
  puts_file(P("z.txt"), "hellozed\n");
  EXPECT_ERROR(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("z.txt")), &v, &dt, &st), st,
               "z.txt: offset 5: character 'z' (0x7a) is not in the training vocabulary");

  // More distinct characters than the embedding has rows.
  puts_file(P("wide.txt"), "abcdefghijklmnopqrstuvwxyz");
  EXPECT_ERROR(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("wide.txt")), NULL, &dt, &st), st,
               "wide.txt: the text has 26 distinct characters, more than the 16 ids of input 'idx'");
  puts_file(P("short.txt"), "abc");
  EXPECT_ERROR(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("short.txt")), NULL, &dt, &st), st,
               "short.txt: 3 characters make no window of 3 plus one");
  EXPECT_ERROR(kiln_data_open(&seq, line("text\t%s\tidx\tidx", P("t.txt")), NULL, &dt, &st), st,
               "input and target are both 'idx'");
  EXPECT_ERROR(kiln_data_open(&tab, line("text\t%s\tx\tlabel", P("t.txt")), NULL, &dt, &st), st,
               "input 'x' is f32; text data feeds i32 ids");
}

// A folder: its regular files in name order, links and subfolders left out.
static void test_text_folder(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnData dt;
  assert_int_equal(mkdir(P("corpus"), 0777), 0);
  assert_int_equal(mkdir(P("corpus/sub"), 0777), 0);
  puts_file(P("corpus/b"), "world\n");
  puts_file(P("corpus/a"), "hello ");
  puts_file(P("corpus/sub/c"), "zzz");
  assert_int_equal(symlink("a", P("corpus/link")), 0);
  EXPECT_OK(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("corpus")), NULL, &dt, &st), st);
  assert_int_equal(dt.nids, 12);  // "hello world\n": no z, no second "hello "
  const char *want = "hello world\n";
  for (int i = 0; i < 12; i++) assert_int_equal(dt.ids[i], dt.vocab.id[(unsigned char)want[i]]);
  KilnVocab v = dt.vocab;
  kiln_data_free(&dt);
  // A character outside a given vocabulary is found in its own file, at its offset.
  puts_file(P("corpus/c"), "wordz");
  EXPECT_ERROR(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("corpus")), &v, &dt, &st), st,
               "corpus/c: offset 4: character 'z' (0x7a) is not in the training vocabulary");
  assert_int_equal(mkdir(P("empty"), 0777), 0);
  EXPECT_ERROR(kiln_data_open(&seq, line("text\t%s\tidx\ttgt", P("empty")), NULL, &dt, &st), st,
               "empty: the folder holds no regular files");
}

static void test_tokens(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnData dt;
  unsigned char tok[20];
  for (int i = 0; i < 10; i++) tok[2 * i] = (unsigned char)i, tok[2 * i + 1] = 0;
  kiln_test_write(P("t.bin"), tok, sizeof tok);
  EXPECT_OK(kiln_data_open(&seq, line("tokens\t%s\tidx\ttgt", P("t.bin")), NULL, &dt, &st), st);
  assert_int_equal(dt.kind, KILN_DATA_TOKENS);
  assert_int_equal(dt.n, 3);  // (10 - 1) / 3
  KilnCtx c = {.d = &seq, .arena = calloc(1, 256)};
  int64_t idx[] = {2};
  kiln_data_fill(&dt, &c, idx, 1);
  const int32_t *in = kiln_ctx_input(&c, 0), *tg = kiln_ctx_input(&c, 1);
  assert_int_equal(in[0], 6);
  assert_int_equal(in[2], 8);
  assert_int_equal(tg[0], 7);
  assert_int_equal(tg[2], 9);
  free(c.arena);
  kiln_data_free(&dt);

  tok[14] = 16;  // token 7 -> 16: at byte offset 14, outside [0, 16)
  kiln_test_write(P("bad.bin"), tok, sizeof tok);
  EXPECT_ERROR(kiln_data_open(&seq, line("tokens\t%s\tidx\ttgt", P("bad.bin")), NULL, &dt, &st), st,
               "bad.bin: byte offset 14: token 16 is outside the vocabulary [0, 16) of input 'idx'");
  tok[14] = 0, tok[15] = 1;  // little-endian: 256
  kiln_test_write(P("bad.bin"), tok, sizeof tok);
  EXPECT_ERROR(kiln_data_open(&seq, line("tokens\t%s\tidx\ttgt", P("bad.bin")), NULL, &dt, &st), st,
               "token 256 is outside");
  kiln_test_write(P("odd.bin"), tok, 7);
  EXPECT_ERROR(kiln_data_open(&seq, line("tokens\t%s\tidx\ttgt", P("odd.bin")), NULL, &dt, &st), st,
               "odd.bin: 7 bytes is not a whole number of uint16 tokens");
}

//
// Sample order
//
static void test_split(void **state) {
  (void)state;
  KilnStatus st = {0};
  int64_t *tr, *va, *tr2, *va2, ntr, nva, ntr2, nva2;
  EXPECT_OK(kiln_data_split(100, 0.2, 42, &tr, &ntr, &va, &nva, &st), st);
  assert_int_equal(ntr, 80);
  assert_int_equal(nva, 20);
  // Ascending, disjoint, together every sample.
  char seen[100] = {0};
  for (int64_t i = 0; i < ntr; i++) seen[tr[i]]++, assert_true(i == 0 || tr[i] > tr[i - 1]);
  for (int64_t i = 0; i < nva; i++) seen[va[i]]++, assert_true(i == 0 || va[i] > va[i - 1]);
  for (int i = 0; i < 100; i++) assert_int_equal(seen[i], 1);
  // The same every time; another seed holds out others.
  EXPECT_OK(kiln_data_split(100, 0.2, 42, &tr2, &ntr2, &va2, &nva2, &st), st);
  assert_memory_equal(va, va2, 20 * sizeof *va);
  free(tr2), free(va2);
  EXPECT_OK(kiln_data_split(100, 0.2, 43, &tr2, &ntr2, &va2, &nva2, &st), st);
  assert_memory_not_equal(va, va2, 20 * sizeof *va);
  free(tr), free(va), free(tr2), free(va2);
  // No split: every sample trains, in order.
  EXPECT_OK(kiln_data_split(5, 0, 42, &tr, &ntr, &va, &nva, &st), st);
  assert_int_equal(ntr, 5);
  assert_int_equal(nva, 0);
  assert_memory_equal(tr, ((int64_t[]){0, 1, 2, 3, 4}), 5 * sizeof *tr);
  free(tr), free(va);
  // A tiny split still holds one out; one that holds out everything is refused.
  EXPECT_OK(kiln_data_split(10, 0.01, 42, &tr, &ntr, &va, &nva, &st), st);
  assert_int_equal(nva, 1);
  free(tr), free(va);
  EXPECT_ERROR(kiln_data_split(1, 0.5, 42, &tr, &ntr, &va, &nva, &st), st,
               "leaves none of 1 samples to train on");
}

static void test_shuffle(void **state) {
  (void)state;
  enum { N = 50 };
  int64_t a[N], b[N], c[N];
  for (int i = 0; i < N; i++) a[i] = b[i] = c[i] = i;
  kiln_data_shuffle(a, N, kiln_data_epoch_rng(7, 3));
  kiln_data_shuffle(b, N, kiln_data_epoch_rng(7, 3));
  kiln_data_shuffle(c, N, kiln_data_epoch_rng(7, 4));
  assert_memory_equal(a, b, sizeof a);
  assert_memory_not_equal(a, c, sizeof a);
  char seen[N] = {0};
  for (int i = 0; i < N; i++) seen[a[i]]++;
  for (int i = 0; i < N; i++) assert_int_equal(seen[i], 1);
  // Another seed, another order.
  for (int i = 0; i < N; i++) b[i] = i;
  kiln_data_shuffle(b, N, kiln_data_epoch_rng(8, 3));
  assert_memory_not_equal(a, b, sizeof a);
  // Pinned: a change here changes every model's data order.
  int64_t d[5] = {0, 1, 2, 3, 4};
  kiln_data_shuffle(d, 5, kiln_data_epoch_rng(42, 0));
  int64_t d2[5] = {0, 1, 2, 3, 4};
  kiln_data_shuffle(d2, 5, kiln_data_epoch_rng(42, 0));
  assert_memory_equal(d, d2, sizeof d);
}

static void test_vocab_text(void **state) {
  (void)state;
  unsigned char present[256] = {0};
  const unsigned char bytes[] = {0, '\n', ' ', '"', '\\', 'a', 'x', 0x7f, 0xc3, 0xff};
  for (size_t i = 0; i < sizeof bytes; i++) present[bytes[i]] = 1;
  KilnVocab v, w;
  kiln_vocab_from_bytes(present, &v);
  char text[4 * 256 + 1];
  kiln_vocab_escape(&v, text);
  assert_string_equal(text, "\\x00\\x0a \"\\\\ax\\x7f\\xc3\\xff");
  assert_int_equal(kiln_vocab_parse(text, &w), 0);
  assert_memory_equal(&v, &w, sizeof v);
  // All 256 bytes fit the buffer.
  memset(present, 1, sizeof present);
  kiln_vocab_from_bytes(present, &v);
  kiln_vocab_escape(&v, text);
  assert_int_equal(kiln_vocab_parse(text, &w), 0);
  assert_int_equal(w.n, 256);
  // Out of order, repeated, or a bad escape.
  assert_int_equal(kiln_vocab_parse("ba", &w), -1);
  assert_int_equal(kiln_vocab_parse("aa", &w), -1);
  assert_int_equal(kiln_vocab_parse("\\q", &w), -1);
  assert_int_equal(kiln_vocab_parse("\\x4", &w), -1);
}

//
// Sources after --data
//
static void test_source(void **state) {
  (void)state;
  KilnStatus st = {0};
  char *s = kiln_data_source(&tab, "csv\t/m/a.csv\t1\tx:0:2\tlabel:2:3", (const char *[]){"b.csv"}, 1, &st);
  assert_non_null(s);
  assert_string_equal(s, "csv\tb.csv\t1\tx:0:2\tlabel:2:3");
  free(s);
  s = kiln_data_source(&tab, "csv\t/m/a.csv\t0\tx:0:2\tlabel:2:3", NULL, 0, &st);
  assert_string_equal(s, "csv\t/m/a.csv\t0\tx:0:2\tlabel:2:3");
  free(s);
  assert_null(kiln_data_source(&tab, NULL, NULL, 0, &st));
  assert_int_equal(st.code, 0);
  // Without a model line: the file name decides.
  s = kiln_data_source(&tab, NULL, (const char *[]){"d.csv"}, 1, &st);
  assert_string_equal(s, "csv\td.csv\t0\tx:0:2\tlabel:2:3");
  free(s);
  s = kiln_data_source(&tab, NULL, (const char *[]){"x=x.npy", "label=y.npy"}, 2, &st);
  assert_string_equal(s, "npy\tx=x.npy\tlabel=y.npy");
  free(s);
  s = kiln_data_source(&seq, NULL, (const char *[]){"t.txt"}, 1, &st);
  assert_string_equal(s, "text\tt.txt\tidx\ttgt");
  free(s);
  s = kiln_data_source(&seq, NULL, (const char *[]){"t.bin"}, 1, &st);
  assert_string_equal(s, "tokens\tt.bin\tidx\ttgt");
  free(s);
  // npy: per input, or a bare file for the only one.
  s = kiln_data_source(&tab, "npy\tx=/m/x.npy\tlabel=/m/y.npy", (const char *[]){"label=z.npy"}, 1, &st);
  assert_string_equal(s, "npy\tx=/m/x.npy\tlabel=z.npy");
  free(s);
  s = kiln_data_source(&tab, "npy\tx=/m/x.npy", (const char *[]){"z.npy"}, 1, &st);
  assert_string_equal(s, "npy\tx=z.npy");
  free(s);
  // Rejections.
  st.code = 0;
  assert_null(kiln_data_source(&tab, "npy\tx=/m/x.npy\tlabel=/m/y.npy", (const char *[]){"z.npy"}, 1, &st));
  assert_non_null(strstr(st.msg, "several inputs; give INPUT=FILE"));
  assert_null(kiln_data_source(&tab, "npy\tx=/m/x.npy", (const char *[]){"w=z.npy"}, 1, &st));
  assert_non_null(strstr(st.msg, "feeds no such input"));
  assert_null(kiln_data_source(&tab, "csv\t/a.csv\t0\tx:0:2", (const char *[]){"a", "b"}, 2, &st));
  assert_non_null(strstr(st.msg, "only npy data takes several"));
  assert_null(kiln_data_source(&tab, NULL, (const char *[]){"data.parquet"}, 1, &st));
  assert_non_null(strstr(st.msg, "is not clear from its name"));
  assert_null(kiln_data_source(&tab, NULL, (const char *[]){"a.npy"}, 1, &st));
  assert_non_null(strstr(st.msg, "name the input it feeds"));
}

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/kiln-data-XXXXXX");
  return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_csv),       cmocka_unit_test(test_csv_errors),
      cmocka_unit_test(test_npy),       cmocka_unit_test(test_text),
      cmocka_unit_test(test_text_folder),
      cmocka_unit_test(test_tokens),    cmocka_unit_test(test_split),
      cmocka_unit_test(test_shuffle),   cmocka_unit_test(test_vocab_text),
      cmocka_unit_test(test_source),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
