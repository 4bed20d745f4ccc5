// The runtime's CUDA side (runtime/cuda.c): which image a GPU gets, the error of a
// machine without the driver, and, with the emulated driver of tests/cuda-emu/, a
// hand-written program run end to end: uploads and downloads, graph replay, the
// weights between host and device, decode state, views, profiling and a failed
// step. The emulator runs tests/cuda-emu/selftest.cu's kernels (KILN_CUDA_EMU_KERNELS).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

//
// Image selection.
//
static const KilnCudaImage images[] = {{.arch = 80}, {.arch = 90}, {.arch = -90}};

static int pick(const KilnCudaImage *im, int n, int major, int minor, char *err) {
  return kiln_cuda_pick_image(im, n, major, minor, err, 256);
}

static void test_pick_image(void **state) {
  (void)state;
  char err[256];
  assert_int_equal(pick(images, 3, 8, 0, err), 0);   // exact
  assert_int_equal(pick(images, 3, 8, 6, err), 0);   // sm_80 runs on 8.6
  assert_int_equal(pick(images, 3, 8, 9, err), 0);
  assert_int_equal(pick(images, 3, 9, 0, err), 1);
  assert_int_equal(pick(images, 3, 10, 0, err), 2); // no cubin of major 10: PTX
  assert_int_equal(pick(images, 3, 12, 0, err), 2);
  // The nearest older cubin of the same major wins over an older one and over PTX.
  const KilnCudaImage three[] = {{.arch = 80}, {.arch = 86}, {.arch = -80}};
  assert_int_equal(pick(three, 3, 8, 9, err), 1);
  assert_int_equal(pick(three, 3, 8, 6, err), 1);
  assert_int_equal(pick(three, 3, 8, 0, err), 0);
  // The newest PTX the GPU can compile.
  const KilnCudaImage ptx[] = {{.arch = -70}, {.arch = -90}, {.arch = -80}};
  assert_int_equal(pick(ptx, 3, 8, 9, err), 2);
  assert_int_equal(pick(ptx, 3, 9, 0, err), 1);
}

static void test_pick_image_none(void **state) {
  (void)state;
  char err[256] = "";
  assert_int_equal(pick(images, 3, 7, 5, err), -1);
  assert_non_null(strstr(err, "compute capability 7.5"));
  assert_non_null(strstr(err, "cubins for sm_80, sm_90 and PTX for compute_90"));
  assert_non_null(strstr(err, "--gpu-arch=sm_75"));
  const KilnCudaImage newer[] = {{.arch = -100}};
  assert_int_equal(pick(newer, 1, 9, 0, err), -1);  // PTX of a newer GPU
  assert_non_null(strstr(err, "PTX for compute_100"));
  assert_int_equal(pick(NULL, 0, 9, 0, err), -1);
  assert_non_null(strstr(err, "no GPU code"));
}

//
// A program: forward sums the weights (emu_reduce), train counts into a weight and
// the loss (emu_count), eval is absent. Arena: header [0, 64), the count n (i64)
// at 64, 32 sums at 128, 32 maxes at 256, the loss at 384.
//
enum { N_OFF = 64, SUMS = 128, MAXES = 256, LOSS = 384, STATE = 400, ARENA = 448 };

static const KilnKernelInfo info[] = {
    {.name = "total", .ops = "sum+max", .loc = "fake.yaml:3:5"},
    {.name = "count", .ops = "count", .loc = "fake.yaml:4:5"},
};
static const KilnCudaSlot reduce_slots[] = {{KILN_ABI_BLOCK_WEIGHTS, 0, 0},
                                            {KILN_ABI_BLOCK_ARENA, 0, SUMS},
                                            {KILN_ABI_BLOCK_ARENA, 0, MAXES},
                                            {KILN_ABI_BLOCK_ARENA, 0, N_OFF}};
static const KilnCudaSlot count_w[] = {{KILN_ABI_BLOCK_WEIGHTS, 0, 0}};
static const KilnCudaSlot count_loss[] = {{KILN_ABI_BLOCK_ARENA, 0, LOSS}};
static const KilnCudaLaunch fwd_launches[] = {
    {.function = 0, .info = 0, .grid = {1, 1, 1}, .block = {32, 1, 1}, .nslots = 4, .slots = reduce_slots}};
