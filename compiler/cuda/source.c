// One kernel's source and launch: the buffers it asks for (slots), small helpers
// for the emitters, and the dispatch from a node to its emitter.
#include <stdarg.h>
#include <string.h>

#include "compiler/cuda/cuda.h"

// Bytes from a value's first element to its last: a window read in place from a
// wider value's rows (passes/memplan.c) spans those rows (as compiler/cpu/kernels.c).
static int64_t extent(const KilnCudaKernel *k, int32_t id) {
  const KilnNode *x = &k->g->nodes[id];
  int64_t n = kiln_node_numel(x), d = x->rank ? x->shape[x->rank - 1] : 1;
  if (!k->p->alias || k->p->alias[id] < 0 || !kiln_op_has(x->op, KILN_OPF_WINDOW) || !n)
    return n * 4;
  const KilnNode *s = &k->g->nodes[x->in[0]];
  return ((n / d - 1) * s->shape[s->rank - 1] + d) * 4;
}

static int slot(KilnCudaKernel *k, KilnLocKind where, int64_t off, int64_t bytes) {
  KILN_ASSERT(where == KILN_LOC_WEIGHTS || where == KILN_LOC_ARENA);
  for (int i = 0; i < k->nslots; i++)
    if (k->slot[i].where == where && k->slot[i].off == off) {
      if (bytes > k->slot[i].bytes) k->slot[i].bytes = bytes;
      return i;
    }
  KILN_ASSERT(k->nslots < KILN_CUDA_MAX_SLOTS);
  k->slot[k->nslots] = (KilnSlot){where, off, bytes};
  return k->nslots++;
}

const char *kiln_cuda_ptr_at(KilnCudaKernel *k, KilnLocKind where, int64_t off, int64_t bytes) {
  return kiln_cuda_fmt(k, "((float *)A.p[%d])", slot(k, where, off, bytes));
}

const char *kiln_cuda_ptr(KilnCudaKernel *k, int32_t id) {
  int i = slot(k, k->p->where[id], k->p->offset[id], extent(k, id));
  return kiln_cuda_fmt(k, "((%s *)A.p[%d])", k->g->nodes[id].dtype == KILN_I32 ? "int" : "float", i);
}

const char *kiln_cuda_fmt(KilnCudaKernel *k, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = kiln_arena_alloc(k->arena, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

uint32_t kiln_cuda_blocks(int64_t n, uint32_t threads) {
  int64_t b = (n + threads - 1) / threads;
  // Enough blocks to fill any current GPU several times over; grid-stride loops
  // take the rest.
  if (b > 65535) b = 65535;
  return b < 1 ? 1 : (uint32_t)b;
}

int kiln_cuda_kernel_phases(const KilnNode *n) { return n->op == KILN_OP_LSTM_GRAD ? 2 : 1; }

int kiln_cuda_kernel(KilnCudaKernel *k) {
  const KilnNode *n = &k->g->nodes[k->id];
  k->grid[0] = k->grid[1] = k->grid[2] = 1;
  k->block[0] = k->block[1] = k->block[2] = 1;
  k->smem = 0;
  switch (n->op) {
  case KILN_OP_NEG: case KILN_OP_EXP: case KILN_OP_LOG: case KILN_OP_SQRT: case KILN_OP_RSQRT:
  case KILN_OP_POW: case KILN_OP_RELU: case KILN_OP_SIGMOID: case KILN_OP_TANH:
  case KILN_OP_GELU: case KILN_OP_SILU: case KILN_OP_CLAMP:
  case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV: case KILN_OP_WHERE:
  case KILN_OP_BROADCAST: case KILN_OP_GELU_GRAD: case KILN_OP_SILU_GRAD: case KILN_OP_CLAMP_GRAD:
    return kiln_cuda_emit_elementwise(k);
  case KILN_OP_DROPOUT: return kiln_cuda_emit_dropout(k);
  case KILN_OP_RESHAPE: return kiln_cuda_emit_copy(k);
  case KILN_OP_TRANSPOSE: return kiln_cuda_emit_transpose(k);
  case KILN_OP_CONCAT: case KILN_OP_SLICE: return kiln_cuda_emit_concat_slice(k);
  case KILN_OP_EMBEDDING: return kiln_cuda_emit_embedding(k);
  case KILN_OP_SUM: case KILN_OP_MEAN: case KILN_OP_MAX: return kiln_cuda_emit_reduce(k);
  case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX: return kiln_cuda_emit_softmax(k);
  case KILN_OP_LAYERNORM: return kiln_cuda_emit_layernorm(k);
  case KILN_OP_MATMUL: return kiln_cuda_emit_matmul(k);
  case KILN_OP_LSTM: return kiln_cuda_emit_lstm(k);
  case KILN_OP_ATTENTION: return kiln_cuda_emit_attention(k);
  case KILN_OP_CROSS_ENTROPY: case KILN_OP_MSE: case KILN_OP_BCE: return kiln_cuda_emit_loss(k);
  case KILN_OP_LAYERNORM_DX: return kiln_cuda_emit_layernorm_dx(k);
  case KILN_OP_LAYERNORM_DGAMMA: return kiln_cuda_emit_layernorm_dgamma(k);
  case KILN_OP_EMBEDDING_GRAD: return kiln_cuda_emit_embedding_grad(k);
  case KILN_OP_LSTM_GRAD: return kiln_cuda_emit_lstm_grad(k);
  case KILN_OP_ATTENTION_GRAD: return kiln_cuda_emit_attention_grad(k);
  case KILN_OP_CROSS_ENTROPY_GRAD: return kiln_cuda_emit_cross_entropy_grad(k);
  case KILN_OP_ATTENTION_DECODE: return kiln_cuda_emit_attention_decode(k);
  case KILN_OP_LSTM_STEP: return kiln_cuda_emit_lstm_step(k);
  case KILN_OP_INPUT: case KILN_OP_PARAM: case KILN_OP_CONST: case KILN_OP_COUNT:
    break;
  }
  snprintf(k->err, sizeof k->err, "no kernel for the %s node '%s'", kiln_op(n->op)->name, n->name);
  return -1;
}

int kiln_cuda_const_kernel(KilnCudaKernel *k, const bool *live) {
  int n = 0;
  for (int i = 0; i < k->g->nnodes; i++) n += live[i] && k->g->nodes[i].op == KILN_OP_CONST;
  if (!n) return 0;
  fprintf(k->out, "extern \"C\" __global__ void %s(KilnArgs A) {\n", k->name);
  for (int i = 0; i < k->g->nnodes; i++) {
    const KilnNode *c = &k->g->nodes[i];
    if (!live[i] || c->op != KILN_OP_CONST) continue;
    // Every element is attr.value (ir/interp.c); a const is normally a scalar.
    fprintf(k->out, "  for (long long i = 0; i < %lld; i++) ((float *)A.p[%d])[i] = (float)(%.17g);\n",
            (long long)kiln_node_numel(c), slot(k, k->p->where[i], k->p->offset[i], kiln_node_numel(c) * 4),
            c->attr.value);
  }
  fprintf(k->out, "}\n");
  k->grid[0] = k->grid[1] = k->grid[2] = k->block[0] = k->block[1] = k->block[2] = 1;
  k->smem = 0;
  return 1;
}
