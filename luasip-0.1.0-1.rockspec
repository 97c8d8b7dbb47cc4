-- luasip 0.1.0, the first release: the source rock is luasip-0.1.0-1.src.rock.  `make rock`
-- (scripts/pack-rock.sh) packs it with `luarocks pack` from this checkout, offline; then
-- `luarocks --lua-version=5.X install ./luasip-0.1.0-1.src.rock` builds it through the
-- Makefile's install target like luasip-scm-1.rockspec (the build needs no network).
rockspec_format = "3.0"
package = "luasip"
version = "0.1.0-1"

source = {
  url = "git+https://example.invalid/luasip.git",
  tag = "v0.1.0",
}

description = {
  summary = "SIP user agents and servers as Lua scripts, on the sofia-sip stack",
  detailed = [[
One process, one event loop (sofia-sip's), a Lua handler per SIP method, each running
in its own coroutine, and requests sent from Lua that wait for their response without
blocking the loop.]],
  license = "MIT",
}

dependencies = {
  "lua >= 5.1",
}

external_dependencies = {
  -- Debian 12: libsofia-sip-ua-dev (the Makefile takes its flags from pkg-config)
  SOFIA = {
    header = "sofia-sip-1.12/sofia-sip/nta.h",
    library = "sofia-sip-ua",
  },
  -- digest SHA-256 / SHA-512-256 (csrc/digest.c): OpenSSL's libcrypto, libssl-dev (the
  -- Makefile takes its flags from pkg-config libcrypto; sofia-sip links it too)
  CRYPTO = {
    header = "openssl/evp.h",
    library = "crypto",
  },
  -- media (luasip.rtp): libspandsp-dev, libsndfile1-dev, libspeexdsp-dev (the Makefile
  -- takes their flags from pkg-config spandsp sndfile speexdsp)
  SPANDSP = {
    header = "spandsp/dtmf.h",
    library = "spandsp",
  },
  SNDFILE = {
    header = "sndfile.h",
    library = "sndfile",
  },
  SPEEXDSP = {
    header = "speex/speex_resampler.h",
    library = "speexdsp",
  },
}

build = {
  type = "make",
  -- one pass: the Makefile's install target compiles core.so straight into the rock
  -- tree (the default target would build every flavour under build/ instead)
  build_pass = false,
  install_target = "install",
  -- given to both passes (build_variables and install_variables)
  variables = {
    CFLAGS = "$(CFLAGS)",
    LIBFLAG = "$(LIBFLAG)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    INST_LIBDIR = "$(LIBDIR)",
    INST_LUADIR = "$(LUADIR)",
  },
}

test = {
  type = "busted",
}
