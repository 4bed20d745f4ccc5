// Generated sgemm: C = alpha op(A) op(B) + beta C, row-major, as an internal LLVM
// function per leading dimensions, transposes, alpha and tile a model asks for.
// It is the loop nest of BLIS (Goto's method) cut down to what one block of a
// model's matmul needs: K in blocks of KC, B in panels of NR columns, C in tiles
// of MR x NR computed by a micro-kernel that keeps the whole tile in vector
// registers, each step loading one row of the B panel (NR/8 vectors of 8 floats)
// and broadcasting MR elements of A: MR * NR/8 fused multiply-adds per step.
//
// With 16 AVX2 registers, 6 x 16 (12 accumulators, 2 B vectors, 1 broadcast) and
// 4 x 24 (12, 3, 1) fill the register file; both leave the loads (8 or 7 per
// step) under what two load ports sustain during the FMAs (6 cycles of 2 FMAs).
//
// Packing: a panel of B is copied into a contiguous, aligned [kc][NR] stack buffer
// when B is transposed (its columns would be strided gathers; 8 x 8 blocks are
// transposed in registers on the way), when the panel is the ragged last one
// (zero-padded, so the micro-kernel never reads past B), or always when the tile
// says so; otherwise the micro-kernel reads B's rows in place.
// A is read in place: a row of op(A) is contiguous when A is not transposed, and
// the MR rows of one step are adjacent when it is. Ragged last rows clamp to row
// m - 1 (the micro-kernel computes rows it then discards) and ragged tiles go
// through a stack tile to C, element by element. The stack holds at most KC x 24 +
// 8 x 24 floats: nothing is allocated per call.
#include <stdio.h>

#include "compiler/cpu/cpu.h"

enum { LANES = 8, KC = 256, MAX_MR = 8, MAX_NV = 3 };

typedef struct {
  KilnCg *c;
  const KilnGemm *g;  // ta, tb, lda, ldb, ldc, alpha (the sizes are the function's parameters)
  KilnGemmTile t;
  int64_t nr;                           // t.nv * LANES
  LLVMTypeRef vt;                       // <8 x float>
  LLVMValueRef m, n, k, A, B, beta, C;  // the function's parameters
  LLVMValueRef panel;                   // [KC][nr] floats: the packed panel of B
  LLVMValueRef tile;                    // [mr][nr] floats: a ragged tile on its way to C
  LLVMValueRef acc[MAX_MR][MAX_NV];     // the accumulators (allocas mem2reg promotes)
} Gen;

static LLVMValueRef i64c(Gen *s, int64_t v) { return kiln_cg_i64(s->c, v); }

static LLVMValueRef imin(Gen *s, LLVMValueRef a, LLVMValueRef b) {
  LLVMBuilderRef bd = s->c->b;
  return LLVMBuildSelect(bd, LLVMBuildICmp(bd, LLVMIntSLT, a, b, ""), a, b, "");
}

static LLVMValueRef ceil_div(Gen *s, LLVMValueRef a, LLVMValueRef b) {
  LLVMValueRef b1 = LLVMBuildSub(s->c->b, b, i64c(s, 1), "");
  return LLVMBuildSDiv(s->c->b, kiln_cg_add(s->c, a, b1), b, "");
}

static LLVMValueRef at(Gen *s, LLVMValueRef base, LLVMValueRef idx) {
  return kiln_cg_gep(s->c, s->c->f32, base, idx);
}

// Element (row, col) of a row-major matrix with rows ld apart.
static LLVMValueRef rc(Gen *s, LLVMValueRef row, int64_t ld, LLVMValueRef col) {
  return kiln_cg_add(s->c, kiln_cg_mul(s->c, row, i64c(s, ld)), col);
}

static LLVMValueRef is_zero(Gen *s, LLVMValueRef x) {
  return LLVMBuildFCmp(s->c->b, LLVMRealOEQ, x, kiln_cg_f32(s->c, 0), "");
}

