// The profiler: per-kernel times over steps, the roofline table, CSV and a Chrome
// trace. The compiler describes every kernel in the model's descriptor (name, ops,
// YAML location, FLOPs and bytes per launch: include/kiln/abi.h); generated steps
// pass each launch's index to kiln_rt_parallel_for, which calls prof_launch here
// when profiling. All of a profile's memory is allocated at begin.
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/runtime.h"

#define DEFAULT_EVENTS ((int64_t)1 << 20)

enum { EV_STEP, EV_KERNEL, EV_CHUNK };

// One trace event: a step (id: the step kind), a launch on the launching thread,
// or a worker's chunk of a launch (id: the kernel).
typedef struct {
  int64_t t0, t1;     // ns since begin
  int32_t id;
  int16_t tid;        // trace thread, from 1
  int16_t kind;       // EV_*
  const char *step;   // EV_STEP: the step kind
} Event;

typedef struct {
  int64_t calls, ns;
  int threads;        // most threads one launch used
} KernelStat;

#define MAX_STEP_KINDS 8

struct KilnProfile {
  KilnProfileOpts o;
  char *csv, *trace;             // copies of the options' paths
  KernelStat *k;                 // [d->nkernel_info]
  const char *step_kind[MAX_STEP_KINDS];
  int64_t step_calls[MAX_STEP_KINDS], step_ns[MAX_STEP_KINDS];
  int64_t t_begin;
  Event *ev;                     // [cap]; NULL without a trace
  int64_t cap;
  atomic_int_fast64_t nev;       // events claimed, kept or not
  KilnPeak peak;
  bool has_peak;
  int threads;                   // the context's pool
  const char *device;            // a CUDA context's GPU (kernels timed by device events)
};

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

// The trace's thread number of the calling thread, handed out in order of first
// event, process-wide: a thread keeps its track in every profile.
static atomic_int next_tid;
static _Thread_local int trace_tid;

static int16_t my_tid(void) {
  if (!trace_tid) trace_tid = atomic_fetch_add(&next_tid, 1) + 1;
  return (int16_t)trace_tid;
}

static void record(KilnProfile *p, int kind, int32_t id, const char *step, int64_t t0, int64_t t1) {
  if (!p->ev) return;
  int64_t i = atomic_fetch_add(&p->nev, 1);
  if (i >= p->cap) return;
  p->ev[i] = (Event){t0 - p->t_begin, t1 - p->t_begin, id, my_tid(), (int16_t)kind, step};
}

