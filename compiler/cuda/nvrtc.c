// NVRTC: the model's kernel source to a cubin per architecture, plus the PTX of
// the newest for GPUs newer than any cubin (the driver JIT-compiles it). The
// architectures compile in parallel, one thread each. ptxas's verbose report
// gives every kernel's registers, spills, stack and shared memory.
//
// NVRTC is loaded with dlopen at the first --target=cuda build, so kiln starts
// (and builds for the CPU) on a machine whose CUDA toolkit is gone. `kiln build`
// keeps what NVRTC made in a cache (cache.c) and looks there first.
#include <dlfcn.h>
#include <nvrtc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "compiler/cuda/cuda.h"

extern const char kiln_cuda_template_text[];  // kiln_templates.c, from templates/*.cuh

const char *kiln_cuda_templates(void) { return kiln_cuda_template_text; }

int kiln_cuda_parse_archs(const char *list, int *archs, int max, char *err, size_t errlen) {
  int n = 0;
  const char *s = list;
  while (*s) {
    size_t len = strcspn(s, ",");
    char word[32];
    snprintf(word, sizeof word, "%.*s", (int)(len < sizeof word - 1 ? len : sizeof word - 1), s);
    char *end;
    long v = strncmp(word, "sm_", 3) == 0 ? strtol(word + 3, &end, 10) : -1;
    if (v < 0 || *end || v < 75 || v > 999) {
      snprintf(err, errlen, "--gpu-arch: '%s' is not an architecture like sm_80 (sm_75 or newer)",
               word);
      return -1;
    }
    if (n == max) {
      snprintf(err, errlen, "--gpu-arch: at most %d architectures", max);
      return -1;
    }
    bool dup = false;
    for (int i = 0; i < n; i++) dup |= archs[i] == v;
    if (!dup) archs[n++] = (int)v;
    s += len;
    if (*s == ',') s++;
  }
  if (n == 0) {
    snprintf(err, errlen, "--gpu-arch: no architecture given");
    return -1;
  }
  // Ascending, so the newest is last (its PTX goes in too).
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && archs[j - 1] > archs[j]; j--) {
      int t = archs[j];
      archs[j] = archs[j - 1], archs[j - 1] = t;
    }
  return n;
}

#define NVRTC_FNS(X)                                                                          \
  X(nvrtcVersion) X(nvrtcCreateProgram) X(nvrtcCompileProgram) X(nvrtcGetProgramLogSize) X(nvrtcGetProgramLog) \
  X(nvrtcGetCUBINSize) X(nvrtcGetCUBIN) X(nvrtcGetPTXSize) X(nvrtcGetPTX)                     \
  X(nvrtcDestroyProgram) X(nvrtcGetErrorString)

static struct {
#define X(f) __typeof__(&f) f;
  NVRTC_FNS(X)
#undef X
} nv;

#ifndef KILN_NVRTC_PATH
#define KILN_NVRTC_PATH "libnvrtc.so"
#endif

