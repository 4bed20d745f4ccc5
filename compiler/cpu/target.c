// Target machines, the optimization pipeline and emission, through the LLVM C API.
// "native" asks LLVM for the host CPU's name and feature string: LLVM 16 may name a
// new CPU only "generic", and the features are what enable AVX-512 code.
#include <llvm-c/Analysis.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <stdlib.h>
#include <string.h>

#include "compiler/cpu/cpu.h"

// The x86-64 CPUs LLVM 16 compiles 64-bit code for (each checked with llc). LLVM
// only warns about an unknown name, then aborts while emitting, so names are
// checked here first.
static const char *const x86_64_cpus[] = {
    "alderlake", "amdfam10", "athlon-fx", "athlon64", "athlon64-sse3", "atom", "barcelona",
    "bdver1", "bdver2", "bdver3", "bdver4", "bonnell", "broadwell", "btver1", "btver2",
    "cannonlake", "cascadelake", "cooperlake", "core-avx-i", "core-avx2", "core2", "corei7",
    "corei7-avx", "emeraldrapids", "generic", "goldmont", "goldmont-plus", "grandridge",
    "graniterapids", "haswell", "icelake-client", "icelake-server", "ivybridge", "k8", "k8-sse3",
    "knl", "knm", "meteorlake", "nehalem", "nocona", "opteron", "opteron-sse3", "penryn",
    "raptorlake", "rocketlake", "sandybridge", "sapphirerapids", "sierraforest", "silvermont",
    "skx", "skylake", "skylake-avx512", "slm", "tigerlake", "tremont", "westmere", "x86-64",
    "x86-64-v2", "x86-64-v3", "x86-64-v4", "znver1", "znver2", "znver3", "znver4", NULL};

static bool known_cpu(const char *triple, const char *cpu) {
  if (strncmp(triple, "x86_64", 6) != 0) return true;  // other targets: LLVM decides
  for (int i = 0; x86_64_cpus[i]; i++)
    if (strcmp(cpu, x86_64_cpus[i]) == 0) return true;
  return false;
}

static void init_llvm(void) {
  static bool done;
  if (done) return;
  LLVMInitializeNativeTarget();
  LLVMInitializeNativeAsmPrinter();
  done = true;
}

LLVMTargetMachineRef kiln_cpu_target(const KilnTargetOpts *t, char *err, size_t errlen) {
  init_llvm();
  char *triple = LLVMGetDefaultTargetTriple(), *msg = NULL;
  LLVMTargetRef target;
  if (LLVMGetTargetFromTriple(triple, &target, &msg) != 0) {
    snprintf(err, errlen, "LLVM has no target for %s: %s", triple, msg);
    LLVMDisposeMessage(msg);
    LLVMDisposeMessage(triple);
    return NULL;
  }
  bool native = !t->cpu || strcmp(t->cpu, "native") == 0;
  if (!native && !known_cpu(triple, t->cpu)) {
    snprintf(err, errlen, "unknown CPU '%s' for %s; try native, x86-64-v3, x86-64-v4, "
             "skylake-avx512 or znver4", t->cpu, triple);
    LLVMDisposeMessage(triple);
    return NULL;
  }
  char *cpu = native ? LLVMGetHostCPUName() : NULL;
  char *features = native ? LLVMGetHostCPUFeatures() : NULL;
  LLVMCodeGenOptLevel level = t->opt_level >= 3   ? LLVMCodeGenLevelAggressive
                              : t->opt_level == 0 ? LLVMCodeGenLevelNone
                                                  : LLVMCodeGenLevelDefault;
  LLVMTargetMachineRef tm = LLVMCreateTargetMachine(target, triple, native ? cpu : t->cpu,
                                                    native ? features : "", level, LLVMRelocPIC,
                                                    LLVMCodeModelDefault);
  if (native) {
    LLVMDisposeMessage(cpu);
    LLVMDisposeMessage(features);
  }
  LLVMDisposeMessage(triple);
  if (!tm) snprintf(err, errlen, "LLVM cannot make a target machine for cpu '%s'", t->cpu);
  return tm;
}

int kiln_cpu_emit(LLVMModuleRef m, LLVMTargetMachineRef tm, int opt_level, KilnEmitKind kind,
                  const char *path, char *err, size_t errlen) {
  char *msg = NULL;
  if (LLVMVerifyModule(m, LLVMReturnStatusAction, &msg) != 0) {
    snprintf(err, errlen, "internal error: generated LLVM IR is invalid: %s", msg);
    LLVMDisposeMessage(msg);
    return -1;
  }
  LLVMDisposeMessage(msg);
  char pipeline[32];
  snprintf(pipeline, sizeof pipeline, "default<O%d>", opt_level < 0 ? 0 : opt_level > 3 ? 3 : opt_level);
  LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
  LLVMPassBuilderOptionsSetLoopVectorization(po, opt_level >= 2);
  LLVMPassBuilderOptionsSetSLPVectorization(po, opt_level >= 2);
  // Unrolling tripled compile time (the GPT: 14 s against 4.8 s) for 7% of forward
  // speed; the vectorizer still interleaves. Kernel shapes are constants, so
  // unrolled copies were many and large.
  LLVMPassBuilderOptionsSetLoopUnrolling(po, false);
  LLVMErrorRef e = LLVMRunPasses(m, pipeline, tm, po);
  LLVMDisposePassBuilderOptions(po);
  if (e) {
    char *s = LLVMGetErrorMessage(e);
    snprintf(err, errlen, "LLVM optimization failed: %s", s);
    LLVMDisposeErrorMessage(s);
    return -1;
  }
  if (kind == KILN_EMIT_LLVM) {
    if (LLVMPrintModuleToFile(m, path, &msg) == 0) return 0;
  } else {
    LLVMCodeGenFileType ft = kind == KILN_EMIT_ASM ? LLVMAssemblyFile : LLVMObjectFile;
    if (LLVMTargetMachineEmitToFile(tm, m, (char *)path, ft, &msg) == 0) return 0;
  }
  snprintf(err, errlen, "cannot write %s: %s", path, msg ? msg : "unknown LLVM error");
  LLVMDisposeMessage(msg);
  return -1;
}
