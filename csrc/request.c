/* SPDX-License-Identifier: MIT
 * luasip.request as Lua sees it: fields, req:reply (argument checks, building the
 * response on nta_msg_create), req:answered(), req:cancelled().  What happens to the
 * request on the wire and when is server_tx.c's (request.h: the state machine).
 * Ownership: a response being built is ours alone until nta takes it; the script's
 * headers and body, which may raise, are added under a protected call, so an error
 * raised by a bad header frees it and leaks nothing.
 */
#include <string.h>

#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_protos.h>
#include <sofia-sip/sip_util.h>
#include <sofia-sip/su_tag.h>

#include "request.h"

static const char *const luasip_methods_allow =
  "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, REFER, "
  "INFO, UPDATE, PRACK, MESSAGE";

static const char *const REPLY = "luasip.request:reply";

static lsip_req_t *req_check(lua_State *L, int idx)
{
  return (lsip_req_t *)luasip_checkobj(L, idx, LUASIP_REQUEST);
}

/* ---------------------------------------------------------------- argument errors */

/* Is this chunk one of luasip's own Lua files (lua/luasip.lua, lua/luasip/x.lua)? */
static int library_chunk(const char *source)
{
  const char *base, *p;
  size_t n;
  if (source[0] != '@')
    return 0;
  n = strlen(source);
  if (n >= 10 && !strcmp(source + n - 10, "luasip.lua"))
    return n == 11 || source[n - 11] == '/';
  base = strrchr(source, '/');
  if (!base)
    return 0;
  for (p = base - 1; p > source && *p != '/' && *p != '@'; p--)
    ;
  return base - p - 1 == 6 && !strncmp(p + 1, "luasip", 6);
}

/* Raises "<where>fname: msg", where is the line of the first caller outside luasip's own
 * files (the user's line, whatever the Lua layer wraps around the C method). */
static int req_argerror(lua_State *L, const char *fname, const char *msg)
{
  lua_Debug ar;
  int level;
  lua_pushliteral(L, "");
  for (level = 1; lua_getstack(L, level, &ar); level++) {
    if (!lua_getinfo(L, "Sl", &ar) || ar.currentline <= 0 || library_chunk(ar.source))
      continue;
    lua_pop(L, 1);
    lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
    break;
  }
  lua_pushfstring(L, "%s: %s", fname, msg);
  lua_concat(L, 2);
  return lua_error(L);
}

/* ---------------------------------------------------------------- req:reply */

typedef struct reply_args {
  int status;
  const char *reason;         /* NULL: the standard phrase */
  int opts;                   /* stack index of the options table, 0 without one */
  int reliable;               /* opts.reliable */
  int stateless;              /* opts.stateless: 1, 0, or -1 when not given */
} reply_args_t;

/* A Reason-Phrase is text (RFC 3261 25.1): no CR, LF or other controls but HTAB. */
static int reason_ok(const char *s, size_t n)
{
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f)
      return 0;
  }
  return 1;
}

/* reply(status [, reason] [, opts]): programmer errors raise. */
static void reply_args(lua_State *L, lsip_req_t *r, reply_args_t *a)
{
  lua_Number n = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : 0;
  int opts = 3;
  a->status = n >= 100 && n <= 699 ? (int)n : 0;
  if (!a->status || (lua_Number)a->status != n)
    req_argerror(L, REPLY, "status must be 100-699");
  a->reason = NULL;
  if (lua_type(L, 3) == LUA_TSTRING) {
    size_t len;
    a->reason = lua_tolstring(L, 3, &len);
    if (!reason_ok(a->reason, len))
      req_argerror(L, REPLY, "reason must not contain CR or LF (or other control "
                   "characters)");
    opts = 4;
  } else if (lua_isnil(L, 3) && lua_istable(L, 4)) {
    opts = 4;                         /* reply(status, nil, opts) */
  } else if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3)) {
    req_argerror(L, REPLY, "reason must be a string");
  }
  if (!lua_isnoneornil(L, opts) && !lua_istable(L, opts))
    req_argerror(L, REPLY, "options must be a table");
  if (r->state == LSIP_RQ_ACK)
    req_argerror(L, REPLY, "an ACK is never answered");
  a->opts = lua_istable(L, opts) ? opts : 0;
  a->reliable = 0;
  a->stateless = -1;
  if (a->opts) {
    lua_getfield(L, a->opts, "reliable");
    a->reliable = lua_toboolean(L, -1);
    lua_getfield(L, a->opts, "stateless");
    if (!lua_isnil(L, -1))
      a->stateless = lua_toboolean(L, -1);
    lua_pop(L, 2);
  }
  if (a->reliable && (r->m.sip->sip_request->rq_method != sip_method_invite ||
                      a->status <= 100 || a->status >= 200))
    req_argerror(L, REPLY, "only a 101-199 answer to an INVITE can be reliable");
}

