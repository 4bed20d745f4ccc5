// Fault injection by LD_PRELOAD: makes the calls a program writes files with fail
// the way disks and kernels fail, and malloc fail at a chosen call. Set by
// KILN_FAULTS, a comma-separated list:
//
//   path=SUBSTR      file faults apply to paths containing SUBSTR (default ".tmp.",
//                    the temporaries of atomic writes)
//   write=ENOSPC     every write to such a file fails with ENOSPC (also EIO, EDQUOT)
//   write=short      writes take at most 7 bytes per call (a correct writer loops)
//   write=torn       the first write takes half its bytes, later ones fail ENOSPC
//   fsync=EIO        fsync of such a file fails
//   close=EIO        close of such a file fails (as NFS reports late write errors)
//   rename=EIO       renaming such a file fails (also EXDEV, ENOSPC)
//   open=EROFS       creating such a file fails (a read-only file system; EACCES)
//   from=SUBSTR      malloc counting starts at the first open of a path containing
//                    SUBSTR (default: at once); the loader's and libraries' start-up
//                    allocations are not what is tested
//   malloc=N         the Nth malloc, calloc, realloc or posix_memalign counted on the
//                    main thread fails (ENOMEM), and only that one; malloc=0 fails
//                    none and prints the count at exit ("kiln_faults: N allocations")
//
// Which file an fd is comes from /proc/self/fd, so every fault is scoped to the
// files named, never the program's stdout or stderr. stdio writes through libc's
// internal calls, past this shim: /dev/full fails those.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct {
  bool ready;
  char path[256];
  int write_err, fsync_err, close_err, rename_err, open_err;
  bool write_short, write_torn, torn_done;
  char from[256];
  bool counting;
  long malloc_at, count;
  bool report;
} cfg;

static int err_named(const char *s) {
  static const struct {
    const char *name;
    int err;
  } names[] = {{"ENOSPC", ENOSPC}, {"EIO", EIO}, {"EDQUOT", EDQUOT}, {"EXDEV", EXDEV},
               {"EROFS", EROFS}, {"EACCES", EACCES}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(s, names[i].name)) return names[i].err;
  fprintf(stderr, "kiln_faults: unknown error '%s'\n", s);
  _exit(99);
}

static void configure(void) {
  if (cfg.ready) return;
  cfg.ready = true;
  strcpy(cfg.path, ".tmp.");
  const char *env = getenv("KILN_FAULTS");
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", env ? env : "");
  cfg.counting = true;
  for (char *item = strtok(buf, ","); item; item = strtok(NULL, ",")) {
    char *eq = strchr(item, '=');
    if (!eq) continue;
    *eq = '\0';
    const char *v = eq + 1;
    if (!strcmp(item, "path")) snprintf(cfg.path, sizeof cfg.path, "%s", v);
    else if (!strcmp(item, "write") && !strcmp(v, "short")) cfg.write_short = true;
    else if (!strcmp(item, "write") && !strcmp(v, "torn")) cfg.write_torn = true;
    else if (!strcmp(item, "write")) cfg.write_err = err_named(v);
    else if (!strcmp(item, "fsync")) cfg.fsync_err = err_named(v);
    else if (!strcmp(item, "close")) cfg.close_err = err_named(v);
    else if (!strcmp(item, "rename")) cfg.rename_err = err_named(v);
    else if (!strcmp(item, "open")) cfg.open_err = err_named(v);
    else if (!strcmp(item, "from")) {
      snprintf(cfg.from, sizeof cfg.from, "%s", v);
      cfg.counting = !*v;
    } else if (!strcmp(item, "malloc")) {
      cfg.malloc_at = atol(v);
      cfg.report = cfg.malloc_at == 0;
    }
  }
}

