/* SPDX-License-Identifier: MIT
 * luasip.agent: one nta agent (NTATAG_UA(0), proxy semantics) with its transports.
 * The stateless message callback is the single entry point for everything nta does not
 * absorb itself: new requests go to server_tx.c, ACKs for our 2xx too, stray responses
 * to client_tx.c.  The agent userdata is anchored while open; close() is idempotent and
 * destroys the nta agent outside sofia frames.
 */
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/nta_tport.h>
#include <sofia-sip/tport.h>
#include <sofia-sip/tport_tag.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_protos.h>
#include <sofia-sip/su_tag.h>
#include <sofia-sip/su_string.h>
#include <sofia-sip/url.h>

#include "luasip.h"

void luasip_link_add(lsip_link_t *head, lsip_link_t *l)
{
  l->next = head->next;
  l->prev = head;
  head->next->prev = l;
  head->next = l;
}

void luasip_link_del(lsip_link_t *l)
{
  if (l->next) {
    l->prev->next = l->next;
    l->next->prev = l->prev;
  }
  l->next = l->prev = NULL;
}

nta_agent_t *luasip_agent_nta(lsip_agent_t *a)
{
  return a->closed ? NULL : a->nta;
}

lsip_agent_t *luasip_agent_check(lua_State *L, int idx)
{
  lsip_agent_t *a = (lsip_agent_t *)luasip_checkobj(L, idx, LUASIP_AGENT);
  if (a->closed)
    luaL_error(L, "attempt to use a closed %s", LUASIP_AGENT);
  return a;
}

static int agent_message(nta_agent_magic_t *magic, nta_agent_t *nta, msg_t *msg, sip_t *sip)
{
  lsip_agent_t *a = (lsip_agent_t *)magic;
  if (a->closed) {
    msg_destroy(msg);
    return 0;
  }
  if (sip && sip->sip_request) {
    sip_method_t m = sip->sip_request->rq_method;
    if (m == sip_method_ack) {
      luasip_request_ack(a, msg, sip);
      return 0;
    }
    if (m == sip_method_cancel) {
      /* nta matched no INVITE transaction for it: RFC 3261 9.2 */
      nta_msg_treply(nta, msg, SIP_481_NO_TRANSACTION, TAG_END());
      return 0;
    }
    luasip_request_incoming(a, nta, msg, sip);
    return 0;
  }
  if (sip && sip->sip_status) {
    if (!luasip_client_stray(a, msg, sip) && !luasip_proxy_stray(a, msg, sip))
      msg_destroy(msg);
    return 0;
  }
  msg_destroy(msg);
  return 0;
}

static void agent_free_nta(lsip_agent_t *a)
{
  if (a->nta) {
    luasip_proxies_detach(a);
    luasip_requests_detach(a);
    luasip_clients_detach(a);
    luasip_dialogs_detach(a);
    nta_agent_destroy(a->nta);
    a->nta = NULL;
  }
}

static void agent_destroy(lsip_obj_t *obj)
{
  lsip_agent_t *a = (lsip_agent_t *)obj;
  if (a->obj.alive) {
    /* close() from a handler: the userdata lives on, only sofia state goes now */
    agent_free_nta(a);
    return;
  }
  agent_free_nta(a);
  su_home_deinit(a->home);
  luasip_freeobj(&a->obj);
}

/* core.agent{ listen = {uri...}, user_agent = s } -> agent | nil, err, code */
int luasip_agent_new(lua_State *L)
{
  lsip_agent_t *a;
  int i, n;
  const char *first;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "listen");
  if (!lua_istable(L, -1) || luasip_rawlen(L, -1) == 0)
    return luaL_error(L, "luasip.agent: listen must be a non-empty list of URIs");
  n = (int)luasip_rawlen(L, -1);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    if (!lua_isstring(L, -1))
      return luaL_error(L, "luasip.agent: listen[%d] must be a string", i);
    lua_pop(L, 1);
  }
  a = luasip_newobj(L, sizeof *a, LUASIP_AGENT, agent_destroy);
  su_home_init(a->home);
  a->requests.next = a->requests.prev = &a->requests;
  a->clients.next = a->clients.prev = &a->clients;
  a->dialogs.next = a->dialogs.prev = &a->dialogs;
  a->proxies.next = a->proxies.prev = &a->proxies;
  lua_getfield(L, 1, "user_agent");
  a->user_agent = su_strdup(a->home, lua_isstring(L, -1) ? lua_tostring(L, -1)
                            : "luasip/" LUASIP_VERSION);
  lua_pop(L, 1);
  lua_getfield(L, 1, "t1");
  a->t1 = lua_isnumber(L, -1) ? (unsigned)(lua_tonumber(L, -1) * 1000) : 500;
  lua_pop(L, 1);
  if (a->t1 < 1 || a->t1 > 60000)
    return luaL_error(L, "luasip.agent: t1 must be 0.001-60 seconds");
  a->t2 = a->t1 * 8 > 4000 ? a->t1 * 8 : 4000;
  lua_rawgeti(L, -2, 1);
  first = lua_tostring(L, -1);
  a->nta = nta_agent_create(luasip_S->root, (url_string_t const *)first, agent_message,
                            (nta_agent_magic_t *)a,
                            NTATAG_UA(0),
                            NTATAG_SIP_T1(a->t1),
                            NTATAG_SIP_T2(a->t2),
                            NTATAG_SIP_T1X64(64 * a->t1),
                            NTATAG_SERVER_RPORT(1),
                            NTATAG_CLIENT_RPORT(1),
                            NTATAG_MERGE_482(1),
                            NTATAG_TAG_3261(1),
                            NTATAG_CANCEL_2543(0),
                            /* bursts of calls overflow the kernel's default ~200 KB */
                            TPTAG_UDP_RMEM(4 * 1024 * 1024),
                            TPTAG_UDP_WMEM(1024 * 1024),
                            TAG_END());
  if (!a->nta) {
    a->closed = 1;
    return luasip_fail(L, lua_pushfstring(L, "cannot listen on %s", first), "listen");
  }
  lua_pop(L, 1);
  for (i = 2; i <= n; i++) {
    const char *u;
    lua_rawgeti(L, -2, i);
    u = lua_tostring(L, -1);
    if (nta_agent_add_tport(a->nta, (url_string_t const *)u,
                            TPTAG_UDP_RMEM(4 * 1024 * 1024), TPTAG_UDP_WMEM(1024 * 1024),
                            TAG_END()) < 0) {
      nta_agent_destroy(a->nta);
      a->nta = NULL;
      a->closed = 1;
      return luasip_fail(L, lua_pushfstring(L, "cannot listen on %s", u), "listen");
    }
    lua_pop(L, 1);
  }
  luasip_anchor(L, &a->obj, -1);
  return 1;
}

