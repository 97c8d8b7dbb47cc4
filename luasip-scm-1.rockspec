-- luarocks make: builds luasip.core against the system sofia-sip (pkg-config sofia-sip-ua)
-- through the Makefile's install target, which also installs the Lua layer (all of lua/).
rockspec_format = "3.0"
package = "luasip"
version = "scm-1"

source = {
  url = "git+https://example.invalid/luasip.git",
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