// 2 blocks of 32 threads: +64 per launch.
static const KilnCudaLaunch train_launches[] = {
    {.function = 1, .info = 1, .grid = {2, 1, 1}, .block = {32, 1, 1}, .nslots = 1, .slots = count_w},
    {.function = 1, .info = 1, .grid = {2, 1, 1}, .block = {32, 1, 1}, .nslots = 1, .slots = count_loss}};
static const KilnCudaRange fwd_up[] = {{0, 64}, {N_OFF, 8}};
static const KilnCudaRange fwd_down[] = {{0, 64}, {SUMS, 256}};
static const KilnCudaRange train_up[] = {{0, 64}};
static const KilnCudaRange train_down[] = {{0, 64}};

// PTX as the emulator reads it (the code it runs is the host build of the kernels),
// and a cubin for sm_80 that a compute 9.0 device must not be given.
static const char ptx[] = "//\n.version 8.0\n.target sm_90\n.address_size 64\n\n"
                          ".entry emu_reduce(\n)\n.entry emu_count(\n)\n";
static const unsigned char not_a_cubin[] = "not loaded on 9.0";
static const KilnCudaImage prog_images[] = {
    {.arch = 80, .data = not_a_cubin, .size = sizeof not_a_cubin},
    {.arch = -90, .data = (const unsigned char *)ptx, .size = sizeof ptx - 1}};
static const char *const functions[] = {"emu_reduce", "emu_count"};
static const KilnCudaProgram program = {
    .nimages = 2, .nfunctions = 2, .images = prog_images, .functions = functions,
    .steps = {[KILN_ABI_CUDA_FORWARD] = {.nlaunches = 1, .nup = 2, .ndown = 2, .launches = fwd_launches,
                                         .up = fwd_up, .down = fwd_down, .loss_offset = -1},
              [KILN_ABI_CUDA_TRAIN] = {.nlaunches = 2, .nup = 1, .ndown = 1, .training = 1,
                                       .launches = train_launches, .up = train_up,
                                       .down = train_down, .loss_offset = LOSS}}};

static void fwd(char *w, char *a, void *rt) {
  (void)w, (void)a;
  kiln_rt_cuda_step(rt, &program, KILN_ABI_CUDA_FORWARD);
}
static void train(char *w, char *a, void *rt) {
  (void)w, (void)a;
  kiln_rt_cuda_step(rt, &program, KILN_ABI_CUDA_TRAIN);
}
static void eval(char *w, char *a, void *rt) {
  (void)w, (void)a;
  kiln_rt_cuda_step(rt, &program, KILN_ABI_CUDA_EVAL);
}

static const KilnTensorDesc params[] = {
    {.name = "w", .dtype = KILN_ABI_F32, .rank = 1, .shape = {4}, .offset = 0, .bytes = 16,
     .init = KILN_ABI_INIT_ONES}};
static const KilnTensorDesc inputs[] = {
    {.name = "n", .dtype = KILN_ABI_I32, .rank = 1, .shape = {2}, .offset = N_OFF, .bytes = 8,
     .flags = KILN_ABI_LIVE}};
static const KilnTensorDesc outputs[] = {
    {.name = "sums", .dtype = KILN_ABI_F32, .rank = 1, .shape = {32}, .offset = SUMS, .bytes = 128},
    {.name = "maxes", .dtype = KILN_ABI_F32, .rank = 1, .shape = {32}, .offset = MAXES, .bytes = 128}};
static const KilnTrainDesc train_desc = {.optimizer = KILN_ABI_SGD, .lr = 0.1, .steps = 10};

// The decode sub-model: a state counter (emu_count into the state) and the sum of
// the owner's weights, the state past the forward's buffers.
static const KilnCudaSlot state_slot[] = {{KILN_ABI_BLOCK_ARENA, 0, STATE}};
static const KilnCudaLaunch dec_launches[] = {
    {.function = 1, .info = 1, .grid = {1, 1, 1}, .block = {1, 1, 1}, .nslots = 1, .slots = state_slot},
    {.function = 0, .info = 0, .grid = {1, 1, 1}, .block = {32, 1, 1}, .nslots = 4, .slots = reduce_slots}};
