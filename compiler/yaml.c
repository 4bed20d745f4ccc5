// YAML text to a KilnYaml tree, built from libyaml's event stream.
//
// libyaml's document API expands aliases into shared nodes, so walking it invites
// cycles and billion-laughs blow-ups; events let us refuse anchors and aliases at
// the first one and bound nesting with an explicit stack, never recursion. Items
// gather in malloc'd vectors (one per nesting level, reused) and are copied into
// the arena when their collection closes. On any error nothing is returned and the
// arena is rewound to where the parse started.
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "compiler/compiler.h"

// A growable array of node pointers.
typedef struct {
  KilnYaml **v;
  int n, cap;
} Vec;

// One open sequence or mapping.
typedef struct {
  KilnYaml *node;
  Vec items;        // sequence items, or map values
  Vec keys;         // map keys, parallel to items
  bool want_value;  // map: a key was read, its value comes next
  uint32_t id;      // map: serial number, part of the duplicate-key set's keys
} Frame;

// Every map key read so far, keyed by (map serial, text): finds duplicates in
// O(1) however large a map is.
typedef struct {
  uint32_t map;
  const KilnYaml *key;  // NULL: empty slot
} KeySlot;

typedef struct {
  KilnArena *a;
  KilnDiag *d;
  const char *file;
  Frame stack[KILN_YAML_MAX_DEPTH];
  int depth;
  KeySlot *slots;
  size_t nslots, nused;  // nslots: a power of two, or 0
  uint32_t nmaps;
  int ndocs;
  KilnYaml *root;
  bool fatal;  // stop reading: what follows would only repeat the error
} Reader;

static KilnLoc loc_of(const Reader *r, yaml_mark_t m) {
  return (KilnLoc){r->file, (int)m.line + 1, (int)m.column + 1};
}

// Copies user text into buf for quoting in a message: control characters become
// '?', and long text is cut (on a character boundary) with "...".
static const char *show(char *buf, size_t size, const char *s, size_t len) {
  size_t n = 0, max = size - 4;
  for (; n < len && n < max; n++)
    buf[n] = (unsigned char)s[n] < 0x20 || s[n] == 0x7F ? '?' : s[n];
  if (n < len) {
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;  // s[n] starts no character
    memcpy(buf + n, "...", 3);
    n += 3;
  }
  buf[n] = 0;
  return buf;
}

//
// Vectors and the duplicate-key set.
//

static bool vec_push(Vec *v, KilnYaml *y) {
  if (v->n == v->cap) {
    int cap = v->cap ? 2 * v->cap : 8;
    KilnYaml **nv = realloc(v->v, sizeof(*nv) * (size_t)cap);
    if (!nv) return false;
    v->v = nv, v->cap = cap;
  }
  v->v[v->n++] = y;
  return true;
}

// The vector's contents, copied into the arena.
static KilnYaml **vec_copy(KilnArena *a, const Vec *v) {
  if (v->n == 0) return NULL;
  size_t size = sizeof(*v->v) * (size_t)v->n;
  return memcpy(kiln_arena_alloc(a, size), v->v, size);
}

static size_t key_hash(uint32_t map, const KilnYaml *k) {
  uint64_t h = 1469598103934665603u ^ map;  // FNV-1a
  for (size_t i = 0; i < k->len; i++) h = (h ^ (unsigned char)k->str[i]) * 1099511628211u;
  return (size_t)h;
}

static bool same_key(const KeySlot *s, uint32_t map, const KilnYaml *k) {
  return s->map == map && s->key->len == k->len && memcmp(s->key->str, k->str, k->len) == 0;
}

static bool keys_grow(Reader *r) {
  size_t n = r->nslots ? 2 * r->nslots : 64;
  KeySlot *t = calloc(n, sizeof(*t));
  if (!t) return false;
  for (size_t i = 0; i < r->nslots; i++) {
    if (!r->slots[i].key) continue;
    size_t j = key_hash(r->slots[i].map, r->slots[i].key) & (n - 1);
    while (t[j].key) j = (j + 1) & (n - 1);
    t[j] = r->slots[i];
  }
  free(r->slots);
  r->slots = t, r->nslots = n;
  return true;
}