// Loads and stores of 8 floats; `align` is what the address is known to have.
static LLVMValueRef vload(Gen *s, LLVMValueRef p, unsigned align) {
  LLVMValueRef v = LLVMBuildLoad2(s->c->b, s->vt, p, "");
  LLVMSetAlignment(v, align);
  return v;
}

static void vstore(Gen *s, LLVMValueRef v, LLVMValueRef p, unsigned align) {
  LLVMSetAlignment(LLVMBuildStore(s->c->b, v, p), align);
}

static LLVMValueRef splat(Gen *s, LLVMValueRef x) {
  LLVMBuilderRef b = s->c->b;
  LLVMValueRef lane0 = LLVMConstInt(s->c->i32, 0, 0);
  LLVMValueRef v = LLVMBuildInsertElement(b, LLVMGetPoison(s->vt), x, lane0, "");
  return LLVMBuildShuffleVector(b, v, LLVMGetPoison(s->vt),
                                LLVMConstNull(LLVMVectorType(s->c->i32, LANES)), "");
}

// a * b + c: one FMA instruction on targets that have it (fmuladd leaves the
// choice to the target, where llvm.fma would call libm on one without).
static LLVMValueRef fma3(Gen *s, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c) {
  LLVMTypeRef params[] = {s->vt, s->vt, s->vt};
  LLVMTypeRef ft = LLVMFunctionType(s->vt, params, 3, 0);
  LLVMValueRef f = LLVMGetNamedFunction(s->c->mod, "llvm.fmuladd.v8f32");
  if (!f) f = LLVMAddFunction(s->c->mod, "llvm.fmuladd.v8f32", ft);
  LLVMValueRef args[] = {a, b, c};
  return LLVMBuildCall2(s->c->b, ft, f, args, 3, "");
}

static LLVMBasicBlockRef begin_if(Gen *s, LLVMValueRef cond, LLVMBasicBlockRef *out_else) {
  KilnCg *c = s->c;
  LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "then");
  LLVMBasicBlockRef other = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "else");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "endif");
  LLVMBuildCondBr(c->b, cond, then, other);
  LLVMPositionBuilderAtEnd(c->b, then);
  *out_else = other;
  return done;
}

static void else_if(Gen *s, LLVMBasicBlockRef other, LLVMBasicBlockRef done) {
  LLVMBuildBr(s->c->b, done);
  LLVMPositionBuilderAtEnd(s->c->b, other);
}

static void end_if(Gen *s, LLVMBasicBlockRef done) {
  LLVMBuildBr(s->c->b, done);
  LLVMPositionBuilderAtEnd(s->c->b, done);
}

static LLVMValueRef shuffle(Gen *s, LLVMValueRef a, LLVMValueRef b, const int *mask) {
  LLVMValueRef m[LANES];
  for (int i = 0; i < LANES; i++) m[i] = LLVMConstInt(s->c->i32, (unsigned long long)mask[i], 0);
  return LLVMBuildShuffleVector(s->c->b, a, b, LLVMConstVector(m, LANES), "");
}

// r[i][j] <- r[j][i] for 8 vectors of 8: interleave pairs, then pairs of pairs,
// then halves (the unpack / shuffle / permute sequence of _MM_TRANSPOSE8_PS).
static void transpose8(Gen *s, LLVMValueRef *r) {
  static const int lo[] = {0, 8, 1, 9, 4, 12, 5, 13}, hi[] = {2, 10, 3, 11, 6, 14, 7, 15};
  static const int ev[] = {0, 1, 8, 9, 4, 5, 12, 13}, od[] = {2, 3, 10, 11, 6, 7, 14, 15};
  static const int h0[] = {0, 1, 2, 3, 8, 9, 10, 11}, h1[] = {4, 5, 6, 7, 12, 13, 14, 15};
  LLVMValueRef t[8], u[8];
  for (int q = 0; q < 8; q += 2) {
    t[q] = shuffle(s, r[q], r[q + 1], lo);
    t[q + 1] = shuffle(s, r[q], r[q + 1], hi);
  }
  for (int q = 0; q < 8; q += 4) {
    u[q] = shuffle(s, t[q], t[q + 2], ev);
    u[q + 1] = shuffle(s, t[q], t[q + 2], od);
    u[q + 2] = shuffle(s, t[q + 1], t[q + 3], ev);
    u[q + 3] = shuffle(s, t[q + 1], t[q + 3], od);
  }
  for (int q = 0; q < 4; q++) {
    r[q] = shuffle(s, u[q], u[q + 4], h0);
    r[q + 4] = shuffle(s, u[q], u[q + 4], h1);
  }
}

