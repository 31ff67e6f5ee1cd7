/* A growable array of fixed-size entries, shared by the engines' readers. */
#ifndef KVMSTAT_ARRAY_H
#define KVMSTAT_ARRAY_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

/* Make room for *more* entries after *used* in (*buf, *cap), doubling from
 * *first*; the capacity stays below *limit* entries.  Returns 0 or -ENOMEM
 * (the array is left as it was). */
static inline int kvmstat_array_reserve(void **buf, unsigned int *cap, size_t used,
                                        size_t more, size_t entry_size, size_t first,
                                        size_t limit)
{
    if (used + more <= *cap)
        return 0;
    size_t want = *cap ? *cap : first;
    while (want < used + more)
        want *= 2;
    if (want > limit)
        return -ENOMEM;
    void *grown = realloc(*buf, want * entry_size);
    if (!grown)
        return -ENOMEM;
    *buf = grown;
    *cap = (unsigned int)want;
    return 0;
}

#endif
