"""cffi builder for kvmstat._native (API / out-of-line mode).

Used by setup.py as ``cffi_modules=["csrc/build_native.py:ffibuilder"]``;
paths are relative to the repository root, where setup.py runs.  Running this
file directly builds the extension in the current directory.
"""

import cffi

ffibuilder = cffi.FFI()

# The API of csrc/kvmstat_native.h and csrc/kvmstat_bpf.h, kept in step with it by hand (cffi cannot
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

    #define KVMSTAT_BPF_STAGE_MAP ...
    #define KVMSTAT_BPF_STAGE_LOAD ...
    #define KVMSTAT_BPF_STAGE_OPEN ...
    #define KVMSTAT_BPF_STAGE_ATTACH ...
    #define KVMSTAT_BPF_STAGE_CPUS ...
    #define KVMSTAT_BPF_ALL_TGIDS ...
    #define KVMSTAT_BPF_MAX_ALSO ...

    struct kvmstat_bpf_event {
        uint64_t tracepoint_id;
        int32_t reason_offset;
        uint32_t reason_size;
    };

    struct kvmstat_bpf_field {
        uint32_t event;
        uint32_t ncodes;
        const uint64_t *codes;
    };

    struct kvmstat_bpf_entry {
        uint32_t event;
        uint32_t tgid;
        uint64_t reason;
        uint64_t count;
    };

    struct kvmstat_bpf_error {
        int stage;
        int event_index;
        int err;
    };

    struct kvmstat_bpf;

    int kvmstat_bpf_new(const struct kvmstat_bpf_event *events, unsigned int nevents,
                        int64_t only_tgid, unsigned int max_entries,
                        char *log, unsigned int log_size,
                        struct kvmstat_bpf_error *err, struct kvmstat_bpf **out);
    int kvmstat_bpf_set_fields(struct kvmstat_bpf *eng,
                               const struct kvmstat_bpf_field *fields,
                               unsigned int nfields);
    int kvmstat_bpf_set_buckets(struct kvmstat_bpf *eng, const uint32_t *tgids,
                                const uint32_t *buckets, unsigned int n);
    int kvmstat_bpf_also_count(struct kvmstat_bpf *eng, const uint32_t *tgids,
                               unsigned int n);
    int kvmstat_bpf_read(struct kvmstat_bpf *eng, uint64_t *totals,
                         uint64_t *buckets, unsigned int nbuckets,
                         uint64_t *dropped);
    int kvmstat_bpf_dump(struct kvmstat_bpf *eng, struct kvmstat_bpf_entry *out,
                         unsigned int cap);
    int kvmstat_bpf_reset(struct kvmstat_bpf *eng);
    int kvmstat_bpf_forget(struct kvmstat_bpf *eng, const uint32_t *tgids,
                           unsigned int n);
    int kvmstat_bpf_missed(struct kvmstat_bpf *eng, uint64_t *missed);
    int kvmstat_bpf_fds(const struct kvmstat_bpf *eng);
    int kvmstat_bpf_ncpus(const struct kvmstat_bpf *eng);
    int kvmstat_bpf_max_entries(const struct kvmstat_bpf *eng);
    int kvmstat_bpf_batch_reads(const struct kvmstat_bpf *eng);
    int kvmstat_bpf_force_iteration(struct kvmstat_bpf *eng);
    void kvmstat_bpf_free(struct kvmstat_bpf *eng);
    int kvmstat_bpf_probe(uint64_t tracepoint_id, struct kvmstat_bpf_error *err);
    """
)

ffibuilder.set_source(
    "kvmstat._native",
    '#include "kvmstat_native.h"\n#include "kvmstat_bpf.h"',
    sources=["csrc/kvmstat_native.c", "csrc/kvmstat_bpf.c"],
    include_dirs=["csrc"],
    depends=["csrc/kvmstat_native.h", "csrc/kvmstat_bpf.h"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
