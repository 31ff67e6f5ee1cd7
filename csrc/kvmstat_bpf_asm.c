/*
 * A small BPF assembler: see kvmstat_bpf_asm.h.
 */
#include "kvmstat_bpf_asm.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void kasm_init(struct kasm *a)
{
    memset(a, 0, sizeof(*a));
}

void kasm_release(struct kasm *a)
{
    free(a->insn);
    kasm_init(a);
}

int kasm_error(const struct kasm *a)
{
    return a->err;
}

static int reserve(struct kasm *a)
{
    if (a->err)
        return a->err;
    if (a->n < a->cap)
        return 0;
    if (a->n >= KASM_MAX_INSNS)
        return a->err = -E2BIG;
    unsigned int cap = a->cap ? a->cap * 2 : 64;
    if (cap > KASM_MAX_INSNS)
        cap = KASM_MAX_INSNS;
    struct bpf_insn *p = realloc(a->insn, cap * sizeof(*p));
    if (!p)
        return a->err = -ENOMEM;
    a->insn = p;
    a->cap = cap;
    return 0;
}

void kasm_put(struct kasm *a, uint8_t code, uint8_t dst, uint8_t src,
              int16_t off, int32_t imm)
{
    if (reserve(a) < 0)
        return;
    struct bpf_insn *i = &a->insn[a->n++];
    memset(i, 0, sizeof(*i));
    i->code = code;
    i->dst_reg = dst & 0xf;
    i->src_reg = src & 0xf;
    i->off = off;
    i->imm = imm;
}

void kasm_mov_reg(struct kasm *a, int dst, int src)
{
    kasm_put(a, BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0);
}

void kasm_mov_imm(struct kasm *a, int dst, int32_t imm)
{
    kasm_put(a, BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm);
}

void kasm_alu_imm(struct kasm *a, int op, int dst, int32_t imm)
{
    kasm_put(a, BPF_ALU64 | op | BPF_K, dst, 0, 0, imm);
}

void kasm_alu_reg(struct kasm *a, int op, int dst, int src)
{
    kasm_put(a, BPF_ALU64 | op | BPF_X, dst, src, 0, 0);
}

void kasm_load(struct kasm *a, int size, int dst, int src, int16_t off)
{
    kasm_put(a, BPF_LDX | BPF_MEM | size, dst, src, off, 0);
}

void kasm_store_reg(struct kasm *a, int size, int dst, int16_t off, int src)
{
    kasm_put(a, BPF_STX | BPF_MEM | size, dst, src, off, 0);
}

void kasm_store_imm(struct kasm *a, int size, int dst, int16_t off, int32_t imm)
{
    kasm_put(a, BPF_ST | BPF_MEM | size, dst, 0, off, imm);
}

void kasm_load_imm64(struct kasm *a, int dst, uint64_t imm)
{
    kasm_put(a, BPF_LD | BPF_DW | BPF_IMM, dst, 0, 0, (int32_t)(uint32_t)imm);
    kasm_put(a, 0, 0, 0, 0, (int32_t)(uint32_t)(imm >> 32));
}

void kasm_zext32(struct kasm *a, int dst)
{
    kasm_put(a, BPF_ALU | BPF_MOV | BPF_X, dst, dst, 0, 0);
}

void kasm_load_map(struct kasm *a, int dst, int map_fd)
{
    kasm_put(a, BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, map_fd);
    kasm_put(a, 0, 0, 0, 0, 0);
}

void kasm_stack_addr(struct kasm *a, int dst, int16_t off)
{
    kasm_mov_reg(a, dst, KASM_R10);
    kasm_alu_imm(a, BPF_ADD, dst, off);
}

void kasm_call(struct kasm *a, int helper)
{
    kasm_put(a, BPF_JMP | BPF_CALL, 0, 0, 0, helper);
}

kasm_label kasm_jump_if(struct kasm *a, int op, int dst, int32_t imm)
{
    kasm_put(a, BPF_JMP | op | BPF_K, dst, 0, 0, imm);
    return a->n - 1;
}

kasm_label kasm_jump_if_reg(struct kasm *a, int op, int dst, int src)
{
    kasm_put(a, BPF_JMP | op | BPF_X, dst, src, 0, 0);
    return a->n - 1;
}

kasm_label kasm_jump(struct kasm *a)
{
    kasm_put(a, BPF_JMP | BPF_JA, 0, 0, 0, 0);
    return a->n - 1;
}

void kasm_land(struct kasm *a, kasm_label from)
{
    if (a->err || from >= a->n)
        return;
    a->insn[from].off = (int16_t)(a->n - from - 1);
}

void kasm_increment_at(struct kasm *a, int reg, int scratch)
{
    kasm_load(a, BPF_DW, scratch, reg, 0);
    kasm_alu_imm(a, BPF_ADD, scratch, 1);
    kasm_store_reg(a, BPF_DW, reg, 0, scratch);
}

void kasm_return(struct kasm *a, int32_t ret)
{
    kasm_mov_imm(a, KASM_R0, ret);
    kasm_put(a, BPF_JMP | BPF_EXIT, 0, 0, 0, 0);
}

int kasm_size_code(uint32_t bytes)
{
    switch (bytes) {
    case 1: return BPF_B;
    case 2: return BPF_H;
    case 4: return BPF_W;
    case 8: return BPF_DW;
    default: return -1;
    }
}