static void profile_free(KilnProfile *p) {
  if (!p) return;
  free(p->csv);
  free(p->trace);
  free(p->k);
  free(p->ev);
  free(p);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int kiln_rt_profile_begin(KilnCtx *c, const KilnProfileOpts *o, KilnStatus *st) {
  profile_free(c->prof);
  c->prof = NULL;
  const KilnModelDesc *d = c->d;
  KilnProfile *p = calloc(1, sizeof *p);
  if (!p) return kiln_rt_fail(st, "out of memory for the profile");
  p->o = *o;
  p->csv = dup_or_null(o->csv);
  p->trace = dup_or_null(o->trace);
  p->k = calloc((size_t)(d->nkernel_info ? d->nkernel_info : 1), sizeof *p->k);
  p->cap = o->trace ? (o->max_events > 0 ? o->max_events : DEFAULT_EVENTS) : 0;
  p->ev = p->cap ? malloc((size_t)p->cap * sizeof *p->ev) : NULL;
  if (!p->k || (o->csv && !p->csv) || (o->trace && !p->trace) || (p->cap && !p->ev)) {
    profile_free(p);
    return kiln_rt_fail(st, "out of memory for the profile (%lld trace events)",
                        (long long)(o->max_events > 0 ? o->max_events : DEFAULT_EVENTS));
  }
  atomic_init(&p->nev, 0);
  p->threads = kiln_pool_threads(c->pool);
  p->device = kiln_cuda_device(c);
  bool given = o->peak_gflops > 0 && o->peak_gbs > 0;
  // This machine's CPU peaks say nothing of a GPU's: there, only peaks given count.
  bool measure = !given && !o->no_peak && !p->device;
  if (measure && kiln_peak_get(&p->peak, o->table, st) != 0) {
    profile_free(p);
    return -1;
  }
  p->has_peak = given || measure;
  if (given) snprintf(p->peak.isa, sizeof p->peak.isa, "given");
  if (o->peak_gflops > 0) p->peak.gflops_core = o->peak_gflops;
  if (o->peak_gbs > 0) p->peak.gbs = p->peak.gbs_core = o->peak_gbs;
  my_tid();  // the thread that profiles runs the steps: in a new process, track 1
  p->t_begin = now_ns();
  c->prof = p;
  return 0;
}

void kiln_rt_run_step(KilnCtx *c, KilnStepFn fn, const char *kind) {
  KilnProfile *p = c->prof;
  if (!p) {
    fn(c->weights, c->arena, c);
    return;
  }
  int64_t t0 = now_ns();
  fn(c->weights, c->arena, c);
  int64_t t1 = now_ns();
  int k = 0;
  while (k < MAX_STEP_KINDS - 1 && p->step_kind[k] && strcmp(p->step_kind[k], kind) != 0) k++;
  p->step_kind[k] = kind;
  p->step_calls[k]++;
  p->step_ns[k] += t1 - t0;
  record(p, EV_STEP, k, kind, t0, t1);
}

//
// Launches (called by kiln_rt_parallel_for in context.c).
//
typedef struct {
  KilnProfile *p;
  KilnKernelFn k;
  char *w, *a;
  int32_t index;
  int64_t caller_lo;   // the calling thread's chunk starts at 0
  int64_t base;        // chunks are relative to it
} ProfJob;

// A chunk: the kernel, and on worker threads an event of its own (the calling
// thread's share is inside its launch event).
static void run_chunk(void *ctx, int64_t lo, int64_t hi) {
  ProfJob *j = ctx;
  int64_t t0 = j->p->ev && lo != j->caller_lo ? now_ns() : 0;
  j->k(j->w, j->a, j->base + lo, j->base + hi);
  if (t0) record(j->p, EV_CHUNK, j->index, NULL, t0, now_ns());
}

void kiln_prof_launch(KilnCtx *c, KilnKernelFn kernel, char *w, char *a, int64_t lo, int64_t hi,
                      bool parallel, int32_t index) {
  KilnProfile *p = c->prof;
  int64_t t0 = now_ns(), n = hi - lo;
  int threads = 1;
  if (parallel) {
    ProfJob j = {p, kernel, w, a, index, 0, lo};
    kiln_pool_run(c->pool, run_chunk, &j, n);
    threads = p->threads < n ? p->threads : (int)n;
  } else {
    kernel(w, a, lo, hi);
  }
  kiln_prof_kernel(c, index, threads, t0, now_ns());
}

void kiln_prof_kernel(KilnCtx *c, int32_t index, int threads, int64_t t0, int64_t t1) {
  KilnProfile *p = c->prof;
  if (!p || index < 0 || index >= c->d->nkernel_info) return;
  KernelStat *k = &p->k[index];
  k->calls++;
  k->ns += t1 - t0;
  if (threads > k->threads) k->threads = threads;
  record(p, EV_KERNEL, index, NULL, t0, t1);
}

//
// The table.
//
typedef struct {
  const KilnKernelInfo *info;
  const KernelStat *s;
  double gflops, gbs, pct;    // achieved, and percent of the roofline bound (< 0: none)
  const char *bound;          // "flop", "mem" or "-"
} Row;

// The roofline: a kernel can take no less than its FLOPs at the compute peak of
// the threads it ran on, nor less than its bytes at the memory bandwidth those
// threads get (one thread's, scaled, up to all CPUs'). Its bound is the larger.
static void roofline(const KilnProfile *p, Row *r) {
  double ns = r->s->calls ? (double)r->s->ns / (double)r->s->calls : 0;
  r->gflops = ns > 0 ? (double)r->info->flops / ns : 0;
  r->gbs = ns > 0 ? (double)r->info->bytes / ns : 0;
  r->pct = -1;
  r->bound = "-";
  if (!p->has_peak || ns <= 0) return;
  int t = r->s->threads > 0 ? r->s->threads : 1;
  double pf = p->peak.gflops_core * t, pb = p->peak.gbs_core * t;
  if (pb > p->peak.gbs) pb = p->peak.gbs;
  double tf = (double)r->info->flops / pf, tb = (double)r->info->bytes / pb;
  r->bound = tf >= tb ? "flop" : "mem";
  r->pct = 100.0 * (tf >= tb ? tf : tb) / ns;
}

static int by_time(const void *x, const void *y) {
  const Row *a = x, *b = y;
  return (a->s->ns < b->s->ns) - (a->s->ns > b->s->ns);
}

static int64_t total_step_ns(const KilnProfile *p) {
  int64_t t = 0;
  for (int k = 0; k < MAX_STEP_KINDS; k++) t += p->step_ns[k];
  return t;
}

// Rows of the kernels that ran, slowest first; *out_n of them.
static Row *rows(const KilnProfile *p, const KilnModelDesc *d, int *out_n) {
  Row *r = calloc((size_t)(d->nkernel_info ? d->nkernel_info : 1), sizeof *r);
  int n = 0;
  for (int i = 0; r && i < d->nkernel_info; i++) {
    if (!p->k[i].calls) continue;
    r[n] = (Row){.info = &d->kernel_info[i], .s = &p->k[i]};
    roofline(p, &r[n++]);
  }
  if (r) qsort(r, (size_t)n, sizeof *r, by_time);
  *out_n = n;
  return r;
}

static void table_head(const KilnProfile *p, const KilnModelDesc *d, FILE *f) {
  fprintf(f, "profile of %s: ", d->name);
  for (int k = 0; k < MAX_STEP_KINDS && p->step_kind[k]; k++)
    fprintf(f, "%s%lld %s (%.3f ms)", k ? ", " : "", (long long)p->step_calls[k], p->step_kind[k],
            (double)p->step_ns[k] / 1e6);
  if (p->device) fprintf(f, "; on %s\n", p->device);
  else fprintf(f, "; %d thread%s\n", p->threads, p->threads == 1 ? "" : "s");
  if (p->has_peak)
    fprintf(f, "peaks: %.1f GFLOP/s per core (%s), %.1f GB/s one thread, %.1f GB/s all\n",
            p->peak.gflops_core, p->peak.isa, p->peak.gbs_core, p->peak.gbs);
  fprintf(f, "%6s %10s %7s %10s %9s %9s %8s %7s %5s %6s  %s\n", "time%", "total ms", "calls",
          "mean us", "MFLOP", "MB", "GFLOP/s", "GB/s", "bound", "%peak", "kernel");
}

static void write_table(const KilnProfile *p, const KilnModelDesc *d, const Row *r, int n, FILE *f) {
  double step = (double)total_step_ns(p), in_kernels = 0;
  table_head(p, d, f);
  for (int i = 0; i < n; i++) {
    const Row *x = &r[i];
    char pct[16] = "-";
    if (x->pct >= 0) snprintf(pct, sizeof pct, "%.1f", x->pct);
    in_kernels += (double)x->s->ns;
    fprintf(f, "%6.1f %10.3f %7lld %10.1f %9.3f %9.3f %8.2f %7.2f %5s %6s  %s %s %s\n",
            step > 0 ? 100.0 * (double)x->s->ns / step : 0, (double)x->s->ns / 1e6,
            (long long)x->s->calls, (double)x->s->ns / 1e3 / (double)x->s->calls,
            (double)x->info->flops / 1e6, (double)x->info->bytes / 1e6, x->gflops, x->gbs,
            x->bound, pct, x->info->name, x->info->ops, x->info->loc);
  }
  if (step > 0)
    fprintf(f, "kernels: %.1f%% of step time; the rest is the runtime between kernels\n",
            100.0 * in_kernels / step);
}

// CSV: a field with a comma or quote is quoted (names hold neither, locations
// could: file names are the user's).
static void csv_field(FILE *f, const char *s) {
  if (!strpbrk(s, ",\"\n")) {
    fputs(s, f);
    return;
  }
  fputc('"', f);
  for (; *s; s++) {
    if (*s == '"') fputc('"', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

static void write_csv(const KilnProfile *p, const Row *r, int n, FILE *f) {
  double step = (double)total_step_ns(p);
  fputs("kernel,ops,loc,calls,total_ms,mean_us,step_pct,flops,bytes,gflops,gbs,threads,bound,"
        "peak_pct\n", f);
  for (int i = 0; i < n; i++) {
    const Row *x = &r[i];
    csv_field(f, x->info->name);
    fputc(',', f);
    csv_field(f, x->info->ops);
    fputc(',', f);
    csv_field(f, x->info->loc);
    fprintf(f, ",%lld,%.6f,%.3f,%.3f,%lld,%lld,%.4f,%.4f,%d,%s,", (long long)x->s->calls,
            (double)x->s->ns / 1e6, (double)x->s->ns / 1e3 / (double)x->s->calls,
            step > 0 ? 100.0 * (double)x->s->ns / step : 0, (long long)x->info->flops,
            (long long)x->info->bytes, x->gflops, x->gbs, x->s->threads, x->bound);
    if (x->pct >= 0) fprintf(f, "%.2f", x->pct);
    fputc('\n', f);
  }
}

//
// The trace: Chrome's trace event format, a JSON object whose traceEvents are
// complete ("X") events in microseconds, one track (tid) per thread.
//
static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
    else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
    else fputc(ch, f);
  }
  fputc('"', f);
}

static int by_track_time(const void *x, const void *y) {
  const Event *a = x, *b = y;
  if (a->tid != b->tid) return a->tid - b->tid;
  if (a->t0 != b->t0) return (a->t0 > b->t0) - (a->t0 < b->t0);
  return (a->t1 < b->t1) - (a->t1 > b->t1);  // the enclosing event first
}

static void write_event(FILE *f, const KilnModelDesc *d, const Event *e, int64_t *step_no) {
  static const char *const cat[] = {"step", "kernel", "chunk"};
  fputs(",\n{\"name\":", f);
  if (e->kind == EV_STEP) {
    json_string(f, e->step);
  } else {
    const KilnKernelInfo *k = &d->kernel_info[e->id];
    char name[512];
    snprintf(name, sizeof name, "%s %s", k->name, k->ops);
    json_string(f, name);
  }
  fprintf(f, ",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f,\"args\":{",
          cat[e->kind], e->tid, (double)e->t0 / 1e3, (double)(e->t1 - e->t0) / 1e3);
  if (e->kind == EV_STEP) {
    fprintf(f, "\"step\":%lld}}", (long long)(*step_no)++);
    return;
  }
  const KilnKernelInfo *k = &d->kernel_info[e->id];
  fputs("\"loc\":", f);
  json_string(f, k->loc);
  fprintf(f, ",\"flops\":%lld,\"bytes\":%lld}}", (long long)k->flops, (long long)k->bytes);
}

static void write_trace(KilnProfile *p, const KilnModelDesc *d, FILE *f) {
  int64_t n = atomic_load(&p->nev), kept = n < p->cap ? n : p->cap;
  qsort(p->ev, (size_t)kept, sizeof *p->ev, by_track_time);
  fputs("{\"displayTimeUnit\":\"ms\",\"otherData\":{\"model\":", f);
  json_string(f, d->name);
  fprintf(f, ",\"threads\":%d,\"dropped_events\":%lld},\n\"traceEvents\":[\n", p->threads,
          (long long)(n - kept));
  fputs("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"tid\":0,\"args\":{\"name\":", f);
  json_string(f, d->name);
  fputs("}}", f);
  for (int64_t i = 0; i < kept; i++)
    if (i == 0 || p->ev[i].tid != p->ev[i - 1].tid)
      fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":%d,\"args\":"
                 "{\"name\":\"thread %d\"}}", p->ev[i].tid, p->ev[i].tid);
  int64_t step_no = 0;
  for (int64_t i = 0; i < kept; i++) write_event(f, d, &p->ev[i], &step_no);
  fputs("\n]}\n", f);
}

// Writes what fn prints to path, atomically.
static int write_file(const char *path, void (*fn)(KilnProfile *, const KilnModelDesc *, const Row *,
                                                   int, FILE *),
                      KilnProfile *p, const KilnModelDesc *d, const Row *r, int n, KilnStatus *st) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  if (!f) return kiln_rt_fail(st, "%s: out of memory", path);
  fn(p, d, r, n, f);
  if (fclose(f) != 0) {
    free(buf);
    return kiln_rt_fail(st, "%s: out of memory", path);
  }
  const void *parts[] = {buf};
  int rc = kiln_rt_write_atomic(path, parts, &len, 1, st);
  free(buf);
  return rc;
}

