// attention, attention_grad and attention_decode kernels: one call of the
// templates/attention.cuh function over the node's static shapes. Semantics:
// ir/interp.c; the gradient keeps the CPU backend's scratch layout
// (kiln_cpu_attention_scratch) and order of work (compiler/cpu/attention.c).
#include <math.h>

#include "compiler/cuda/cuda.h"

// Static shared memory a block may have.
#define SMEM_MAX (48 * 1024)
// attention_grad's query rows per block: the CPU's, which sized the scratch.
#define GRAD_ROWS 32
#define DECODE_THREADS 128

static const char *scratch(KilnCudaKernel *k) {
  return kiln_cuda_ptr_at(k, KILN_LOC_ARENA, k->p->scratch[k->id], k->p->scratch_bytes[k->id]);
}

// The row stride of input id: its own row length, or its source's when it is a
// window read in place (passes/memplan.c).
static int64_t row_stride(const KilnCudaKernel *k, int32_t id) {
  const KilnNode *x = &k->g->nodes[id];
  if (!k->p->alias || k->p->alias[id] < 0 || !kiln_op_has(x->op, KILN_OPF_WINDOW))
    return x->shape[x->rank - 1];
  const KilnNode *src = &k->g->nodes[x->in[0]];
  return src->shape[src->rank - 1];
}

static int bad_heads(KilnCudaKernel *k, const KilnNode *o, int64_t D) {
  if (o->attr.heads > 0 && D % o->attr.heads == 0) return 0;
  snprintf(k->err, sizeof k->err, "%s '%s': %lld columns do not split into %lld heads", kiln_op(o->op)->name,
           o->name, (long long)D, (long long)o->attr.heads);
  return -1;
}

// Shared memory of kiln_attention_fwd<blk, dh>.
static int64_t fwd_smem(int64_t blk, int64_t dh) {
  return 4 * (2 * blk * (dh + 1) + blk * dh + blk * (blk + 1));
}

int kiln_cuda_emit_attention(KilnCudaKernel *k) {
  const KilnNode *o = &k->g->nodes[k->id];
  int64_t B = o->shape[0], T = o->shape[1], D = o->shape[2];
  if (bad_heads(k, o, D)) return -1;
  int64_t H = o->attr.heads, dh = D / H;
  // Query and key blocks as large as shared memory allows, to 32 rows; the
  // accumulators of a row's output take dh / 4 registers per thread.
  int blk = 32;
  while (blk > 8 && fwd_smem(blk, dh) > SMEM_MAX) blk /= 2;
  if (fwd_smem(blk, dh) > SMEM_MAX || dh > 256) {
    snprintf(k->err, sizeof k->err, "attention '%s': heads of %lld columns are too wide for the CUDA kernel (256 at most)",
             o->name, (long long)dh);
    return -1;
  }
  const char *q = kiln_cuda_ptr(k, o->in[0]), *kk = kiln_cuda_ptr(k, o->in[1]);
  const char *v = kiln_cuda_ptr(k, o->in[2]), *y = kiln_cuda_ptr(k, k->id);
  fprintf(k->out, "extern \"C\" __global__ void __launch_bounds__(%d) %s(KilnArgs A) {\n", 4 * blk, k->name);
  fprintf(k->out, "  kiln_attention_fwd<%d, %lld, %s, %lldLL, %lldLL, %lldLL, %lldLL, %lldLL, %lldLL>(%s, %s, %s, %s, %.9gf);\n}\n",
          blk, (long long)dh, o->attr.causal ? "true" : "false", (long long)T, (long long)H,
          (long long)row_stride(k, o->in[0]), (long long)row_stride(k, o->in[1]),
          (long long)row_stride(k, o->in[2]), (long long)D, q, kk, v, y, 1.0 / sqrt((double)dh));
  int64_t blocks = B * H * ((T + blk - 1) / blk);
  if (blocks > INT32_MAX) {
    snprintf(k->err, sizeof k->err, "attention '%s': too many blocks for one launch", o->name);
    return -1;
  }
  k->grid[0] = (uint32_t)(blocks < 1 ? 1 : blocks);
  k->block[0] = (uint32_t)(4 * blk);
  return 0;
}