// Loads NVRTC: $KILN_NVRTC, else the library kiln was built against, else the
// loader's search for its soname.
static int load_nvrtc(char *err, size_t errlen) {
  if (nv.nvrtcCreateProgram) return 0;
  const char *env = getenv("KILN_NVRTC");
  const char *paths[] = {env && *env ? env : KILN_NVRTC_PATH, "libnvrtc.so.13", "libnvrtc.so"};
  void *h = NULL;
  char first[512] = "";
  for (int i = 0; i < 3 && !h; i++) {
    h = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
    if (!h && !first[0]) snprintf(first, sizeof first, "%s", dlerror());
    if (env && *env) break;  // asked for that one
  }
  if (!h) {
    snprintf(err, errlen, "--target=cuda needs NVRTC from the CUDA toolkit: %s", first);
    return -1;
  }
#define X(f)                                                          \
  if (!(*(void **)&nv.f = dlsym(h, #f))) {                            \
    snprintf(err, errlen, "NVRTC (%s) lacks %s", paths[0], #f);       \
    return -1;                                                        \
  }
  NVRTC_FNS(X)
#undef X
  return 0;
}

typedef struct {
  const char *src, *file;
  int arch;
  bool ptx;              // also keep the PTX
  const char *cache;     // the kernel cache's folder, or NULL
  int64_t limit;
  bool cached;           // came from it
  nvrtcResult rc;
  char *log;
  unsigned char *cubin, *ptxdata;
  size_t cubin_size, ptx_size;
} Job;

// The cache key of a job: every input of NVRTC's output, the source last.
static char *cache_key(const Job *j, int nopts, const char **opts, size_t *len) {
  int major = 0, minor = 0;
  nv.nvrtcVersion(&major, &minor);
  char *key = NULL;
  FILE *f = open_memstream(&key, len);
  if (!f) kiln_out_of_memory(0);
  fprintf(f, "kiln NVRTC cache 1\nNVRTC %d.%d\nfile %s\nptx %d\n", major, minor, j->file, j->ptx);
  for (int i = 0; i < nopts; i++) fprintf(f, "option %s\n", opts[i]);
  fputs(j->src, f);
  fclose(f);
  return key;
}

static void *compile_one(void *arg) {
  Job *j = arg;
  char arch[64];
  snprintf(arch, sizeof arch, "--gpu-architecture=sm_%d", j->arch);
  // -lineinfo: profilers (Nsight Compute) map samples to the source lines.
  const char *opts[] = {arch, "--std=c++17", "--ptxas-options=-v", "-lineinfo"};
  size_t keylen = 0;
  char *key = j->cache ? cache_key(j, 4, opts, &keylen) : NULL;
  KilnCudaCacheEntry e;
  if (key && kiln_cuda_cache_get(j->cache, key, keylen, &e) && (e.ptx || !j->ptx)) {
    free(key);
    j->rc = NVRTC_SUCCESS, j->cached = true;
    j->log = e.log, j->cubin = e.cubin, j->cubin_size = e.cubin_size;
    j->ptxdata = e.ptx, j->ptx_size = e.ptx_size;
    return NULL;
  }
  nvrtcProgram prog;
  j->rc = nv.nvrtcCreateProgram(&prog, j->src, j->file, 0, NULL, NULL);
  if (j->rc != NVRTC_SUCCESS) return free(key), NULL;
  j->rc = nv.nvrtcCompileProgram(prog, 4, opts);
  size_t n = 0;
  nv.nvrtcGetProgramLogSize(prog, &n);
  j->log = kiln_xmalloc(n + 1);
  j->log[0] = 0;
  if (n) nv.nvrtcGetProgramLog(prog, j->log);
  if (j->rc == NVRTC_SUCCESS) {
    nv.nvrtcGetCUBINSize(prog, &j->cubin_size);
    j->cubin = kiln_xmalloc(j->cubin_size);
    nv.nvrtcGetCUBIN(prog, (char *)j->cubin);
    if (j->ptx) {
      nv.nvrtcGetPTXSize(prog, &j->ptx_size);
      j->ptxdata = kiln_xmalloc(j->ptx_size);
      nv.nvrtcGetPTX(prog, (char *)j->ptxdata);
    }
    if (key) {
      KilnCudaCacheEntry put = {j->log, j->cubin, j->cubin_size, j->ptxdata, j->ptx_size};
      kiln_cuda_cache_put(j->cache, j->limit, key, keylen, &put);
    }
  }
  free(key);
  nv.nvrtcDestroyProgram(&prog);
  return NULL;
}

// ptxas -v, per kernel and architecture:
//   ptxas info    : Compiling entry function 'NAME' for 'sm_80'
//   ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
//   ptxas info    : Used 40 registers, used 1 barriers, 4352 bytes smem, 360 bytes cmem[0]
static void parse_stats(const char *log, int arch, KilnCudaCompiled *out) {
  KilnCudaKernelStats *cur = NULL;
  for (const char *line = log; line && *line;) {
    const char *eol = strchr(line, '\n');
    size_t len = eol ? (size_t)(eol - line) : strlen(line);
    char buf[512];
    snprintf(buf, sizeof buf, "%.*s", (int)(len < sizeof buf - 1 ? len : sizeof buf - 1), line);
    const char *p;
    if ((p = strstr(buf, "Compiling entry function '"))) {
      p += strlen("Compiling entry function '");
      out->stats = realloc(out->stats, (size_t)(out->nstats + 1) * sizeof *out->stats);
      if (!out->stats) kiln_out_of_memory(0);
      cur = &out->stats[out->nstats++];
      memset(cur, 0, sizeof *cur);
      snprintf(cur->name, sizeof cur->name, "%.*s", (int)strcspn(p, "'"), p);
      cur->arch = arch;
    } else if (cur && (p = strstr(buf, "bytes stack frame"))) {
      sscanf(buf, "ptxas . %d bytes stack frame, %d bytes spill stores, %d bytes spill loads",
             &cur->stack, &cur->spill_stores, &cur->spill_loads);
    } else if (cur && (p = strstr(buf, "Used "))) {
      sscanf(p, "Used %d registers", &cur->registers);
      const char *s = strstr(p, "bytes smem");
      if (s) {
        while (s > p && s[-1] == ' ') s--;
        while (s > p && s[-1] >= '0' && s[-1] <= '9') s--;
        cur->smem = atoi(s);
      }
    }
    line = eol ? eol + 1 : NULL;
  }
}

int kiln_cuda_compile(const char *src, const char *file, const int *archs, int narchs,
                      const char *cache_dir, int64_t cache_limit, KilnCudaCompiled *out,
                      char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  if (load_nvrtc(err, errlen) != 0) return -2;
  Job *jobs = kiln_xcalloc((size_t)narchs, sizeof *jobs);
  pthread_t *th = kiln_xcalloc((size_t)narchs, sizeof *th);
  bool *started = kiln_xcalloc((size_t)narchs, sizeof *started);
  for (int i = 0; i < narchs; i++) {
    jobs[i] = (Job){.src = src, .file = file, .arch = archs[i], .ptx = i == narchs - 1,
                    .cache = cache_dir, .limit = cache_limit};
    started[i] = pthread_create(&th[i], NULL, compile_one, &jobs[i]) == 0;
    if (!started[i]) compile_one(&jobs[i]);
  }
  for (int i = 0; i < narchs; i++)
    if (started[i]) pthread_join(th[i], NULL);
  int rc = 0;
  out->bin = kiln_xcalloc((size_t)narchs + 1, sizeof *out->bin);
  for (int i = 0; i < narchs; i++) {
    Job *j = &jobs[i];
    if (j->rc != NVRTC_SUCCESS && rc == 0) {
      snprintf(err, errlen, "NVRTC (sm_%d): %s\n%s", j->arch, nv.nvrtcGetErrorString(j->rc),
               j->log ? j->log : "");
      rc = -1;
    }
    if (j->log) parse_stats(j->log, j->arch, out);
    out->ncached += j->cached;
    if (j->cubin) out->bin[out->nbin++] = (KilnCudaBinary){j->arch, j->cubin, j->cubin_size};
    if (j->ptxdata) out->bin[out->nbin++] = (KilnCudaBinary){-j->arch, j->ptxdata, j->ptx_size};
    if (i == narchs - 1) out->log = j->log;
    else free(j->log);
  }
  free(jobs);
  free(th);
  free(started);
  if (rc != 0) kiln_cuda_compiled_free(out);
  return rc;
}

void kiln_cuda_compiled_free(KilnCudaCompiled *c) {
  for (int i = 0; i < c->nbin; i++) free(c->bin[i].data);
  free(c->bin);
  free(c->stats);
  free(c->log);
  memset(c, 0, sizeof *c);
}
