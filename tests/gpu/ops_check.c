// Every op case of tests/test_cpu_ops.c on a GPU: runs the pack that
// `test_cpu_ops pack DIR` writes (its format is described there). Per case it
// loads NNN.so, creates a context through the CUDA driver, writes the inputs, runs
// the forward step and compares every output element with the reference
// interpreter's, within the test's own tolerance. One line per case:
//
//   PASS 012 matmul f32[3,4,5] f32[3,5,2]: worst out0[10] got 0.279783249 want 0.279783173 (0.0059 of tolerance)
//   FAIL 003 exp f32[1]: 1 of 1 elements beyond tolerance; worst out0[0] got 0.0440085605 want 1e+30 (1e+05 x tolerance)
//
// Usage: ops_check PACKDIR [NNN...]   (the listed cases only)
// Exit: 0 when every case passed, 1 when one failed, 2 on bad usage or a pack it
// cannot read, 77 (SKIPPED) where there is no CUDA driver or no device.
//
// The program is the runtime and this file: the packed models call back into the
// runtime it exports, and nothing of the compiler (LLVM, libyaml) is needed, so it
// runs on a machine that has only a GPU driver. Where NNN.emu.so sits beside a
// case (`pack --emu`), KILN_CUDA_EMU_KERNELS is set to it, so that the runner
// can be tried here under tests/cuda-emu (KILN_CUDA_DRIVER=.../libcuda.so.1).
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime.h"

enum { MAX_TENSORS = 32 };

typedef struct {
  char id[16], graph[128], desc[256];
  int nin, nout;
  int64_t in_bytes[MAX_TENSORS];
  int64_t out_numel[MAX_TENSORS];
  double out_scale[MAX_TENSORS];  // element tolerance: scale * (1 + |want|)
} Case;

// Whether a CUDA device can be used: the driver loads (libcuda.so.1, or
// $KILN_CUDA_DRIVER, as the runtime loads it) and has a device. The runtime reports
// both as errors; here they mean there is nothing to check. A driver that fails
// otherwise is the cases' failure, reported by the runtime per case.
//
// The device's primary context is then held for the whole run: each case's
// context retains and releases it, and were it released to nothing, the driver
// would tear it down and build it again for every case (a fraction of a second
// each on a large GPU).
static bool have_gpu(char *why, size_t n) {
  const char *path = getenv("KILN_CUDA_DRIVER");
  if (!path || !*path) path = "libcuda.so.1";
  // Left open: the runtime opens the same library next.
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) return snprintf(why, n, "no CUDA driver (%s)", dlerror()), false;
  int (*init)(unsigned), (*count)(int *), (*get)(int *, int), (*retain)(void **, int);
  *(void **)&init = dlsym(h, "cuInit");
  *(void **)&count = dlsym(h, "cuDeviceGetCount");
  *(void **)&get = dlsym(h, "cuDeviceGet");
  *(void **)&retain = dlsym(h, "cuDevicePrimaryCtxRetain");
  if (!init || !count || !get || !retain)
    return snprintf(why, n, "%s is no CUDA driver (no cuInit)", path), false;
  int r = init(0), devices = 0;
  if (r == 100)  // CUDA_ERROR_NO_DEVICE
    return snprintf(why, n, "no CUDA device (cuInit: CUDA_ERROR_NO_DEVICE)"), false;
  if (r == 0 && count(&devices) == 0 && devices == 0)
    return snprintf(why, n, "no CUDA device (cuDeviceGetCount: 0)"), false;
  const char *env = getenv("KILN_CUDA_DEVICE");  // the runtime's choice of device
  int dev;
  void *ctx;
  if (r == 0 && get(&dev, env ? atoi(env) : 0) == 0) retain(&ctx, dev);  // never released
  return true;
}

