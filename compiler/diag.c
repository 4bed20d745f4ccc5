// User-facing diagnostics in the chibicc/clang shape:
//
//   models/mlp.yaml:12:9: error: unknown attribute 'unit' of 'dense'
//      12 |   - dense: {unit: 16}
//         |             ^
//     hint: did you mean 'units'?
//
// Lines and columns are 1-based and follow libyaml's marks, since most locations
// come from there: a column counts characters (UTF-8 code points), not bytes, and
// a line ends at \r\n, \r, \n, NEL, LS or PS. Errors past max_errors are counted
// but not printed, so one bad file cannot flood the terminal.
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compiler/compiler.h"

#define MAX_SHOWN 200      // longest source line quoted whole, in characters
#define GUTTER 5           // least width of the line-number column

void kiln_diag_init(KilnDiag *d, FILE *out) {
  memset(d, 0, sizeof(*d));
  d->out = out;
  d->max_errors = 20;
  // Escape codes only where a person reads them: never in files or pipes.
  d->color = out == stderr && isatty(fileno(stderr)) && !getenv("NO_COLOR");
}

// Registering a file again replaces its text; when every slot is taken the oldest
// source is dropped, since messages about it are done by then.
void kiln_diag_source(KilnDiag *d, const char *file, const char *text, size_t len) {
  if (!file) return;
  int i = 0;
  while (i < d->nsrc && strcmp(d->src[i].file, file) != 0) i++;
  if (i == KILN_MAX_SOURCES) {
    memmove(&d->src[0], &d->src[1], sizeof(d->src[0]) * (KILN_MAX_SOURCES - 1));
    i = KILN_MAX_SOURCES - 1;
  } else if (i == d->nsrc) {
    d->nsrc++;
  }
  d->src[i].file = file;
  d->src[i].text = text;
  d->src[i].len = len;
}

//
// Finding and quoting the source line.
//

// Bytes of the line break at p, or 0: the breaks libyaml counts (CR, LF, CRLF,
// NEL, LS, PS), so line numbers agree with its marks.
size_t kiln_break_len(const char *p, const char *end) {
  size_t left = (size_t)(end - p);
  if (p[0] == '\r') return left > 1 && p[1] == '\n' ? 2 : 1;
  if (p[0] == '\n') return 1;
  if (left > 1 && (unsigned char)p[0] == 0xC2 && (unsigned char)p[1] == 0x85) return 2;
  if (left > 2 && (unsigned char)p[0] == 0xE2 && (unsigned char)p[1] == 0x80 &&
      ((unsigned char)p[2] == 0xA8 || (unsigned char)p[2] == 0xA9))
    return 3;
  return 0;
}

static bool is_cont(char c) { return ((unsigned char)c & 0xC0) == 0x80; }

// The text of line `line` of a registered file (without its break), or false.
static bool find_line(const KilnDiag *d, const char *file, int line, const char **out_s,
                      size_t *out_n) {
  int i = 0;
  while (i < d->nsrc && strcmp(d->src[i].file, file) != 0) i++;
  if (i == d->nsrc || !d->src[i].text) return false;
  const char *p = d->src[i].text, *end = p + d->src[i].len;
  if (end - p >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) p += 3;  // libyaml skips a BOM
  for (int l = 1; p < end || l == line; l++) {
    const char *s = p;
    size_t b = 0;
    while (p < end && (b = kiln_break_len(p, end)) == 0) p++;
    if (l == line) {
      *out_s = s;
      *out_n = (size_t)(p - s);
      return true;
    }
    p += b;
    if (b == 0) break;  // the last line had no break: there is no next one
  }
  return false;
}

// Advances over n characters (code points) from s, not past end.
static const char *skip_chars(const char *s, const char *end, int n) {
  for (; n > 0 && s < end; n--) {
    s++;
    while (s < end && is_cont(*s)) s++;
  }
  return s;
}

static int count_chars(const char *s, const char *end) {
  int n = 0;
  for (; s < end; s++) n += !is_cont(*s);
  return n;
}

// Control bytes become '?' so the quoted line cannot drive the terminal and still
// takes one column per character.
static void put_text(FILE *f, const char *s, const char *end) {
  for (; s < end; s++) {
    unsigned char c = (unsigned char)*s;
    fputc((c < 0x20 && c != '\t') || c == 0x7F ? '?' : c, f);
  }
}