/* Why this request cannot be answered now (runtime: nil, err, code), or NULL. */
static const char *reply_refused(lsip_req_t *r, reply_args_t const *a, const char **code)
{
  sip_t const *q = r->m.sip;
  if (r->state == LSIP_RQ_CANCELLED)
    return *code = "cancelled", "request cancelled";
  if (r->state == LSIP_RQ_ANSWERED || r->state == LSIP_RQ_ACCEPTED)
    return *code = "answered", "request already answered";
  if (!r->agent || !luasip_agent_nta(r->agent))
    return *code = "closed", "agent closed";
  if (!luasip_req_unanswered(r))    /* forwarded, or no transaction could be made */
    return *code = "transaction", "no transaction for this request";
  if (a->reliable && !(q->sip_supported && sip_has_feature(q->sip_supported, "100rel")) &&
      !(q->sip_require && sip_has_feature(q->sip_require, "100rel")))
    return *code = "unsupported", "the caller does not support 100rel";
  return NULL;
}

/* Stateless answers (DESIGN D9) only for idempotent requests answered during their
 * first run -- OPTIONS, REGISTER, or when the caller says so (opts.stateless, used for
 * the core's own rejections) -- so a retransmission never runs a handler twice.  Else
 * the request needs its transaction.  Returns 0 when it has none and cannot get one. */
static int reply_transaction(lsip_req_t *r, reply_args_t const *a)
{
  sip_method_t m = r->m.sip->sip_request->rq_method;
  int stateless;
  if (r->state != LSIP_RQ_FIRST_RUN)
    return 1;
  stateless = a->status >= 200 && !a->reliable &&
              (a->stateless >= 0 ? a->stateless
               : m == sip_method_options || m == sip_method_register);
  return stateless || luasip_req_make_irq(r) != NULL;
}

static int needs_contact(sip_t const *sip, int status)
{
  sip_method_t m = sip->sip_request->rq_method;
  if (status <= 100 || status >= 300)
    return 0;
  return m == sip_method_invite || m == sip_method_subscribe || m == sip_method_refer ||
         m == sip_method_update || m == sip_method_notify;
}

/* reply_options(resp, opts): the script's headers and body on resp (may raise) */
static int reply_options(lua_State *L)
{
  msg_t *resp = (msg_t *)lua_touserdata(L, 1);
  sip_t *rs = sip_object(resp);
  lua_getfield(L, 2, "headers");
  luasip_add_headers(L, 3, resp, rs, REPLY);
  lua_pop(L, 1);
  luasip_set_body(L, 2, resp, rs, REPLY);
  return 0;
}

/* The response, with the script's headers and body and our Server, Contact and Allow.
 * Returns the reference for nta, or NULL.  Bad headers raise (resp freed first). */
