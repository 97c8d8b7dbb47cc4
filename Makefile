# luasip — build, test, run, bench, check-memory, install.
# One core.so per Lua flavour under build/<flavour>/luasip/core.so.

CC        ?= cc
PKG       ?= pkg-config
SOFIA_CFLAGS := $(shell $(PKG) --cflags sofia-sip-ua 2>/dev/null)
SOFIA_LIBS   := $(shell $(PKG) --libs sofia-sip-ua 2>/dev/null)
# digest.c: SHA-256 digests when OpenSSL's libcrypto is there (sofia-sip links it too)
CRYPTO_LIBS  := $(shell $(PKG) --libs libcrypto 2>/dev/null)
CRYPTO_CFLAGS := $(if $(CRYPTO_LIBS),$(shell $(PKG) --cflags libcrypto) -DLUASIP_HAVE_LIBCRYPTO)
# media (csrc/media*.c): spandsp (G.711, DTMF), libsndfile (WAV), speexdsp (resampling)
MEDIA_PKGS   := spandsp sndfile speexdsp
MEDIA_CFLAGS := $(shell $(PKG) --cflags $(MEDIA_PKGS) 2>/dev/null)
MEDIA_LIBS   := $(shell $(PKG) --libs $(MEDIA_PKGS) 2>/dev/null) -lm
WARN      = -Wall -Wextra -Wshadow -Wmissing-prototypes -Wstrict-prototypes -Wpointer-arith
CFLAGS    ?= -O2 -g
ALL_CFLAGS = -std=gnu99 -fPIC -fvisibility=hidden $(WARN) $(CFLAGS) $(SOFIA_CFLAGS) $(CRYPTO_CFLAGS) \
            $(MEDIA_CFLAGS)
