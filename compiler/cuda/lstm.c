// lstm, lstm_grad (two kernels, k->phase 0 and 1) and lstm_step: one call of the
// templates/lstm.cuh function over the node's static shapes; templates/lstm.cuh
// explains the one-block-per-sequence design and its limits. The scratch layout
// is the CPU backend's (kiln_cpu_lstm_scratch): lstm Z [B,T,G] then c; lstm_grad
// Z, Hs, Cs per step, then dh and dc (kept in shared memory here instead).
#include "compiler/cuda/cuda.h"

#define THREADS 256  // KILN_GEMM_THREADS
// Static shared memory a block may have, and kiln_block_gemm's share of it.
#define SMEM_MAX (48 * 1024)
#define GEMM_SMEM (2 * 16 * 68 * 4)

typedef struct {
  int64_t B, T, I, H;
} Dims;

static Dims dims_of(const KilnCudaKernel *k) {
  const KilnNode *n = &k->g->nodes[k->id], *x = &k->g->nodes[n->in[0]];
  return (Dims){x->shape[0], x->shape[1], x->shape[2], k->g->nodes[n->in[2]].shape[0]};
}

// Part [floats, floats + n) of the node's scratch.
static const char *part(KilnCudaKernel *k, int64_t floats, int64_t n) {
  return kiln_cuda_ptr_at(k, KILN_LOC_ARENA, k->p->scratch[k->id] + floats * 4, n * 4);
}

// Whether `floats` floats of per-block state (h, c, z and the like) fit beside the
// block gemm's tiles; else -1 with the message.
static int fits(KilnCudaKernel *k, int64_t floats, int64_t H) {
  if (floats * 4 + GEMM_SMEM <= SMEM_MAX) return 0;
  const KilnNode *n = &k->g->nodes[k->id];
  snprintf(k->err, sizeof k->err, "%s '%s': a hidden size of %lld is too large for the CUDA kernel's shared memory",
           kiln_op(n->op)->name, n->name, (long long)H);
  return -1;
}

// The kernel's header and the call of template fn<B, T, I, H>.
static void open_call(KilnCudaKernel *k, const char *fn, Dims d) {
  fprintf(k->out, "extern \"C\" __global__ void __launch_bounds__(KILN_GEMM_THREADS, 1) %s(KilnArgs A) {\n", k->name);
  fprintf(k->out, "  %s<%lldLL, %lldLL, %lldLL, %lldLL>(", fn, (long long)d.B, (long long)d.T, (long long)d.I,
          (long long)d.H);
}

static void inputs(KilnCudaKernel *k, int n) {
  const KilnNode *o = &k->g->nodes[k->id];
  for (int i = 0; i < n; i++) fprintf(k->out, "%s, ", kiln_cuda_ptr(k, o->in[i]));
}

// One block per sequence.
static void per_sequence(KilnCudaKernel *k, Dims d) {
  k->grid[0] = kiln_cuda_blocks(d.B, 1);
  k->block[0] = THREADS;
}

int kiln_cuda_emit_lstm(KilnCudaKernel *k) {
  Dims d = dims_of(k);
  if (fits(k, 6 * d.H, d.H)) return -1;
  open_call(k, "kiln_lstm", d);
  inputs(k, 4);
  fprintf(k->out, "%s, %s);\n}\n", part(k, 0, d.B * d.T * 4 * d.H), kiln_cuda_ptr(k, k->id));
  per_sequence(k, d);
  return 0;
}

int kiln_cuda_emit_lstm_grad(KilnCudaKernel *k) {
  Dims d = dims_of(k);
  int64_t bt = d.B * d.T, G = 4 * d.H;
  if (fits(k, 12 * d.H, d.H)) return -1;
  const char *out = kiln_cuda_ptr(k, k->id);
  const char *z = part(k, 0, bt * G), *hs = part(k, bt * G, bt * d.H), *cs = part(k, bt * (G + d.H), bt * d.H);
  if (k->phase == 0) {
    open_call(k, "kiln_lstm_backward", d);
    inputs(k, 5);
    fprintf(k->out, "%s, %s, %s, %s);\n}\n", out, z, hs, cs);
    per_sequence(k, d);
    return 0;
  }
  KILN_ASSERT(k->phase == 1);
  open_call(k, "kiln_lstm_weights", d);
  fprintf(k->out, "%s, %s, %s, %s);\n}\n", kiln_cuda_ptr(k, k->g->nodes[k->id].in[0]), z, hs, out);
  // As kiln_lstm_weights counts them: 64 x 64 tiles of dW_ih and dW_hh, then db.
  int64_t gt = (G + 63) / 64, tiles = ((d.I + 63) / 64 + (d.H + 63) / 64) * gt + (G + THREADS - 1) / THREADS;
  k->grid[0] = kiln_cuda_blocks(tiles, 1);
  k->block[0] = THREADS;
  return 0;
}

int kiln_cuda_emit_lstm_step(KilnCudaKernel *k) {
  Dims d = dims_of(k);
  if (fits(k, 6 * d.H, d.H)) return -1;
  open_call(k, "kiln_lstm_step", d);
  inputs(k, 5);
  fprintf(k->out, "%s);\n}\n", kiln_cuda_ptr(k, k->id));
  per_sequence(k, d);
  return 0;
}
