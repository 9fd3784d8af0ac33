# Makefile: builds, runs, tests and benchmarks the chapters, from MHA to a continuously
# batched engine. `make help` lists the targets. Everything is built under build/ (SAN=1:
# build/san/). The CPU parts always build; the .cu files are compiled whenever nvcc exists,
# with or without a GPU, and CUDA=0 leaves them out.

SHELL := /bin/bash
.DEFAULT_GOAL := all
.SUFFIXES:
.DELETE_ON_ERROR:

# ---- the chapters ----------------------------------------------------------------------------
# All six, in reading order; the ones that exist are those with a main.c.
CHAPTERS := 01_mha 02_mqa_gqa 03_flash 04_kvcache 05_paged 06_batching
BUILT := $(foreach c,$(CHAPTERS),$(if $(wildcard $(c)/main.c),$(c)))
chapter_of = $(word $(1),$(CHAPTERS))

# ---- variables a reader may set --------------------------------------------------------------
SAN ?= 0
DEVICE ?= auto
# CHECKPOINT=M.bin reaches every program in the environment; a bench that can time a real model
# (chapter 06's) takes it as the default of its --checkpoint.
CHECKPOINT ?=
export CHECKPOINT
GPU_ARCH ?= sm_90
CHECK_PREFIX ?=
NVCC ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
# FUZZ=1: everything built with clang and libFuzzer's instrumentation into build/fuzz-clang
# (make fuzz sets it); no CUDA there.
ifeq ($(FUZZ),1)
  override CC := clang
  override CUDA := 0
endif
# MEMCHECK=1: the build valgrind runs (make memcheck sets it), in build/memcheck, CPU only.
# Valgrind (Debian 12's 3.19) cannot decode AVX-512 instructions, so on x86 this build targets
# x86-64-v3 (AVX2, FMA, F16C) even on an AVX-512 host; elsewhere the host's own.
ifeq ($(MEMCHECK),1)
  override CUDA := 0
  ifeq ($(shell uname -m),x86_64)
    MARCH := -march=x86-64-v3
  endif
endif
CUDA ?= $(if $(NVCC),1,0)
CC ?= gcc
ifeq ($(CC),cc)
  CC := gcc
endif

ifeq ($(CUDA),1)
  ifeq ($(NVCC),)
    $(error CUDA=1 but nvcc was not found; install the CUDA toolkit or build with CUDA=0)
  endif
endif

# ---- what this machine has ---------------------------------------------------------------------
HAVE_GPU := $(if $(shell nvidia-smi -L 2>/dev/null | grep '^GPU'),yes,no)
HAVE_OMP := $(shell echo 'int main(void){return 0;}' | $(CC) -fopenmp -x c - -o /dev/null 2>/dev/null && echo yes || echo no)
HAVE_GNUPLOT = $(if $(shell command -v gnuplot 2>/dev/null),yes,no)
# The HTTP server (06_batching server) needs libmicrohttpd and jansson: built in when pkg-config
# finds both (make test installs them: scripts/deps.sh test), else the subcommand says what to
# install. SERVER=0 leaves it out (the aarch64 cross build; valgrind's build).
ifeq ($(MEMCHECK),1)
  override SERVER := 0
endif
SERVER ?= $(shell pkg-config --exists libmicrohttpd jansson 2>/dev/null && echo 1 || echo 0)
# Tensor parallelism's MPI program (04_kvcache_tp): when Open MPI's mpicc is there (flags below).
ifneq ($(filter 1,$(FUZZ) $(MEMCHECK)),)
  override MPI := 0
endif
MPI ?= $(shell command -v mpicc >/dev/null 2>&1 && echo 1 || echo 0)
ifneq ($(CHECK_PREFIX),)
  HAVE_CHECK = $(if $(wildcard $(CHECK_PREFIX)/usr/include/check.h),yes,no)
else
  HAVE_CHECK = $(shell pkg-config --exists check 2>/dev/null && echo yes || echo no)
endif

ifeq ($(FUZZ),1)
  BUILD := build/fuzz-clang
else ifeq ($(MEMCHECK),1)
  BUILD := build/memcheck
else ifeq ($(SAN),1)
  BUILD := build/san
else
  BUILD := build