// The next case of the index, 1; 0 at its end; -1 with a message on a malformed one.
static int read_case(FILE *f, Case *k, int *line) {
  char buf[512];
  if (!fgets(buf, sizeof buf, f)) return 0;
  ++*line;
  int at = 0;
  if (sscanf(buf, "case %15s %127s %d %d %n", k->id, k->graph, &k->nin, &k->nout, &at) != 4 || !at ||
      k->nin < 0 || k->nin > MAX_TENSORS || k->nout < 1 || k->nout > MAX_TENSORS)
    return -1;
  snprintf(k->desc, sizeof k->desc, "%s", buf + at);
  k->desc[strcspn(k->desc, "\n")] = '\0';
  for (int i = 0; i < k->nin; i++, ++*line)
    if (!fgets(buf, sizeof buf, f) || sscanf(buf, "in %lld", (long long *)&k->in_bytes[i]) != 1 ||
        k->in_bytes[i] < 0)
      return -1;
  for (int o = 0; o < k->nout; o++, ++*line)
    if (!fgets(buf, sizeof buf, f) ||
        sscanf(buf, "out %lld %lf", (long long *)&k->out_numel[o], &k->out_scale[o]) != 2 ||
        k->out_numel[o] < 0 || !(k->out_scale[o] > 0))
      return -1;
  return 1;
}

// Whether the descriptor is the model the index describes.
static bool matches(const KilnModelDesc *d, const Case *k, char *why, size_t n) {
  if (strcmp(d->target, "cuda") != 0)
    return snprintf(why, n, "compiled for target %s, not cuda", d->target), false;
  if (d->ninputs != k->nin || d->noutputs != k->nout)
    return snprintf(why, n, "the model has %d inputs and %d outputs, the index %d and %d",
                    d->ninputs, d->noutputs, k->nin, k->nout), false;
  for (int i = 0; i < k->nin; i++)
    if (d->inputs[i].bytes != k->in_bytes[i])
      return snprintf(why, n, "input %d has %lld bytes, the index %lld", i,
                      (long long)d->inputs[i].bytes, (long long)k->in_bytes[i]), false;
  for (int o = 0; o < k->nout; o++)
    if (d->outputs[o].bytes != 4 * k->out_numel[o])  // f32 and i32 alike
      return snprintf(why, n, "output %d has %lld bytes, the index %lld elements", o,
                      (long long)d->outputs[o].bytes, (long long)k->out_numel[o]), false;
  return true;
}

// Compares output o with want; keeps the worst element (its error as a multiple of
// its tolerance; NaN is the worst there is) in *worst and its text in note.
static int64_t compare(const KilnModelDesc *d, const KilnCtx *c, const Case *k, int o,
                       const double *want, double *worst, char *note, size_t n) {
  const void *got = kiln_ctx_output(c, o);
  int64_t bad = 0;
  for (int64_t j = 0; j < k->out_numel[o]; j++) {
    double have = d->outputs[o].dtype == KILN_ABI_F32 ? ((const float *)got)[j]
                                                     : ((const int32_t *)got)[j];
    double tol = k->out_scale[o] * (1 + fabs(want[j]));
    double r = fabs(have - want[j]) / tol;
    if (isnan(r)) r = INFINITY;
    bad += !(fabs(have - want[j]) <= tol);
    if (r > *worst || !*note) {
      *worst = r;
      snprintf(note, n, "out%d[%lld] got %.9g want %.9g", o, (long long)j, have, want[j]);
    }
  }
  return bad;
}

