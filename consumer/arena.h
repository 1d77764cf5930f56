/*
 * arena — a bump allocator for one batch. Decoding a batch allocates many
 * small strings; they all die together when the batch is done, so they are
 * carved from a few large chunks and released with one reset. The arena has
 * an upper bound and fails cleanly past it.
 */
#ifndef CV_ARENA_H
#define CV_ARENA_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

typedef struct cv_arena cv_arena;

/* `limit` bounds the total bytes the arena may hold. */
cv_arena *cv_arena_new(size_t limit);
cv_arena *cv_arena_free(cv_arena *a);
/* NULL when the limit would be passed or memory is out. 16-byte aligned. */
void *cv_arena_alloc(cv_arena *a, size_t n);
/* Forgets every allocation; keeps the first chunk for reuse. */
void cv_arena_reset(cv_arena *a);
/* How many allocations the arena has refused since it was made. A decoder
 * that returns NULL for any failure can be told apart from bad input by
 * comparing this before and after. */
size_t cv_arena_refused(const cv_arena *a);
/* A protobuf-c allocator that draws from this arena (free is a no-op). */
ProtobufCAllocator *cv_arena_protobuf(cv_arena *a);

#endif
