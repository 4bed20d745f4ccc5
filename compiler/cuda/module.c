// The model for the GPU. First every kernel of every model (the main one, then
// the decode and window models of generation) is written as CUDA source; kernels
// whose text is the same share one function. NVRTC compiles the whole source once
// per architecture. Then the host module is the CPU backend's (kiln_cpu_module:
// descriptors, tables, library API) with step functions that hand a
// KilnCudaProgram (include/kiln/abi.h) to the runtime.
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compiler/cuda/cuda.h"

#define PLACEHOLDER "kiln_kernel_name_"

typedef struct {
  int32_t function;       // index into Source.fn
  int32_t info;           // into the graph's kernel_info
  uint32_t grid[3], block[3], smem;
  int nslots;
  KilnSlot slot[KILN_CUDA_MAX_SLOTS];
} Launch;

typedef struct {
  Launch *l;
  int n, cap;
  KilnCudaRange *up, *down;
  int nup, ndown;
  int64_t loss_offset;
  bool present;
  KilnCudaSync *sync;     // the train step's (KilnCudaSync), ordered by after
  int nsync;
} StepPlan;

typedef struct {
  const KilnGraph *g;
  StepPlan step[3];       // KILN_ABI_CUDA_FORWARD, _EVAL, _TRAIN
  KilnKernelCost *info;
  int ninfo, nkernels;
} GraphPlan;

typedef struct {
  char *text;             // with PLACEHOLDER for its name
  const KilnGraph *g;     // where it was first made, for messages
  int32_t node;           // -1: not a node's (label says whose)
  const char *label;
  int line0, lines;       // where it sits in the whole source
} Function;

typedef struct {
  Function *fn;
  int nfn, cap;
  GraphPlan gp[3];
  int ngp;
  KilnArena *arena;
  KilnCudaMatmul matmul;
  char err[2048];
  KilnCudaCompiled bin;
} Source;

static int find_or_add_function(Source *s, char *text, const KilnGraph *g, int32_t node,
                                const char *label) {
  for (int i = 0; i < s->nfn; i++)
    if (strcmp(s->fn[i].text, text) == 0) {
      free(text);
      return i;
    }
  if (s->nfn == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 64;
    s->fn = realloc(s->fn, (size_t)s->cap * sizeof *s->fn);
    if (!s->fn) kiln_out_of_memory(0);
  }
  s->fn[s->nfn] = (Function){text, g, node, label, 0, 0};
  return s->nfn++;
}

static void add_launch(StepPlan *sp, const Launch *l) {
  if (sp->n == sp->cap) {
    sp->cap = sp->cap ? 2 * sp->cap : 64;
    sp->l = realloc(sp->l, (size_t)sp->cap * sizeof *sp->l);
    if (!sp->l) kiln_out_of_memory(0);
  }
  sp->l[sp->n++] = *l;
}

typedef enum { EMIT_NODE, EMIT_CONSTS, EMIT_NORM, EMIT_UPDATE } EmitKind;

typedef struct {
  EmitKind kind;
  int32_t id;
  int phase;
  const bool *live;           // EMIT_CONSTS
  double clip;                // EMIT_NORM
  const KilnTrainDesc *train; // EMIT_UPDATE
} EmitReq;