// panel[p][j] = op(B)[p0 + p, j0 + j] for p in [plo, phi), j in [jlo, jhi), one
// element at a time.
static void copy_b(Gen *s, LLVMValueRef p0, LLVMValueRef j0, LLVMValueRef plo, LLVMValueRef phi,
                   LLVMValueRef jlo, LLVMValueRef jhi) {
  KilnCg *c = s->c;
  const KilnGemm *g = s->g;
  KilnLoop p = kiln_cg_loop_begin(c, plo, phi, "copyp");
  LLVMValueRef row = kiln_cg_add(c, p0, p.index);
  LLVMValueRef dst = at(s, s->panel, kiln_cg_mul(c, p.index, i64c(s, s->nr)));
  KilnLoop j = kiln_cg_loop_begin(c, jlo, jhi, "copyj");
  LLVMValueRef col = kiln_cg_add(c, j0, j.index);
  // op(B)[row, col] is B[row * ldb + col], or B[col * ldb + row] when transposed.
  LLVMValueRef src = g->tb ? rc(s, col, g->ldb, row) : rc(s, row, g->ldb, col);
  kiln_cg_store(c, kiln_cg_load(c, c->f32, s->B, src), dst, j.index);
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &p);
}

// A transposed B into the panel: 8 x 8 blocks through registers, transposed (a
// column of op(B) is a row of B), then the ragged rest of kc and nr.
static void pack_bt(Gen *s, LLVMValueRef p0, LLVMValueRef kc, LLVMValueRef j0, LLVMValueRef nr) {
  KilnCg *c = s->c;
  LLVMValueRef zero = i64c(s, 0), mask = i64c(s, -LANES);
  LLVMValueRef kc8 = LLVMBuildAnd(c->b, kc, mask, ""), nr8 = LLVMBuildAnd(c->b, nr, mask, "");
  KilnLoop jb = kiln_cg_loop_begin(c, zero, LLVMBuildSDiv(c->b, nr8, i64c(s, LANES), ""), "tj");
  LLVMValueRef jj = kiln_cg_mul(c, jb.index, i64c(s, LANES));
  LLVMValueRef src = at(s, s->B, rc(s, kiln_cg_add(c, j0, jj), s->g->ldb, p0));
  KilnLoop pb = kiln_cg_loop_begin(c, zero, LLVMBuildSDiv(c->b, kc8, i64c(s, LANES), ""), "tp");
  LLVMValueRef pp = kiln_cg_mul(c, pb.index, i64c(s, LANES)), r[LANES];
  for (int q = 0; q < LANES; q++)
    r[q] = vload(s, at(s, src, kiln_cg_add(c, pp, i64c(s, q * s->g->ldb))), 4);
  transpose8(s, r);
  for (int q = 0; q < LANES; q++) {
    LLVMValueRef dst = rc(s, kiln_cg_add(c, pp, i64c(s, q)), s->nr, jj);
    vstore(s, r[q], at(s, s->panel, dst), 32);
  }
  kiln_cg_loop_end(c, &pb);
  kiln_cg_loop_end(c, &jb);
  copy_b(s, p0, j0, kc8, kc, zero, nr);
  copy_b(s, p0, j0, zero, kc8, nr8, nr);
}

