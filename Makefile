# imp: build, test, fuzz and benchmark.  `make help` lists the targets.
#
# Sources are found by globbing, so a new file needs no edit here:
#   protocol/*.c                 -> $(BUILD)/libimp.a         (also -Wconversion)
#   tests/protocol/test_<n>.c    -> $(BUILD)/tests/test_<n>   (+ tests/support/*.c, cmocka)
#   fuzz/fuzz_<n>.c              -> $(BUILD)/fuzz/replay_<n>  (+ fuzz/replay.c)
#                                -> build/fuzz/libfuzzer_<n>  (make fuzz, clang)
#                                -> build/fuzz/afl_<n>        (make fuzz-afl, afl-clang-fast)
#   bench/bench_<n>.c            -> build/bench/bench_<n>     (-O2, never sanitized)
#   server/*.c                   -> $(BUILD)/imd              (only once server/ has sources)
#
# $(BUILD) is build/ normally, build/san-<sanitizers>-<cc>/ with SANITIZE=... and build/cov/
# for coverage, so the three never share objects.  Each tree records the compiler and flags it
# was built with (.flags) and rebuilds when they change.

.DEFAULT_GOAL := all
.DELETE_ON_ERROR:

CC      ?= cc
FUZZ_CC ?= clang
AFL_CC  ?= afl-clang-fast
AR      ?= ar

# Sanitizers for the AFL++ build; empty for a faster, unsanitized AFL++ build.
AFL_SANITIZE ?= address,undefined

CFLAGS  ?= -g -O2
LDFLAGS ?=

WARNINGS := -std=c11 -Wall -Wextra -Wpedantic -Wstrict-prototypes -Wmissing-prototypes \
	-Wshadow -Wwrite-strings -Wpointer-arith -Wcast-align -Wundef -Wvla -Wformat=2 -Werror
DEPFLAGS := -MMD -MP

SERVER_LIBS ?= -levent -levent_openssl -lssl -lcrypto -lsqlite3 -lsodium -lpthread

comma := ,

# ---- build flavour ---------------------------------------------------------------------------

ifneq ($(SANITIZE),)
BUILD ?= build/san-$(subst $(comma),-,$(SANITIZE))-$(notdir $(firstword $(CC)))
MODE_FLAGS := -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer -O1
else ifeq ($(COV_BUILD),1)
BUILD ?= build/cov
MODE_FLAGS := --coverage -O0
else
BUILD ?= build
MODE_FLAGS :=
endif

# MODE_FLAGS come after CFLAGS so that their -O level wins.
BASE_CFLAGS   := $(WARNINGS) $(CPPFLAGS) $(CFLAGS) $(MODE_FLAGS) $(DEPFLAGS)
LIB_CFLAGS    := $(BASE_CFLAGS) -Wconversion -Iprotocol/include -Iprotocol
TEST_CFLAGS   := $(BASE_CFLAGS) -Iprotocol/include -Iprotocol -Itests/support \
	-DIMP_SRCDIR=\"$(CURDIR)\"
REPLAY_CFLAGS := $(BASE_CFLAGS) -D_GNU_SOURCE -Iprotocol/include -Iprotocol -Iserver
SERVER_CFLAGS := $(BASE_CFLAGS) -D_GNU_SOURCE -Iprotocol/include -Iserver
TOOL_CFLAGS   := $(BASE_CFLAGS) -D_GNU_SOURCE -Iprotocol/include -Itools/common
ALL_LDFLAGS   := $(MODE_FLAGS) $(LDFLAGS)

BENCH_CFLAGS  := $(WARNINGS) $(CPPFLAGS) -g -O2 $(DEPFLAGS) -Iprotocol/include -Iprotocol

LF_SAN        := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer
LF_CFLAGS     := $(WARNINGS) -g -O1 $(LF_SAN) $(DEPFLAGS) -D_GNU_SOURCE -Iprotocol/include \
	-Iprotocol -Iserver
AFL_SAN       := -fsanitize=fuzzer $(if $(AFL_SANITIZE),-fsanitize=$(AFL_SANITIZE) \
	-fno-sanitize-recover=all -fno-omit-frame-pointer)
AFL_CFLAGS    := $(WARNINGS) -g -O1 $(AFL_SAN) $(DEPFLAGS) -D_GNU_SOURCE -Iprotocol/include \
	-Iprotocol -Iserver

# ---- sources and products --------------------------------------------------------------------