// Adds key k of map `map`. Returns the earlier equal key, or NULL when k is new.
// Sets *out_oom when the set cannot grow.
static const KilnYaml *keys_add(Reader *r, uint32_t map, const KilnYaml *k, bool *out_oom) {
  *out_oom = false;
  if (2 * (r->nused + 1) > r->nslots && !keys_grow(r)) {
    *out_oom = true;
    return NULL;
  }
  size_t j = key_hash(map, k) & (r->nslots - 1);
  for (; r->slots[j].key; j = (j + 1) & (r->nslots - 1))
    if (same_key(&r->slots[j], map, k)) return r->slots[j].key;
  r->slots[j] = (KeySlot){map, k};
  r->nused++;
  return NULL;
}

//
// Building the tree.
//

static void out_of_memory(Reader *r) {
  kiln_error(r->d, (KilnLoc){r->file, 0, 0}, "out of memory while reading YAML");
  r->fatal = true;
}

static void add_key(Reader *r, Frame *f, KilnYaml *k) {
  if (k->kind != KILN_YAML_SCALAR) {
    kiln_error(r->d, k->loc, "a mapping key must be a scalar, not a %s",
               kiln_yaml_kind_name(k->kind));
  } else {
    bool oom;
    const KilnYaml *first = keys_add(r, f->id, k, &oom);
    char buf[64];
    if (oom) {
      out_of_memory(r);
      return;
    }
    if (first)
      kiln_error(r->d, k->loc, "duplicate key '%s' (first defined at %d:%d)",
                 show(buf, sizeof(buf), k->str, k->len), first->loc.line, first->loc.col);
  }
  if (!vec_push(&f->keys, k)) out_of_memory(r);
}

// Attaches a finished node to the collection that holds it, or makes it the root.
static void add_node(Reader *r, KilnYaml *y) {
  if (r->depth == 0) {
    r->root = y;
    return;
  }
  Frame *f = &r->stack[r->depth - 1];
  if (f->node->kind == KILN_YAML_MAP && !f->want_value) {
    f->want_value = true;
    add_key(r, f, y);
    return;
  }
  f->want_value = false;
  if (!vec_push(&f->items, y)) out_of_memory(r);
}

// Anchors are refused outright (they exist only to be aliased); tags are reported
// and the node kept, so later errors in the file still show.
static void check_props(Reader *r, const yaml_event_t *e, const yaml_char_t *anchor,
                        const yaml_char_t *tag) {
  char buf[64];
  if (anchor) {
    const char *s = (const char *)anchor;
    kiln_error(r->d, loc_of(r, e->start_mark), "YAML anchors are not supported ('&%s')",
               show(buf, sizeof(buf), s, strlen(s)));
    r->fatal = true;
  } else if (tag) {
    // Show a standard tag as it was written: "!!str", not "tag:yaml.org,2002:str".
    const char *s = (const char *)tag, *std = "tag:yaml.org,2002:";
    bool is_std = strncmp(s, std, strlen(std)) == 0;
    if (is_std) s += strlen(std);
    kiln_error(r->d, loc_of(r, e->start_mark), "YAML tags are not supported ('%s%s')",
               is_std ? "!!" : "", show(buf, sizeof(buf), s, strlen(s)));
  }
}

static KilnYaml *new_node(Reader *r, KilnYamlKind kind, const yaml_event_t *e) {
  KilnYaml *y = kiln_arena_alloc(r->a, sizeof(*y));
  y->kind = kind;
  y->loc = loc_of(r, e->start_mark);
  return y;
}

static void on_scalar(Reader *r, const yaml_event_t *e) {
  const char *s = (const char *)e->data.scalar.value;
  size_t len = e->data.scalar.length;
  check_props(r, e, e->data.scalar.anchor, e->data.scalar.tag);
  if (r->fatal) return;
  KilnYaml *y = new_node(r, KILN_YAML_SCALAR, e);
  y->plain = e->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
  if (len > KILN_YAML_MAX_SCALAR) {
    kiln_error(r->d, y->loc, "scalar is too long (%zu bytes; the limit is %d)", len,
               KILN_YAML_MAX_SCALAR);
    len = 0;  // keep the node so the structure stays whole for later checks
  } else if (memchr(s, 0, len)) {
    // An escape such as "\0" would cut the C string short of len.
    kiln_error(r->d, y->loc, "a string must not contain a NUL character");
    len = 0;
  }
  char *str = kiln_arena_alloc(r->a, len + 1);
  memcpy(str, s, len);
  y->str = str, y->len = len;
  add_node(r, y);
}