// Rows [p0, p0 + kc) and columns [j0, j0 + nr) of op(B) into the panel, row p at
// panel + p * NR, columns past nr zero.
static void pack_b(Gen *s, LLVMValueRef p0, LLVMValueRef kc, LLVMValueRef j0, LLVMValueRef nr) {
  KilnCg *c = s->c;
  LLVMValueRef zero = kiln_cg_i64(c, 0), NRv = i64c(s, s->nr);
  if (s->g->tb) {
    pack_bt(s, p0, kc, j0, nr);
  } else {  // a whole panel's rows as vectors; a ragged one element by element
    LLVMBasicBlockRef other;
    LLVMBasicBlockRef done = begin_if(s, LLVMBuildICmp(c->b, LLVMIntEQ, nr, NRv, ""), &other);
    KilnLoop p = kiln_cg_loop_begin(c, zero, kc, "packp");
    LLVMValueRef src = at(s, s->B, rc(s, kiln_cg_add(c, p0, p.index), s->g->ldb, j0));
    LLVMValueRef dst = at(s, s->panel, kiln_cg_mul(c, p.index, NRv));
    for (int h = 0; h < s->t.nv; h++)
      vstore(s, vload(s, at(s, src, i64c(s, h * LANES)), 4), at(s, dst, i64c(s, h * LANES)), 32);
    kiln_cg_loop_end(c, &p);
    else_if(s, other, done);
    copy_b(s, p0, j0, zero, kc, zero, nr);
    end_if(s, done);
  }
  KilnLoop p = kiln_cg_loop_begin(c, zero, kc, "padp");
  LLVMValueRef dst = at(s, s->panel, kiln_cg_mul(c, p.index, NRv));
  KilnLoop j = kiln_cg_loop_begin(c, nr, NRv, "padj");
  kiln_cg_store(c, kiln_cg_f32(c, 0), dst, j.index);
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &p);
}

// The micro-kernel: acc[r][h] = sum over p < kc of op(A)[row r, p] * panel row p,
// vector h; arow[r] points at row r's first element, ks elements between steps.
static void micro(Gen *s, LLVMValueRef *arow, int64_t ks, LLVMValueRef bp, LLVMValueRef bs,
                  LLVMValueRef kc) {
  KilnCg *c = s->c;
  for (int r = 0; r < s->t.mr; r++)
    for (int h = 0; h < s->t.nv; h++) LLVMBuildStore(c->b, LLVMConstNull(s->vt), s->acc[r][h]);
  KilnLoop p = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kc, "k");
  LLVMValueRef brow = at(s, bp, kiln_cg_mul(c, p.index, bs));
  LLVMValueRef bv[MAX_NV];
  for (int h = 0; h < s->t.nv; h++) bv[h] = vload(s, at(s, brow, i64c(s, h * LANES)), 4);
  LLVMValueRef aoff = kiln_cg_mul(c, p.index, i64c(s, ks));
  for (int r = 0; r < s->t.mr; r++) {
    LLVMValueRef a = splat(s, kiln_cg_load(c, c->f32, arow[r], aoff));
    for (int h = 0; h < s->t.nv; h++) {
      LLVMValueRef acc = LLVMBuildLoad2(c->b, s->vt, s->acc[r][h], "");
      LLVMBuildStore(c->b, fma3(s, a, bv[h], acc), s->acc[r][h]);
    }
  }
  kiln_cg_loop_end(c, &p);
}

// alpha * acc, the tile's value before beta C is added.
static LLVMValueRef scaled(Gen *s, int r, int h) {
  LLVMValueRef v = LLVMBuildLoad2(s->c->b, s->vt, s->acc[r][h], "");
  if (s->g->alpha == 1) return v;
  return LLVMBuildFMul(s->c->b, v, splat(s, kiln_cg_f32(s->c, s->g->alpha)), "");
}

