// Target machines, the optimization pipeline and emission, through the LLVM C API.
// "native" asks LLVM for the host CPU's name and feature string: LLVM 16 may name a
// new CPU only "generic", and the features are what enable AVX-512 code.
#include <llvm-c/Analysis.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <string.h>

#include "compiler/cpu/cpu.h"

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
