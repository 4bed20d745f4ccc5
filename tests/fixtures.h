// Small hand-written model descriptors shared by the runtime's tests and fuzz
// harnesses: what the readers check files against, without compiling a model.
#ifndef KILN_TEST_FIXTURES_H
#define KILN_TEST_FIXTURES_H

#include "include/kiln/abi.h"

#define KILN_FIXTURE __attribute__((unused)) static const

// Weights w f32[2] and b f32[1], then their SGD momentum (tests/badbin/gen.py
// writes files for this layout).
KILN_FIXTURE KilnTensorDesc kiln_fake_params[] = {
    {.name = "w", .dtype = KILN_ABI_F32, .rank = 1, .shape = {2}, .offset = 0, .bytes = 8,
     .init = KILN_ABI_INIT_NORMAL, .init_a = 1},
    {.name = "b", .dtype = KILN_ABI_F32, .rank = 1, .shape = {1}, .offset = 8, .bytes = 4},
};
KILN_FIXTURE KilnTensorDesc kiln_fake_opt[] = {
    {.name = "sgd.v.w", .dtype = KILN_ABI_F32, .rank = 1, .shape = {2}, .offset = 12, .bytes = 8},
    {.name = "sgd.v.b", .dtype = KILN_ABI_F32, .rank = 1, .shape = {1}, .offset = 20, .bytes = 4},
};
KILN_FIXTURE KilnModelDesc kiln_fake_model = {
    .abi_version = KILN_ABI_VERSION, .name = "fake", .kiln_version = "test", .target = "cpu",
    .seed = 42, .batch = 1, .weights_bytes = 12, .arena_bytes = 64, .nparams = 2, .opt_bytes = 12,
    .nopt = 2, .params = kiln_fake_params, .opt = kiln_fake_opt};

// Data models (inputs from arena offset 64): a tabular one, x f32[4, 2] and a
// label below 3, and a sequence one, windows of 3 ids below 16 for input and target.
enum { KILN_FIXTURE_B = 4, KILN_FIXTURE_T = 3 };
KILN_FIXTURE KilnTensorDesc kiln_tab_inputs[] = {
    {.name = "x", .dtype = KILN_ABI_F32, .rank = 2, .shape = {KILN_FIXTURE_B, 2}, .offset = 64,
     .bytes = KILN_FIXTURE_B * 8},
    {.name = "label", .dtype = KILN_ABI_I32, .rank = 1, .shape = {KILN_FIXTURE_B}, .offset = 128,
     .bytes = KILN_FIXTURE_B * 4, .bound = 3},
};
KILN_FIXTURE KilnModelDesc kiln_tab_model = {
    .abi_version = KILN_ABI_VERSION, .name = "tab", .batch = KILN_FIXTURE_B, .arena_bytes = 256,
    .ninputs = 2, .inputs = kiln_tab_inputs};
KILN_FIXTURE KilnTensorDesc kiln_seq_inputs[] = {
    {.name = "idx", .dtype = KILN_ABI_I32, .rank = 2, .shape = {KILN_FIXTURE_B, KILN_FIXTURE_T},
     .offset = 64, .bytes = KILN_FIXTURE_B * KILN_FIXTURE_T * 4, .bound = 16},
    {.name = "tgt", .dtype = KILN_ABI_I32, .rank = 2, .shape = {KILN_FIXTURE_B, KILN_FIXTURE_T},
     .offset = 128, .bytes = KILN_FIXTURE_B * KILN_FIXTURE_T * 4, .bound = 16},
};
KILN_FIXTURE KilnModelDesc kiln_seq_model = {
    .abi_version = KILN_ABI_VERSION, .name = "seq", .batch = KILN_FIXTURE_B, .arena_bytes = 256,
    .ninputs = 2, .inputs = kiln_seq_inputs};

#endif
