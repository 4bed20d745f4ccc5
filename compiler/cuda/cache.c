// The kernel cache of `kiln build --target=cuda`: what NVRTC made of a source for
// one architecture (cubin, PTX, its log with ptxas's report), kept on disk so that
// building the same kernels again skips NVRTC, most of a GPU build's time.
//
// An entry's file is named after a 64-bit hash of its key: everything NVRTC's
// output depends on (NVRTC's version, the options, the file name, the source). The
// file holds the key itself, which a lookup compares byte for byte, so a hash
// collision is a miss, never a wrong cubin; a checksum over the rest catches a
// damaged file, which is then a miss too (and is overwritten). Entries are written
// to a temporary file, synced and renamed, so a reader never sees half of one, and
// concurrent builds may share the folder. A hit refreshes the file's time; past the
// size limit the least recently used entries go.
#define _GNU_SOURCE  // mkstemp, futimens
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "compiler/cuda/cuda.h"

#define MAGIC "KILNNVC1"
enum { NFIELDS = 4 };  // key, log, cubin, ptx

typedef struct {
  char magic[8];
  uint64_t len[NFIELDS];
  uint64_t sum;  // FNV-1a of the fields' bytes, in order
} Header;

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ull;
  return h;
}
#define FNV0 0xcbf29ce484222325ull

static void entry_path(const char *dir, const char *key, size_t keylen, char *out, size_t len) {
  snprintf(out, len, "%s/%016llx.nvc", dir, (unsigned long long)fnv(key, keylen, FNV0));
}

static bool read_all(int fd, void *p, size_t n) {
  for (char *c = p; n;) {
    ssize_t r = read(fd, c, n);
    if (r <= 0) return false;
    c += r, n -= (size_t)r;
  }
  return true;
}

static bool write_all(int fd, const void *p, size_t n) {
  for (const char *c = p; n;) {
    ssize_t r = write(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r, n -= (size_t)r;
  }
  return true;
}

bool kiln_cuda_cache_get(const char *dir, const char *key, size_t keylen, KilnCudaCacheEntry *e) {
  memset(e, 0, sizeof *e);
  char path[4096];
  entry_path(dir, key, keylen, path, sizeof path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  Header h;
  char *f[NFIELDS] = {0};
  bool ok = fstat(fd, &st) == 0 && read_all(fd, &h, sizeof h) && !memcmp(h.magic, MAGIC, 8);
  uint64_t total = sizeof h;
  for (int i = 0; ok && i < NFIELDS; i++) {
    ok = h.len[i] <= (uint64_t)st.st_size && (total += h.len[i]) <= (uint64_t)st.st_size;
  }
  ok = ok && total == (uint64_t)st.st_size && h.len[0] == keylen;
  uint64_t sum = FNV0;
  for (int i = 0; ok && i < NFIELDS; i++) {
    f[i] = kiln_xmalloc(h.len[i] + 1);
    ok = read_all(fd, f[i], h.len[i]);
    f[i][h.len[i]] = 0;
    sum = fnv(f[i], h.len[i], sum);
  }
  ok = ok && sum == h.sum && memcmp(f[0], key, keylen) == 0 && h.len[2] > 0;
  if (ok) futimens(fd, NULL);  // recently used
  close(fd);
  free(f[0]);
  if (!ok) {
    for (int i = 1; i < NFIELDS; i++) free(f[i]);
    return false;
  }
  *e = (KilnCudaCacheEntry){f[1], (unsigned char *)f[2], h.len[2], (unsigned char *)f[3], h.len[3]};
  if (!h.len[3]) free(f[3]), e->ptx = NULL;
  return true;
}

// Oldest first, until the folder holds at most limit bytes.
typedef struct {
  char name[64];
  off_t size;
  struct timespec t;
} File;

static int older(const void *a, const void *b) {
  const File *x = a, *y = b;
  if (x->t.tv_sec != y->t.tv_sec) return x->t.tv_sec < y->t.tv_sec ? -1 : 1;
  return x->t.tv_nsec < y->t.tv_nsec ? -1 : x->t.tv_nsec > y->t.tv_nsec;
}

static void trim(const char *dir, int64_t limit) {
  DIR *d = opendir(dir);
  if (!d) return;
  File *files = NULL;
  int n = 0, cap = 0;
  int64_t total = 0;
  for (struct dirent *de; (de = readdir(d));) {
    size_t len = strlen(de->d_name);
    struct stat st;
    if (fstatat(dirfd(d), de->d_name, &st, 0) != 0) continue;
    // A writer that died left its temporary file: gone after a day.
    if (!strncmp(de->d_name, ".new-", 5) && st.st_mtim.tv_sec < time(NULL) - 86400)
      unlinkat(dirfd(d), de->d_name, 0);
    if (len < 5 || len >= sizeof files->name || strcmp(de->d_name + len - 4, ".nvc")) continue;
    if (n == cap) {
      cap = cap ? 2 * cap : 64;
      files = realloc(files, (size_t)cap * sizeof *files);
      if (!files) kiln_out_of_memory(0);
    }
    memcpy(files[n].name, de->d_name, len + 1);  // len < sizeof name, checked above
    files[n].size = st.st_size, files[n].t = st.st_mtim;
    total += st.st_size;
    n++;
  }
  if (total > limit) {
    qsort(files, (size_t)n, sizeof *files, older);
    for (int i = 0; i < n && total > limit; i++)
      if (unlinkat(dirfd(d), files[i].name, 0) == 0) total -= files[i].size;
  }
  closedir(d);
  free(files);
}

static int mkdirs(const char *dir) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", dir);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = 0;
      if (mkdir(buf, 0700) != 0 && errno != EEXIST) return -1;
      *p = '/';
    }
  return mkdir(buf, 0700) != 0 && errno != EEXIST ? -1 : 0;
}

void kiln_cuda_cache_put(const char *dir, int64_t limit, const char *key, size_t keylen,
                         const KilnCudaCacheEntry *e) {
  if (mkdirs(dir) != 0) return;
  char path[4096], tmp[4096];
  entry_path(dir, key, keylen, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s/.new-XXXXXX", dir);
  int fd = mkstemp(tmp);
  if (fd < 0) return;
  const void *f[NFIELDS] = {key, e->log ? e->log : "", e->cubin, e->ptx};
  Header h = {.len = {keylen, e->log ? strlen(e->log) : 0, e->cubin_size, e->ptx ? e->ptx_size : 0}};
  memcpy(h.magic, MAGIC, 8);
  h.sum = FNV0;
  for (int i = 0; i < NFIELDS; i++) h.sum = fnv(f[i], h.len[i], h.sum);
  bool ok = write_all(fd, &h, sizeof h);
  for (int i = 0; ok && i < NFIELDS; i++) ok = write_all(fd, f[i], h.len[i]);
  ok = ok && fsync(fd) == 0;
  ok = close(fd) == 0 && ok;
  if (!ok || rename(tmp, path) != 0) {
    unlink(tmp);
    return;
  }
  trim(dir, limit);
}

// $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln; NULL when
// KILN_CACHE=0 or no folder can be named.
const char *kiln_cuda_cache_dir(char *buf, size_t len) {
  const char *off = getenv("KILN_CACHE");
  if (off && !strcmp(off, "0")) return NULL;
  const char *d = getenv("KILN_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  if (d && *d) snprintf(buf, len, "%s/nvrtc", d);
  else if (x && *x == '/') snprintf(buf, len, "%s/kiln/nvrtc", x);
  else if (home && *home) snprintf(buf, len, "%s/.cache/kiln/nvrtc", home);
  else return NULL;
  return buf;
}