// Runs case k; prints its line; true when it passed.
static bool run_case(const char *dir, const Case *k, FILE *bin) {
  char path[4096], why[600] = "", worst_at[160] = "";
  double worst = 0;
  int64_t bad = 0, total = 0;
  KilnCtx *c = NULL;
  double *want = NULL;
  snprintf(path, sizeof path, "%s/%s.so", dir, k->id);
  void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  char sym[160];
  snprintf(sym, sizeof sym, "kiln_model_%s", k->graph);
  const KilnModelDesc *d = dl ? dlsym(dl, sym) : NULL;
  if (!dl) snprintf(why, sizeof why, "cannot load: %s", dlerror());
  else if (!d) snprintf(why, sizeof why, "%s.so defines no %s", k->id, sym);
  if (!d || !matches(d, k, why, sizeof why)) goto done;

  snprintf(path, sizeof path, "%s/%s.emu.so", dir, k->id);
  if (access(path, R_OK) == 0) setenv("KILN_CUDA_EMU_KERNELS", path, 1);
  KilnStatus st = {0};
  if (!(c = kiln_ctx_create(d, 1, &st))) {
    snprintf(why, sizeof why, "context: %s", st.msg);
    goto done;
  }
  for (int i = 0; i < k->nin; i++)
    if (fread(kiln_ctx_input(c, i), 1, (size_t)k->in_bytes[i], bin) != (size_t)k->in_bytes[i]) {
      snprintf(why, sizeof why, "%s/%s.bin is short", dir, k->id);
      goto done;
    }
  kiln_ctx_forward(c);
  if (kiln_ctx_check(c, &st) != 0) {
    snprintf(why, sizeof why, "forward: %s", st.msg);
    goto done;
  }
  for (int o = 0; o < k->nout; o++) {
    want = realloc(want, (size_t)(k->out_numel[o] ? k->out_numel[o] : 1) * sizeof *want);
    if (!want || fread(want, sizeof *want, (size_t)k->out_numel[o], bin) != (size_t)k->out_numel[o]) {
      snprintf(why, sizeof why, "%s/%s.bin is short", dir, k->id);
      goto done;
    }
    bad += compare(d, c, k, o, want, &worst, worst_at, sizeof worst_at);
    total += k->out_numel[o];
  }
  if (fgetc(bin) != EOF) snprintf(why, sizeof why, "%s/%s.bin is longer than its index says", dir, k->id);
  else if (bad)
    snprintf(why, sizeof why, "%lld of %lld elements beyond tolerance; worst %s (%.3g x tolerance)",
             (long long)bad, (long long)total, worst_at, worst);

done:
  if (why[0]) printf("FAIL %s %s: %s\n", k->id, k->desc, why);
  else printf("PASS %s %s: worst %s (%.2g of tolerance)\n", k->id, k->desc, worst_at, worst);
  fflush(stdout);
  free(want);
  kiln_ctx_destroy(c);
  if (dl) dlclose(dl);
  return !why[0];
}

// Whether case id is among the ones asked for (all when none are).
static bool asked(const char *id, char **list, int n) {
  for (int i = 0; i < n; i++)
    if (strcmp(list[i], id) == 0) return true;
  return n == 0;
}

int main(int argc, char **argv) {
  if (argc < 2 || argv[1][0] == '-') {
    fprintf(stderr, "usage: %s PACKDIR [NNN...]\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  char path[4096], buf[64];
  snprintf(path, sizeof path, "%s/index", dir);
  FILE *index = fopen(path, "r");
  if (!index) {
    fprintf(stderr, "ops_check: cannot read %s: %s\n", path, strerror(errno));
    return 2;
  }
  if (!fgets(buf, sizeof buf, index) || strcmp(buf, "kiln-ops-pack 1\n") != 0) {
    fprintf(stderr, "ops_check: %s is no op pack of this version (its first line is not 'kiln-ops-pack 1')\n", path);
    return 2;
  }
  char why[600];
  if (!have_gpu(why, sizeof why)) {
    printf("SKIPPED ops: %s\n", why);
    return 77;
  }
  Case k;
  int line = 1, rc, passed = 0, failed = 0;
  while ((rc = read_case(index, &k, &line)) == 1) {
    if (!asked(k.id, argv + 2, argc - 2)) continue;
    snprintf(path, sizeof path, "%s/%s.bin", dir, k.id);
    FILE *bin = fopen(path, "rb");
    if (!bin) {
      printf("FAIL %s %s: cannot read %s: %s\n", k.id, k.desc, path, strerror(errno));
      failed++;
      continue;
    }
    if (run_case(dir, &k, bin)) passed++;
    else failed++;
    fclose(bin);
  }
  fclose(index);
  if (rc < 0) {
    fprintf(stderr, "ops_check: %s/index:%d: malformed case\n", dir, line);
    return 2;
  }
  if (passed + failed == 0) {
    fprintf(stderr, "ops_check: %s holds no case%s\n", dir, argc > 2 ? " of those named" : "s");
    return 2;
  }
  printf("ops: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