// A whole tile at C + ci: C = alpha acc (beta 0: C is not read, as BLAS does, so
// garbage or NaN there does not leak in) or alpha acc + beta C.
static void store_full(Gen *s, LLVMValueRef ci, LLVMValueRef beta) {
  KilnCg *c = s->c;
  LLVMBasicBlockRef other;
  LLVMBasicBlockRef done = begin_if(s, is_zero(s, beta), &other);
  for (int pass = 0; pass < 2; pass++) {
    if (pass) else_if(s, other, done);
    for (int r = 0; r < s->t.mr; r++)
      for (int h = 0; h < s->t.nv; h++) {
        LLVMValueRef p = at(s, s->C, kiln_cg_add(c, ci, i64c(s, r * s->g->ldc + h * LANES)));
        LLVMValueRef v = scaled(s, r, h);
        if (pass) v = fma3(s, splat(s, beta), vload(s, p, 4), v);
        vstore(s, v, p, 4);
      }
  }
  end_if(s, done);
}

// A ragged tile (mr rows, nr columns of it in C): through the stack tile.
static void store_edge(Gen *s, LLVMValueRef ci, LLVMValueRef mr, LLVMValueRef nr,
                       LLVMValueRef beta) {
  KilnCg *c = s->c;
  for (int r = 0; r < s->t.mr; r++)
    for (int h = 0; h < s->t.nv; h++)
      vstore(s, scaled(s, r, h), at(s, s->tile, i64c(s, r * s->nr + h * LANES)), 32);
  LLVMValueRef is0 = is_zero(s, beta);
  KilnLoop r = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), mr, "er");
  LLVMValueRef crow = at(s, s->C, kiln_cg_add(c, ci, kiln_cg_mul(c, r.index, i64c(s, s->g->ldc))));
  LLVMValueRef trow = at(s, s->tile, kiln_cg_mul(c, r.index, i64c(s, s->nr)));
  KilnLoop j = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), nr, "ej");
  LLVMValueRef v = kiln_cg_load(c, c->f32, trow, j.index);
  LLVMValueRef old = kiln_cg_load(c, c->f32, crow, j.index);
  LLVMValueRef sum = LLVMBuildFAdd(c->b, v, LLVMBuildFMul(c->b, beta, old, ""), "");
  kiln_cg_store(c, LLVMBuildSelect(c->b, is0, v, sum, ""), crow, j.index);
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &r);
}

// Row tiles of one panel: rows [i0, i0 + mr) of op(A) times the panel at bp
// (bs floats between rows), into C's columns [j0, j0 + nr).
static void row_tiles(Gen *s, LLVMValueRef p0, LLVMValueRef kc, LLVMValueRef j0, LLVMValueRef nr,
                      LLVMValueRef bp, LLVMValueRef bs, LLVMValueRef beta) {
  KilnCg *c = s->c;
  const KilnGemm *g = s->g;
  // op(A)[i, p] is A[i * lda + p], or A[p * lda + i] when transposed.
  int64_t rs = g->ta ? 1 : g->lda, ks = g->ta ? g->lda : 1;
  LLVMValueRef MRv = i64c(s, s->t.mr), last = LLVMBuildSub(c->b, s->m, i64c(s, 1), "");
  LLVMValueRef nblk = ceil_div(s, s->m, MRv);
  KilnLoop ib = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), nblk, "itile");
  LLVMValueRef i0 = kiln_cg_mul(c, ib.index, MRv);
  LLVMValueRef mr = imin(s, MRv, LLVMBuildSub(c->b, s->m, i0, ""));
  LLVMValueRef arow[MAX_MR], kbase = kiln_cg_mul(c, p0, i64c(s, ks));
  for (int r = 0; r < s->t.mr; r++) {
    LLVMValueRef row = imin(s, kiln_cg_add(c, i0, i64c(s, r)), last);
    arow[r] = at(s, s->A, kiln_cg_add(c, kiln_cg_mul(c, row, i64c(s, rs)), kbase));
  }
  micro(s, arow, ks, bp, bs, kc);
  LLVMValueRef ci = kiln_cg_add(c, kiln_cg_mul(c, i0, i64c(s, g->ldc)), j0);
  LLVMValueRef full = LLVMBuildAnd(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, mr, MRv, ""),
                                   LLVMBuildICmp(c->b, LLVMIntEQ, nr, i64c(s, s->nr), ""), "");
  LLVMBasicBlockRef other;
  LLVMBasicBlockRef done = begin_if(s, full, &other);
  store_full(s, ci, beta);
  else_if(s, other, done);
  store_edge(s, ci, mr, nr, beta);
  end_if(s, done);
  kiln_cg_loop_end(c, &ib);
}