static const KilnCudaRange dec_down[] = {{0, 64}, {SUMS, 64}, {STATE, 4}};
static const KilnCudaProgram dec_program = {
    .nimages = 2, .nfunctions = 2, .images = prog_images, .functions = functions,
    .steps = {[KILN_ABI_CUDA_FORWARD] = {.nlaunches = 2, .nup = 2, .ndown = 3, .launches = dec_launches,
                                         .up = fwd_up, .down = dec_down, .loss_offset = -1}}};
static void dec_fwd(char *w, char *a, void *rt) {
  (void)w, (void)a;
  kiln_rt_cuda_step(rt, &dec_program, KILN_ABI_CUDA_FORWARD);
}
static const KilnTensorDesc dec_inputs[] = {
    {.name = "n", .dtype = KILN_ABI_I32, .rank = 1, .shape = {2}, .offset = N_OFF, .bytes = 8,
     .flags = KILN_ABI_LIVE},
    {.name = "decode.state", .dtype = KILN_ABI_F32, .rank = 1, .shape = {4}, .offset = STATE,
     .bytes = 16, .flags = KILN_ABI_STATE}};
static const KilnModelDesc decode_model = {
    .abi_version = KILN_ABI_VERSION, .name = "fake.decode", .kiln_version = "test", .target = "cuda",
    .batch = 1, .weights_bytes = 16, .arena_bytes = ARENA, .nparams = 1, .params = params,
    .ninputs = 2, .inputs = dec_inputs, .noutputs = 1, .outputs = outputs, .forward = dec_fwd,
    .nkernel_info = 2, .kernel_info = info, .cuda = &dec_program};

static const KilnModelDesc model = {
    .abi_version = KILN_ABI_VERSION, .name = "fake", .kiln_version = "test", .target = "cuda",
    .seed = 1, .batch = 1, .weights_bytes = 16, .arena_bytes = ARENA, .nparams = 1,
    .params = params, .ninputs = 1, .inputs = inputs, .noutputs = 2, .outputs = outputs,
    .forward = fwd, .train_step = train, .eval_step = eval, .loss_offset = LOSS,
    .train = &train_desc, .decode = &decode_model, .nkernel_info = 2, .kernel_info = info,
    .cuda = &program};

static void test_no_driver(void **state) {
  (void)state;
  setenv("KILN_CUDA_DRIVER", "/nonexistent/libcuda.so.1", 1);
  KilnStatus st = {0};
  assert_null(kiln_ctx_create(&model, 0, &st));
  assert_non_null(strstr(st.msg, "this program was compiled for NVIDIA GPUs (--target=cuda) and "
                                 "needs the CUDA driver: /nonexistent/libcuda.so.1"));
  // The library reports it through last_error.
  assert_null(kiln_lib_create(&model, 0));
  assert_non_null(strstr(kiln_lib_last_error(&model, NULL), "needs the CUDA driver"));
  unsetenv("KILN_CUDA_DRIVER");
}

//
// With the emulated driver. The driver reads its environment at cuInit, which the
// runtime calls once per process: no device first (a failed start is retried),
// then one compute 9.0 device for the rest.
//
#ifdef KILN_CUDA_EMU_DRIVER
static int use_emulator(void **state) {
  (void)state;
  setenv("KILN_CUDA_DRIVER", KILN_CUDA_EMU_DRIVER, 1);
  setenv("KILN_CUDA_EMU_KERNELS", KILN_CUDA_EMU_KERNELS, 1);
  setenv("KILN_CUDA_EMU_CC", "90", 1);
  return 0;
}

static void test_emu_no_device(void **state) {
  (void)state;
  setenv("KILN_CUDA_EMU_DEVICES", "0", 1);
  KilnStatus st = {0};
  assert_null(kiln_ctx_create(&model, 0, &st));
  assert_non_null(strstr(st.msg, "no CUDA device found (cuInit: CUDA_ERROR_NO_DEVICE"));
  unsetenv("KILN_CUDA_EMU_DEVICES");
}

