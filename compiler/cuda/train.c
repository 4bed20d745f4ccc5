// Training kernels for the GPU (templates/train.cuh): the global gradient norm and
// one optimizer update per parameter, as compiler/cpu/train.c computes them.
#include <stdio.h>

#include "compiler/cuda/cuda.h"

#define THREADS 256

// One block of 1024 threads walks every gradient, summing squares in double, and
// thread 0 writes header.grad_norm and header.grad_scale. One block, because the
// plan has no scratch space for partial sums across blocks and the prelude has no
// double atomics. The gradients are addressed from the arena base (A.a) rather
// than through slots: a model has more of them than a kernel has slots, and this
// kernel is the model's only one of its kind, so its text need not be shared.
int kiln_cuda_norm_kernel(KilnCudaKernel *k, double clip) {
  const KilnGraph *g = k->g;
  fprintf(k->out, "extern \"C\" __global__ void __launch_bounds__(1024) %s(KilnArgs A) {\n", k->name);
  fprintf(k->out, "  double s = 0.0;\n");
  for (int i = 0; i < g->nforward; i++) {
    int32_t gi = g->grads[i];
    if (gi < 0) continue;
    KILN_ASSERT(k->p->where[gi] == KILN_LOC_ARENA);
    fprintf(k->out, "  s += kiln_sumsq<%lldll>((const float *)(A.a + %lldll));\n",
            (long long)kiln_node_numel(&g->nodes[gi]), (long long)k->p->offset[gi]);
  }
  fprintf(k->out, "  kiln_norm_finish(A, s, %.17g);\n}\n", clip > 0 ? clip : 0.0);
  k->grid[0] = k->grid[1] = k->grid[2] = 1;
  k->block[0] = 1024;
  k->block[1] = k->block[2] = 1;
  k->smem = 0;
  return 0;
}

// An f32 constant as the CPU backend rounds it (double to float).
static const char *flit(KilnCudaKernel *k, double v) { return kiln_cuda_fmt(k, "((float)%.17g)", (double)(float)v); }

// The optimizer state tensors follow each other at p->state[param], each padded
// to 64 bytes (compiler/cpu/plan.c, opt_array in compiler/cpu/module.c).
int kiln_cuda_update_kernel(KilnCudaKernel *k, int32_t param, const KilnTrainDesc *t) {
  const KilnGraph *g = k->g;
  const KilnPlan *p = k->p;
  const KilnNode *pn = &g->nodes[param];
  KILN_ASSERT(g->grads && g->grads[param] >= 0);
  int64_t n = kiln_node_numel(pn), size = n * 4, bytes = (size + 63) & ~(int64_t)63;
  int opt = t->optimizer;
  KILN_ASSERT(opt >= KILN_ABI_SGD && opt <= KILN_ABI_ADAMW);
  bool sgd = opt == KILN_ABI_SGD, momentum = sgd && t->momentum > 0;
  int nstate = sgd ? momentum : 2;
  if (p->nstate < nstate) {
    snprintf(k->err, sizeof k->err, "the optimizer needs %d state tensors per parameter, the plan has %d",
             nstate, p->nstate);
    return -1;
  }
  const char *P = kiln_cuda_ptr(k, param), *G = kiln_cuda_ptr(k, g->grads[param]);
  const char *S0 = nstate > 0 ? kiln_cuda_ptr_at(k, KILN_LOC_WEIGHTS, p->state[param], size) : "(float *)0";
  const char *S1 = nstate > 1 ? kiln_cuda_ptr_at(k, KILN_LOC_WEIGHTS, p->state[param] + bytes, size) : "(float *)0";
  bool l2 = t->weight_decay > 0 && opt != KILN_ABI_ADAMW, decay = opt == KILN_ABI_ADAMW && t->weight_decay > 0;
  static const char *const names[] = {"KILN_OPT_SGD", "KILN_OPT_ADAM", "KILN_OPT_ADAMW"};
  fprintf(k->out, "extern \"C\" __global__ void __launch_bounds__(%d) %s(KilnArgs A) {\n", THREADS, k->name);
  fprintf(k->out, "  kiln_update<%lldll, %s, %s, %s, %s, %s>(A, %s, %s, %s, %s,\n", (long long)n,
          names[opt], l2 ? "true" : "false", momentum ? "true" : "false",
          t->nesterov ? "true" : "false", decay ? "true" : "false", P, G, S0, S1);
  fprintf(k->out, "      %s, %s, %s, %s, %s, %s, %s, %.17g);\n}\n", flit(k, t->weight_decay),
          flit(k, t->momentum), flit(k, t->beta1), flit(k, 1 - t->beta1), flit(k, t->beta2),
          flit(k, 1 - t->beta2), flit(k, t->eps), t->weight_decay);
  k->grid[0] = kiln_cuda_blocks(n, THREADS);
  k->grid[1] = k->grid[2] = 1;
  k->block[0] = THREADS;
  k->block[1] = k->block[2] = 1;
  k->smem = 0;
  return 0;
}