static void open_node(Reader *r, const yaml_event_t *e, KilnYamlKind kind,
                      const yaml_char_t *anchor, const yaml_char_t *tag) {
  check_props(r, e, anchor, tag);
  if (r->fatal) return;
  if (r->depth == KILN_YAML_MAX_DEPTH) {
    kiln_error(r->d, loc_of(r, e->start_mark), "nesting is deeper than %d levels",
               KILN_YAML_MAX_DEPTH);
    r->fatal = true;
    return;
  }
  Frame *f = &r->stack[r->depth++];
  f->node = new_node(r, kind, e);
  f->items.n = f->keys.n = 0;
  f->want_value = false;
  f->id = ++r->nmaps;
}

static void close_node(Reader *r) {
  Frame *f = &r->stack[--r->depth];
  KilnYaml *y = f->node;
  y->n = f->items.n;
  y->items = vec_copy(r->a, &f->items);
  if (y->kind == KILN_YAML_MAP) y->keys = vec_copy(r->a, &f->keys);
  add_node(r, y);
}

static void on_event(Reader *r, const yaml_event_t *e) {
  switch (e->type) {
  case YAML_NO_EVENT:
  case YAML_STREAM_START_EVENT:
  case YAML_STREAM_END_EVENT:
  case YAML_DOCUMENT_END_EVENT:
    break;
  case YAML_DOCUMENT_START_EVENT:
    if (r->ndocs++ > 0) {
      kiln_error(r->d, loc_of(r, e->start_mark), "only one YAML document is allowed");
      r->fatal = true;
    }
    break;
  case YAML_ALIAS_EVENT: {
    char buf[64];
    const char *s = (const char *)e->data.alias.anchor;
    kiln_error(r->d, loc_of(r, e->start_mark), "YAML aliases are not supported ('*%s')",
               show(buf, sizeof(buf), s, strlen(s)));
    r->fatal = true;
    break;
  }
  case YAML_SCALAR_EVENT:
    on_scalar(r, e);
    break;
  case YAML_SEQUENCE_START_EVENT:
    open_node(r, e, KILN_YAML_SEQ, e->data.sequence_start.anchor, e->data.sequence_start.tag);
    break;
  case YAML_MAPPING_START_EVENT:
    open_node(r, e, KILN_YAML_MAP, e->data.mapping_start.anchor, e->data.mapping_start.tag);
    break;
  case YAML_SEQUENCE_END_EVENT:
  case YAML_MAPPING_END_EVENT:
    close_node(r);
    break;
  }
}

//
// Errors found by libyaml, and checks on the whole text.
//


// Bytes of a UTF-8 byte-order mark at the start of text: 3 or 0.
static size_t bom_len(const char *text, size_t len) {
  return len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
}

// The location of byte offset off, counted as libyaml counts marks: columns in
// characters, after a leading BOM.
static KilnLoc loc_at(const char *file, const char *text, size_t len, size_t off) {
  KilnLoc l = {file, 1, 1};
  const char *p = text + bom_len(text, len), *at = text + (off < len ? off : len);
  const char *end = text + len;
  while (p < at) {
    size_t b = kiln_break_len(p, end);
    if (b) {
      p += b, l.line++, l.col = 1;
    } else {
      l.col += ((unsigned char)*p++ & 0xC0) != 0x80;
    }
  }
  return l;
}

// The byte at character index i (a libyaml mark's index), or 0.
static char char_at(const char *text, size_t len, size_t i) {
  size_t n = 0;
  for (const char *p = text + bom_len(text, len), *end = text + len; p < end; p++) {
    if (((unsigned char)*p & 0xC0) == 0x80) continue;
    if (n++ == i) return *p;
  }
  return 0;
}