// One block of K: every panel of B, packed or read in place, times all of op(A).
static void k_block(Gen *s, LLVMValueRef p0, LLVMValueRef kc, LLVMValueRef beta) {
  KilnCg *c = s->c;
  LLVMValueRef NRv = i64c(s, s->nr);
  LLVMValueRef nblk = ceil_div(s, s->n, NRv);
  KilnLoop jb = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), nblk, "panel");
  LLVMValueRef j0 = kiln_cg_mul(c, jb.index, NRv);
  LLVMValueRef nr = imin(s, NRv, LLVMBuildSub(c->b, s->n, j0, ""));
  LLVMValueRef bp, bs;
  if (s->g->tb || s->t.pack) {
    pack_b(s, p0, kc, j0, nr);
    bp = s->panel;
    bs = NRv;
  } else {  // in place, but the ragged last panel is packed (zero-padded)
    LLVMValueRef ragged = LLVMBuildICmp(c->b, LLVMIntSLT, nr, NRv, "");
    LLVMBasicBlockRef other;
    LLVMBasicBlockRef done = begin_if(s, ragged, &other);
    pack_b(s, p0, kc, j0, nr);
    else_if(s, other, done);
    end_if(s, done);
    LLVMValueRef direct = at(s, s->B, kiln_cg_add(c, kiln_cg_mul(c, p0, i64c(s, s->g->ldb)), j0));
    bp = LLVMBuildSelect(c->b, ragged, s->panel, direct, "");
    bs = LLVMBuildSelect(c->b, ragged, NRv, i64c(s, s->g->ldb), "");
  }
  row_tiles(s, p0, kc, j0, nr, bp, bs, beta);
  kiln_cg_loop_end(c, &jb);
}

static LLVMValueRef alloca_floats(Gen *s, int64_t n, const char *name) {
  LLVMValueRef v = kiln_cg_alloca(s->c, LLVMArrayType(s->c->f32, (unsigned)n), name);
  LLVMSetAlignment(v, 32);
  return v;
}

// The body: K in the fewest blocks of at most KC, of equal size (784 as 4 x 196,
// not 3 x 256 + 16, whose last block would pay C's reads and writes for little
// work), the first with the caller's beta, the rest adding (beta 1). k = 0 still
// runs one block, so C becomes beta C as BLAS has it.
static void build(Gen *s) {
  KilnCg *c = s->c;
  s->panel = alloca_floats(s, KC * s->nr, "panel");
  s->tile = alloca_floats(s, s->t.mr * s->nr, "tile");
  for (int r = 0; r < s->t.mr; r++)
    for (int h = 0; h < s->t.nv; h++) s->acc[r][h] = kiln_cg_alloca(c, s->vt, "acc");
  LLVMValueRef nk = ceil_div(s, s->k, i64c(s, KC));
  LLVMValueRef none = LLVMBuildICmp(c->b, LLVMIntSLT, nk, i64c(s, 1), "");
  nk = LLVMBuildSelect(c->b, none, i64c(s, 1), nk, "");
  LLVMValueRef each = ceil_div(s, s->k, nk);  // <= KC
  KilnLoop kb = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), nk, "kblock");
  LLVMValueRef p0 = kiln_cg_mul(c, kb.index, each);
  LLVMValueRef kc = imin(s, each, LLVMBuildSub(c->b, s->k, p0, ""));
  LLVMValueRef first = LLVMBuildICmp(c->b, LLVMIntEQ, kb.index, i64c(s, 0), "");
  LLVMValueRef beta = LLVMBuildSelect(c->b, first, s->beta, kiln_cg_f32(c, 1), "");
  k_block(s, p0, kc, beta);
  kiln_cg_loop_end(c, &kb);
  LLVMBuildRetVoid(c->b);
}