static bool fd_targeted(int fd) {
  char link[64], target[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n <= 0) return false;
  target[n] = '\0';
  return strstr(target, cfg.path) != NULL;
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t write(int fd, const void *p, size_t n) {
  configure();
  if ((cfg.write_err || cfg.write_short || cfg.write_torn) && fd > 2 && fd_targeted(fd)) {
    if (cfg.write_err) return errno = cfg.write_err, -1;
    if (cfg.write_torn) {
      if (cfg.torn_done) return errno = ENOSPC, -1;
      cfg.torn_done = true;
      n = n > 1 ? n / 2 : n;
    }
    if (cfg.write_short && n > 7) n = 7;
  }
  return NEXT(write)(fd, p, n);
}

int fsync(int fd) {
  configure();
  if (cfg.fsync_err && fd_targeted(fd)) return errno = cfg.fsync_err, -1;
  return NEXT(fsync)(fd);
}

int close(int fd) {
  configure();
  if (cfg.close_err && fd > 2 && fd_targeted(fd)) {
    NEXT(close)(fd);
    return errno = cfg.close_err, -1;
  }
  return NEXT(close)(fd);
}

int rename(const char *from, const char *to) {
  configure();
  if (cfg.rename_err && strstr(from, cfg.path)) return errno = cfg.rename_err, -1;
  return NEXT(rename)(from, to);
}

static void opened(const char *path) {
  if (!cfg.counting && cfg.from[0] && strstr(path, cfg.from)) cfg.counting = true;
}

static int open_common(const char *path, int flags, mode_t mode,
                       int (*next)(const char *, int, ...)) {
  configure();
  opened(path);
  if (cfg.open_err && (flags & O_CREAT) && strstr(path, cfg.path)) return errno = cfg.open_err, -1;
  return next(path, flags, mode);
}

int open(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  return open_common(path, flags, mode, NEXT(open));
}

int open64(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = (flags & O_CREAT) ? va_arg(ap, mode_t) : 0;
  va_end(ap);
  return open_common(path, flags, mode, NEXT(open64));
}

FILE *fopen(const char *path, const char *mode) {
  configure();
  opened(path);
  if (cfg.open_err && strchr(mode, 'w') && strstr(path, cfg.path))
    return errno = cfg.open_err, NULL;
  return NEXT(fopen)(path, mode);
}

//
// Allocation. dlsym may itself allocate before the real functions are known:
// those early requests are served from a small static block that free ignores.
//
static char boot[8192];
static size_t boot_used;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_memalign)(void **, size_t, size_t);
static void (*real_free)(void *);
static int resolving;

static void resolve(void) {
  if (real_malloc || resolving) return;
  resolving = 1;
  real_malloc = NEXT(malloc);
  real_calloc = NEXT(calloc);
  real_realloc = NEXT(realloc);
  real_memalign = NEXT(posix_memalign);
  real_free = NEXT(free);
  resolving = 0;
}

static void *boot_alloc(size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (boot_used + n > sizeof boot) return NULL;
  void *p = boot + boot_used;
  boot_used += n;
  return p;
}

static bool is_boot(const void *p) {
  return (const char *)p >= boot && (const char *)p < boot + sizeof boot;
}

// Whether this allocation is the one to fail. Only the main thread's count: the
// others belong to libraries (a BLAS pool, a sanitizer's thread set-up) whose
// number varies from run to run.
static bool fail_now(void) {
  if (!cfg.ready || !cfg.counting || resolving || gettid() != getpid()) return false;
  cfg.count++;
  return cfg.malloc_at > 0 && cfg.count == cfg.malloc_at;
}

void *malloc(size_t n) {
  resolve();
  if (!real_malloc) return boot_alloc(n);
  if (fail_now()) return errno = ENOMEM, NULL;
  return real_malloc(n);
}

void *calloc(size_t k, size_t n) {
  resolve();
  if (!real_calloc) return boot_alloc(k * n);  // static: already zero
  if (fail_now()) return errno = ENOMEM, NULL;
  return real_calloc(k, n);
}

void *realloc(void *p, size_t n) {
  resolve();
  if (is_boot(p)) {
    void *q = malloc(n);
    size_t room = (size_t)(boot + sizeof boot - (char *)p);
    if (q) memcpy(q, p, n < room ? n : room);
    return q;
  }
  if (fail_now()) return errno = ENOMEM, NULL;
  return real_realloc(p, n);
}

int posix_memalign(void **out, size_t align, size_t n) {
  resolve();
  if (fail_now()) return ENOMEM;
  return real_memalign(out, align, n);
}

void free(void *p) {
  if (!p || is_boot(p)) return;
  resolve();
  real_free(p);
}

__attribute__((constructor)) static void start(void) { configure(); }

__attribute__((destructor)) static void report(void) {
  if (cfg.report) fprintf(stderr, "kiln_faults: %ld allocations\n", cfg.count);
}