// Writes one kernel; returns 1 with *out filled, 0 when there is nothing to run,
// -1 on error (s->err).
static int make_kernel(Source *s, const KilnGraph *g, const KilnPlan *p, const EmitReq *r,
                       int32_t info, Launch *out) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) kiln_out_of_memory(0);
  KilnCudaKernel k = {.g = g, .p = p, .id = r->id, .phase = r->phase, .name = PLACEHOLDER,
                      .out = f, .arena = s->arena, .matmul = s->matmul};
  int rc;
  switch (r->kind) {
  case EMIT_NODE: rc = kiln_cuda_kernel(&k) == 0 ? 1 : -1; break;
  case EMIT_CONSTS: rc = kiln_cuda_const_kernel(&k, r->live); break;
  case EMIT_NORM: rc = kiln_cuda_norm_kernel(&k, r->clip) == 0 ? 1 : -1; break;
  case EMIT_UPDATE: rc = kiln_cuda_update_kernel(&k, r->id, r->train) == 0 ? 1 : -1; break;
  default: rc = -1;
  }
  fclose(f);
  if (rc <= 0) {
    if (rc < 0) {
      const KilnNode *n = r->id >= 0 ? &g->nodes[r->id] : NULL;
      snprintf(s->err, sizeof s->err, "CUDA kernel of %s '%s': %s", n ? kiln_op(n->op)->name : "step",
               n ? n->name : "", k.err[0] ? k.err : "failed");
    }
    free(text);
    return rc;
  }
  *out = (Launch){.info = info, .smem = k.smem, .nslots = k.nslots};
  memcpy(out->grid, k.grid, sizeof k.grid);
  memcpy(out->block, k.block, sizeof k.block);
  memcpy(out->slot, k.slot, sizeof k.slot);
  static const char *const labels[] = {"", "the constants", "the gradient norm", "the optimizer"};
  out->function = find_or_add_function(s, text, g, r->kind == EMIT_NODE ? r->id : -1, labels[r->kind]);
  return 1;
}

// Computed inside another node's kernel (passes/fuse.c): no kernel of its own.
static bool fused(const KilnGraph *g, int32_t i) { return g->fused_into && g->fused_into[i] >= 0; }

static bool has_kernel(const KilnGraph *g, const KilnPlan *p, int32_t i) {
  return kiln_op(g->nodes[i].op)->fuse != KILN_FUSE_SOURCE && !fused(g, i) &&
         !(p->alias && p->alias[i] >= 0);
}

static void add_range(KilnCudaRange **r, int *n, int64_t off, int64_t bytes) {
  *r = realloc(*r, (size_t)(*n + 1) * sizeof **r);
  if (!*r) kiln_out_of_memory(0);
  (*r)[(*n)++] = (KilnCudaRange){off, bytes};
}

// The launches of one step over the nodes in live[], and what it copies: the
// header and the inputs it reads before, the header and the outputs after. With
// end, end[i] is the number of launches once node i's have been added.
static int plan_step(Source *s, GraphPlan *gp, const KilnGraph *g, const KilnPlan *p,
                     const bool *live, const int32_t *info, StepPlan *sp, int32_t *end) {
  sp->present = true;
  sp->loss_offset = -1;
  add_range(&sp->up, &sp->nup, 0, KILN_ABI_HEADER_BYTES);
  add_range(&sp->down, &sp->ndown, 0, KILN_ABI_HEADER_BYTES);
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    if (live[i] && n->op == KILN_OP_INPUT && !n->attr.state)
      add_range(&sp->up, &sp->nup, p->offset[i], kiln_node_numel(n) * 4);
  }
  for (int i = 0; i < g->noutputs; i++) {
    int32_t o = g->outputs[i];
    if (live[o]) add_range(&sp->down, &sp->ndown, p->offset[o], kiln_node_numel(&g->nodes[o]) * 4);
  }
  Launch l;
  EmitReq cr = {.kind = EMIT_CONSTS, .id = -1, .live = live};
  int rc = make_kernel(s, g, p, &cr, gp->ninfo - 1, &l);
  if (rc < 0) return -1;
  if (rc > 0) add_launch(sp, &l), gp->nkernels++;
  for (int i = 0; i < g->nnodes; i++) {
    for (int ph = 0; live[i] && has_kernel(g, p, i) && ph < kiln_cuda_kernel_phases(&g->nodes[i]); ph++) {
      EmitReq r = {.kind = EMIT_NODE, .id = i, .phase = ph};
      if (make_kernel(s, g, p, &r, info[i], &l) < 0) return -1;
      add_launch(sp, &l), gp->nkernels++;
    }
    if (end) end[i] = sp->n;
  }
  return 0;
}