// The function for g's static parameters and tile t, built on first use.
static LLVMValueRef gemm_fn(KilnCg *c, const KilnGemm *g, KilnGemmTile t, LLVMTypeRef *out_type) {
  LLVMTypeRef params[] = {c->i64, c->i64, c->i64, c->ptr, c->ptr, c->f32, c->ptr};
  *out_type = LLVMFunctionType(c->v, params, 7, 0);
  char name[160];
  snprintf(name, sizeof name, "kiln_gemm_%c%c_%lld_%lld_%lld_%a_%dx%d%s", g->ta ? 't' : 'n',
           g->tb ? 't' : 'n', (long long)g->lda, (long long)g->ldb, (long long)g->ldc, g->alpha,
           t.mr, t.nv * LANES, t.pack ? "_packed" : "");
  LLVMValueRef f = LLVMGetNamedFunction(c->mod, name);
  if (f) return f;
  f = LLVMAddFunction(c->mod, name, *out_type);
  LLVMSetLinkage(f, LLVMInternalLinkage);
  // One copy per module, optimized once, however many kernels call it: inlined
  // into each caller, it added about 1 s to the GPT's compile time, not 0.5 s.
  // A call costs nothing next to a product's thousands of multiply-adds.
  unsigned noinline = LLVMGetEnumAttributeKindForName("noinline", 8);
  LLVMAddAttributeAtIndex(f, (unsigned)LLVMAttributeFunctionIndex,
                          LLVMCreateEnumAttribute(c->ctx, noinline, 0));
  LLVMBasicBlockRef saved = LLVMGetInsertBlock(c->b);
  LLVMValueRef saved_fn = c->fn;
  c->fn = f;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, f, "entry"));
  Gen s = {.c = c, .g = g, .t = t, .nr = t.nv * LANES, .vt = LLVMVectorType(c->f32, LANES)};
  LLVMValueRef *p[] = {&s.m, &s.n, &s.k, &s.A, &s.B, &s.beta, &s.C};
  for (unsigned i = 0; i < 7; i++) *p[i] = LLVMGetParam(f, i);
  build(&s);
  c->fn = saved_fn;
  LLVMPositionBuilderAtEnd(c->b, saved);
  return f;
}

void kiln_cpu_gemm(KilnCg *c, const KilnGemm *g, KilnGemmTile t) {
  KILN_ASSERT(t.mr >= 1 && t.mr <= MAX_MR && t.nv >= 1 && t.nv <= MAX_NV);
  LLVMTypeRef ft;
  LLVMValueRef f = gemm_fn(c, g, t, &ft);
  LLVMValueRef args[] = {g->m, g->n, g->k, g->a, g->b, g->beta, g->c};
  LLVMBuildCall2(c->b, ft, f, args, 7, "");
}

// 6 x 16 throughout: 4 x 24 was faster on some products and slower on others
// (bench/gemm.py). A panel of B read in place by many row tiles misses L1 (its
// rows are ldb apart, 1 to 4 KiB for the models, so few cache sets hold them);
// packed, it is one contiguous run that stays there. Packing pays from about 8
// row tiles of a deep panel on (the MLP's and GPT's 64-row blocks: up to 25%
// faster, at worst 3% slower), not for attention's 32-row blocks.
KilnGemmTile kiln_cpu_gemm_tile(const KilnGemm *g, int64_t m, int64_t n, int64_t k) {
  (void)g, (void)n;
  return (KilnGemmTile){6, 2, m >= 48 && k >= 128};
}