static void csv_to(KilnProfile *p, const KilnModelDesc *d, const Row *r, int n, FILE *f) {
  (void)d;
  write_csv(p, r, n, f);
}

static void trace_to(KilnProfile *p, const KilnModelDesc *d, const Row *r, int n, FILE *f) {
  (void)r, (void)n;
  write_trace(p, d, f);
}

int kiln_rt_profile_end(KilnCtx *c, KilnStatus *st) {
  KilnProfile *p = c->prof;
  if (!p) return 0;
  c->prof = NULL;
  int n, rc = 0;
  Row *r = rows(p, c->d, &n);
  if (!r) rc = kiln_rt_fail(st, "out of memory for the profile's table");
  if (rc == 0 && p->o.table) write_table(p, c->d, r, n, p->o.table);
  if (rc == 0 && p->csv) rc = write_file(p->csv, csv_to, p, c->d, r, n, st);
  if (rc == 0 && p->trace) rc = write_file(p->trace, trace_to, p, c->d, r, n, st);
  int64_t nev = atomic_load(&p->nev);
  if (rc == 0 && p->trace && nev > p->cap && p->o.table)
    fprintf(p->o.table, "note: the trace kept the first %lld of %lld events\n",
            (long long)p->cap, (long long)nev);
  free(r);
  profile_free(p);
  return rc;
}