LIB_SRC     := $(sort $(wildcard protocol/*.c))
TEST_SRC    := $(sort $(wildcard tests/protocol/test_*.c))
SUPPORT_SRC := $(sort $(wildcard tests/support/*.c))
FUZZ_SRC    := $(sort $(wildcard fuzz/fuzz_*.c))
REPLAY_MAIN := $(wildcard fuzz/replay.c)
BENCH_SRC   := $(sort $(wildcard bench/bench_*.c))
SERVER_SRC  := $(sort $(wildcard server/*.c))
# server/main.c has imd's main(); the rest is libims.a, which the server tests link too.
SRVLIB_SRC  := $(filter-out server/main.c,$(SERVER_SRC))
STEST_SRC   := $(sort $(wildcard tests/server/test_*.c))
ITEST_SRC   := $(sort $(wildcard tests/integration/test_*.c))
# tools/common/*.c is libimt.a (the client layer shared by the tools); tools/<tool>/*.c is
# build/<tool>. Only imsend links readline.
TOOLCOM_SRC := $(sort $(wildcard tools/common/*.c))
TOOL_NAMES  := $(sort $(filter-out common,$(notdir $(patsubst %/,%,$(wildcard tools/*/)))))
TOOL_SRC    := $(sort $(foreach t,$(TOOL_NAMES),$(wildcard tools/$(t)/*.c)))
TTEST_SRC   := $(sort $(wildcard tests/tools/test_*.c))
TOOL_LIBS   ?= -levent -levent_openssl -lssl -lcrypto -lpthread
TOOL_LIBS_imsend := -lreadline
ISUP_SRC    := $(sort $(filter-out $(ITEST_SRC),$(wildcard tests/integration/*.c)))
FORMAT_SRC   = $(sort $(shell find $(wildcard protocol tests fuzz bench server tools examples) \
	-type f \( -name '*.c' -o -name '*.h' \) 2>/dev/null))

FUZZ_NAMES  := $(patsubst fuzz/fuzz_%.c,%,$(FUZZ_SRC))

OBJ         := $(BUILD)/obj
LIB         := $(BUILD)/libimp.a
LIB_OBJ     := $(LIB_SRC:%.c=$(OBJ)/%.o)
SUPPORT_OBJ := $(SUPPORT_SRC:%.c=$(OBJ)/%.o)
TEST_BIN    := $(patsubst tests/protocol/%.c,$(BUILD)/tests/%,$(TEST_SRC))
# Replay binaries need fuzz/replay.c; until it exists there is nothing to replay with.
REPLAY_BIN  := $(if $(REPLAY_MAIN),$(FUZZ_NAMES:%=$(BUILD)/fuzz/replay_%))
SERVER_OBJ  := $(SERVER_SRC:%.c=$(OBJ)/%.o)
SRVLIB      := $(BUILD)/libims.a
SRVLIB_OBJ  := $(SRVLIB_SRC:%.c=$(OBJ)/%.o)
IMD         := $(if $(SERVER_SRC),$(BUILD)/imd)
STEST_BIN   := $(patsubst tests/server/%.c,$(BUILD)/tests/server/%,$(STEST_SRC))
ISUP_OBJ    := $(ISUP_SRC:%.c=$(OBJ)/%.o)
ITEST_BIN   := $(patsubst tests/integration/%.c,$(BUILD)/tests/integration/%,$(ITEST_SRC))
TOOLLIB     := $(BUILD)/libimt.a
TOOLCOM_OBJ := $(TOOLCOM_SRC:%.c=$(OBJ)/%.o)
TOOL_OBJ    := $(TOOL_SRC:%.c=$(OBJ)/%.o)
TOOL_BIN    := $(foreach t,$(TOOL_NAMES),$(if $(wildcard tools/$(t)/*.c),$(BUILD)/$(t)))
TTEST_BIN   := $(patsubst tests/tools/%.c,$(BUILD)/tests/tools/%,$(TTEST_SRC))

BENCH_DIR   := build/bench
BENCH_LIB   := $(BENCH_DIR)/libimp.a
BENCH_LOBJ  := $(LIB_SRC:%.c=$(BENCH_DIR)/obj/%.o)
BENCH_BIN   := $(patsubst bench/%.c,$(BENCH_DIR)/%,$(BENCH_SRC))

LF_DIR      := build/fuzz/obj-libfuzzer
LF_LOBJ     := $(LIB_SRC:%.c=$(LF_DIR)/%.o)
LF_BIN      := $(FUZZ_NAMES:%=build/fuzz/libfuzzer_%)
LF_SOBJ     := $(SRVLIB_SRC:%.c=$(LF_DIR)/%.o)
AFL_DIR     := build/fuzz/obj-afl
AFL_LOBJ    := $(LIB_SRC:%.c=$(AFL_DIR)/%.o)
AFL_BIN     := $(FUZZ_NAMES:%=build/fuzz/afl_%)
AFL_SOBJ    := $(SRVLIB_SRC:%.c=$(AFL_DIR)/%.o)

# Fuzz targets named fuzz_imd*.c drive the server core (libims: store, auth, routing) and link
# its libraries too.
FUZZ_SRV_NAMES := $(filter imd%,$(FUZZ_NAMES))
fuzz_needs_srv = $(filter $(1),$(FUZZ_SRV_NAMES))

# ---- output ----------------------------------------------------------------------------------

ifeq ($(V),1)
Q :=
msg =
else
Q := @
msg = @printf '  %-6s %s\n' '$(1)' '$(2)'
endif

# Environment for every program run by check, coverage and bench.  Values already in the
# environment win.
ASAN_OPTIONS  ?= detect_leaks=1:abort_on_error=1
UBSAN_OPTIONS ?= print_stacktrace=1:halt_on_error=1
LSAN_OPTIONS  ?= use_registers=0
export ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
# Scripts and tests/integration/run find the binaries of this flavour here.
export IMP_BUILD_DIR := $(BUILD)

# ---- top-level targets -----------------------------------------------------------------------

.PHONY: all lib tests replay imd benches bench check unit-tests replay-corpus run deps \
	spec-check coverage fuzz fuzz-afl format format-check clean clean-san help FORCE soak

# Benchmarks are built by the plain build only: sanitizers and coverage would falsify them.
all: lib tests replay $(if $(MODE_FLAGS),,benches) $(IMD) $(TOOL_BIN) $(STEST_BIN) $(ITEST_BIN) \
	$(TTEST_BIN)

lib: $(LIB)
tests: $(TEST_BIN) $(STEST_BIN) $(ITEST_BIN) $(TTEST_BIN)
replay: $(REPLAY_BIN)
benches: $(BENCH_BIN)
imd: $(IMD)
fuzz: $(LF_BIN)
fuzz-afl: $(AFL_BIN)

# One step after another, so that packages are in place before anything is compiled.
check:
	@ci/deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory unit-tests
	@$(MAKE) --no-print-directory replay-corpus
	@# The model does not depend on the C build flavour: check it once, in the plain build.
	@if [ -n '$(MODE_FLAGS)' ]; then echo '-- ci/spin-check: skipped in the $(BUILD) flavour'; \
	elif [ -e ci/spin-check ]; then echo '== ci/spin-check'; ci/spin-check; \
	else echo '-- ci/spin-check: not present, skipped'; fi
	@echo '== ci/test-spec-check'; ci/test-spec-check
	@echo '== ci/spec-check'; ci/spec-check
	@# Hook for the server's integration tests (they find imd in $$IMP_BUILD_DIR).
	@if [ -x tests/integration/run ]; then echo '== tests/integration/run'; \
		tests/integration/run; \
	else echo '-- tests/integration/run: not present, skipped'; fi
	@if [ '$(COVERAGE)' = 1 ]; then MAKE='$(MAKE)' ci/coverage; fi
	@echo 'check: all passed ($(BUILD))'

# Each unit test runs from the top directory; stop at the first failure.
unit-tests: $(TEST_BIN) $(STEST_BIN) $(TTEST_BIN)
	@set -e; for t in $(TEST_BIN) $(STEST_BIN) $(TTEST_BIN); do \
		echo "== $$t"; \
		$$t || { echo "FAILED: $$t" >&2; exit 1; }; \
	done

# Replays fuzz/corpus/<name>/ through each target; a target without a corpus is skipped.
replay-corpus: $(REPLAY_BIN)
	@set -e; for n in $(FUZZ_NAMES); do \
		d=fuzz/corpus/$$n; b=$(BUILD)/fuzz/replay_$$n; \
		if [ ! -d $$d ]; then echo "-- replay $$n: no $$d, skipped"; continue; fi; \
		if [ ! -e $$b ]; then echo "FAILED: $$b not built (is fuzz/replay.c missing?)" >&2; \
			exit 1; fi; \
		echo "== replay $$n: $$(find $$d -type f | wc -l) inputs from $$d"; \
		$$b $$d || { echo "FAILED: replay $$n" >&2; exit 1; }; \
	done

run:
	@ci/deps
	@$(MAKE) --no-print-directory all
	@if [ -x $(BUILD)/imd ]; then \
		mkdir -p imd-data; \
		echo '== $(BUILD)/imd --listen 127.0.0.1:7600 --data ./imd-data'; \
		exec $(BUILD)/imd --listen 127.0.0.1:7600 --data ./imd-data; \
	else \
		echo 'imd is not built: server/ has no sources yet (see issue 3)' >&2; exit 1; \
	fi

deps:
	@ci/deps

spec-check:
	@ci/spec-check

coverage:
	@MAKE='$(MAKE)' ci/coverage

# The codec benchmarks, then imload's standard scenarios against a fresh imd. bench/run-imd
# (the server's own scenarios: idle memory, login rate, ...) takes a few minutes more: run it by
# hand.
bench: $(BENCH_BIN) $(IMD) $(BUILD)/imload
	@set -e; for b in $(BENCH_BIN); do echo "== $$b"; $$b; done
	@echo '== bench/run-imload'; bench/run-imload

# The load and soak tier (issue 6): 10,000 idle connections, a 1,000-member room, churn, a
# 30-minute soak with kill -9 and the full-size kill -9 test, against this flavour's binaries
# (IMP_BUILD_DIR); IMP_SOAK_MINUTES=2 for a quick run, the other sizes in `ci/soak -h`.
soak: all
	@ci/soak

format:
	$(if $(FORMAT_SRC),clang-format -i $(FORMAT_SRC),@echo 'format: no sources')

format-check:
	$(if $(FORMAT_SRC),clang-format --dry-run -Werror $(FORMAT_SRC),@echo 'format: no sources')

clean:
	rm -rf build

clean-san:
	rm -rf build/san-*

help:
	@echo 'make [all]          libimp.a, unit tests, corpus replayers, benches (and imd once'
	@echo '                    server/ has sources) into build/'
	@echo 'make check          ci/deps, build, unit tests, corpus replay, ci/spin-check,'
	@echo '                    ci/spec-check, tests/integration/run; COVERAGE=1 adds coverage'
	@echo 'make run            ci/deps, build, start build/imd on 127.0.0.1:7600'
	@echo 'make SANITIZE=address,undefined check   sanitized build in build/san-*/'
	@echo 'make coverage       gcov build in build/cov/, gcovr report on protocol/'
	@echo 'make fuzz           libFuzzer binaries build/fuzz/libfuzzer_<name> (clang)'
	@echo 'make fuzz-afl       AFL++ binaries build/fuzz/afl_<name> (afl-clang-fast)'
	@echo 'make bench          build and run bench/bench_*.c at -O2'
	@echo 'make soak           load and soak tier (ci/soak): 10k idle, 1k room, churn, a 30-min'
	@echo '                    soak with kill -9 (IMP_SOAK_MINUTES=2: quick), results table in'
	@echo '                    bench/results/soak-<date>.txt'
	@echo 'make shlib          build/pic/libimp.so.X.Y.Z (-fPIC objects, soname libimp.so.X)'
	@echo 'make install        imd, tools, libimp (.a, .so, .pc, headers), man pages, unit,'
	@echo '                    completions into PREFIX=/usr/local (DESTDIR, BINDIR, SBINDIR,'
	@echo '                    LIBDIR, INCLUDEDIR, MANDIR, SYSCONFDIR, ... see the Makefile)'
	@echo 'make uninstall      remove what make install installed (same variables)'
	@echo 'make format | format-check | clean | clean-san      V=1 shows commands'

# ---- flags stamps: rebuild a tree when its compiler or flags change ---------------------------

STAMP      := $(BUILD)/.flags
BENCH_STAMP := $(BENCH_DIR)/.flags
LF_STAMP   := $(LF_DIR)/.flags
AFL_STAMP  := $(AFL_DIR)/.flags

$(STAMP): FLAGS = $(CC) $(LIB_CFLAGS) $(TEST_CFLAGS) $(SERVER_CFLAGS) $(TOOL_CFLAGS) $(ALL_LDFLAGS)
$(BENCH_STAMP): FLAGS = $(CC) $(BENCH_CFLAGS) $(LDFLAGS)
$(LF_STAMP): FLAGS = $(FUZZ_CC) $(LF_CFLAGS)
$(AFL_STAMP): FLAGS = $(AFL_CC) $(AFL_CFLAGS)

$(STAMP) $(BENCH_STAMP) $(LF_STAMP) $(AFL_STAMP): FORCE
	@mkdir -p $(@D)
	@printf '%s\n' '$(FLAGS)' | cmp -s - $@ || printf '%s\n' '$(FLAGS)' > $@

FORCE:

# ---- normal / sanitized / coverage tree ------------------------------------------------------

$(OBJ)/protocol/%.o: protocol/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(LIB_CFLAGS) -c $< -o $@

$(OBJ)/tests/%.o: tests/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(TEST_CFLAGS) -c $< -o $@

$(OBJ)/fuzz/%.o: fuzz/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(REPLAY_CFLAGS) -c $< -o $@

$(OBJ)/server/%.o: server/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(SERVER_CFLAGS) -c $< -o $@

# The archive is rebuilt from scratch so that objects of deleted sources do not linger.
$(LIB): $(LIB_OBJ)
	@mkdir -p $(@D)
	$(call msg,AR,$@)
	$(Q)rm -f $@ && $(AR) rcs $@ $(LIB_OBJ)

$(TEST_BIN): $(BUILD)/tests/%: $(OBJ)/tests/protocol/%.o $(SUPPORT_OBJ) $(LIB)
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(CC) $(ALL_LDFLAGS) $< $(SUPPORT_OBJ) $(LIB) -lcmocka -o $@

$(REPLAY_BIN): $(BUILD)/fuzz/replay_%: $(OBJ)/fuzz/fuzz_%.o $(OBJ)/fuzz/replay.o $(LIB)
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(CC) $(ALL_LDFLAGS) $(filter %.o,$^) $(if $(call fuzz_needs_srv,$*),$(SRVLIB)) $(LIB) \
		$(if $(call fuzz_needs_srv,$*),$(SERVER_LIBS)) -o $@

$(FUZZ_SRV_NAMES:%=$(BUILD)/fuzz/replay_%): $(SRVLIB)

$(SRVLIB): $(SRVLIB_OBJ)
	@mkdir -p $(@D)
	$(call msg,AR,$@)
	$(Q)rm -f $@ && $(AR) rcs $@ $(SRVLIB_OBJ)

$(BUILD)/imd: $(OBJ)/server/main.o $(SRVLIB) $(LIB)
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(CC) $(ALL_LDFLAGS) $^ $(SERVER_LIBS) -o $@

# Server unit tests: the core without sockets, against libims.a.
$(OBJ)/tests/server/%.o: tests/server/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(TEST_CFLAGS) -D_GNU_SOURCE -Iserver -c $< -o $@

$(STEST_BIN): $(BUILD)/tests/server/%: $(OBJ)/tests/server/%.o $(SUPPORT_OBJ) $(SRVLIB) $(LIB)
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(CC) $(ALL_LDFLAGS) $^ -lcmocka $(SERVER_LIBS) -o $@

# The tools: libimt.a (tools/common), one binary per tools/<tool>/ directory.
$(OBJ)/tools/%.o: tools/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(TOOL_CFLAGS) -c $< -o $@

$(TOOLLIB): $(TOOLCOM_OBJ)
	@mkdir -p $(@D)
	$(call msg,AR,$@)
	$(Q)rm -f $@ && $(AR) rcs $@ $(TOOLCOM_OBJ)

.SECONDEXPANSION:
$(TOOL_BIN): $(BUILD)/%: $$(addsuffix .o,$$(addprefix $(OBJ)/,$$(basename $$(wildcard tools/$$*/*.c)))) \
		$(TOOLLIB) $(LIB)
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(CC) $(ALL_LDFLAGS) $^ $(TOOL_LIBS) $(TOOL_LIBS_$*) -o $@

# Unit tests of the shared tool code (no server needed).
$(OBJ)/tests/tools/%.o: tests/tools/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(TEST_CFLAGS) -D_GNU_SOURCE -Itools/common -c $< -o $@

$(TTEST_BIN): $(BUILD)/tests/tools/%: $(OBJ)/tests/tools/%.o $(SUPPORT_OBJ) $(TOOLLIB) $(LIB)
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(CC) $(ALL_LDFLAGS) $^ -lcmocka $(TOOL_LIBS) -o $@

# Integration tests: a real imd driven over loopback by a client on libimp (tests/integration).
$(OBJ)/tests/integration/%.o: tests/integration/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(TEST_CFLAGS) -D_GNU_SOURCE -Itests/integration -c $< -o $@

$(ITEST_BIN): $(BUILD)/tests/integration/%: $(OBJ)/tests/integration/%.o $(ISUP_OBJ) $(SUPPORT_OBJ) \
		$(LIB)
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(CC) $(ALL_LDFLAGS) $^ -lcmocka -lsqlite3 -lsodium -lssl -lcrypto -ldl -lpthread -o $@

# The power-loss VFS (tests/faults/powerloss_vfs.c), LD_PRELOADed into imd by test_faults. Built
# without sanitizers in every flavour (the test sets verify_asan_link_order=0 for the preload).
POWERLOSS_SO := $(BUILD)/tests/faults/libpowerloss.so
$(POWERLOSS_SO): tests/faults/powerloss_vfs.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,LD,$@)
	$(Q)$(CC) $(WARNINGS) $(CPPFLAGS) $(CFLAGS) -fPIC -shared $< -lsqlite3 -o $@

$(ITEST_BIN): | $(POWERLOSS_SO)

# ---- benchmarks: -O2, no sanitizers, no coverage, own copy of the library ---------------------

$(BENCH_DIR)/obj/protocol/%.o: protocol/%.c $(BENCH_STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(BENCH_CFLAGS) -Wconversion -c $< -o $@

$(BENCH_DIR)/obj/bench/%.o: bench/%.c $(BENCH_STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(BENCH_CFLAGS) -c $< -o $@

$(BENCH_LIB): $(BENCH_LOBJ)
	@mkdir -p $(@D)
	$(call msg,AR,$@)
	$(Q)rm -f $@ && $(AR) rcs $@ $(BENCH_LOBJ)

$(BENCH_BIN): $(BENCH_DIR)/%: $(BENCH_DIR)/obj/bench/%.o $(BENCH_LIB)
	$(call msg,LD,$@)
	$(Q)$(CC) $(LDFLAGS) $^ -o $@

# ---- fuzzers: library sources compiled into each binary with the fuzzer's flags ---------------

$(LF_DIR)/protocol/%.o: protocol/%.c $(LF_STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(FUZZ_CC) $(LF_CFLAGS) -Wconversion -c $< -o $@

$(LF_DIR)/fuzz/%.o: fuzz/%.c $(LF_STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(FUZZ_CC) $(LF_CFLAGS) -c $< -o $@

$(LF_DIR)/server/%.o: server/%.c $(LF_STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(FUZZ_CC) $(LF_CFLAGS) -c $< -o $@

$(LF_BIN): build/fuzz/libfuzzer_%: $(LF_DIR)/fuzz/fuzz_%.o $(LF_LOBJ)
	$(call msg,LD,$@)
	$(Q)$(FUZZ_CC) $(LF_SAN) $(filter %.o,$^) $(if $(call fuzz_needs_srv,$*),$(SERVER_LIBS)) -o $@

$(FUZZ_SRV_NAMES:%=build/fuzz/libfuzzer_%): $(LF_SOBJ)

# AFL_QUIET hides afl-clang-fast's banner; V=1 shows it.
AFL_ENV := $(if $(filter 1,$(V)),,AFL_QUIET=1)

$(AFL_DIR)/protocol/%.o: protocol/%.c $(AFL_STAMP)
	@mkdir -p $(@D)
	$(call msg,AFLCC,$@)
	$(Q)$(AFL_ENV) $(AFL_CC) $(AFL_CFLAGS) -Wconversion -c $< -o $@

$(AFL_DIR)/fuzz/%.o: fuzz/%.c $(AFL_STAMP)
	@mkdir -p $(@D)
	$(call msg,AFLCC,$@)
	$(Q)$(AFL_ENV) $(AFL_CC) $(AFL_CFLAGS) -c $< -o $@

$(AFL_DIR)/server/%.o: server/%.c $(AFL_STAMP)
	@mkdir -p $(@D)
	$(call msg,AFLCC,$@)
	$(Q)$(AFL_ENV) $(AFL_CC) $(AFL_CFLAGS) -c $< -o $@

$(AFL_BIN): build/fuzz/afl_%: $(AFL_DIR)/fuzz/fuzz_%.o $(AFL_LOBJ)
	$(call msg,AFLLD,$@)
	$(Q)$(AFL_ENV) $(AFL_CC) $(AFL_SAN) $(filter %.o,$^) \
		$(if $(call fuzz_needs_srv,$*),$(SERVER_LIBS)) -o $@

$(FUZZ_SRV_NAMES:%=build/fuzz/afl_%): $(AFL_SOBJ)

# ---- header dependencies ---------------------------------------------------------------------

DEP := $(LIB_OBJ:.o=.d) $(SUPPORT_OBJ:.o=.d) $(SERVER_OBJ:.o=.d) $(BENCH_LOBJ:.o=.d) \
	$(patsubst %.c,$(OBJ)/%.d,$(STEST_SRC) $(ITEST_SRC) $(ISUP_SRC) $(TTEST_SRC)) \
	$(TOOLCOM_OBJ:.o=.d) $(TOOL_OBJ:.o=.d) \
	$(LF_LOBJ:.o=.d) $(AFL_LOBJ:.o=.d) $(LF_SOBJ:.o=.d) $(AFL_SOBJ:.o=.d) \
	$(patsubst %.c,$(OBJ)/%.d,$(TEST_SRC) $(FUZZ_SRC) $(REPLAY_MAIN)) \
	$(patsubst %.c,$(BENCH_DIR)/obj/%.d,$(BENCH_SRC)) \
	$(patsubst fuzz/%.c,$(LF_DIR)/fuzz/%.d,$(FUZZ_SRC)) \
	$(patsubst fuzz/%.c,$(AFL_DIR)/fuzz/%.d,$(FUZZ_SRC))
-include $(DEP)

# ---- install, shared library, packaging --------------------------------------------------------
#
#   make install   [PREFIX=/usr/local] [DESTDIR=] [BINDIR=] [SBINDIR=] [LIBDIR=] [INCLUDEDIR=]
#                  [MANDIR=] [SYSCONFDIR=] [DOCDIR=] [BASHCOMPDIR=] [SYSTEMDUNITDIR=]
#   make uninstall (same variables)
#
# Layout (FHS): imd is a daemon run by the administrator, so it goes to $(SBINDIR) (PREFIX/sbin);
# the tools (imsend, imwatch, imload: whichever have sources) to $(BINDIR). libimp as
# libimp.a, libimp.so.$(IMP_VERSION) with soname libimp.so.$(IMP_SOVERSION) and the dev symlink
# libimp.so, libimp.pc (from protocol/libimp.pc.in), headers under $(INCLUDEDIR)/imp/, man
# pages man/*.[1-8], bash completions, the systemd unit (ExecStart and --config rewritten to
# $(SBINDIR) and $(SYSCONFDIR)), dist/imd.conf as $(DOCDIR)/imd.conf.example and as
# $(SYSCONFDIR)/imd/imd.conf when that file does not exist yet (uninstall removes it only while
# it is unchanged).
#
# The version comes from one place, IMP_LIB_VERSION in protocol/include/imp/imp.h: imd
# --version, the shared library's file name and soname, libimp.pc and debian/changelog (checked
# by ci/test-deb) all agree with it. The shared library is built from -fPIC objects in
# $(BUILD)/pic/, so the static build is untouched.

IMP_VERSION   := $(shell sed -n 's/^\#define IMP_LIB_VERSION "\(.*\)"/\1/p' \
	protocol/include/imp/imp.h)
IMP_SOVERSION := $(firstword $(subst ., ,$(IMP_VERSION)))

PREFIX         ?= /usr/local
BINDIR         ?= $(PREFIX)/bin
SBINDIR        ?= $(PREFIX)/sbin
LIBDIR         ?= $(PREFIX)/lib
INCLUDEDIR     ?= $(PREFIX)/include
DATADIR        ?= $(PREFIX)/share
MANDIR         ?= $(DATADIR)/man
DOCDIR         ?= $(DATADIR)/doc/imp
SYSCONFDIR     ?= $(PREFIX)/etc
PKGCONFIGDIR   ?= $(LIBDIR)/pkgconfig
BASHCOMPDIR    ?= $(DATADIR)/bash-completion/completions
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL        ?= install

PIC_DIR     := $(BUILD)/pic
PIC_OBJ     := $(LIB_SRC:%.c=$(PIC_DIR)/%.o)
SHLIB_NAME  := libimp.so.$(IMP_VERSION)
SONAME      := libimp.so.$(IMP_SOVERSION)
SHLIB       := $(PIC_DIR)/$(SHLIB_NAME)
PUB_HDR     := $(sort $(wildcard protocol/include/imp/*.h))
MAN_PAGES   := $(sort $(wildcard man/*.[1-8]))
# Every program that can be installed, so that uninstall also removes tools built later.
INST_TOOLS  := $(sort imsend imwatch imload $(TOOL_NAMES))

.PHONY: shlib tools install uninstall install-check-version

shlib: $(SHLIB)
tools: $(TOOL_BIN)

$(PIC_DIR)/protocol/%.o: protocol/%.c $(STAMP)
	@mkdir -p $(@D)
	$(call msg,CC,$@)
	$(Q)$(CC) $(LIB_CFLAGS) -fPIC -c $< -o $@

$(SHLIB): $(PIC_OBJ)
	$(call msg,LD,$@)
	$(Q)$(CC) -shared -Wl,-soname,$(SONAME) $(ALL_LDFLAGS) $(PIC_OBJ) -o $@

-include $(PIC_OBJ:.o=.d)

# Fails when imp.h has no parsable version, rather than installing "libimp.so.".
install-check-version:
	@case '$(IMP_VERSION)' in [0-9]*.[0-9]*.[0-9]*) ;; \
	*) echo 'install: no IMP_LIB_VERSION "X.Y.Z" in protocol/include/imp/imp.h' >&2; exit 1;; esac

install: install-check-version $(LIB) $(SHLIB) $(IMD) $(TOOL_BIN)
	@set -e; d='$(DESTDIR)'; \
	$(INSTALL) -d "$$d$(SBINDIR)" "$$d$(BINDIR)" "$$d$(LIBDIR)" "$$d$(PKGCONFIGDIR)" \
		"$$d$(INCLUDEDIR)/imp" "$$d$(DOCDIR)" "$$d$(BASHCOMPDIR)" "$$d$(SYSTEMDUNITDIR)" \
		"$$d$(SYSCONFDIR)/imd"; \
	echo "  INSTALL $$d$(SBINDIR)/imd"; \
	$(INSTALL) -m 755 $(BUILD)/imd "$$d$(SBINDIR)/imd"; \
	$(INSTALL) -m 644 dist/bash-completion/imd "$$d$(BASHCOMPDIR)/imd"; \
	for t in $(notdir $(TOOL_BIN)); do \
		echo "  INSTALL $$d$(BINDIR)/$$t"; \
		$(INSTALL) -m 755 $(BUILD)/$$t "$$d$(BINDIR)/$$t"; \
		if [ -e dist/bash-completion/$$t ]; then \
			$(INSTALL) -m 644 dist/bash-completion/$$t "$$d$(BASHCOMPDIR)/$$t"; fi; \
	done; \
	echo "  INSTALL $$d$(LIBDIR)/libimp.a $(SHLIB_NAME) $(SONAME) libimp.so libimp.pc"; \
	$(INSTALL) -m 644 $(LIB) "$$d$(LIBDIR)/libimp.a"; \
	$(INSTALL) -m 755 $(SHLIB) "$$d$(LIBDIR)/$(SHLIB_NAME)"; \
	ln -sf $(SHLIB_NAME) "$$d$(LIBDIR)/$(SONAME)"; \
	ln -sf $(SONAME) "$$d$(LIBDIR)/libimp.so"; \
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
		-e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(IMP_VERSION)|g' \
		protocol/libimp.pc.in > "$$d$(PKGCONFIGDIR)/libimp.pc"; \
	chmod 644 "$$d$(PKGCONFIGDIR)/libimp.pc"; \
	echo "  INSTALL $$d$(INCLUDEDIR)/imp/"; \
	$(INSTALL) -m 644 $(PUB_HDR) "$$d$(INCLUDEDIR)/imp/"; \
	for m in $(MAN_PAGES); do \
		s=$${m##*.}; $(INSTALL) -d "$$d$(MANDIR)/man$$s"; \
		echo "  INSTALL $$d$(MANDIR)/man$$s/$${m##*/}"; \
		$(INSTALL) -m 644 $$m "$$d$(MANDIR)/man$$s/"; \
	done; \
	sed -e 's|/usr/sbin/imd|$(SBINDIR)/imd|g' -e 's|/etc/imd/|$(SYSCONFDIR)/imd/|g' \
		dist/imd.service > "$$d$(SYSTEMDUNITDIR)/imd.service"; \
	chmod 644 "$$d$(SYSTEMDUNITDIR)/imd.service"; \
	$(INSTALL) -m 644 dist/imd.conf "$$d$(DOCDIR)/imd.conf.example"; \
	if [ -e "$$d$(SYSCONFDIR)/imd/imd.conf" ]; then \
		echo "  KEEP    $$d$(SYSCONFDIR)/imd/imd.conf (exists)"; \
	else \
		echo "  INSTALL $$d$(SYSCONFDIR)/imd/imd.conf"; \
		$(INSTALL) -m 644 dist/imd.conf "$$d$(SYSCONFDIR)/imd/imd.conf"; \
	fi

# Removes what install put there (every possible tool, so tools built later go too), then the
# directories that are imp's own when they are empty.
uninstall:
	@set -e; d='$(DESTDIR)'; \
	rm -f "$$d$(SBINDIR)/imd" "$$d$(BASHCOMPDIR)/imd" "$$d$(SYSTEMDUNITDIR)/imd.service"; \
	for t in $(INST_TOOLS); do \
		rm -f "$$d$(BINDIR)/$$t" "$$d$(BASHCOMPDIR)/$$t" "$$d$(MANDIR)/man1/$$t.1"; done; \
	rm -f "$$d$(LIBDIR)/libimp.a" "$$d$(LIBDIR)/libimp.so" "$$d$(LIBDIR)/libimp.so."* \
		"$$d$(PKGCONFIGDIR)/libimp.pc"; \
	rm -f $(addprefix "$$d$(INCLUDEDIR)/imp/,$(addsuffix ",$(notdir $(PUB_HDR)))); \
	for m in $(MAN_PAGES); do s=$${m##*.}; rm -f "$$d$(MANDIR)/man$$s/$${m##*/}"; done; \
	if cmp -s dist/imd.conf "$$d$(SYSCONFDIR)/imd/imd.conf"; then \
		rm -f "$$d$(SYSCONFDIR)/imd/imd.conf"; \
	elif [ -e "$$d$(SYSCONFDIR)/imd/imd.conf" ]; then \
		echo "uninstall: $$d$(SYSCONFDIR)/imd/imd.conf was changed: kept"; fi; \
	rm -f "$$d$(DOCDIR)/imd.conf.example"; \
	rmdir "$$d$(INCLUDEDIR)/imp" "$$d$(DOCDIR)" "$$d$(SYSCONFDIR)/imd" 2>/dev/null || true; \
	echo "uninstalled imp from $$d$(PREFIX)"