// Where the ranks sum the gradients (KilnCudaSync): each one after the launches of
// the node that last touches its buffer (kiln_cpu_find_grads, as the CPU reports
// them), and all of them before the gradient norm (or without clipping the first
// update), whose launch comes next.
static void plan_syncs(const KilnGraph *g, const KilnPlan *p, const int32_t *end, StepPlan *tr) {
  KilnGrads gr;
  kiln_cpu_find_grads(g, p, &gr);
  tr->sync = kiln_xcalloc((size_t)gr.n + 1, sizeof *tr->sync);
  for (int k = 0; k < gr.n; k++) {
    int32_t after = gr.ready[k] >= 0 ? end[gr.ready[k]] : 0;
    int j = tr->nsync++;  // insertion keeps equal points in grads order
    for (; j > 0 && tr->sync[j - 1].after > after; j--) tr->sync[j] = tr->sync[j - 1];
    tr->sync[j] = (KilnCudaSync){after, k};
  }
  tr->sync[tr->nsync++] = (KilnCudaSync){tr->n, -1};
  kiln_cpu_grads_free(&gr);
}

static int plan_graph(Source *s, GraphPlan *gp, const KilnGraph *g, const KilnPlan *p,
                      const KilnTrainDesc *train) {
  gp->g = g;
  int n = g->nnodes;
  int32_t *info = kiln_xcalloc((size_t)n, sizeof *info);
  gp->info = kiln_xcalloc((size_t)n + 3, sizeof *gp->info);
  for (int i = 0; i < n; i++)
    if (p->live[i] && has_kernel(g, p, i)) kiln_kernel_cost(g, i, &gp->info[gp->ninfo]), info[i] = gp->ninfo++;
  // The step's constants: one small kernel, its own row in the profile.
  int64_t nconst = 0;
  for (int i = 0; i < n; i++) nconst += p->live[i] && g->nodes[i].op == KILN_OP_CONST;
  gp->info[gp->ninfo++] = (KilnKernelCost){"constants", "const", "", 0, 4 * nconst};
  int rc = plan_step(s, gp, g, p, p->live_fwd, info, &gp->step[KILN_ABI_CUDA_FORWARD], NULL);
  if (rc == 0 && g->loss >= 0) {
    StepPlan *ev = &gp->step[KILN_ABI_CUDA_EVAL];
    rc = plan_step(s, gp, g, p, p->live_eval, info, ev, NULL);
    ev->loss_offset = p->offset[g->loss];
  }
  if (rc == 0 && g->grads && train) {
    StepPlan *tr = &gp->step[KILN_ABI_CUDA_TRAIN];
    int32_t *end = kiln_xcalloc((size_t)n, sizeof *end);
    rc = plan_step(s, gp, g, p, p->live, info, tr, end);
    if (rc == 0) plan_syncs(g, p, end, tr);
    free(end);
    tr->loss_offset = p->offset[g->loss];
    int64_t total = 0;
    for (int i = 0; i < g->nforward; i++)
      if (g->grads[i] >= 0) total += kiln_node_numel(&g->nodes[i]);
    KilnSteps st = {.info = gp->info, .ninfo = gp->ninfo};
    kiln_cpu_train_costs(p, train, total, &st);
    gp->ninfo = st.ninfo;
    Launch l;
    // As on the CPU, the norm only where clipping reads it: the runtime sets
    // grad_scale to 1 before each step. The ranks' join (plan_syncs) stays
    // before the launch that comes next, the first update.
    if (train->clip_grad_norm > 0) {
      EmitReq nr = {.kind = EMIT_NORM, .id = -1, .clip = train->clip_grad_norm};
      if (rc == 0 && make_kernel(s, g, p, &nr, gp->ninfo - 2, &l) < 0) rc = -1;
      if (rc == 0) add_launch(tr, &l), gp->nkernels++;
    }
    for (int i = 0; rc == 0 && i < g->nforward; i++) {
      if (g->grads[i] < 0) continue;
      EmitReq ur = {.kind = EMIT_UPDATE, .id = i, .train = train};
      if (make_kernel(s, g, p, &ur, gp->ninfo - 1, &l) < 0) rc = -1;
      else add_launch(tr, &l), gp->nkernels++;
    }
  }
  free(info);
  return rc;
}