// Prints the source line and a caret under loc.col. Tabs before the column are
// repeated in the caret line so the caret lands under the same character. Lines
// over MAX_SHOWN characters are cut to a window around the column.
static void show_source(KilnDiag *d, KilnLoc loc) {
  const char *s;
  size_t n;
  if (!loc.file || loc.line <= 0 || !find_line(d, loc.file, loc.line, &s, &n)) return;
  const char *end = s + n;
  int nchars = count_chars(s, end);
  int col = loc.col < 1 ? 0 : loc.col > nchars + 1 ? nchars + 1 : loc.col;
  int first = 0;  // first character shown
  if (nchars > MAX_SHOWN) {
    first = col - 1 - MAX_SHOWN / 2;
    if (first > nchars - MAX_SHOWN) first = nchars - MAX_SHOWN;
    if (first < 0) first = 0;
  }
  const char *a = skip_chars(s, end, first), *b = skip_chars(a, end, MAX_SHOWN);
  int w = snprintf(NULL, 0, "%d", loc.line);
  if (w < GUTTER) w = GUTTER;
  fprintf(d->out, "%*d | %s", w, loc.line, first > 0 ? "..." : "");
  put_text(d->out, a, b);
  fprintf(d->out, "%s\n", b < end ? "..." : "");
  if (col == 0) return;
  fprintf(d->out, "%*s | %s", w, "", first > 0 ? "   " : "");
  for (const char *p = a, *at = skip_chars(s, end, col - 1); p < at; p = skip_chars(p, end, 1))
    fputc(*p == '\t' ? '\t' : ' ', d->out);
  fprintf(d->out, "%s^%s\n", d->color ? "\033[1;32m" : "", d->color ? "\033[0m" : "");
}

//
// Messages.
//

// Messages quote what users wrote (names, values); control characters in them are
// written as \xNN so a model file cannot drive the terminal.
static void put_message(FILE *f, const char *fmt, va_list ap) {
  char buf[2048];
  vsnprintf(buf, sizeof buf, fmt, ap);
  for (const unsigned char *p = (const unsigned char *)buf; *p; p++) {
    if (*p < 0x20 || *p == 0x7f) fprintf(f, "\\x%02x", *p);
    else fputc(*p, f);
  }
}

static bool cut_off(const KilnDiag *d) { return d->max_errors > 0 && d->nerrors > d->max_errors; }

static void report(KilnDiag *d, KilnLoc loc, const char *kind, const char *color,
                   const char *fmt, va_list ap) {
  FILE *f = d->out;
  if (d->color) fputs("\033[1m", f);
  if (loc.file && loc.line > 0 && loc.col > 0)
    fprintf(f, "%s:%d:%d: ", loc.file, loc.line, loc.col);
  else if (loc.file && loc.line > 0)
    fprintf(f, "%s:%d: ", loc.file, loc.line);
  else if (loc.file)
    fprintf(f, "%s: ", loc.file);
  if (d->color) fprintf(f, "%s%s:\033[0m\033[1m ", color, kind);
  else fprintf(f, "%s: ", kind);
  put_message(f, fmt, ap);
  fputs(d->color ? "\033[0m\n" : "\n", f);
  show_source(d, loc);
}

void kiln_error(KilnDiag *d, KilnLoc loc, const char *fmt, ...) {
  d->nerrors++;
  if (cut_off(d)) {
    if (d->nerrors == d->max_errors + 1) fputs("too many errors; stopping\n", d->out);
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  report(d, loc, "error", "\033[1;31m", fmt, ap);
  va_end(ap);
}

void kiln_warning(KilnDiag *d, KilnLoc loc, const char *fmt, ...) {
  d->nwarnings++;
  if (cut_off(d)) return;
  va_list ap;
  va_start(ap, fmt);
  report(d, loc, "warning", "\033[1;35m", fmt, ap);
  va_end(ap);
}

// A hint belongs to the message before it, so it is dropped with that message once
// the error limit is passed.
void kiln_hint(KilnDiag *d, const char *fmt, ...) {
  if (cut_off(d)) return;
  va_list ap;
  va_start(ap, fmt);
  fprintf(d->out, "  %shint:%s ", d->color ? "\033[1;36m" : "", d->color ? "\033[0m" : "");
  put_message(d->out, fmt, ap);
  fputc('\n', d->out);
  va_end(ap);
}

bool kiln_diag_full(const KilnDiag *d) {
  return d->max_errors > 0 && d->nerrors >= d->max_errors;
}

//
// "Did you mean ...?"
//

#define MAX_WORD 64  // longer words are not typos of short keywords

// Edit distance with adjacent transpositions counted as one edit (optimal string
// alignment), since swapped letters ("untis") are the commonest typo.
static int distance(const char *a, int n, const char *b, int m) {
  int rows[3][MAX_WORD + 1];
  int *pp = rows[0], *prev = rows[1], *cur = rows[2];
  for (int j = 0; j <= m; j++) prev[j] = j;
  for (int i = 1; i <= n; i++) {
    cur[0] = i;
    for (int j = 1; j <= m; j++) {
      int cost = a[i - 1] != b[j - 1];
      int best = prev[j - 1] + cost;
      if (prev[j] + 1 < best) best = prev[j] + 1;
      if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && pp[j - 2] + 1 < best)
        best = pp[j - 2] + 1;
      cur[j] = best;
    }
    int *t = pp;
    pp = prev, prev = cur, cur = t;
  }
  return prev[m];
}