// Measured with bench/gemm.py (docs/benchmarks.md, 2026-11-29; AMD EPYC Zen 3,
// AVX2, one thread, OpenBLAS 0.3.21 with its own choice of kernels and with
// OPENBLAS_CORETYPE=Haswell), generated time against OpenBLAS's, over 3 runs:
// - small products, m <= 256, n <= 128, k <= 128 (attention's blocks of 32 query
//   rows against up to 128 keys, head dim 64; the digits model's layer): 1.01-1.54
//   times as fast as OpenBLAS's own choice, 0.94-1.33 times Haswell's, mostly
//   above 1.05. OpenBLAS runs them at half its large-product speed.
// - a transposed B in blocks of up to 64 rows, n and k up to 1024 (the input
//   gradient dY W^T of every dense layer): 0.98-1.15 times with k >= 256, 1.04-1.41
//   with k = 96, 1.14-1.98 with k = 10. Packing transposes 8 x 8 blocks in registers.
//   Since a thread's row blocks are one call (kernels.c), m is up to the whole
//   batch: at 128 rows the k = 10 product ran 1.7 times as fast as OpenBLAS (k =
//   512: 0.93, best runs 1.05), so a short k is taken at any m.
// - everything else stays with OpenBLAS: B not transposed in 64-row blocks of the
//   dense layers (0.82-1.11, even), weight gradients over 2048 rows (0.6-0.8),
//   and products whose rows are known only at run time (the LSTM's, one per
//   thread's share of sequences; 0.67-1.14 at 32 rows).
bool kiln_cpu_gemm_wins(const KilnGemm *g, int64_t m, int64_t n, int64_t k) {
  if (m <= 256 && n <= 128 && k <= 128) return true;
  if (g->tb && n <= 1024 && k <= 128) return true;
  return g->tb && m <= 64 && n <= 1024 && k <= 1024;
}

// The most size v can be at run time: its value when constant, the smaller bound
// of a min (the row blocks of kernels.c and attention.c: select(a < b, a, b)),
// else UNKNOWN.
#define UNKNOWN INT64_MAX
static int64_t bound(LLVMValueRef v, int depth) {
  if (LLVMIsAConstantInt(v)) return LLVMConstIntGetSExtValue(v);
  if (depth > 4 || !LLVMIsASelectInst(v) || !LLVMIsAICmpInst(LLVMGetOperand(v, 0))) return UNKNOWN;
  LLVMValueRef cond = LLVMGetOperand(v, 0), x = LLVMGetOperand(v, 1), y = LLVMGetOperand(v, 2);
  LLVMValueRef l = LLVMGetOperand(cond, 0), r = LLVMGetOperand(cond, 1);
  LLVMIntPredicate p = LLVMGetICmpPredicate(cond);
  bool lt = p == LLVMIntSLT || p == LLVMIntSLE, gt = p == LLVMIntSGT || p == LLVMIntSGE;
  if (!((lt && x == l && y == r) || (gt && x == r && y == l))) return UNKNOWN;
  int64_t bl = bound(l, depth + 1), br = bound(r, depth + 1);
  return bl < br ? bl : br;
}

static int64_t imin64(int64_t a, int64_t b) { return a < b ? a : b; }

bool kiln_cpu_gemm_try(KilnCg *c, const KilnGemm *g) {
  // A row of op(A) or op(B) lies within one row of the stored matrix when that
  // matrix is not transposed, and a row of C within ldc.
  int64_t m = imin64(bound(g->m, 0), g->ta ? g->lda : UNKNOWN);
  int64_t n = imin64(imin64(bound(g->n, 0), g->ldc), g->tb ? UNKNOWN : g->ldb);
  int64_t k = imin64(imin64(bound(g->k, 0), g->ta ? UNKNOWN : g->lda), g->tb ? g->ldb : UNKNOWN);
  if (!kiln_cpu_gemm_wins(g, m, n, k)) return false;
  kiln_cpu_gemm(c, g, kiln_cpu_gemm_tile(g, m, n, k));
  return true;
}