// The whole source: the templates, then every function under its final name.
static char *assemble(Source *s) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  if (!f) kiln_out_of_memory(0);
  const char *t = kiln_cuda_templates();
  fputs(t, f);
  int line = 1;
  for (const char *c = t; *c; c++) line += *c == '\n';
  for (int i = 0; i < s->nfn; i++) {
    Function *fn = &s->fn[i];
    const KilnNode *n = fn->node >= 0 ? &fn->g->nodes[fn->node] : NULL;
    fprintf(f, "\n// %s\n", n ? n->name : fn->label);
    line += 2;
    fn->line0 = line;
    char name[32];
    snprintf(name, sizeof name, "kiln_k%d", i);
    for (const char *c = fn->text; *c;) {
      const char *hit = strstr(c, PLACEHOLDER);
      if (!hit) {
        fputs(c, f);
        break;
      }
      fwrite(c, 1, (size_t)(hit - c), f);
      fputs(name, f);
      c = hit + strlen(PLACEHOLDER);
    }
    for (const char *c = fn->text; *c; c++) line += *c == '\n';
    fn->lines = line - fn->line0;
  }
  fclose(f);
  return text;
}

// NVRTC's "FILE(LINE): error: ..." lines, each with its source line and where
// that line comes from: a template file or the kernel of a model node.
static void explain_errors(Source *s, const char *src, const char *log, char *err, size_t errlen) {
  size_t used = 0;
  const char *tmpl = kiln_cuda_templates();
  int tlines = 0;
  for (const char *c = tmpl; *c; c++) tlines += *c == '\n';
  for (const char *l = log; *l && used + 1 < errlen;) {
    const char *eol = strchr(l, '\n');
    size_t len = eol ? (size_t)(eol - l) : strlen(l);
    const char *paren = memchr(l, '(', len);
    int line = paren ? atoi(paren + 1) : 0;
    char head[512];
    snprintf(head, sizeof head, "%.*s", (int)(len < sizeof head - 1 ? len : sizeof head - 1), l);
    if (line > 0 && strstr(head, ": error")) {
      char where[512] = "";
      if (line <= tlines) {
        // The template file: the nearest "// ---- templates/NAME" marker above.
        const char *c = tmpl, *marker = NULL;
        int at = 1, marker_line = 0;
        if (strncmp(tmpl, "// ---- templates/", 18) == 0) marker = tmpl + 8, marker_line = 1;
        for (; *c && at < line; c++)
          if (*c == '\n') {
            at++;
            if (strncmp(c + 1, "// ---- templates/", 18) == 0) marker = c + 9, marker_line = at;
          }
        if (marker)
          snprintf(where, sizeof where, " (%.*s:%d)", (int)strcspn(marker, "\n"), marker,
                   line - marker_line);
      } else {
        for (int i = 0; i < s->nfn; i++) {
          Function *fn = &s->fn[i];
          if (line < fn->line0 || line >= fn->line0 + fn->lines) continue;
          const KilnNode *n = fn->node >= 0 ? &fn->g->nodes[fn->node] : NULL;
          if (n && n->loc.file)
            snprintf(where, sizeof where, " (kernel kiln_k%d of %s '%s' at %s:%d:%d)", i,
                     kiln_op(n->op)->name, n->name, n->loc.file, n->loc.line, n->loc.col);
          else if (n)
            snprintf(where, sizeof where, " (kernel kiln_k%d of %s '%s')", i,
                     kiln_op(n->op)->name, n->name);
          else
            snprintf(where, sizeof where, " (kernel kiln_k%d of %s)", i, fn->label);
        }
      }
      const char *sl = src;
      for (int at = 1; *sl && at < line; sl++) at += *sl == '\n';
      used += (size_t)snprintf(err + used, errlen - used, "%.*s%s\n    %.*s\n", (int)len, l, where,
                               (int)strcspn(sl, "\n"), sl);
      if (used >= errlen) used = errlen - 1;
    }
    l = eol ? eol + 1 : l + len;
  }
  if (used == 0) snprintf(err, errlen, "%s", log);
}

