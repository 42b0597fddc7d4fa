# facewire — top-level build.
#
#   make                 server, clients, library, CLI, tools          (bin/, lib/)
#   make test            everything below, then all tests (ASan+UBSan, TSan, ARM/qemu)
#   make run             deps + models + build, then start facewired on 127.0.0.1:7420
#   make deps            install missing Debian packages (root) or print the command
#   make models          fetch the pinned face-api weights into models/ and check sha256
#   make perf            build the benchmarks; perf/bench_*.sh run them (perf/README.md)
#   make fuzz            run the libFuzzer harnesses for a bounded time
#   make install PREFIX=/usr/local DESTDIR=
#   make SAN=address,undefined   a sanitizer build into build/san-address-undefined/
#   make CROSS=arm-linux-gnueabihf-   the client library, fwcat and example for ARM
#
# Conventions that keep this file small (so adding a source file never means editing it):
#   proto/*.c                   -> in libfacewire and in the server
#   client/*.c                  -> libfacewire (.a and .so); client/fwcat_main.c -> bin/fwcat
#   client/examples/*.c         -> bin/fw-example-*
#   engine/*.c                  -> engine archive; engine/facewire_main.c -> bin/facewire
#   server/*.c                  -> server archive; server/facewired_main.c -> bin/facewired
#   perf/fwload*.c              -> bin/fwload (proto + libuv only; never server code)
#   perf/bench_*.c              -> bin/bench_* (engine + server + proto)
#   tests/test_client_*.c       -> client unit tests: libfacewire only, so they cross-build
#   tests/test_*.c (others)     -> link everything; tests/tu_*.c are shared test utilities
#   a test containing the line  "// run-under: tsan"  also runs under ThreadSanitizer.

comma := ,

ifneq ($(CROSS),)
  CC := $(CROSS)gcc
  AR := $(CROSS)ar
  OUT ?= build/cross
else ifneq ($(SAN),)
  OUT ?= build/san-$(subst $(comma),-,$(SAN))
else
  OUT ?= .
endif
ifeq ($(OUT),.)
  OBJ := build/obj
else
  OBJ := $(OUT)/obj
endif

PREFIX  ?= /usr/local
DESTDIR ?=
VERSION := 0.1.0

OPT     ?= -O2
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CSTD    := -std=c11
BASE    := $(CSTD) $(WARN) $(OPT) -g -D_GNU_SOURCE -DFW_VERSION_STRING='"$(VERSION)"' -fPIC -MMD -MP
ifneq ($(SAN),)
  BASE  += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
  LDSAN := -fsanitize=$(SAN)
endif
ifeq ($(CROSS),)
  NATIVE ?= -march=native
endif

PKGS        := libuv libsodium openblas libturbojpeg libjpeg libcjson libpq
PKG_CFLAGS  := $(if $(CROSS),,$(shell pkg-config --cflags $(PKGS) 2>/dev/null))
PKG_LIBS    := $(if $(CROSS),,$(shell pkg-config --libs $(PKGS) 2>/dev/null)) -lhttp_parser -lm -lpthread

CFLAGS_ALL  := $(BASE) $(PKG_CFLAGS) -I. -Iproto $(CFLAGS)
# The networks' inner loops are worth the extra optimisation and the host's vector units.
CFLAGS_ENG  := $(CFLAGS_ALL) -O3 $(NATIVE)
CFLAGS_PROTO:= -std=c99 $(WARN) $(OPT) -g -fPIC -MMD -MP -I. -Iproto $(if $(SAN),-fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all) $(CFLAGS)
LDFLAGS_ALL := $(LDSAN) $(LDFLAGS)