/* The primary transport a message to dest (or one answering a request delivered by hint)
 * leaves through. */
static tport_t *primary_for(lsip_agent_t *a, tport_t *hint, url_t const *dest)
{
  char proto[16] = "udp";
  int v6;
  tport_t *tp;
  if (hint)
    return tport_is_primary(hint) ? hint : tport_parent(hint);
  if (!dest || !dest->url_host)
    return tport_primaries(nta_agent_tports(a->nta));
  v6 = dest->url_host[0] == '[' || strchr(dest->url_host, ':') != NULL;
  if (dest->url_params)
    url_param(dest->url_params, "transport", proto, sizeof proto);
  for (tp = tport_primaries(nta_agent_tports(a->nta)); tp; tp = tport_next(tp)) {
    if (su_casematch(tport_name(tp)->tpn_proto, proto) &&
        (v6 ? tport_has_ip6(tp) : tport_has_ip4(tp)))
      return tp;
  }
  return tport_primaries(nta_agent_tports(a->nta));
}

/* A Contact for the transport a message goes out on: with IPv4 and IPv6 (or UDP and
 * TCP) on one agent, nta_agent_contact() would name only the first. */
sip_contact_t *luasip_agent_contact_for(lsip_agent_t *a, su_home_t *home, tport_t *hint,
                                        url_t const *dest)
{
  tport_t *tp = a->nta ? primary_for(a, hint, dest) : NULL;
  tp_name_t const *tpn;
  const char *host, *lb = "", *rb = "";
  if (!tp)
    return a->nta ? sip_contact_dup(home, nta_agent_contact(a->nta)) : NULL;
  tpn = tport_name(tp);
  host = tpn->tpn_host;
  if (strchr(host, ':') && host[0] != '[')
    lb = "[", rb = "]";
  return sip_contact_format(home, "<sip:%s%s%s:%s%s%s>", lb, host, rb, tpn->tpn_port,
                            su_casematch(tpn->tpn_proto, "udp") ? "" : ";transport=",
                            su_casematch(tpn->tpn_proto, "udp") ? "" : tpn->tpn_proto);
}

/* agent:close() -> true (idempotent) */
static int agent_close(lua_State *L)
{
  lsip_agent_t *a = (lsip_agent_t *)luasip_checkobj(L, 1, LUASIP_AGENT);
  if (!a->closed) {
    a->closed = 1;
    luasip_unanchor(L, &a->obj);
    if (luasip_in_callback())
      luasip_defer(&a->obj);        /* never destroy nta from inside its own callback */
    else
      agent_free_nta(a);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int agent_closed(lua_State *L)
{
  lsip_agent_t *a = (lsip_agent_t *)luasip_checkobj(L, 1, LUASIP_AGENT);
  lua_pushboolean(L, a->closed);
  return 1;
}

/* agent:transports() -> { {transport=, host=, port=}, ... } */
static int agent_transports(lua_State *L)
{
  lsip_agent_t *a = luasip_agent_check(L, 1);
  tport_t *tp;
  int i = 0;
  lua_newtable(L);
  for (tp = tport_primaries(nta_agent_tports(a->nta)); tp; tp = tport_next(tp)) {
    tp_name_t const *tpn = tport_name(tp);
    lua_newtable(L);
    lua_pushstring(L, tpn->tpn_proto);
    lua_setfield(L, -2, "transport");
    lua_pushstring(L, tpn->tpn_host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, tpn->tpn_port ? atoi(tpn->tpn_port) : 5060);
    lua_setfield(L, -2, "port");
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

/* agent:contact() -> "sip:host:port" of the first transport */
static int agent_contact(lua_State *L)
{
  lsip_agent_t *a = luasip_agent_check(L, 1);
  sip_contact_t const *m = nta_agent_contact(a->nta);
  char buf[256];
  if (!m || url_e(buf, sizeof buf, m->m_url) < 0)
    return luasip_fail(L, "no contact", "contact");
  buf[sizeof buf - 1] = '\0';
  lua_pushstring(L, buf);
  return 1;
}

static const luaL_Reg agent_methods[] = {
  {"close", agent_close},
  {"closed", agent_closed},
  {"transports", agent_transports},
  {"contact", agent_contact},
  {NULL, NULL}
};

void luasip_agent_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_AGENT, agent_methods, NULL);
}