static msg_t *reply_build(lua_State *L, lsip_req_t *r, reply_args_t const *a)
{
  msg_t *resp = nta_msg_create(luasip_agent_nta(r->agent), 0);
  sip_t *rs = resp ? sip_object(resp) : NULL;
  if (!rs) {
    if (resp)
      msg_destroy(resp);
    return NULL;
  }
  if (a->opts) {
    /* only the script's headers and body can raise: they are added under a protected
     * call, and resp, ours alone until nta takes it, is freed before the error goes on
     * (a luasip.response userdata owning it meanwhile cost a userdata per answer) */
    lua_pushcfunction(L, reply_options);
    lua_pushlightuserdata(L, resp);
    lua_pushvalue(L, a->opts);
    if (lua_pcall(L, 2, 0, 0) != 0) {
      msg_destroy(resp);
      lua_error(L);
    }
  }
  if (!rs->sip_server && !rs->sip_user_agent)
    sip_add_tl(resp, rs, SIPTAG_SERVER_STR(r->agent->user_agent), TAG_END());
  if (!rs->sip_contact && needs_contact(r->m.sip, a->status))
    sip_add_tl(resp, rs, SIPTAG_CONTACT(luasip_agent_contact_for(r->agent, r->tport, NULL)),
               TAG_END());
  if ((a->status == 405 || a->status == 501) && !rs->sip_allow)
    sip_add_tl(resp, rs, SIPTAG_ALLOW_STR(luasip_methods_allow), TAG_END());
  return resp;
}

/* A 2xx to an initial INVITE: the callee's dialog, made here when the script did not make
 * it first (req:answer, req:early do), so the caller's in-dialog requests and the ACK
 * find it.  Returns the dialog made now (left to the caller to drop if the 2xx cannot
 * go out), NULL when there was nothing to make; raises only on a memory error. */
static lsip_obj_t *reply_dialog(lua_State *L, lsip_req_t *r, int status, int *failed)
{
  sip_t const *q = r->m.sip;
  lsip_obj_t *d;
  *failed = 0;
  if (status < 200 || status >= 300 || q->sip_request->rq_method != sip_method_invite ||
      (q->sip_to && q->sip_to->a_tag) || r->proxy || r->dialog || !r->irq)
    return NULL;
  d = luasip_dialog_uas(L, &r->m.obj, 0);
  if (!d) {
    *failed = 1;
    return NULL;
  }
  lua_pop(L, 1);                    /* anchored while its leg exists */
  return d;
}

/* req:reply(status [, reason] [, {headers=, body=, content_type=, stateless=, reliable=}])
 *   -> true | nil, err, code */
static int req_reply(lua_State *L)
{
  lsip_req_t *r = req_check(L, 1);
  reply_args_t a;
  const char *err, *code;
  lsip_obj_t *made;
  msg_t *resp;
  int rv, failed;

  reply_args(L, r, &a);
  if ((err = reply_refused(r, &a, &code)))
    return luasip_fail(L, err, code);
  if (a.status == 100 && r->status >= 100) {
    lua_pushboolean(L, 1);          /* 100 Trying already went out */
    return 1;
  }
  if (!reply_transaction(r, &a))
    return luasip_fail(L, "no transaction for this request", "transaction");
  if (!a.reason)
    a.reason = sip_status_phrase(a.status);
  if (!a.reason)
    a.reason = a.status < 200 ? "Session Progress" : a.status < 300 ? "OK" : "Unknown";
  if (!(resp = reply_build(L, r, &a)))
    return luasip_fail(L, "out of memory", "memory");
  if (a.reliable) {
    if (luasip_req_send_reliable(r, resp, a.status, a.reason) < 0)
      return luasip_fail(L, "cannot send reliable response", "send");
    lua_pushboolean(L, 1);
    return 1;
  }
  made = reply_dialog(L, r, a.status, &failed);
  if (failed) {
    msg_destroy(resp);
    return luasip_fail(L, "cannot create dialog", "memory");
  }
  rv = luasip_req_send(r, resp, a.status, a.reason);
  /* re-read: r->dialog is cleared if the dialog went meanwhile */
  if (rv < 0 && made && r->dialog == made)
    luasip_dialog_drop(made);
  else if (rv >= 0 && r->dialog && a.status >= 200 && a.status < 300)
    luasip_dialog_confirmed(r->dialog);
  if (rv == LUASIP_SEND_FAILED)
    return luasip_fail(L, "the response could not be sent (too large for UDP, or the "
                       "connection failed); the caller was answered 500", "send");
  if (rv < 0)
    return luasip_fail(L, "cannot send response", "send");
  lua_pushboolean(L, 1);
  return 1;
}