//
// The host side: the program constants and the step functions.
//
typedef struct {
  LLVMTypeRef slot, launch, range, sync, step, image, program, step_fn, cuda_fn;
} Types;

static void make_types(KilnCg *c, Types *t) {
  LLVMTypeRef u3 = LLVMArrayType(c->i32, 3);
  LLVMTypeRef slot[] = {c->i32, c->i32, c->i64};
  t->slot = LLVMStructTypeInContext(c->ctx, slot, 3, 0);
  LLVMTypeRef launch[] = {c->i32, c->i32, u3, u3, c->i32, c->i32, c->ptr};
  t->launch = LLVMStructTypeInContext(c->ctx, launch, 7, 0);
  LLVMTypeRef range[] = {c->i64, c->i64};
  t->range = LLVMStructTypeInContext(c->ctx, range, 2, 0);
  LLVMTypeRef sync[] = {c->i32, c->i32};
  t->sync = LLVMStructTypeInContext(c->ctx, sync, 2, 0);
  LLVMTypeRef step[] = {c->i32, c->i32, c->i32, c->i32, c->ptr, c->ptr, c->ptr, c->i64, c->i32, c->i32, c->ptr};
  t->step = LLVMStructTypeInContext(c->ctx, step, 11, 0);
  LLVMTypeRef image[] = {c->i32, c->i32, c->ptr, c->i64};
  t->image = LLVMStructTypeInContext(c->ctx, image, 4, 0);
  LLVMTypeRef program[] = {c->i32, c->i32, c->ptr, c->ptr, LLVMArrayType(t->step, 3)};
  t->program = LLVMStructTypeInContext(c->ctx, program, 5, 0);
  LLVMTypeRef sp[] = {c->ptr, c->ptr, c->ptr};
  t->step_fn = LLVMFunctionType(c->v, sp, 3, 0);
  LLVMTypeRef cp[] = {c->ptr, c->ptr, c->i32};
  t->cuda_fn = LLVMFunctionType(c->v, cp, 3, 0);
}


static LLVMValueRef u3c(KilnCg *c, const uint32_t *v) {
  LLVMValueRef e[] = {kiln_cg_i32(c, v[0]), kiln_cg_i32(c, v[1]), kiln_cg_i32(c, v[2])};
  return LLVMConstArray(c->i32, e, 3);
}

static LLVMValueRef ranges(KilnCg *c, const Types *t, const KilnCudaRange *r, int n) {
  LLVMValueRef *v = kiln_xcalloc((size_t)n + 1, sizeof *v);
  for (int i = 0; i < n; i++) {
    LLVMValueRef f[] = {kiln_cg_i64(c, r[i].offset), kiln_cg_i64(c, r[i].bytes)};
    v[i] = LLVMConstNamedStruct(t->range, f, 2);
  }
  LLVMValueRef g = kiln_cg_private_const(c, LLVMConstArray(t->range, v, (unsigned)n), "cuda_ranges");
  free(v);
  return g;
}

