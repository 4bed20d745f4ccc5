// Errors as values, and the one way the runtime writes a file: atomically, so a
// crash or a full disk mid-write never leaves a half checkpoint where a good one was.
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/runtime.h"

int kiln_rt_fail(KilnStatus *st, const char *fmt, ...) {
  if (st) {
    va_list ap;
    va_start(ap, fmt);
    st->code = 1;
    vsnprintf(st->msg, sizeof st->msg, fmt, ap);
    va_end(ap);
  }
  return -1;
}

// Writes len bytes, retrying short writes and EINTR.
static int write_all(int fd, const char *p, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, p, len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

// The folder holding path ("." for a bare name), malloc'd.
static char *dir_of(const char *path) {
  const char *slash = strrchr(path, '/');
  if (!slash) return strdup(".");
  size_t n = slash == path ? 1 : (size_t)(slash - path);
  char *d = malloc(n + 1);
  if (!d) return NULL;
  memcpy(d, path, n);
  d[n] = '\0';
  return d;
}

// Makes the rename durable. Some file systems cannot fsync a folder (EINVAL);
// there is nothing more to do on those.
static int sync_dir(const char *path, KilnStatus *st) {
  char *dir = dir_of(path);
  if (!dir) return kiln_rt_fail(st, "%s: out of memory", path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) {
    kiln_rt_fail(st, "%s: cannot open folder '%s' to sync it: %s", path, dir, strerror(errno));
    free(dir);
    return -1;
  }
  int rc = 0;
  if (fsync(fd) != 0 && errno != EINVAL)
    rc = kiln_rt_fail(st, "%s: cannot sync folder '%s': %s", path, dir, strerror(errno));
  close(fd);
  free(dir);
  return rc;
}

// Writes every part to the open temporary file, syncs and closes it. Closes fd
// whatever happens. Each failure says that path itself is unchanged: what a user
// whose disk filled up needs to know first.
static int fill_tmp(int fd, const char *path, const char *tmp, const void *const *parts,
                    const size_t *lens, int nparts, KilnStatus *st) {
  for (int i = 0; i < nparts; i++) {
    if (lens[i] && write_all(fd, parts[i], lens[i]) != 0) {
      kiln_rt_fail(st, "%s: writing '%s' failed: %s (%s is unchanged)", path, tmp, strerror(errno),
                   path);
      close(fd);
      return -1;
    }
  }
  if (fsync(fd) != 0) {
    kiln_rt_fail(st, "%s: syncing '%s' failed: %s (%s is unchanged)", path, tmp, strerror(errno),
                 path);
    close(fd);
    return -1;
  }
  if (close(fd) != 0)
    return kiln_rt_fail(st, "%s: closing '%s' failed: %s (%s is unchanged)", path, tmp,
                        strerror(errno), path);
  return 0;
}

int kiln_rt_write_atomic(const char *path, const void *const *parts, const size_t *lens,
                         int nparts, KilnStatus *st) {
  int n = snprintf(NULL, 0, "%s.tmp.%ld", path, (long)getpid());
  char *tmp = malloc((size_t)n + 1);
  if (!tmp) return kiln_rt_fail(st, "%s: out of memory", path);
  snprintf(tmp, (size_t)n + 1, "%s.tmp.%ld", path, (long)getpid());

  // A temporary left by a crashed process that had our pid is stale: replace it.
  // O_EXCL then refuses to follow a link planted under the temporary's name.
  unlink(tmp);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_TRUNC, 0666);
  if (fd < 0) {
    kiln_rt_fail(st, "%s: cannot create temporary file '%s': %s (%s is unchanged)", path, tmp,
                 strerror(errno), path);
    free(tmp);
    return -1;
  }
  if (fill_tmp(fd, path, tmp, parts, lens, nparts, st) != 0) {
    unlink(tmp);
    free(tmp);
    return -1;
  }
  if (rename(tmp, path) != 0) {
    kiln_rt_fail(st, "%s: cannot rename '%s' over it: %s (%s is unchanged)", path, tmp,
                 strerror(errno), path);
    unlink(tmp);
    free(tmp);
    return -1;
  }
  free(tmp);
  return sync_dir(path, st);
}

int kiln_rt_read_at(int fd, void *buf, size_t len, off_t off) {
  char *p = buf;
  while (len > 0) {
    ssize_t r = pread(fd, p, len, off);
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) errno = 0;
    if (r <= 0) return -1;
    p += r;
    off += r;
    len -= (size_t)r;
  }
  return 0;
}

const char *kiln_rt_read_error(void) { return errno ? strerror(errno) : "unexpected end of file"; }