/* req:answered() -> status of the final response sent, "forwarded" after a stateless
 * forward, or false */
static int req_answered(lua_State *L)
{
  lsip_req_t *r = req_check(L, 1);
  if (r->state == LSIP_RQ_FORWARDED)
    lua_pushliteral(L, "forwarded");
  else if (r->state == LSIP_RQ_ACK || r->status < 200)
    lua_pushboolean(L, 0);
  else
    lua_pushinteger(L, r->status);
  return 1;
}

/* req:cancelled() -> boolean */
static int req_cancelled(lua_State *L)
{
  lua_pushboolean(L, req_check(L, 1)->state == LSIP_RQ_CANCELLED);
  return 1;
}

/* req:_needs_answer() -> boolean: the dispatcher's test after a handler ended -- not
 * answered (req:answered() false), not an ACK, not cancelled, its agent open -- in one
 * call instead of four through __index on every request */
static int req_needs_answer(lua_State *L)
{
  lsip_req_t *r = req_check(L, 1);
  int answered = r->state == LSIP_RQ_FORWARDED ||
                 (r->state != LSIP_RQ_ACK && r->status >= 200);
  lua_pushboolean(L, !answered && r->state != LSIP_RQ_ACK &&
                  r->state != LSIP_RQ_CANCELLED && r->agent && r->agent->obj.alive &&
                  !r->agent->closed);
  return 1;
}

/* req:_uas_checks() -> flags for the UAS checks of RFC 3261 8.2.2 the dispatcher makes
 * on every request, from what sofia parsed: 1 the Request-URI scheme is neither sip nor
 * sips (416), 2 a To tag (12.2.2), 4 a Require header (420 check), 8 a sips:
 * Request-URI that did not come over TLS (416, RFC 5630) */
static int req_uas_checks(lua_State *L)
{
  lsip_req_t *r = req_check(L, 1);
  sip_t const *sip = r->m.sip;
  url_t const *u = sip->sip_request->rq_url;
  int flags = 0;
  if (u->url_type != url_sip && u->url_type != url_sips)
    flags |= 1;
  if (u->url_type == url_sips && !su_casematch(r->transport, "tls"))
    flags |= 8;
  if (sip->sip_to && sip->sip_to->a_tag)
    flags |= 2;
  if (sip->sip_require)
    flags |= 4;
  lua_pushinteger(L, flags);
  return 1;
}

static int req_fields(lua_State *L)
{
  lsip_req_t *r = (lsip_req_t *)luasip_testobj(L, 1, LUASIP_REQUEST);
  const char *key = lua_tostring(L, 2);
  if (!r || !key)
    return 0;
  if (!strcmp(key, "transport")) {
    lua_pushstring(L, r->transport[0] ? r->transport : NULL);
    return 1;
  }
  if (!strcmp(key, "agent")) {
    if (!r->agent || !luasip_pushobj(L, &r->agent->obj))
      return 0;
    return 1;
  }
  if (!strcmp(key, "source")) {
    if (!luasip_msg_field(L, r->m.msg, r->m.sip, key))
      return 0;
    lua_pushstring(L, r->transport);
    lua_setfield(L, -2, "transport");
    return 1;
  }
  return luasip_msg_field(L, r->m.msg, r->m.sip, key);
}

static const luaL_Reg req_methods[] = {
  {"reply", req_reply},
  {"answered", req_answered},
  {"cancelled", req_cancelled},
  {"header", luasip_msg_method_header},
  {"headers", luasip_msg_method_headers},
  {"raw", luasip_msg_method_raw},
  {"_needs_answer", req_needs_answer},
  {"_uas_checks", req_uas_checks},
  {NULL, NULL}
};

void luasip_request_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_REQUEST, req_methods, req_fields);
}