static LLVMValueRef step_const(KilnCg *c, const Types *t, const StepPlan *sp, int training) {
  if (!sp->present) {
    LLVMValueRef f[] = {kiln_cg_i32(c, 0), kiln_cg_i32(c, 0), kiln_cg_i32(c, 0), kiln_cg_i32(c, training), LLVMConstNull(c->ptr),
                        LLVMConstNull(c->ptr), LLVMConstNull(c->ptr), kiln_cg_i64(c, -1), kiln_cg_i32(c, 0),
                        kiln_cg_i32(c, 0), LLVMConstNull(c->ptr)};
    return LLVMConstNamedStruct(t->step, f, 11);
  }
  LLVMValueRef *lv = kiln_xcalloc((size_t)sp->n + 1, sizeof *lv);
  for (int i = 0; i < sp->n; i++) {
    const Launch *l = &sp->l[i];
    LLVMValueRef sv[KILN_CUDA_MAX_SLOTS];
    for (int j = 0; j < l->nslots; j++) {
      LLVMValueRef f[] = {kiln_cg_i32(c, l->slot[j].where == KILN_LOC_WEIGHTS ? KILN_ABI_BLOCK_WEIGHTS
                                                                        : KILN_ABI_BLOCK_ARENA),
                          kiln_cg_i32(c, 0), kiln_cg_i64(c, l->slot[j].off)};
      sv[j] = LLVMConstNamedStruct(t->slot, f, 3);
    }
    LLVMValueRef slots = kiln_cg_private_const(c, LLVMConstArray(t->slot, sv, (unsigned)l->nslots), "cuda_slots");
    LLVMValueRef f[] = {kiln_cg_i32(c, l->function), kiln_cg_i32(c, l->info), u3c(c, l->grid), u3c(c, l->block),
                        kiln_cg_i32(c, l->smem), kiln_cg_i32(c, l->nslots), slots};
    lv[i] = LLVMConstNamedStruct(t->launch, f, 7);
  }
  LLVMValueRef launches = kiln_cg_private_const(c, LLVMConstArray(t->launch, lv, (unsigned)sp->n), "cuda_launches");
  free(lv);
  LLVMValueRef syncs = LLVMConstNull(c->ptr);
  if (sp->nsync) {
    LLVMValueRef *yv = kiln_xcalloc((size_t)sp->nsync, sizeof *yv);
    for (int i = 0; i < sp->nsync; i++) {
      LLVMValueRef y[] = {kiln_cg_i32(c, sp->sync[i].after), kiln_cg_i32(c, sp->sync[i].grad)};
      yv[i] = LLVMConstNamedStruct(t->sync, y, 2);
    }
    syncs = kiln_cg_private_const(c, LLVMConstArray(t->sync, yv, (unsigned)sp->nsync), "cuda_syncs");
    free(yv);
  }
  LLVMValueRef f[] = {kiln_cg_i32(c, sp->n), kiln_cg_i32(c, sp->nup), kiln_cg_i32(c, sp->ndown), kiln_cg_i32(c, training),
                      launches, ranges(c, t, sp->up, sp->nup), ranges(c, t, sp->down, sp->ndown),
                      kiln_cg_i64(c, sp->loss_offset), kiln_cg_i32(c, sp->nsync), kiln_cg_i32(c, 0), syncs};
  return LLVMConstNamedStruct(t->step, f, 11);
}

typedef struct {
  Source *s;
  Types t;
  LLVMValueRef images, functions;
} StepsCtx;

// A step function: kiln_rt_cuda_step(rt, &program, which).
static LLVMValueRef step_fn(KilnCg *c, const Types *t, LLVMValueRef program, int which) {
  static const char *const names[] = {"kiln_cuda_forward", "kiln_cuda_eval", "kiln_cuda_train"};
  LLVMValueRef fn = LLVMAddFunction(c->mod, names[which], t->step_fn);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMValueRef callee = LLVMGetNamedFunction(c->mod, "kiln_rt_cuda_step");
  if (!callee) callee = LLVMAddFunction(c->mod, "kiln_rt_cuda_step", t->cuda_fn);
  LLVMValueRef args[] = {LLVMGetParam(fn, 2), program, kiln_cg_i32(c, which)};
  LLVMBuildCall2(c->b, t->cuda_fn, callee, args, 3, "");
  LLVMBuildRetVoid(c->b);
  return fn;
}

