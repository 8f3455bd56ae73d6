# adapterctl: `make` builds, `make test` tests, `make demo` runs the main job.
# Every entry point installs the Debian packages it needs first (`make deps`).
#
#   make [all]            library (static + shared) and the adapterctl binary
#   make test [SAN=1]     cmocka unit tests and CLI tests (SAN=1: ASan + UBSan build)
#   make demo             inspect the fixtures with the default store
#   make bench            benchmarks (tests/bench), figures beside a baseline
#   make fixtures         regenerate fixtures/ with the deterministic generator
#   make install PREFIX=/usr/local [DESTDIR=...]

PREFIX ?= /usr/local
SAN ?= 0
CC ?= cc
CFLAGS ?= -O3 -g

# Debian packages the build, the tests and the demo need.
DEB_PKGS := pkg-config libsqlite3-dev libzstd-dev libcurl4-openssl-dev libopenblas-dev \
            liblapacke-dev libjansson-dev libssl-dev libpcre2-dev libcmocka-dev python3
PKGS := sqlite3 libzstd libcurl openblas lapacke jansson libcrypto libpcre2-8

ifeq ($(SAN),1)
BUILD := build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
else
BUILD := build
SANFLAGS :=
endif

WARN := -std=c11 -Wall -Wextra -Wpedantic
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread
CMOCKA_LIBS := $(shell pkg-config --libs cmocka 2>/dev/null)
ALL_CFLAGS = $(WARN) $(CFLAGS) $(SANFLAGS) -D_GNU_SOURCE -fPIC -Ilib $(PKG_CFLAGS)
LDFLAGS_ALL = $(SANFLAGS) $(LDFLAGS)

LIB_SRC := $(sort $(wildcard lib/*.c))
CMD_SRC := $(sort $(wildcard cmd/*.c))
TEST_SRC := $(sort $(wildcard tests/test_*.c))
BENCH_SRC := $(sort $(wildcard tests/bench/*.c))
SQL_SRC := $(sort $(wildcard schema/*.sql))

LIB_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(LIB_SRC))
CMD_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(CMD_SRC))
TEST_BIN := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
BENCH_BIN := $(patsubst tests/bench/%.c,$(BUILD)/bench/%,$(BENCH_SRC))

STATIC := $(BUILD)/libadapterctl.a
SONAME := libadapterctl.so.$(shell sed -n 's/^#define ACTL_VERSION_MAJOR //p' lib/adapterctl.h)
SHARED := $(BUILD)/$(SONAME)
BIN := $(BUILD)/adapterctl
GEN := $(BUILD)/gen-fixtures

.PHONY: all build deps test check run-tests demo run-demo bench run-bench fixtures install clean
.DEFAULT_GOAL := all

all: deps
	@$(MAKE) --no-print-directory build

build: $(STATIC) $(SHARED) $(BUILD)/libadapterctl.so $(BIN)

# Quick and silent when everything is present; apt-get (through sudo when not
# root) for whatever is missing.
deps:
	@missing=""; \
	for p in $(DEB_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "make deps: installing$$missing"; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	    || { echo "make deps: apt-get install$$missing failed" >&2; exit 1; }; \
	fi

$(BUILD)/%.o: %.c lib/adapterctl.h lib/internal.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(STATIC): $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(SHARED): $(LIB_OBJ)
	$(CC) -shared -Wl,-soname,$(SONAME) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS)

$(BUILD)/libadapterctl.so: $(SHARED)
	ln -sf $(SONAME) $@

$(BIN): $(CMD_OBJ) $(STATIC)
	$(CC) $(LDFLAGS_ALL) -o $@ $(CMD_OBJ) $(STATIC) $(PKG_LIBS)

$(BUILD)/tests/%: tests/%.c $(STATIC) tests/testutil.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -o $@ $< $(STATIC) $(PKG_LIBS) $(CMOCKA_LIBS) $(LDFLAGS_ALL)

$(BUILD)/bench/%: tests/bench/%.c $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(STATIC) $(PKG_LIBS) $(LDFLAGS_ALL)

$(GEN): $(wildcard fixtures/*.c fixtures/*.h) $(STATIC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Ifixtures -o $@ $(wildcard fixtures/*.c) $(STATIC) $(PKG_LIBS) $(LDFLAGS_ALL)

test check: deps
	@$(MAKE) --no-print-directory run-tests

run-tests: build $(TEST_BIN) $(GEN)
	@ACTL_BUILD=$(BUILD) bash tests/run.sh $(TEST_BIN)

demo: deps
	@$(MAKE) --no-print-directory run-demo

run-demo: build
	@bash tests/demo.sh $(BIN)

bench: deps
	@$(MAKE) --no-print-directory run-bench

run-bench: build $(BENCH_BIN)
	@set -e; for b in $(BENCH_BIN); do echo "== $$b"; $$b; done

fixtures: deps
	@$(MAKE) --no-print-directory $(GEN)
	$(GEN) fixtures

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include \
	           $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(BIN) $(DESTDIR)$(PREFIX)/bin/adapterctl
	install -m 644 $(STATIC) $(DESTDIR)$(PREFIX)/lib/libadapterctl.a
	install -m 755 $(SHARED) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(PREFIX)/lib/libadapterctl.so
	install -m 644 lib/adapterctl.h $(DESTDIR)$(PREFIX)/include/adapterctl.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(shell sed -n 's/^#define ACTL_VERSION_STRING "\(.*\)"/\1/p' lib/adapterctl.h)|g' \
	    -e 's|@REQUIRES@|$(PKGS)|g' lib/adapterctl.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/adapterctl.pc

clean:
	rm -rf build build-san