endif
OBJ := $(BUILD)/obj
LIB := $(BUILD)/lib
BIN := $(BUILD)/bin
TST := $(BUILD)/test

ifeq ($(MAKELEVEL),0)
  $(info make: nvcc $(if $(NVCC),yes,no) (CUDA=$(CUDA), GPU_ARCH=$(GPU_ARCH)) | GPU $(HAVE_GPU) | OpenMP $(HAVE_OMP) | Check $(HAVE_CHECK) | gnuplot $(HAVE_GNUPLOT) | server $(if $(filter 1,$(SERVER)),yes,no) | MPI $(if $(filter 1,$(MPI)),yes,no) | SAN=$(SAN) -> $(BUILD)/)
endif

# ---- flags -------------------------------------------------------------------------------------
# -ffp-contract=fast lets the compiler fuse a*b+c into one FMA, as GNU C does by default
# (ISO C mode turns it off); -march=native because programs run where they are built.
MARCH ?= -march=native
CFLAGS := -std=c11 -Wall -Wextra -Werror -O2 $(MARCH) -ffp-contract=fast -D_POSIX_C_SOURCE=200809L -I. -g
# GCC tuned for AMD Zen (-march=native there) leaves a*b+c unfused in loops that chain them,
# for scalars and vectors up to 256 bits (--param avoid-fma-max-bits): the same sum would then
# have other bits in a scalar tail than in a 512-bit kernel. Every a*b+c is one FMA instead.
ifneq ($(findstring gcc,$(notdir $(CC))),)
  CFLAGS += --param avoid-fma-max-bits=0
endif
LDLIBS := -lm
ifeq ($(HAVE_OMP),yes)
  CFLAGS += -fopenmp
  LDLIBS += -fopenmp
endif
ifeq ($(SAN),1)
  SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
  CFLAGS += $(SANFLAGS)
  LDLIBS += $(SANFLAGS)
endif
ifeq ($(FUZZ),1)
  FUZZFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer \
               -Wno-pass-failed
  CFLAGS += $(FUZZFLAGS)
  LDLIBS += -fsanitize=address,undefined
endif
ifeq ($(CUDA),1)
  CUDA_HOME := $(patsubst %/bin/,%,$(dir $(NVCC)))
  CFLAGS += -DHAVE_CUDA=1
  NVCCFLAGS := -O2 -arch=$(GPU_ARCH) -std=c++17 -I. -DHAVE_CUDA=1 -Xcompiler -Wall,-Wextra -Werror all-warnings -lineinfo
  # A CPU run must not pay for the GPU libraries: the runtime is linked statically (it opens the
  # driver at the first CUDA call) and cuBLAS is opened with dlopen on first use
  # (common/cuda_utils.cu), by the name of the library this build compiles against.
  CUDA_LIBDIR := $(CUDA_HOME)/lib64
  CUBLAS_SONAME := $(or $(shell objdump -p $(CUDA_LIBDIR)/libcublas.so 2>/dev/null | awk '/SONAME/ {print $$2}'),libcublas.so)
  LDLIBS += -L$(CUDA_LIBDIR) -lcudart_static -ldl -lpthread -lrt -lstdc++
else
  CFLAGS += -DHAVE_CUDA=0
endif

# The HTTP server (SERVER above).
ifeq ($(SERVER),1)
  CFLAGS += -DHAVE_SERVER=1 $(shell pkg-config --cflags libmicrohttpd jansson)
  LDLIBS += $(shell pkg-config --libs libmicrohttpd jansson) -lpthread
else
  CFLAGS += -DHAVE_SERVER=0
endif

# Tensor parallelism (04_kvcache_tp, chapter 04's tp_*.c): built when Open MPI's mpicc is there
# (make test installs it: scripts/deps.sh test), with this build's compiler and flags plus MPI's
# (mpicc --showme). With CUDA and NCCL's header, its `nccl` subcommand too (NCCL opened by dlopen).
# MPI=0 leaves it out (the aarch64 cross build, valgrind's build, fuzzing).
CFLAGS += -DHAVE_MPI=$(MPI)
ifeq ($(MPI),1)
  MPI_CFLAGS := $(shell mpicc --showme:compile) -DOMPI_SKIP_MPICXX
  MPI_LIBS := $(shell mpicc --showme:link)
  HAVE_NCCL := $(if $(and $(filter 1,$(CUDA)),$(wildcard $(CUDA_HOME)/include/nccl.h)),1,0)
  NCCL_SONAME := $(if $(filter 1,$(HAVE_NCCL)),$(or $(shell objdump -p $(CUDA_LIBDIR)/libnccl.so 2>/dev/null | awk '/SONAME/ {print $$2}'),libnccl.so.2))