static void cuda_steps(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const KilnTrainDesc *train,
                       void *ctx, KilnSteps *out) {
  StepsCtx *x = ctx;
  if (!x->images) {
    make_types(c, &x->t);
    Source *s = x->s;
    LLVMValueRef *iv = kiln_xcalloc((size_t)s->bin.nbin + 1, sizeof *iv);
    for (int i = 0; i < s->bin.nbin; i++) {
      const KilnCudaBinary *b = &s->bin.bin[i];
      LLVMValueRef data = LLVMConstStringInContext(c->ctx, (const char *)b->data, (unsigned)b->size, 1);
      LLVMValueRef dg = kiln_cg_private_const(c, data, b->arch > 0 ? "cuda_cubin" : "cuda_ptx");
      LLVMSetAlignment(dg, 64);
      LLVMValueRef f[] = {kiln_cg_i32(c, b->arch), kiln_cg_i32(c, 0), dg, kiln_cg_i64(c, (int64_t)b->size)};
      iv[i] = LLVMConstNamedStruct(x->t.image, f, 4);
    }
    x->images = kiln_cg_private_const(c, LLVMConstArray(x->t.image, iv, (unsigned)s->bin.nbin), "cuda_images");
    free(iv);
    LLVMValueRef *fv = kiln_xcalloc((size_t)s->nfn + 1, sizeof *fv);
    for (int i = 0; i < s->nfn; i++) {
      char name[32];
      snprintf(name, sizeof name, "kiln_k%d", i);
      LLVMValueRef str = LLVMConstStringInContext(c->ctx, name, (unsigned)strlen(name), 0);
      fv[i] = kiln_cg_private_const(c, str, "cuda_fn_name");
    }
    x->functions = kiln_cg_private_const(c, LLVMConstArray(c->ptr, fv, (unsigned)s->nfn), "cuda_functions");
    free(fv);
  }
  GraphPlan *gp = NULL;
  for (int i = 0; i < x->s->ngp; i++)
    if (x->s->gp[i].g == g) gp = &x->s->gp[i];
  KILN_ASSERT(gp);
  LLVMValueRef steps[3];
  for (int i = 0; i < 3; i++) steps[i] = step_const(c, &x->t, &gp->step[i], i == KILN_ABI_CUDA_TRAIN);
  LLVMValueRef f[] = {kiln_cg_i32(c, x->s->bin.nbin), kiln_cg_i32(c, x->s->nfn), x->images, x->functions,
                      LLVMConstArray(x->t.step, steps, 3)};
  LLVMValueRef program = kiln_cg_private_const(c, LLVMConstNamedStruct(x->t.program, f, 5), "cuda_program");
  *out = (KilnSteps){.program = program};
  out->forward = step_fn(c, &x->t, program, KILN_ABI_CUDA_FORWARD);
  if (gp->step[KILN_ABI_CUDA_EVAL].present) out->eval = step_fn(c, &x->t, program, KILN_ABI_CUDA_EVAL);
  if (gp->step[KILN_ABI_CUDA_TRAIN].present) {
    out->train = step_fn(c, &x->t, program, KILN_ABI_CUDA_TRAIN);
    kiln_cpu_find_grads(g, p, &out->grads);
  }
  (void)train;
  out->nkernels = gp->nkernels;
  out->ninfo = gp->ninfo;
  // kiln_cpu_module frees info.
  out->info = kiln_xcalloc((size_t)gp->ninfo + 1, sizeof *out->info);
  memcpy(out->info, gp->info, (size_t)gp->ninfo * sizeof *out->info);
}

static void source_free(Source *s) {
  for (int i = 0; i < s->nfn; i++) free(s->fn[i].text);
  free(s->fn);
  for (int i = 0; i < s->ngp; i++) {
    free(s->gp[i].info);
    for (int j = 0; j < 3; j++) {
      free(s->gp[i].step[j].l);
      free(s->gp[i].step[j].up);
      free(s->gp[i].step[j].down);
      free(s->gp[i].step[j].sync);
    }
  }
  kiln_cuda_compiled_free(&s->bin);
}