static int common_prefix(const char *a, const char *b) {
  int n = 0;
  while (a[n] && a[n] == b[n]) n++;
  return n;
}

// Suggests a candidate only when it is within max(1, len/3) edits and better than
// every other: fewer edits, or as many but a longer common prefix (so "unit" means
// "units" rather than "init"). A real tie is a guess, and a wrong guess misleads.
const char *kiln_suggest(const char *word, const char *const *candidates) {
  int n = (int)strnlen(word, MAX_WORD + 1);
  if (n > MAX_WORD || !candidates) return NULL;
  int limit = n / 3 > 1 ? n / 3 : 1, best_d = limit + 1, best_p = -1;
  const char *best = NULL;
  bool tie = false;
  for (const char *const *c = candidates; *c; c++) {
    int m = (int)strnlen(*c, MAX_WORD + 1);
    if (m > MAX_WORD || abs(m - n) > limit) continue;
    int dist = distance(word, n, *c, m), pre = common_prefix(word, *c);
    if (dist < best_d || (dist == best_d && pre > best_p)) {
      best_d = dist, best_p = pre, best = *c, tie = false;
    } else if (dist == best_d && pre == best_p && strcmp(best, *c) != 0) {
      tie = true;
    }
  }
  return tie ? NULL : best;
}

//
// Reading files.
//

// Reads all of f into a malloc'd buffer, stopping once it holds over limit bytes
// (*out_big). Returns NULL with errno set on a read error.
static char *read_all(FILE *f, size_t limit, size_t *out_len, bool *out_big) {
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  errno = 0;
  *out_big = false;
  while (buf) {
    if (len == cap) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) break;
      buf = nb, cap *= 2;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (len > limit) {
      *out_big = true;
      break;
    }
    if (got == 0 && !ferror(f)) {
      *out_len = len;
      return buf;
    }
    if (got == 0) break;
  }
  int e = errno ? errno : EIO;
  free(buf);
  errno = e;
  return NULL;
}

// Copies the bytes into the arena with a terminating NUL.
static char *arena_copy(KilnArena *a, const char *s, size_t n) {
  char *t = kiln_arena_alloc(a, n + 1);
  memcpy(t, s, n);
  return t;
}

// Errors have no line (loc.line 0), so they print as "PATH: error: ...".
char *kiln_read_file(KilnArena *a, KilnDiag *d, const char *path, size_t limit,
                     size_t *out_len) {
  KilnLoc at = {path, 0, 0};
  FILE *f = fopen(path, "rb");
  struct stat st;
  if (!f || fstat(fileno(f), &st) != 0) {
    kiln_error(d, at, "cannot read: %s", strerror(errno));
    if (f) fclose(f);
    return NULL;
  }
  if (S_ISDIR(st.st_mode)) {
    kiln_error(d, at, "cannot read: %s", strerror(EISDIR));
    fclose(f);
    return NULL;
  }
  // An oversized regular file is refused before reading; a pipe is checked as read.
  if (S_ISREG(st.st_mode) && (uintmax_t)st.st_size > limit) {
    kiln_error(d, at, "file is too large (%jd bytes; the limit is %zu)", (intmax_t)st.st_size,
               limit);
    fclose(f);
    return NULL;
  }
  size_t len = 0;
  bool big;
  char *buf = read_all(f, limit, &len, &big);
  int e = errno;
  fclose(f);
  if (!buf) {
    if (big) kiln_error(d, at, "file is too large (over %zu bytes)", limit);
    else kiln_error(d, at, "cannot read: %s", strerror(e));
    return NULL;
  }
  char *text = arena_copy(a, buf, len);
  free(buf);
  *out_len = len;
  return text;
}