LDFLAGS   ?=
SRCS      = $(wildcard csrc/*.c)
HDRS      = $(wildcard csrc/*.h)

# flavour -> interpreter and headers
LUA_5.1     = lua5.1
LUA_5.2     = lua5.2
LUA_5.3     = lua5.3
LUA_5.4     = lua5.4
LUA_luajit  = luajit
INC_5.1     = /usr/include/lua5.1
INC_5.2     = /usr/include/lua5.2
INC_5.3     = /usr/include/lua5.3
INC_5.4     = /usr/include/lua5.4
INC_luajit  = /usr/include/luajit-2.1
ALL_FLAVOURS = 5.1 5.2 5.3 5.4 luajit
# the flavours installed here: an interpreter, its headers and a busted that runs under it
# (Debian's lua-busted serves every version).  make test runs the suite once per flavour.
have_flavour = $(and $(shell command -v $(LUA_$(1)) 2>/dev/null),$(wildcard $(INC_$(1))/lua.h),$(shell \
  $(LUA_$(1)) -e 'require "busted.runner"' </dev/null >/dev/null 2>&1 && echo y))
FOUND_FLAVOURS = $(foreach f,$(ALL_FLAVOURS),$(if $(call have_flavour,$(f)),$(f)))
TEST_FLAVOURS ?= $(FOUND_FLAVOURS)

# LuaRocks sets these (build.type = "make")
LUA_INCDIR ?=
LIBFLAG    ?= -shared
INST_LIBDIR ?=
INST_LUADIR ?=

.PHONY: all deps build prompts test run bench soak check-memory check-asan lint install clean warnings \
  docs rock

all: build

deps:
	@CI_QUIET=1 sh scripts/install-deps.sh

build: $(foreach f,$(TEST_FLAVOURS),build/$(f)/luasip/core.so) prompts

# IVR prompts (examples/ivr.lua, examples/pbx.lua voicemail, say_digits), 8 kHz mono WAV
# made by flite from the texts in the script; no audio is committed.  The script writes
# the stamp only when it made them (without flite it warns and makes none).
prompts: build/prompts/.stamp

build/prompts/.stamp: scripts/make-prompts.sh
	@sh scripts/make-prompts.sh build/prompts

build/%/luasip/core.so: $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -I$(INC_$*) $(SRCS) -shared -o $@ $(LDFLAGS) $(SOFIA_LIBS) $(CRYPTO_LIBS) \
	  $(MEDIA_LIBS)

# every flavour, warnings as errors (CI runs this through make test)
warnings:
	@for f in $(ALL_FLAVOURS); do \
	  $(MAKE) -s --no-print-directory build/$$f/luasip/core.so CFLAGS="-O2 -Werror" || exit 1; \
	done

# TEST_FLAVOURS is read here, after deps: the flavours found once the packages are in
test: deps
	@$(MAKE) -s --no-print-directory warnings lint prompts
	@test -n "$(TEST_FLAVOURS)" || { echo "make test: no Lua flavour with headers and busted"; exit 1; }
	@sh scripts/run-specs.sh $(TEST_FLAVOURS)

# targets that install deps and then build run the build in a new make: the sofia and
# media flags above are read when make starts, before deps installed the packages
# make run WORKERS=2: the PBX as 2 worker processes behind a stateless front, its state
# in Redis on 127.0.0.1:6379 (started for the run when none answers there).  The PBX
# runs on jemalloc (README: Memory allocator); MALLOC=glibc keeps glibc's malloc.
WORKERS ?=
MALLOC ?=
run: deps
	@$(MAKE) -s --no-print-directory build
	IVR_PROMPTS=build/prompts LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/5.4/?.so;;" \
	  $(if $(filter glibc,$(MALLOC)),,LD_PRELOAD="$$(sh scripts/jemalloc.sh)") \
	  $(if $(WORKERS),PBX_WORKERS=$(WORKERS) sh scripts/with-redis.sh) lua5.4 examples/pbx.lua $(ARGS)

bench: deps
	@$(MAKE) -s --no-print-directory build
	@sh bench/run.sh

# a long mixed load through examples/pbx.lua, sampling memory, descriptors and objects
# (bench/soak.sh: SOAK_CALLS=1000000, SOAK_RATE=250 calls/s, SOAK_LUA=lua5.4, ...)
soak: deps
	@$(MAKE) -s --no-print-directory build
	@bash bench/soak.sh

check-memory: deps
	@$(MAKE) -s --no-print-directory build
	@sh scripts/check-memory.sh

# the suite with core.so under AddressSanitizer + UndefinedBehaviorSanitizer
ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	-fno-sanitize-recover=undefined
build/asan/luasip/core.so: $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(subst $(CFLAGS),,$(ALL_CFLAGS)) $(ASAN_FLAGS) -I$(INC_5.4) $(SRCS) -shared -o $@ \
	  $(LDFLAGS) $(SOFIA_LIBS) $(CRYPTO_LIBS) $(MEDIA_LIBS)

check-asan: deps
	@$(MAKE) -s --no-print-directory build build/asan/luasip/core.so
	@sh scripts/check-asan.sh

# the SIP fuzzer against examples/uas.lua (scripts/fuzz-sip.py; findings in build/fuzz-findings)
FUZZ_N       ?= 20000
FUZZ_SEED    ?= 1
FUZZ_FLAVOUR ?= 5.4
FUZZ_ARGS    ?=
.PHONY: fuzz-sip
fuzz-sip: build/$(FUZZ_FLAVOUR)/luasip/core.so
	python3 scripts/fuzz-sip.py --lua $(LUA_$(FUZZ_FLAVOUR)) --flavour $(FUZZ_FLAVOUR) \
	  -n $(FUZZ_N) --seed $(FUZZ_SEED) $(FUZZ_ARGS)

# the API reference (LDoc, config.ld) into build/docs.  Debian's ldoc runs under the
# newest of Lua 5.2/5.1 it finds, but its markdown (lua-markdown) is installed for 5.1 only
LDOC_BIN = $(shell command -v ldoc 2>/dev/null)
LDOC ?= $(if $(shell command -v lua5.1 2>/dev/null),lua5.1 $(LDOC_BIN),$(LDOC_BIN))
docs:
	@test -n "$(LDOC_BIN)" || { echo "docs: apt-get install lua-ldoc lua-markdown"; exit 1; }
	@rm -rf build/docs
	@$(LDOC) --fatalwarnings -q . && echo "docs: build/docs/index.html"

# the source rock of the release, luasip-0.1.0-1.src.rock, packed by luarocks from this
# checkout without the network (scripts/pack-rock.sh)
ROCKSPEC ?= luasip-0.1.0-1.rockspec
rock:
	@sh scripts/pack-rock.sh $(ROCKSPEC) build

# libFuzzer targets (fuzz/harness/*.c) with the core under ASan + UBSan, each run for
# FUZZ_SECONDS from its seeds (scripts/fuzz.sh; new inputs in build/fuzz/corpus/<target>)
FUZZ_TARGETS ?= sip_path lua_parsers
FUZZ_SECONDS ?= 180
FUZZ_CC      ?= clang
FUZZ_CFLAGS   = -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined \
	-fno-sanitize-recover=undefined
FUZZ_BINS     = $(addprefix build/fuzz/,$(FUZZ_TARGETS))
FUZZ_HARNESS  = fuzz/harness/harness.c fuzz/harness/harness.h
.PHONY: fuzz fuzz-build
$(FUZZ_BINS): build/fuzz/%: fuzz/harness/%.c $(FUZZ_HARNESS) $(SRCS) $(HDRS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=gnu99 $(WARN) $(FUZZ_CFLAGS) $(SOFIA_CFLAGS) $(CRYPTO_CFLAGS) $(MEDIA_CFLAGS) \
	  -I$(INC_5.4) -Ifuzz/harness -DLUASIP_ROOT='"$(CURDIR)"' $< fuzz/harness/harness.c $(SRCS) \
	  -o $@ $(LDFLAGS) -llua5.4 $(SOFIA_LIBS) $(CRYPTO_LIBS) $(MEDIA_LIBS)

fuzz-build: $(FUZZ_BINS)

fuzz: deps
	@$(MAKE) -s --no-print-directory fuzz-build
	@FUZZ_SECONDS=$(FUZZ_SECONDS) sh scripts/fuzz.sh $(FUZZ_TARGETS)

lint:
	@command -v luacheck >/dev/null || { echo "lint: apt-get install lua-check"; exit 1; }
	@luacheck --no-color -q lua spec examples

# luarocks make (luasip-scm-1.rockspec): compiles against LUA_INCDIR straight into
# INST_LIBDIR (nothing is left in the source tree) and copies the Lua layer (all of lua/,
# subdirectories too) to INST_LUADIR
install:
	@test -n "$(INST_LIBDIR)" -a -n "$(INST_LUADIR)" || \
	  { echo "make install: set INST_LIBDIR and INST_LUADIR (luarocks make does)"; exit 1; }
	@test -n "$(SOFIA_CFLAGS)" || { echo "make install: pkg-config sofia-sip-ua failed"; exit 1; }
	@$(PKG) --exists $(MEDIA_PKGS) || { echo "make install: pkg-config $(MEDIA_PKGS) failed"; exit 1; }
	mkdir -p "$(INST_LIBDIR)/luasip" "$(INST_LUADIR)"
	$(CC) $(ALL_CFLAGS) $(if $(LUA_INCDIR),-I$(LUA_INCDIR)) $(SRCS) $(LIBFLAG) \
	  -o "$(INST_LIBDIR)/luasip/core.so" $(LDFLAGS) $(SOFIA_LIBS) $(CRYPTO_LIBS) $(MEDIA_LIBS)
	cp -R lua/. "$(INST_LUADIR)/"

clean:
	rm -rf build core.so
