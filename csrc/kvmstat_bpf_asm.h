/*
 * A small BPF assembler: build a program as an array of struct bpf_insn,
 * one call per instruction, with forward jumps patched by label.  No
 * compiler or libbpf at run time.  Internal: not part of the Python
 * binding.
 *
 * Usage:
 *
 *   struct kasm a;
 *   kasm_init(&a);
 *   kasm_mov_imm(&a, KASM_R0, 1);
 *   kasm_exit(&a);
 *   if (kasm_error(&a) == 0)
 *       fd = ksys_prog_load(type, 0, a.insn, a.n, "name", log, log_size);
 *   kasm_release(&a);
 *
 * Errors are sticky: an emitter that cannot grow the buffer records
 * -ENOMEM (or -E2BIG past KASM_MAX_INSNS) and later calls do nothing, so a
 * program is checked once, after it is complete.
 */
#ifndef KVMSTAT_BPF_ASM_H
#define KVMSTAT_BPF_ASM_H

#include <linux/bpf.h>
#include <stdint.h>

/* Far more than kvmstat's programs need; the kernel takes up to 1M. */
#define KASM_MAX_INSNS 4096

enum kasm_reg {
    KASM_R0, KASM_R1, KASM_R2, KASM_R3, KASM_R4, KASM_R5,
    KASM_R6, KASM_R7, KASM_R8, KASM_R9, KASM_R10,
};

struct kasm {
    struct bpf_insn *insn;
    unsigned int n, cap;
    int err;  /* 0 or the first -errno */
};

/* A forward jump whose target is not known yet (see kasm_land). */
typedef unsigned int kasm_label;

void kasm_init(struct kasm *a);
void kasm_release(struct kasm *a);
/* 0, or -ENOMEM/-E2BIG if some instruction could not be emitted. */
int kasm_error(const struct kasm *a);

/* Any instruction. */
void kasm_put(struct kasm *a, uint8_t code, uint8_t dst, uint8_t src,
              int16_t off, int32_t imm);

/* dst = src; dst = imm (64-bit, sign-extended). */
void kasm_mov_reg(struct kasm *a, int dst, int src);
void kasm_mov_imm(struct kasm *a, int dst, int32_t imm);
/* dst = dst <op> imm / src, 64-bit; op is BPF_ADD, BPF_RSH, BPF_MUL, ... */
void kasm_alu_imm(struct kasm *a, int op, int dst, int32_t imm);
void kasm_alu_reg(struct kasm *a, int op, int dst, int src);

/* dst = *(size *)(src + off), zero-extended; size is BPF_B/H/W/DW. */
void kasm_load(struct kasm *a, int size, int dst, int src, int16_t off);
/* *(size *)(dst + off) = src / imm. */
void kasm_store_reg(struct kasm *a, int size, int dst, int16_t off, int src);
void kasm_store_imm(struct kasm *a, int size, int dst, int16_t off, int32_t imm);

/* dst = imm (any 64-bit value; a 16-byte instruction). */
void kasm_load_imm64(struct kasm *a, int dst, uint64_t imm);
/* dst = (u32)dst: keep the low 32 bits. */
void kasm_zext32(struct kasm *a, int dst);
/* dst = the map of this descriptor (a 16-byte instruction). */
void kasm_load_map(struct kasm *a, int dst, int map_fd);
/* dst = r10 + off: the address of a stack slot. */
void kasm_stack_addr(struct kasm *a, int dst, int16_t off);

/* Call a helper (BPF_FUNC_*): arguments in r1-r5, result in r0,
 * r1-r5 clobbered. */
void kasm_call(struct kasm *a, int helper);

/* if (dst <op> imm) / (dst <op> src) goto label; op is BPF_JEQ, BPF_JGE, ... */
kasm_label kasm_jump_if(struct kasm *a, int op, int dst, int32_t imm);
kasm_label kasm_jump_if_reg(struct kasm *a, int op, int dst, int src);
kasm_label kasm_jump(struct kasm *a);
/* Make the jump of this label go to the next instruction emitted. */
void kasm_land(struct kasm *a, kasm_label from);

/* *(u64 *)(reg + 0) += 1 through scratch (a plain add: for a per-CPU slot,
 * which a tracing program never shares with another running program). */
void kasm_increment_at(struct kasm *a, int reg, int scratch);

/* r0 = ret; exit. */
void kasm_return(struct kasm *a, int32_t ret);

/* BPF_B/H/W/DW for a field of 1, 2, 4 or 8 bytes, -1 otherwise. */
int kasm_size_code(uint32_t bytes);

#endif