else
  HAVE_NCCL := 0
endif

# Check: from pkg-config, or linked statically from unpacked Debian packages (CHECK_PREFIX),
# whose libraries sit in the compiler's multiarch folder (x86_64-linux-gnu, aarch64-linux-gnu).
ifneq ($(CHECK_PREFIX),)
  MULTIARCH ?= $(or $(shell $(CC) -print-multiarch 2>/dev/null),x86_64-linux-gnu)
  CHECK_CFLAGS = -I$(CHECK_PREFIX)/usr/include
  CHECK_LIBS = $(CHECK_PREFIX)/usr/lib/$(MULTIARCH)/libcheck_pic.a \
               $(CHECK_PREFIX)/usr/lib/$(MULTIARCH)/libsubunit.a -pthread -lrt -lm
else
  CHECK_CFLAGS = $(shell pkg-config --cflags check 2>/dev/null)
  CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)
endif

# Objects are rebuilt when the flags change (CUDA=0 after CUDA=1, say): they depend on a stamp
# file that is rewritten only when its contents would change.
CONFIG_LINE := $(CC) $(CFLAGS) | $(NVCCFLAGS) $(CUBLAS_SONAME) | $(LDLIBS) | $(MPI_CFLAGS) $(MPI_LIBS) $(HAVE_NCCL)
STAMP := $(BUILD)/config.stamp
ifeq ($(filter clean help,$(MAKECMDGOALS)),)
  $(shell mkdir -p $(BUILD) && { [ "$$(cat $(STAMP) 2>/dev/null)" = "$(CONFIG_LINE)" ] || echo "$(CONFIG_LINE)" > $(STAMP); })
endif

