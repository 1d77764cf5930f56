/*
 * arena — see arena.h.
 */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>

#define CHUNK_MIN (1u << 20)

typedef struct chunk {
    struct chunk *next;
    size_t size, used;
    _Alignas(16) unsigned char data[];
} chunk;

struct cv_arena {
    chunk *head;
    size_t total, limit;
    size_t refused; /* allocations refused, ever */
    ProtobufCAllocator pb;
};

static void *pb_alloc(void *ctx, size_t n) {
    return cv_arena_alloc(ctx, n);
}
static void pb_free(void *ctx, void *p) {
    (void)ctx, (void)p;
}

cv_arena *cv_arena_new(size_t limit) {
    cv_arena *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    a->limit = limit;
    a->pb.alloc = pb_alloc;
    a->pb.free = pb_free;
    a->pb.allocator_data = a;
    return a;
}

cv_arena *cv_arena_free(cv_arena *a) {
    if (!a)
        return NULL;
    for (chunk *c = a->head, *n; c; c = n) {
        n = c->next;
        free(c);
    }
    free(a);
    return NULL;
}

void *cv_arena_alloc(cv_arena *a, size_t n) {
    if (n > SIZE_MAX - sizeof(chunk) - 15) {
        a->refused++;
        return NULL;
    }
    n = (n + 15) & ~(size_t)15;
    if (n == 0)
        n = 16;
    chunk *c = a->head;
    if (!c || c->size - c->used < n) {
        size_t size = n > CHUNK_MIN ? n : CHUNK_MIN;
        if (size > a->limit || a->total > a->limit - size) {
            a->refused++;
            return NULL;
        }
        c = malloc(sizeof(chunk) + size);
        if (!c) {
            a->refused++;
            return NULL;
        }
        c->size = size;
        c->used = 0;
        c->next = a->head;
        a->head = c;
        a->total += size;
    }
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

void cv_arena_reset(cv_arena *a) {
    chunk *c = a->head;
    if (!c)
        return;
    /* Keep the oldest chunk (the end of the list); free the rest. */
    while (c->next) {
        chunk *n = c->next;
        free(c);
        c = n;
    }
    c->used = 0;
    a->head = c;
    a->total = c->size;
}

size_t cv_arena_refused(const cv_arena *a) {
    return a->refused;
}

ProtobufCAllocator *cv_arena_protobuf(cv_arena *a) {
    return &a->pb;
}
