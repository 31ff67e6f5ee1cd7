"""cffi builder for kvmstat._native (API / out-of-line mode).

Used by setup.py as ``cffi_modules=["csrc/build_native.py:ffibuilder"]``;
paths are relative to the repository root, where setup.py runs.  Running this
file directly builds the extension in the current directory.
"""

import cffi

ffibuilder = cffi.FFI()

# The API of csrc/kvmstat_native.h, kept in step with it by hand (cffi cannot
# parse preprocessor includes).
ffibuilder.cdef(
    """
    #define KVMSTAT_PER_CPU ...
    #define KVMSTAT_PER_THREAD ...
    #define KVMSTAT_PER_THREAD_INHERIT ...

    struct kvmstat_event {
        uint64_t tracepoint_id;
        const char *filter;
    };

    struct kvmstat_error {
        int event_index;
        int target;
        int err;
    };

    struct kvmstat_set;

    int kvmstat_set_new(const struct kvmstat_event *events, unsigned int nevents,
                        int mode, struct kvmstat_set **out);
    int kvmstat_set_add(struct kvmstat_set *set, int target, unsigned int bucket,
                        struct kvmstat_error *err);
    int kvmstat_set_retire(struct kvmstat_set *set, int slot);
    int kvmstat_set_enable(struct kvmstat_set *set);
    int kvmstat_set_disable(struct kvmstat_set *set);
    int kvmstat_set_reset(struct kvmstat_set *set);
    int kvmstat_set_clear_bucket(struct kvmstat_set *set, unsigned int bucket);
    int kvmstat_set_groups(const struct kvmstat_set *set);
    int kvmstat_set_fds(const struct kvmstat_set *set);
    int kvmstat_set_read(struct kvmstat_set *set, uint64_t *totals,
                         uint64_t *buckets, unsigned int nbuckets);
    void kvmstat_set_free(struct kvmstat_set *set);
    """
)

ffibuilder.set_source(
    "kvmstat._native",
    '#include "kvmstat_native.h"',
    sources=["csrc/kvmstat_native.c"],
    include_dirs=["csrc"],
    depends=["csrc/kvmstat_native.h"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