# ---- sources -----------------------------------------------------------------------------------
COMMON_OBJ := $(patsubst %.c,$(OBJ)/%.o,$(filter-out common/test_%.c,$(wildcard common/*.c)))
ifeq ($(CUDA),1)
  COMMON_OBJ += $(patsubst %.cu,$(OBJ)/%.cu.o,$(wildcard common/*.cu))
endif

# lib<chapter>.a holds everything of a chapter but its main.c and tests.
# (Chapter 04's tp_*.c and tp_*.cu are the MPI program 04_kvcache_tp's: not in the library.)
lib_objs = $(patsubst %.c,$(OBJ)/%.o,$(filter-out $(1)/main.c $(1)/test_%.c $(1)/tp_%.c,$(wildcard $(1)/*.c))) \
           $(if $(filter 1,$(CUDA)),$(patsubst %.cu,$(OBJ)/%.cu.o,$(filter-out $(1)/tp_%.cu,$(wildcard $(1)/*.cu))))
# Chapter N links the libraries of chapters N, N-1, ..., 01 (later chapters call earlier ones,
# and each chapter's tests use the previous chapter as their reference), then libcommon.a. A
# static library only supplies what the objects before it on the command line still need, so the
# order is latest chapter first. For 03_flash:
#   $(call chain_of,03_flash)   = 01_mha 02_mqa_gqa 03_flash   the built chapters not after it
#                                 (not_after compares names: "02_mqa_gqa" sorts before "03_flash")
#   $(call reverse,a b c)       = c b a
#   $(call chain_libs,03_flash) = build/lib/lib03_flash.a build/lib/lib02_mqa_gqa.a
#                                 build/lib/lib01_mha.a build/lib/libcommon.a
reverse = $(if $(1),$(call reverse,$(wordlist 2,$(words $(1)),$(1))) $(firstword $(1)))
not_after = $(filter $(1),$(firstword $(sort $(1) $(2))))
chain_of = $(strip $(foreach c,$(BUILT),$(if $(call not_after,$(c),$(1)),$(c))))
chain_libs = $(foreach c,$(call reverse,$(call chain_of,$(1))),$(LIB)/lib$(c).a) $(LIB)/libcommon.a

PROGRAMS := $(foreach c,$(BUILT),$(BIN)/$(c)) $(if $(filter 1,$(MPI)),$(BIN)/04_kvcache_tp)
TESTS := $(TST)/common $(foreach c,$(BUILT),$(TST)/$(c))
SHARE := $(foreach c,$(BUILT),$(BUILD)/share/$(c).gp) $(BUILD)/share/common.gp

# ---- rules -------------------------------------------------------------------------------------
$(OBJ)/%.o: %.c $(STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(OBJ)/%.cu.o: %.cu $(STAMP)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c $< -o $@

$(OBJ)/common/cuda_utils.cu.o: NVCCFLAGS += -DCUBLAS_SONAME='"$(CUBLAS_SONAME)"' -DCUDA_LIBDIR='"$(CUDA_LIBDIR)"'

# Test sources need Check's headers.
define test_obj_rule
$(OBJ)/$(1)/test_%.o: $(1)/test_%.c $(STAMP)
	@mkdir -p $$(@D)
	$$(CC) $$(CFLAGS) $$(CHECK_CFLAGS) -MMD -MP -c $$< -o $$@
endef
$(foreach c,common $(BUILT),$(eval $(call test_obj_rule,$(c))))

$(LIB)/libcommon.a: $(COMMON_OBJ)
	@mkdir -p $(@D)
	@rm -f $@
	ar rcs $@ $^

define chapter_rules
$(LIB)/lib$(1).a: $(call lib_objs,$(1))
	@mkdir -p $$(@D)
	@rm -f $$@
	ar rcs $$@ $$^

$(BIN)/$(1): $(OBJ)/$(1)/main.o $(call chain_libs,$(1))
	@mkdir -p $$(@D)
	$$(CC) $$(CFLAGS) $$^ $$(LDLIBS) -o $$@

$(TST)/$(1): $(patsubst %.c,$(OBJ)/%.o,$(wildcard $(1)/test_*.c)) $(call chain_libs,$(1))
	@mkdir -p $$(@D)
	$$(CC) $$(CFLAGS) $$^ $$(CHECK_LIBS) $$(LDLIBS) -o $$@

$(BUILD)/share/$(1).gp: $(1)/plot.gp
	@mkdir -p $$(@D)
	cp $$< $$@
endef
$(foreach c,$(BUILT),$(eval $(call chapter_rules,$(c))))

# The live page is compiled into the server (server_state.c's .incbin): rebuilt when it changes.
$(OBJ)/06_batching/server_state.o: 06_batching/page.html

# 04_kvcache_tp: chapter 04's tp_*.c (and tp_nccl.cu with NCCL) on the chapter's libraries, with MPI.
TP_OBJ := $(patsubst %.c,$(OBJ)/%.o,$(wildcard 04_kvcache/tp_*.c)) \
          $(if $(filter 1,$(HAVE_NCCL)),$(OBJ)/04_kvcache/tp_nccl.cu.o)
$(OBJ)/04_kvcache/tp_%.o: 04_kvcache/tp_%.c $(STAMP)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(MPI_CFLAGS) -DHAVE_NCCL=$(HAVE_NCCL) -MMD -MP -c $< -o $@

$(OBJ)/04_kvcache/tp_nccl.cu.o: 04_kvcache/tp_nccl.cu $(STAMP)
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) $(MPI_CFLAGS) -DHAVE_NCCL=1 -DNCCL_SONAME='"$(NCCL_SONAME)"' -DCUDA_LIBDIR='"$(CUDA_LIBDIR)"' \
	    -MMD -MP -c $< -o $@

ifeq ($(MPI),1)
$(BIN)/04_kvcache_tp: $(TP_OBJ) $(call chain_libs,04_kvcache)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $^ $(MPI_LIBS) $(LDLIBS) -o $@
else
$(BIN)/04_kvcache_tp:
	@echo "make: 04_kvcache_tp needs Open MPI (mpicc$(if $(filter command line,$(origin MPI)), and not MPI=0)): sudo apt-get install -y openmpi-bin libopenmpi-dev" >&2; exit 1
endif

# common/'s own suite: the shared pieces (matmul, exp, .npy, tokenizer, arguments, ...) tested
# where they live, before any chapter uses them.
$(TST)/common: $(patsubst %.c,$(OBJ)/%.o,$(wildcard common/test_*.c)) $(LIB)/libcommon.a
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $^ $(CHECK_LIBS) $(LDLIBS) -o $@

$(BUILD)/share/common.gp: common/plot_setup.gp
	@mkdir -p $(@D)
	cp $< $@

# ---- fuzzing (fuzz/): each target as a libFuzzer binary (FUZZ=1) or a corpus replayer --------
FUZZ_NAMES := $(patsubst fuzz/fuzz_%.c,%,$(wildcard fuzz/fuzz_*.c))
ALL_LIBS := $(call chain_libs,$(lastword $(BUILT)))
FUZZ_SECONDS ?= 60
.PRECIOUS: $(OBJ)/fuzz/%.o

$(BUILD)/fuzz/replay-%: $(OBJ)/fuzz/fuzz_%.o $(OBJ)/fuzz/replay.o $(OBJ)/fuzz/common.o $(ALL_LIBS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $@

$(BUILD)/fuzz/fuzz-%: $(OBJ)/fuzz/fuzz_%.o $(OBJ)/fuzz/common.o $(ALL_LIBS)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -fsanitize=fuzzer $^ $(LDLIBS) -o $@

# Every chapter's verify (small sizes) and a short serve under valgrind (scripts/memcheck.sh),
# on the build valgrind can decode (MEMCHECK=1 above).
memcheck:
	@$(MAKE) --no-print-directory MEMCHECK=1 memcheck-run

memcheck-run: programs
	@bash scripts/memcheck.sh $(BUILD)

# The seed corpus, written by the repository's own code (fuzz/make_corpus.c).
fuzz-corpus: $(OBJ)/fuzz/make_corpus.o $(LIB)/libcommon.a
	@mkdir -p $(BUILD)/fuzz fuzz/corpus/npy fuzz/corpus/checkpoint fuzz/corpus/tokenizer fuzz/corpus/requests fuzz/corpus/engine fuzz/corpus/completion
	$(CC) $(CFLAGS) $^ $(LDLIBS) -o $(BUILD)/fuzz/make_corpus
	$(BUILD)/fuzz/make_corpus

# Every committed corpus input through its target (with SAN=1: under ASan + UBSan; CI does that).
fuzz-replay: $(foreach f,$(FUZZ_NAMES),$(BUILD)/fuzz/replay-$(f))
	@rc=0; for f in $(FUZZ_NAMES); do $(BUILD)/fuzz/replay-$$f fuzz/corpus/$$f || rc=1; done; exit $$rc

# libFuzzer on every target for FUZZ_SECONDS each (clang); new interesting inputs are kept in
# build/fuzz-clang/corpus/, this run's crashes in build/fuzz-clang/findings/ (a fixed one goes
# into fuzz/corpus/<target>/found-*, so that every replay checks it again).
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz: clang is not installed (apt-get install clang: libFuzzer comes with it)"; exit 1; }
	@$(MAKE) --no-print-directory FUZZ=1 fuzz-run

fuzz-run: $(foreach f,$(FUZZ_NAMES),$(BUILD)/fuzz/fuzz-$(f))
	@rc=0; for f in $(FUZZ_NAMES); do \
	    mkdir -p $(BUILD)/corpus/$$f $(BUILD)/findings; rm -f $(BUILD)/findings/$$f-*; \
	    echo "== fuzz $$f for $(FUZZ_SECONDS) s"; \
	    $(BUILD)/fuzz/fuzz-$$f -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 \
	        -artifact_prefix=$(BUILD)/findings/$$f- $(BUILD)/corpus/$$f fuzz/corpus/$$f 2>&1 | \
	        grep -E "^(stat::number_of_executed_units|#[0-9]+ +DONE|==[0-9]+==ERROR|SUMMARY|fuzz:)" || true; \
	    if ls $(BUILD)/findings/$$f-* >/dev/null 2>&1; then echo "fuzz $$f: FINDINGS in $(BUILD)/findings/"; rc=1; fi; \
	done; exit $$rc

-include $(shell find $(OBJ) -name '*.d' 2>/dev/null)

# ---- targets -----------------------------------------------------------------------------------
.PHONY: all build programs tests run test test-common test-all check-layout bench bench-server plots clean help deps-test deps-plot deps-server deps-mpi deps-browser chapter-4-tp workshop-demo results exercise-check check-docs fuzz fuzz-run fuzz-replay fuzz-corpus memcheck memcheck-run \
        $(foreach n,1 2 3 4 5 6,chapter-$(n) test-$(n) bench-$(n) test-one-$(n))

# `make`: every program, and every test binary when Check is installed (make test installs it).
all: programs
	@if [ "$(HAVE_CHECK)" = yes ]; then $(MAKE) --no-print-directory tests; \
	 else echo "make: Check is not installed, so test binaries were not built ('make test' installs it)"; fi
build: all
programs: $(PROGRAMS) $(SHARE)
tests: $(TESTS) $(PROGRAMS) $(SHARE)

deps-test:
	@CHECK_PREFIX="$(CHECK_PREFIX)" scripts/deps.sh test
deps-plot:
	@scripts/deps.sh plot
deps-server:
	@$(if $(and $(filter command line,$(origin SERVER)),$(filter 0,$(SERVER))),true,scripts/deps.sh server)
deps-mpi:
	@$(if $(and $(filter command line,$(origin MPI)),$(filter 0,$(MPI))),true,scripts/deps.sh mpi)
deps-browser:
	@$(if $(and $(filter command line,$(origin SERVER)),$(filter 0,$(SERVER))),true,scripts/deps.sh browser)

# `make run`: every chapter's lesson in order; chapters not written yet say so.
run: deps-plot
	@$(MAKE) --no-print-directory programs
	@for c in $(CHAPTERS); do \
	    if [ -x $(BIN)/$$c ]; then \
	        echo; echo "================ chapter $$c ================"; \
	        $(BIN)/$$c --device $(DEVICE) || exit 1; \
	    else echo; echo "================ chapter $$c: coming (not written yet) ================"; fi; \
	    if [ $$c = 04_kvcache ] && [ -x $(BIN)/04_kvcache_tp ]; then \
	        echo; echo "================ chapter 04_kvcache, part 2: tensor parallelism ================"; \
	        $(BIN)/04_kvcache_tp || exit 1; fi; \
	done

# Chapter 04's second part, tensor parallelism (04_kvcache_tp: needs Open MPI, installed here if
# it can be): the lesson, which runs `mpirun -np N 04_kvcache_tp time` for N = 1, 2, 4 itself.
chapter-4-tp: deps-plot deps-mpi
	@$(MAKE) --no-print-directory $(BIN)/04_kvcache_tp
	$(BIN)/04_kvcache_tp

# common/'s suite alone.
test-common: deps-test
	@$(MAKE) --no-print-directory $(TST)/common
	$(TST)/common

define numbered_targets
chapter-$(1): deps-plot
	@if [ -z "$(filter $(call chapter_of,$(1)),$(BUILT))" ]; then echo "chapter $(call chapter_of,$(1)) is coming (not written yet)"; exit 1; fi
	@$(MAKE) --no-print-directory $(BIN)/$(call chapter_of,$(1)) $(SHARE)
	$(BIN)/$(call chapter_of,$(1)) --device $(DEVICE)

test-$(1): deps-test
	@$(MAKE) --no-print-directory test-one-$(1)

test-one-$(1):
	@if [ -z "$(filter $(call chapter_of,$(1)),$(BUILT))" ]; then echo "chapter $(call chapter_of,$(1)) is coming (not written yet)"; exit 1; fi
	@$(MAKE) --no-print-directory $(TST)/$(call chapter_of,$(1)) $(PROGRAMS) $(SHARE)
	$(TST)/$(call chapter_of,$(1))

bench-$(1): deps-plot
	@if [ -z "$(filter $(call chapter_of,$(1)),$(BUILT))" ]; then echo "chapter $(call chapter_of,$(1)) is coming (not written yet)"; exit 1; fi
	@$(MAKE) --no-print-directory $(BIN)/$(call chapter_of,$(1)) $(SHARE)
	$(BIN)/$(call chapter_of,$(1)) bench --device $(DEVICE)
endef
$(foreach n,1 2 3 4 5 6,$(eval $(call numbered_targets,$(n))))

# `make test`: installs Check if needed, builds, then runs every chapter's suite (all of them,
# even after a failure) and fails if any failed.
test: deps-test deps-plot deps-server deps-mpi deps-browser
	@$(MAKE) --no-print-directory test-all

test-all: tests
	@rc=0; for t in $(TESTS); do echo; echo "== $$t"; $$t || rc=1; done; exit $$rc

# Workshop mode: chapter N's key code as a TODO in exercises/, built and tested against the
# chapter's suite (scripts/exercise.sh; EXERCISE_FLAGS=--fresh regenerates the file).
# Every command the README and docs/ show, run (or checked with --help) as written.
check-docs: programs
	@bash scripts/check-docs.sh

# The size rules of docs/architecture.md: main.c <= 450 lines, other .c <= 500, functions <= 90.
check-layout:
	@bash scripts/check-layout.sh

# The README's results table from the benchmark data (scripts/results.sh).
results:
	@bash scripts/results.sh $(BUILD)

exercise-check:
	@bash scripts/exercise-selftest.sh

# ---- mutation testing (make mutants): not in CI, it takes about 15 minutes ----
# scripts/mutants.txt's realistic bugs, each applied to a scratch copy in build/mutants/tree,
# built and run against the suites that should catch it; a table and the score (>= 95% caught).
# MUTANTS=id1,id2 or CHAPTER=N runs a subset; scripts/mutants.sh --check only checks the list.
.PHONY: mutants
mutants:
	@MUTANTS="$(MUTANTS)" CHAPTER="$(CHAPTER)" bash scripts/mutants.sh

exercise-%:
	@bash scripts/exercise.sh $* $(EXERCISE_FLAGS)

bench: deps-plot programs
	@for c in $(BUILT); do $(BIN)/$$c bench --device $(DEVICE) || exit 1; done
	@if [ "$(SERVER)" = 1 ] && [ -n "$(filter 06_batching,$(BUILT))" ]; then $(MAKE) --no-print-directory bench-server; fi

# Chapter 06's HTTP server from the clients' side, beside in-process serve (scripts/server-bench.sh;
# needs the server built in, and build/venv with the openai package: made if missing). QUICK=1:
# every part smaller.
# The engine at work on its live page: the server with a small pool and a one-minute workload,
# round after round, until Ctrl-C (scripts/workshop-demo.sh; PORT, HOST, ROUNDS, CHECKPOINT).
workshop-demo:
	@$(MAKE) --no-print-directory $(BIN)/06_batching
	@bash scripts/workshop-demo.sh $(BUILD)

bench-server: deps-plot
	@$(MAKE) --no-print-directory $(BIN)/06_batching
	@bash scripts/server-bench.sh $(BUILD) $(if $(QUICK),--quick)

# Redraws every PNG from the .dat files that benchmarks and lessons left in $(BUILD)/bench.
plots: deps-plot $(SHARE)
	@shopt -s nullglob; n=0; for d in $(BUILD)/bench/*.dat; do \
	    base=$$(basename $$d .dat); c=$${base%%_*}; c=$$(ls -d $${c}_* 2>/dev/null | head -n1); \
	    which=$${base#"$$c"_}; [ -n "$$c" ] || continue; \
	    gp=$(BUILD)/share/$$c.gp; [ -f $$c/plot_$$which.gp ] && gp=$$c/plot_$$which.gp; \
	    gnuplot -e "which='$$which'; datafile='$$d'; outfile='$(BUILD)/plots/$$base.png'; setup='$(BUILD)/share/common.gp'; term='png'" $$gp \
	        && echo "$(BUILD)/plots/$$base.png" && n=$$((n+1)); \
	done; echo "$$n plots drawn"

# ---- aarch64 Linux: a cross build, its tests run under user-mode emulation (make test-arm64) ----
# Everything built for aarch64 by the cross gcc into build/arm64: CUDA=0 (nvcc does not target it
# here) and -march=armv8-a (the baseline every 64-bit ARM CPU runs: -march=native would describe
# this host), linked with Check for arm64 that scripts/arm64-deps.sh unpacks (it installs the
# cross gcc and qemu-user too). Every chapter's suite then runs under qemu-aarch64; TEST_RUNNER
# makes the suites start the programs through the emulator as well (common/testing.c),
# TEST_SMALL=1 gives the few tests that would take minutes there smaller sizes, and Check's
# per-test time limits are 4x longer.
ARM64_CC ?= aarch64-linux-gnu-gcc
ARM64_BUILD ?= build/arm64
ARM64_CHECK ?= .deps/check-arm64
ARM64_RUN ?= qemu-aarch64 -L /usr/aarch64-linux-gnu
.PHONY: test-arm64 test-arm64-run

test-arm64:
	@bash scripts/arm64-deps.sh $(ARM64_CHECK)
	@$(MAKE) --no-print-directory CC=$(ARM64_CC) MARCH=-march=armv8-a CUDA=0 SAN=0 FUZZ=0 MEMCHECK=0 SERVER=0 MPI=0 \
	    BUILD=$(ARM64_BUILD) CHECK_PREFIX=$(abspath $(ARM64_CHECK)) test-arm64-run

# (the second half, inside the cross build's variables; run it through test-arm64)
test-arm64-run: tests
	@rc=0; for t in $(TESTS); do \
	    echo; echo "== $$t under $(firstword $(ARM64_RUN))"; start=$$(date +%s); \
	    TEST_RUNNER="$(ARM64_RUN)" TEST_SMALL=1 CK_TIMEOUT_MULTIPLIER=4 $(ARM64_RUN) $$t || rc=1; \
	    echo "$$(basename $$t): $$(( $$(date +%s) - start )) s"; \
	done; exit $$rc

clean:
	rm -rf build

help:
	@echo "make                 build every program and test binary into build/ (runs nothing)"
	@echo "make run             run every chapter's lesson in order (GPU if there is one, else CPU)"
	@echo "make chapter-N       build and run chapter N's lesson (N = 1..6)"
	@echo "make chapter-4-tp    chapter 04's part 2, tensor parallelism over Open MPI (04_kvcache_tp; installs Open MPI)"
	@echo "make test            build and run every chapter's Check suite (installs Check if needed)"
	@echo "make test-N          chapter N's suite only (make test-common: common/'s own suite)"
	@echo "make bench           every chapter's benchmarks: TSV rows on stdout, .dat + PNG under build/"
	@echo "make check-docs      every command in the README and docs/ runs as written (CI runs it)"
	@echo "make check-layout    every main.c <= 450 lines, other .c files <= 500, functions <= 90 (CI runs it)"
	@echo "make fuzz            libFuzzer on every fuzz target for FUZZ_SECONDS (60) each (clang)"
	@echo "make fuzz-replay     the committed fuzz corpus through every target (SAN=1: under ASan+UBSan; CI)"
	@echo "make memcheck        every verify (small sizes) and a short serve under valgrind"
	@echo "make test-arm64      cross build for aarch64 Linux, every chapter's suite under qemu-aarch64 (CI)"
	@echo "make results         the README's results table, from build/bench/ (after make bench, make chapter-5)"
	@echo "make exercise-N      workshop mode: chapter N's key code as a TODO in exercises/, tested"
	@echo "make exercise-check  every exercise fails untouched and passes when solved (CI runs it)"
	@echo "make mutants         the list of realistic bugs (scripts/mutants.txt), each built and tested: score >= 95%"
	@echo "                     MUTANTS=id1,id2 or CHAPTER=N: a subset (not in CI: the whole list takes ~15 min)"
	@echo "make bench-N         chapter N's benchmarks"
	@echo "make workshop-demo   chapter 06's server with a workload to watch on its live page (http://127.0.0.1:8000/)"
	@echo "make bench-server    chapter 06's HTTP server from the clients' side, beside in-process serve (QUICK=1: smaller)"
	@echo "                     CHECKPOINT=M.bin: bench-6 also times chapters 04-06 on that llama2.c checkpoint"
	@echo "make plots           redraw every PNG from the benchmark data in build/bench/"
	@echo "make clean           remove build/"
	@echo
	@echo "variables: SAN=1 (AddressSanitizer + UBSan build in build/san/), CUDA=0|1 (default: 1 when"
	@echo "  nvcc is found), GPU_ARCH=sm_90, DEVICE=auto|cpu|cuda (passed to the programs),"
	@echo "  CHECK_PREFIX=DIR (Check unpacked from Debian packages, for machines without apt),"
	@echo "  SERVER=0 (chapter 06 without its HTTP server), MPI=0 (no 04_kvcache_tp)"
