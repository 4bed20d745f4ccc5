// A stand-in NVRTC for tests/cuda_build.sh (KILN_NVRTC=this library): every
// compile fails with errors at two lines of the source, as NVRTC words them, so
// the test can check that kiln maps each to its place. FAKE_NVRTC_AT picks the
// lines: "kernel" (the first __global__ kernel's line) or "template" (the line
// after the first "// ---- templates/reduce.cuh" marker, plus 3).
#include <nvrtc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct _nvrtcProgram {
  char log[512];
};

nvrtcResult nvrtcCreateProgram(nvrtcProgram *prog, const char *src, const char *name, int n,
                               const char *const *headers, const char *const *names) {
  (void)n, (void)headers, (void)names;
  struct _nvrtcProgram *p = calloc(1, sizeof *p);
  const char *at = getenv("FAKE_NVRTC_AT");
  bool tmpl = at && strcmp(at, "template") == 0;
  const char *want = tmpl ? "// ---- templates/reduce.cuh" : "extern \"C\" __global__";
  int line = 1, hit = 0;
  for (const char *s = src; *s; s++) {
    if ((s == src || s[-1] == '\n') && strncmp(s, want, strlen(want)) == 0) {
      hit = line + (tmpl ? 4 : 0);
      break;
    }
    line += *s == '\n';
  }
  snprintf(p->log, sizeof p->log, "%s(%d): error: identifier \"bogus\" is undefined\n\n1 error detected\n",
           name, hit);
  *prog = p;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcCompileProgram(nvrtcProgram p, int n, const char *const *opts) {
  (void)p, (void)n, (void)opts;
  return NVRTC_ERROR_COMPILATION;
}

nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram p, size_t *n) {
  *n = strlen(p->log) + 1;
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcGetProgramLog(nvrtcProgram p, char *log) {
  strcpy(log, p->log);
  return NVRTC_SUCCESS;
}

nvrtcResult nvrtcDestroyProgram(nvrtcProgram *p) {
  free(*p);
  *p = NULL;
  return NVRTC_SUCCESS;
}

const char *nvrtcGetErrorString(nvrtcResult r) {
  return r == NVRTC_ERROR_COMPILATION ? "NVRTC_ERROR_COMPILATION" : "NVRTC_ERROR";
}

// Never reached (every compile fails), but kiln looks them all up.
nvrtcResult nvrtcGetCUBINSize(nvrtcProgram p, size_t *n) { (void)p, *n = 0; return NVRTC_ERROR_INVALID_PROGRAM; }
nvrtcResult nvrtcGetCUBIN(nvrtcProgram p, char *c) { (void)p, (void)c; return NVRTC_ERROR_INVALID_PROGRAM; }
nvrtcResult nvrtcGetPTXSize(nvrtcProgram p, size_t *n) { (void)p, *n = 0; return NVRTC_ERROR_INVALID_PROGRAM; }
nvrtcResult nvrtcGetPTX(nvrtcProgram p, char *c) { (void)p, (void)c; return NVRTC_ERROR_INVALID_PROGRAM; }
// A version no real NVRTC has, so its builds never share kernel-cache entries
// with the real one's.
nvrtcResult nvrtcVersion(int *major, int *minor) {
  *major = 0, *minor = 1;
  return NVRTC_SUCCESS;
}
