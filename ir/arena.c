// Bump allocator with mark/rewind. The compiler allocates per phase and frees the
// whole phase at once (QBE's pools), so nothing in the front end frees piecemeal.
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

#define BLOCK_MIN (64u << 10)

struct KilnArenaBlock {
  KilnArenaBlock *prev;
  size_t size, used;
  _Alignas(16) unsigned char data[];
};

static KilnArenaBlock *new_block(KilnArenaBlock *prev, size_t need) {
  size_t size = need > BLOCK_MIN ? need : BLOCK_MIN;
  KilnArenaBlock *b = malloc(sizeof(*b) + size);
  if (!b) kiln_out_of_memory(size);
  b->prev = prev;
  b->size = size;
  b->used = 0;
  return b;
}

_Noreturn void kiln_out_of_memory(size_t bytes) {
  fprintf(stderr, "kiln: out of memory (%zu bytes)\n", bytes);
  exit(1);
}

void *kiln_xmalloc(size_t size) {
  void *p = malloc(size ? size : 1);
  if (!p) kiln_out_of_memory(size);
  return p;
}

void *kiln_xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) kiln_out_of_memory(n * size);
  return p;
}

void *kiln_arena_alloc(KilnArena *a, size_t size) {
  size = (size + 15) & ~(size_t)15;
  KilnArenaBlock *b = a->head;
  if (!b || b->size - b->used < size) b = a->head = new_block(b, size);
  void *p = b->data + b->used;
  b->used += size;
  a->used_total += size;
  memset(p, 0, size);
  return p;
}

char *kiln_arena_strdup(KilnArena *a, const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(kiln_arena_alloc(a, n), s, n);
}

char *kiln_arena_printf(KilnArena *a, const char *fmt, ...) {
  va_list ap, ap2;
  va_start(ap, fmt);
  va_copy(ap2, ap);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = kiln_arena_alloc(a, (size_t)n + 1);
  vsnprintf(s, (size_t)n + 1, fmt, ap2);
  va_end(ap2);
  return s;
}

KilnArenaMark kiln_arena_mark(KilnArena *a) {
  return (KilnArenaMark){a->head, a->head ? a->head->used : 0};
}

// Frees every block allocated after the mark and restores the marked block's fill.
void kiln_arena_rewind(KilnArena *a, KilnArenaMark m) {
  while (a->head && a->head != m.block) {
    KilnArenaBlock *prev = a->head->prev;
    free(a->head);
    a->head = prev;
  }
  if (a->head) a->head->used = m.used;
}

void kiln_arena_free(KilnArena *a) {
  kiln_arena_rewind(a, (KilnArenaMark){NULL, 0});
  a->used_total = 0;
}