static void syntax_error(Reader *r, const yaml_parser_t *p, const char *text, size_t len) {
  KilnLoc at;
  switch (p->error) {
  case YAML_READER_ERROR:
    // Reader errors (bad UTF-8, control characters) carry a byte offset, not a mark.
    // The offset counts from after a BOM, which loc_at skips too.
    at = loc_at(r->file, text, len, p->problem_offset + bom_len(text, len));
    if (p->problem_value != -1)
      kiln_error(r->d, at, "%s (0x%X)", p->problem, (unsigned)p->problem_value);
    else
      kiln_error(r->d, at, "%s", p->problem);
    break;
  case YAML_SCANNER_ERROR:
  case YAML_PARSER_ERROR:
    // The context adds something only when it points elsewhere.
    if (p->context && p->context_mark.index != p->problem_mark.index)
      kiln_error(r->d, loc_of(r, p->problem_mark), "%s (%s at %d:%d)", p->problem, p->context,
                 (int)p->context_mark.line + 1, (int)p->context_mark.column + 1);
    else
      kiln_error(r->d, loc_of(r, p->problem_mark), "%s", p->problem);
    // The commonest YAML mistake gets a plainer explanation than libyaml's.
    if (char_at(text, len, p->problem_mark.index) == '\t')
      kiln_hint(r->d, "YAML does not allow tabs in indentation; indent with spaces");
    break;
  case YAML_MEMORY_ERROR:
    out_of_memory(r);
    break;
  case YAML_NO_ERROR:
  case YAML_COMPOSER_ERROR:
  case YAML_WRITER_ERROR:
  case YAML_EMITTER_ERROR:
    kiln_error(r->d, (KilnLoc){r->file, 0, 0}, "cannot parse YAML");
    break;
  }
}

// Refuses text too big to be a model, or with NUL bytes (C strings would stop at
// them, and libyaml's message would be vaguer).
static bool check_text(KilnDiag *d, const char *file, const char *text, size_t len) {
  if (len > KILN_YAML_MAX_FILE) {
    kiln_error(d, (KilnLoc){file, 0, 0}, "file is too large (%zu bytes; the limit is %u)", len,
               KILN_YAML_MAX_FILE);
    return false;
  }
  const char *nul = memchr(text, 0, len);
  if (nul) {
    kiln_error(d, loc_at(file, text, len, (size_t)(nul - text)), "the file contains a NUL byte");
    return false;
  }
  return true;
}

static void read_events(Reader *r, yaml_parser_t *p, const char *text, size_t len) {
  while (!r->fatal) {
    yaml_event_t e;
    if (!yaml_parser_parse(p, &e)) {
      syntax_error(r, p, text, len);
      return;
    }
    bool end = e.type == YAML_STREAM_END_EVENT;
    on_event(r, &e);
    yaml_event_delete(&e);
    if (end) return;
  }
}

static void reader_free(Reader *r) {
  for (int i = 0; i < KILN_YAML_MAX_DEPTH; i++) {
    free(r->stack[i].items.v);
    free(r->stack[i].keys.v);
  }
  free(r->slots);
}

// An empty file, or one holding only "---" or comments, has no model in it.
static bool is_empty(const KilnYaml *root) {
  return !root || (root->kind == KILN_YAML_SCALAR && root->plain && root->len == 0);
}

KilnYaml *kiln_yaml_parse(KilnArena *a, KilnDiag *d, const char *file, const char *text,
                          size_t len) {
  int before = d->nerrors;
  if (!check_text(d, file, text, len)) return NULL;
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) {
    kiln_error(d, (KilnLoc){file, 0, 0}, "out of memory while reading YAML");
    return NULL;
  }
  // UTF-8 only, so offsets mean bytes of text. With the encoding fixed, libyaml
  // would read a BOM as a character of line 1 and shift its columns: skip it here.
  size_t bom = bom_len(text, len);
  yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
  yaml_parser_set_input_string(&p, (const unsigned char *)text + bom, len - bom);
  KilnArenaMark mark = kiln_arena_mark(a);
  Reader r = {.a = a, .d = d, .file = file};
  read_events(&r, &p, text, len);
  yaml_parser_delete(&p);
  reader_free(&r);
  if (d->nerrors == before && is_empty(r.root))
    kiln_error(d, (KilnLoc){file, 0, 0}, "empty model file");
  if (d->nerrors != before) {
    kiln_arena_rewind(a, mark);
    return NULL;
  }
  return r.root;
}

const KilnYaml *kiln_yaml_get(const KilnYaml *map, const char *key) {
  if (!map || map->kind != KILN_YAML_MAP) return NULL;
  size_t n = strlen(key);
  for (int i = 0; i < map->n; i++)
    if (map->keys[i]->len == n && memcmp(map->keys[i]->str, key, n) == 0) return map->items[i];
  return NULL;
}

const char *kiln_yaml_kind_name(KilnYamlKind k) {
  switch (k) {
  case KILN_YAML_SCALAR:
    return "scalar";
  case KILN_YAML_SEQ:
    return "sequence";
  case KILN_YAML_MAP:
    return "mapping";
  }
  return "?";
}