int kiln_cuda_emit_attention_grad(KilnCudaKernel *k) {
  const KilnNode *o = &k->g->nodes[k->id];
  int64_t B = o->shape[0], T = o->shape[1], D = o->shape[2] / 3;
  if (bad_heads(k, o, D)) return -1;
  int64_t H = o->attr.heads, dh = D / H, rb = T < GRAD_ROWS ? T : GRAD_ROWS;
  // The scratch the plan reserved: P and dS, [rb, T] each, per (batch, head).
  KILN_ASSERT(k->p->scratch_bytes[k->id] >= B * H * 2 * rb * T * 4);
  const char *ptr[4];
  for (int i = 0; i < 4; i++) ptr[i] = kiln_cuda_ptr(k, o->in[i]);
  const char *out = kiln_cuda_ptr(k, k->id), *s = scratch(k);
  fprintf(k->out, "extern \"C\" __global__ void __launch_bounds__(KILN_GEMM_THREADS, 1) %s(KilnArgs A) {\n", k->name);
  fprintf(k->out, "  kiln_attention_grad<%lldLL, %lld, %lldLL, %s, %lld, %lldLL, %lldLL, %lldLL, %lldLL>"
                  "(%s, %s, %s, %s, %s, %s, %lldLL, %.9gf);\n}\n",
          (long long)T, (long long)dh, (long long)H, o->attr.causal ? "true" : "false", (long long)rb,
          (long long)row_stride(k, o->in[0]), (long long)row_stride(k, o->in[1]),
          (long long)row_stride(k, o->in[2]), (long long)row_stride(k, o->in[3]), ptr[0], ptr[1], ptr[2],
          ptr[3], out, s, (long long)(B * H), 1.0 / sqrt((double)dh));
  k->grid[0] = kiln_cuda_blocks(B * H, 1);
  k->block[0] = 256;  // KILN_GEMM_THREADS
  return 0;
}

int kiln_cuda_emit_attention_decode(KilnCudaKernel *k) {
  const KilnNode *o = &k->g->nodes[k->id], *kc = &k->g->nodes[o->in[3]];
  int64_t B = kc->shape[0], C = kc->shape[1], D = kc->shape[2];
  if (bad_heads(k, o, D)) return -1;
  int64_t H = o->attr.heads, dh = D / H;
  if (dh * 4 > SMEM_MAX) {
    snprintf(k->err, sizeof k->err, "attention_decode '%s': heads of %lld columns are too wide", o->name,
             (long long)dh);
    return -1;
  }
  const char *ptr[6];
  for (int i = 0; i < 6; i++) ptr[i] = kiln_cuda_ptr(k, o->in[i]);
  const char *y = kiln_cuda_ptr(k, k->id), *s = scratch(k);
  fprintf(k->out, "extern \"C\" __global__ void __launch_bounds__(%d) %s(KilnArgs A) {\n", DECODE_THREADS, k->name);
  fprintf(k->out, "  kiln_attention_decode<%d, %lldLL, %lldLL, %lld>(%s, %s, %s, %s, %s, %s, %s, %s, %.9gf);\n}\n",
          DECODE_THREADS, (long long)C, (long long)H, (long long)dh, ptr[0], ptr[1], ptr[2], ptr[3], ptr[4],
          ptr[5], y, s, 1.0 / sqrt((double)dh));
  if (B * H > INT32_MAX) {
    snprintf(k->err, sizeof k->err, "attention_decode '%s': too many heads for one launch", o->name);
    return -1;
  }
  k->grid[0] = (uint32_t)(B * H < 1 ? 1 : B * H);
  k->block[0] = DECODE_THREADS;
  return 0;
}