# ---- sources -------------------------------------------------------------------------------
PROTO_SRC   := $(wildcard proto/*.c)
CLIENT_SRC  := $(filter-out %_main.c,$(wildcard client/*.c))
ENGINE_SRC  := $(filter-out %_main.c,$(wildcard engine/*.c))
SERVER_SRC  := $(filter-out %_main.c,$(wildcard server/*.c))
FWLOAD_SRC  := $(wildcard perf/fwload*.c)
BENCH_SRC   := $(wildcard perf/bench_*.c)
EXAMPLE_SRC := $(wildcard client/examples/*.c)
TU_SRC      := $(wildcard tests/tu_*.c)
TEST_CLIENT := $(wildcard tests/test_client_*.c)
TEST_OTHER  := $(filter-out $(TEST_CLIENT),$(wildcard tests/test_*.c))
TSAN_TESTS  := $(notdir $(basename $(shell grep -l '^// run-under: tsan' $(TEST_CLIENT) $(TEST_OTHER) /dev/null 2>/dev/null)))

o = $(patsubst %.c,$(OBJ)/%.o,$(1))

LIBFW_A     := $(OUT)/lib/libfacewire.a
LIBFW_SO    := $(OUT)/lib/libfacewire.so
ENGINE_A    := $(OBJ)/libfwengine.a
SERVER_A    := $(OBJ)/libfwserver.a
TU_A        := $(OBJ)/libfwtestutil.a

BIN_FACEWIRED := $(OUT)/bin/facewired
BIN_FWCAT     := $(OUT)/bin/fwcat
BIN_FACEWIRE  := $(OUT)/bin/facewire
BIN_FWLOAD    := $(OUT)/bin/fwload
BIN_EXAMPLES  := $(patsubst client/examples/%.c,$(OUT)/bin/fw-example-%,$(EXAMPLE_SRC))
BIN_BENCH     := $(patsubst perf/%.c,$(OUT)/bin/%,$(BENCH_SRC))
TESTS_CLIENT  := $(patsubst tests/%.c,$(OUT)/tests/%,$(TEST_CLIENT))
TESTS_OTHER   := $(patsubst tests/%.c,$(OUT)/tests/%,$(TEST_OTHER))

CLIENT_TARGETS := $(LIBFW_A) $(BIN_FWCAT) $(BIN_EXAMPLES)
ifeq ($(CROSS),)
  ALL_TARGETS  := $(CLIENT_TARGETS) $(LIBFW_SO) $(if $(wildcard server/facewired_main.c),$(BIN_FACEWIRED)) \
                  $(if $(wildcard engine/facewire_main.c),$(BIN_FACEWIRE)) $(if $(FWLOAD_SRC),$(BIN_FWLOAD))
  TEST_TARGETS := $(TESTS_CLIENT) $(TESTS_OTHER)
else
  ALL_TARGETS  := $(CLIENT_TARGETS)
  TEST_TARGETS := $(TESTS_CLIENT)
endif

.SECONDARY:
.PHONY: all test tests-build perf run deps models fuzz install clean check-clang
all: $(ALL_TARGETS)
tests-build: $(ALL_TARGETS) $(TEST_TARGETS)
perf: all $(BIN_BENCH)

# ---- compile -------------------------------------------------------------------------------
$(OBJ)/proto/%.o: proto/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_PROTO) -c $< -o $@
$(OBJ)/engine/%.o: engine/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ENG) -c $< -o $@
$(OBJ)/client/%.o: client/%.c
	@mkdir -p $(@D)
	$(CC) $(BASE) -I. -Iproto $(if $(CROSS),,-DFW_WITH_SODIUM $(shell pkg-config --cflags libsodium 2>/dev/null)) $(CFLAGS) -c $< -o $@
$(OBJ)/tests/test_client_%.o: tests/test_client_%.c
	@mkdir -p $(@D)
	$(CC) $(BASE) -I. -Iproto $(CFLAGS) -c $< -o $@
$(OBJ)/tests/tu_%.o: tests/tu_%.c
	@mkdir -p $(@D)
	$(CC) $(BASE) -I. -Iproto $(CFLAGS) -c $< -o $@
$(OBJ)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# ---- archives and libraries ----------------------------------------------------------------
$(LIBFW_A): $(call o,$(PROTO_SRC) $(CLIENT_SRC))
	@mkdir -p $(@D)
	rm -f $@ && $(AR) rcs $@ $^
$(LIBFW_SO): $(call o,$(PROTO_SRC) $(CLIENT_SRC))
	@mkdir -p $(@D)
	$(CC) -shared -Wl,-soname,libfacewire.so.0 -o $@ $^ $(LDFLAGS_ALL) $(shell pkg-config --libs libsodium 2>/dev/null)
$(ENGINE_A): $(call o,$(ENGINE_SRC))
	@mkdir -p $(@D)
	rm -f $@ && $(AR) rcs $@ $^
$(SERVER_A): $(call o,$(SERVER_SRC) $(PROTO_SRC))
	@mkdir -p $(@D)
	rm -f $@ && $(AR) rcs $@ $^
$(TU_A): $(call o,$(TU_SRC))
	@mkdir -p $(@D)
	rm -f $@ && $(AR) rcs $@ $^

FULL_LINK = $(SERVER_A) $(ENGINE_A) $(LIBFW_A) $(PKG_LIBS)
CLIENT_LINK = $(LIBFW_A) $(if $(CROSS),,$(shell pkg-config --libs libsodium 2>/dev/null))

# ---- programs ------------------------------------------------------------------------------
$(BIN_FACEWIRED): $(OBJ)/server/facewired_main.o $(SERVER_A) $(ENGINE_A) $(LIBFW_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(FULL_LINK) $(LDFLAGS_ALL)
$(BIN_FACEWIRE): $(OBJ)/engine/facewire_main.o $(ENGINE_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(ENGINE_A) $(PKG_LIBS) $(LDFLAGS_ALL)
$(BIN_FWCAT): $(OBJ)/client/fwcat_main.o $(LIBFW_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(CLIENT_LINK) $(LDFLAGS_ALL)
$(OUT)/bin/fw-example-%: $(OBJ)/client/examples/%.o $(LIBFW_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(CLIENT_LINK) $(LDFLAGS_ALL)
$(BIN_FWLOAD): $(call o,$(FWLOAD_SRC) $(PROTO_SRC))
	@mkdir -p $(@D)
	$(CC) -o $@ $^ $(PKG_LIBS) $(LDFLAGS_ALL)
$(OUT)/bin/bench_%: $(OBJ)/perf/bench_%.o $(SERVER_A) $(ENGINE_A) $(LIBFW_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(FULL_LINK) $(LDFLAGS_ALL)

# ---- tests ---------------------------------------------------------------------------------
$(OUT)/tests/test_client_%: $(OBJ)/tests/test_client_%.o $(TU_A) $(LIBFW_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(TU_A) $(CLIENT_LINK) $(LDFLAGS_ALL)
$(OUT)/tests/test_%: $(OBJ)/tests/test_%.o $(TU_A) $(SERVER_A) $(ENGINE_A) $(LIBFW_A)
	@mkdir -p $(@D)
	$(CC) -o $@ $< $(TU_A) $(FULL_LINK) $(LDFLAGS_ALL)

CROSS_PREFIX := arm-linux-gnueabihf-
HAVE_CROSS    = $(shell command -v $(CROSS_PREFIX)gcc >/dev/null 2>&1 && command -v qemu-arm >/dev/null 2>&1 && echo yes)

# The test command of the README. Order: build clean with gcc and clang (-Werror), then run the
# whole suite under ASan+UBSan, the thread tests under TSan, and the client tests on ARM/qemu.
test: deps models
	$(MAKE) all
	$(MAKE) CC=clang OUT=build/clang all
	$(MAKE) SAN=address,undefined tests-build
	$(MAKE) SAN=thread OUT=build/san-thread $(addprefix build/san-thread/tests/,$(TSAN_TESTS)) \
	    build/san-thread/bin/facewired build/san-thread/bin/fwcat
	$(if $(HAVE_CROSS),$(MAKE) CROSS=$(CROSS_PREFIX) tests-build)
	tests/run.sh

run: deps models all
	@mkdir -p data
	OPENBLAS_NUM_THREADS=1 ./bin/facewired --listen 127.0.0.1:7420 --data ./data --models ./models

DEB_PKGS := build-essential pkg-config clang npm libuv1-dev libsodium-dev libopenblas-dev \
            libturbojpeg0-dev libjpeg62-turbo-dev libcjson-dev libhttp-parser-dev \
            qemu-user gcc-arm-linux-gnueabihf libc6-dev-armhf-cross \
            libpq-dev postgresql haproxy
deps:
	@DEB_PKGS="$(DEB_PKGS)" sh .ci/deps.sh

models:
	@sh engine/fetch-models.sh models

FUZZ_TIME ?= 30
# FUZZ_EXTRA_<harness>: more sources and flags for that harness's clang line. The loop is
# expanded by make (not the shell) so that these per-harness variables can be looked up.
FUZZ_EXTRA_fuzz_handshake := client/fw_secure.c server/keys.c -DFW_WITH_SODIUM \
                             $(shell pkg-config --libs libsodium 2>/dev/null)
fuzz:
	@mkdir -p build/fuzz
	@set -e; $(foreach f,$(wildcard tests/fuzz_*.c),n=$(basename $(notdir $(f))); \
	  clang -std=c11 -g -O1 -I. -Iproto -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined $(f) $(PROTO_SRC) \
	      -o build/fuzz/$$n $(FUZZ_EXTRA_$(basename $(notdir $(f)))); \
	  mkdir -p build/fuzz/corpus-$$n; \
	  build/fuzz/$$n -max_total_time=$(FUZZ_TIME) -print_final_stats=1 build/fuzz/corpus-$$n;)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include
	install -m 755 $(filter-out $(LIBFW_A) $(LIBFW_SO),$(ALL_TARGETS)) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(LIBFW_A) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(LIBFW_SO) $(DESTDIR)$(PREFIX)/lib/libfacewire.so.0
	ln -sf libfacewire.so.0 $(DESTDIR)$(PREFIX)/lib/libfacewire.so
	install -m 644 client/facewire.h proto/fw_proto.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' client/facewire.pc.in \
	    > $(DESTDIR)$(PREFIX)/lib/pkgconfig/facewire.pc

clean:
	rm -rf build bin lib

-include $(shell find $(OBJ) -name '*.d' 2>/dev/null)