static void write_stats(const Source *s, FILE *f) {
  fprintf(f, "%-10s %-6s %5s %6s %6s %6s %6s  %s\n", "kernel", "arch", "regs", "spill", "reload",
          "stack", "smem", "node");
  for (int i = 0; i < s->bin.nstats; i++) {
    const KilnCudaKernelStats *k = &s->bin.stats[i];
    int fi = atoi(k->name + strlen("kiln_k"));
    const Function *fn = fi >= 0 && fi < s->nfn ? &s->fn[fi] : NULL;
    const KilnNode *n = fn && fn->node >= 0 ? &fn->g->nodes[fn->node] : NULL;
    fprintf(f, "%-10s sm_%-3d %5d %6d %6d %6d %6d  %s %s\n", k->name, k->arch, k->registers,
            k->spill_stores, k->spill_loads, k->stack, k->smem, n ? kiln_op(n->op)->name : "-",
            n ? n->name : fn ? fn->label : "");
  }
}

int kiln_cuda_module(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const KilnModuleOpts *o,
                     const KilnCudaOpts *co, char *err, size_t errlen) {
  // The bf16 mma (mma.sync m16n8k16 .bf16) and cvt.rn.bf16x2 need sm_80.
  for (int i = 0; co->matmul == KILN_CUDA_MATMUL_BF16 && i < co->narchs; i++)
    if (co->archs[i] < 80) {
      snprintf(err, errlen,
               "--gpu-matmul=bf16 needs sm_80 or newer (bf16 tensor cores), but --gpu-arch has sm_%d; "
               "drop it, or build with --gpu-matmul=f32",
               co->archs[i]);
      return -1;
    }
  Source s = {.arena = g->arena, .matmul = co->matmul};
  int rc = 0;
  // Sub-models first, as kiln_cpu_module builds them.
  if (o->decode) {
    rc = plan_graph(&s, &s.gp[s.ngp++], o->decode, o->decode_plan, NULL);
    if (rc == 0) rc = plan_graph(&s, &s.gp[s.ngp++], o->window, o->window_plan, NULL);
  }
  if (rc == 0) rc = plan_graph(&s, &s.gp[s.ngp++], g, p, o->train);
  if (rc != 0) {
    snprintf(err, errlen, "%s", s.err);
    source_free(&s);
    return -1;
  }
  char *src = assemble(&s);
  char file[256];
  // An absolute name no file has: NVRTC's line tables record the source file's
  // folder and, when a file of that name exists there, a checksum of it, so a
  // relative name would make the cubins depend on the folder kiln runs in.
  snprintf(file, sizeof file, "/kiln/%s.cu", g->name);
  if (co->source_out) {
    FILE *f = fopen(co->source_out, "w");
    if (!f || fputs(src, f) < 0 || fclose(f) != 0) {
      snprintf(err, errlen, "cannot write %s", co->source_out);
      free(src);
      source_free(&s);
      return -1;
    }
  }
  char *log = kiln_xmalloc(1 << 16);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  rc = kiln_cuda_compile(src, file, co->archs, co->narchs, co->cache_dir, co->cache_limit, &s.bin,
                         log, 1 << 16);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  if (co->time_out && rc == 0)
    fprintf(co->time_out, "nvrtc      %10.3f ms  %d of %d architectures from the kernel cache%s%s\n",
            (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
            s.bin.ncached, co->narchs, co->cache_dir ? " " : " (off)", co->cache_dir ? co->cache_dir : "");
  if (rc == -2) {
    snprintf(err, errlen, "%s", log);
    rc = -1;
  } else if (rc != 0) {
    char *detail = kiln_xmalloc(1 << 16);
    explain_errors(&s, src, log, detail, 1 << 16);
    snprintf(err, errlen, "the CUDA kernels of '%s' do not compile:\n%s", g->name, detail);
    free(detail);
  } else if (co->stats_out) {
    write_stats(&s, co->stats_out);
  }
  free(log);
  free(src);
  if (rc == 0) {
    StepsCtx x = {.s = &s};
    KilnModuleOpts mo = *o;
    mo.target = "cuda";
    mo.steps = cuda_steps;
    mo.steps_ctx = &x;
    kiln_cpu_module(c, g, p, &mo);
  }
  source_free(&s);
  return rc;
}