static float sum_on_device(KilnCtx *c, int64_t n) {
  *(int64_t *)kiln_ctx_input(c, 0) = n;
  kiln_ctx_forward(c);
  assert_int_equal(c->fault.code, 0);
  return ((const float *)kiln_ctx_output(c, 0))[0];
}

static void test_emu_steps(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(&model, 4, &st);
  if (!c) fail_msg("%s", st.msg);
  assert_int_equal(kiln_pool_threads(c->pool), 1);  // the GPU runs the kernels
  // The parameters (ones) reach the device at the first step; the later ones
  // replay a graph, each with its own inputs.
  assert_true(sum_on_device(c, 4) == 4.0f);
  assert_true(((const float *)kiln_ctx_output(c, 1))[0] == 1.0f);  // the max
  assert_true(sum_on_device(c, 2) == 2.0f);
  assert_true(sum_on_device(c, 3) == 3.0f);
  // A host write is uploaded before the next step.
  ((float *)c->weights)[0] = 5;
  kiln_ctx_weights_changed(c);
  assert_true(sum_on_device(c, 4) == 8.0f);
  assert_true(((const float *)kiln_ctx_output(c, 1))[0] == 5.0f);

  // Train steps: the loss comes back in the header, the header goes up and down
  // (each launch adds 1 to its step), the weights stay on the device until synced.
  for (int i = 1; i <= 3; i++) {
    int64_t before = c->step;
    assert_true(kiln_ctx_train_step(c) == 64.0f * (float)i);
    assert_int_equal(kiln_ctx_check(c, &st), 0);
    assert_int_equal(((const KilnStepHeader *)c->arena)->step, before + 2);
    assert_int_equal(((const KilnStepHeader *)c->arena)->training, 1);
  }
  assert_true(((float *)c->weights)[0] == 5.0f);
  assert_int_equal(kiln_ctx_weights_sync(c, &st), 0);
  assert_true(((float *)c->weights)[0] == 5.0f + 3 * 64);
  assert_true(((float *)c->weights)[1] == 1.0f);
  assert_true(sum_on_device(c, 1) == 197.0f);
  assert_int_equal(((const KilnStepHeader *)c->arena)->training, 0);
  kiln_ctx_destroy(c);
}

static void test_emu_view_state(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(&model, 0, &st);
  if (!c) fail_msg("%s", st.msg);
  KilnCtx *v = kiln_ctx_create_view(&decode_model, c, &st);
  if (!v) fail_msg("%s", st.msg);
  // The view reads the owner's device weights, uploaded for it.
  ((float *)c->weights)[2] = 7;
  kiln_ctx_weights_changed(c);
  const float *count = (const float *)((char *)v->arena + STATE);
  for (int i = 1; i <= 3; i++) {
    assert_true(sum_on_device(v, 4) == 10.0f);
    assert_true(count[0] == (float)i);  // the state lives on between calls
  }
  kiln_ctx_state_reset(v);
  assert_true(count[0] == 0.0f);
  assert_true(sum_on_device(v, 4) == 10.0f);
  assert_true(count[0] == 1.0f);  // zeroed on the device too
  // Owner and view see the same weights after the owner's train step.
  assert_true(kiln_ctx_train_step(c) == 64.0f);
  assert_true(sum_on_device(v, 1) == 65.0f);
  kiln_ctx_destroy(v);
  kiln_ctx_destroy(c);
}

// The calls column of the table's row of a kernel ("time% total calls ...").
static long calls(const char *table, const char *kernel) {
  const char *row = strstr(table, kernel);
  if (!row) return -1;
  while (row > table && row[-1] != '\n') row--;
  double pct, ms;
  long n;
  return sscanf(row, "%lf %lf %ld", &pct, &ms, &n) == 3 ? n : -1;
}

