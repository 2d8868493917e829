/* Test support: guard-page buffers (see guard.h). */
#define _DEFAULT_SOURCE

#include "guard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

size_t guard_page_size(void)
{
    static size_t page;
    if (page == 0) {
        long p = sysconf(_SC_PAGESIZE);
        page = p > 0 ? (size_t)p : 4096u;
    }
    return page;
}

/* Readable bytes needed for len bytes: whole pages, at least one. */
static size_t readable_for(size_t len)
{
    size_t page = guard_page_size();
    size_t pages = (len + page - 1) / page;
    return (pages ? pages : 1) * page;
}

/* Map readable bytes followed by one PROT_NONE page. */
static uint8_t *map_guarded(size_t readable)
{
    size_t page = guard_page_size();
    void *m =
        mmap(NULL, readable + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("guard: mmap");
        abort();
    }
    uint8_t *base = m;
    if (mprotect(base + readable, page, PROT_NONE) != 0) {
        perror("guard: mprotect");
        abort();
    }
    return base;
}

uint8_t *guard_copy(const void *data, size_t len)
{
    size_t readable = readable_for(len);
    uint8_t *base = map_guarded(readable);
    uint8_t *p = base + readable - len;
    if (len)
        memcpy(p, data, len);
    return p;
}

void guard_free(uint8_t *p, size_t len)
{
    if (!p)
        return;
    size_t readable = readable_for(len);
    uint8_t *base = p + len - readable;
    if (munmap(base, readable + guard_page_size()) != 0) {
        perror("guard: munmap");
        abort();
    }
}

void guard_buf_init(guard_buf *g)
{
    g->base = NULL;
    g->readable = 0;
}

uint8_t *guard_buf_place(guard_buf *g, const void *data, size_t len)
{
    if (!g->base || g->readable < len) {
        guard_buf_free(g);
        g->readable = readable_for(len);
        g->base = map_guarded(g->readable);
    }
    uint8_t *p = g->base + g->readable - len;
    if (len)
        memmove(p, data, len);
    return p;
}

void guard_buf_free(guard_buf *g)
{
    if (g->base && munmap(g->base, g->readable + guard_page_size()) != 0) {
        perror("guard: munmap");
        abort();
    }
    g->base = NULL;
    g->readable = 0;
}
