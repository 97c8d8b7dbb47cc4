/* SPDX-License-Identifier: MIT
 * libFuzzer target sip_path: each input is one SIP message, sent with sendto() from a
 * UDP socket of ours to a real luasip agent on 127.0.0.1 in this process (made by
 * fuzz/harness/sip_path.lua, whose handlers read every field and header, then reply,
 * proxy to a dead port or answer); the loop is stepped until the handler ran, an answer
 * came back, or WAIT_MS passed.  State carries over between inputs (transactions,
 * dialogs), as on a real server.  Run it in a network namespace with only loopback
 * (scripts/fuzz.sh does): a fuzzed Via or Contact may name any host.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <sanitizer/lsan_interface.h>

#include "harness.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define WAIT_MS 3

static lua_State *L;
static int sock = -1;
static struct sockaddr_in agent_addr;

static double now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* reads what came back to our socket; -> how many datagrams */
static int drain(void)
{
  char buf[65536];
  int n = 0;
  while (recv(sock, buf, sizeof buf, MSG_DONTWAIT) >= 0)
    n++;
  return n;
}

/* the Lua step function (index 2), waiting at most 1 ms or not at all -> handler runs
 * so far */
static lua_Integer step(int wait)
{
  lua_Integer n;
  harness_call(L, 2, wait ? "1" : "0", 1, 1);
  n = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return n;
}

/* FUZZ_LEAK_AT_EXIT=1: a leak check when the process exits (libFuzzer checks only after
 * inputs that found something new; replaying a sequence needs one at the end) */
static void leak_check_at_exit(void)
{
  if (__lsan_do_recoverable_leak_check())
    _exit(1);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  struct sockaddr_in me = {0};
  (void)argc, (void)argv;
  if (getenv("FUZZ_LEAK_AT_EXIT"))
    atexit(leak_check_at_exit);
  L = harness_state();
  harness_dofile(L, "sip_path.lua");             /* { port =, step = } */
  lua_getfield(L, 1, "step");                    /* index 2 */
  lua_getfield(L, 1, "port");
  agent_addr.sin_family = AF_INET;
  agent_addr.sin_port = htons((uint16_t)lua_tointeger(L, -1));
  agent_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  lua_pop(L, 1);
  sock = socket(AF_INET, SOCK_DGRAM, 0);
  me.sin_family = AF_INET;
  me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (sock < 0 || bind(sock, (struct sockaddr *)&me, sizeof me) < 0) {
    perror("sip_path: socket");
    abort();
  }
  return 0;
}

/* FUZZ_SIP_TRACE=dir: every input also written to dir/NNNNNNNN, to replay a history (in
 * order: libFuzzer runs the files it is given one by one) when a finding depends on it */
static void trace(const uint8_t *data, size_t size)
{
  static const char *dir;
  static unsigned n;
  char path[4096];
  FILE *f;
  if (!dir && !(dir = getenv("FUZZ_SIP_TRACE")))
    dir = "";
  if (!*dir)
    return;
  snprintf(path, sizeof path, "%s/%08u", dir, n++);
  if ((f = fopen(path, "wb"))) {
    fwrite(data, 1, size, f);
    fclose(f);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  lua_Integer before = step(0);
  double t0;
  trace(data, size);
  drain();
  if (sendto(sock, data, size, 0, (struct sockaddr *)&agent_addr, sizeof agent_addr) < 0)
    return 0;                                    /* too large for a datagram */
  t0 = now_ms();
  while (now_ms() - t0 < WAIT_MS) {
    if (step(1) != before || drain() > 0)
      break;
  }
  lua_settop(L, 2);
  return 0;
}