static void test_emu_profile(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(&model, 0, &st);
  if (!c) fail_msg("%s", st.msg);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  KilnProfileOpts o = {.table = f};
  assert_int_equal(kiln_rt_profile_begin(c, &o, &st), 0);
  for (int i = 0; i < 3; i++) sum_on_device(c, 4);
  kiln_ctx_train_step(c);
  assert_int_equal(kiln_rt_profile_end(c, &st), 0);
  fclose(f);
  assert_non_null(strstr(buf, "3 forward"));
  assert_non_null(strstr(buf, "1 train_step"));
  assert_non_null(strstr(buf, "on CUDA device 0 (Kiln CUDA emulator, compute capability 9.0)"));
  // Launches per kernel: 3 of total, 2 of count (one train step).
  assert_int_equal(calls(buf, "total sum+max fake.yaml:3:5"), 3);
  assert_int_equal(calls(buf, "count count fake.yaml:4:5"), 2);
  free(buf);
  // Graphs again after profiling; the train step made w[0] 1 + 64.
  assert_true(sum_on_device(c, 2) == 66.0f);
  assert_true(sum_on_device(c, 2) == 66.0f);
  kiln_ctx_destroy(c);
}

// A step that fails leaves the context failed: later steps do nothing, the
// weights cannot be read back, and every check reports the first error.
static void test_emu_fault(void **state) {
  (void)state;
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(&model, 0, &st);
  if (!c) fail_msg("%s", st.msg);
  assert_true(sum_on_device(c, 4) == 4.0f);
  kiln_ctx_eval_step(c);
  assert_int_equal(kiln_ctx_check(c, &st), -1);
  assert_non_null(strstr(st.msg, "model 'fake' has no eval_step on the GPU"));
  float *sums = (float *)((char *)c->arena + SUMS);
  sums[0] = -1;
  kiln_ctx_forward(c);
  assert_true(sums[0] == -1.0f);
  memset(&st, 0, sizeof st);
  assert_int_equal(kiln_ctx_weights_sync(c, &st), -1);
  assert_non_null(strstr(st.msg, "has no eval_step"));
  assert_int_equal(kiln_ctx_save(c, "/nonexistent/never-written.safetensors", &st), -1);
  assert_non_null(strstr(st.msg, "has no eval_step"));
  kiln_ctx_destroy(c);
}

// A launch the device cannot run is refused when the context opens, naming the
// kernel and where the model wrote it.
static const KilnCudaLaunch huge_launch[] = {
    {.function = 0, .info = 0, .grid = {1, 1, 1}, .block = {2048, 1, 1}, .nslots = 4, .slots = reduce_slots}};
static const KilnCudaProgram huge_program = {
    .nimages = 2, .nfunctions = 2, .images = prog_images, .functions = functions,
    .steps = {[KILN_ABI_CUDA_FORWARD] = {.nlaunches = 1, .launches = huge_launch, .loss_offset = -1}}};
static void huge_fwd(char *w, char *a, void *rt) {
  (void)w, (void)a;
  kiln_rt_cuda_step(rt, &huge_program, KILN_ABI_CUDA_FORWARD);
}

static void test_emu_bad_launch(void **state) {
  (void)state;
  KilnModelDesc d = model;
  d.forward = huge_fwd;
  d.cuda = &huge_program;
  KilnStatus st = {0};
  assert_null(kiln_ctx_create(&d, 0, &st));
  assert_non_null(strstr(st.msg, "kernel 'total' (sum+max, fake.yaml:3:5) launches blocks of 2048 "
                                 "threads in forward"));
}
#else
static void test_emu_missing(void **state) {
  (void)state;
  skip();  // no emulated driver in this build (no CUDA toolkit or C++ compiler)
}
#endif

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pick_image), cmocka_unit_test(test_pick_image_none),
      cmocka_unit_test(test_no_driver),
#ifdef KILN_CUDA_EMU_DRIVER
      cmocka_unit_test_setup(test_emu_no_device, use_emulator),
      cmocka_unit_test_setup(test_emu_steps, use_emulator),
      cmocka_unit_test_setup(test_emu_view_state, use_emulator),
      cmocka_unit_test_setup(test_emu_profile, use_emulator),
      cmocka_unit_test_setup(test_emu_fault, use_emulator),
      cmocka_unit_test_setup(test_emu_bad_launch, use_emulator),
#else
      cmocka_unit_test(test_emu_missing),
#endif
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
