/* SPDX-License-Identifier: MIT
 * luasip.dialog: a dialog on an nta leg (RFC 3261 12).  UAS dialogs are made by
 * req:_dialog() before the 2xx goes out, UAC dialogs by the 2xx of an INVITE sent with
 * dialog = true.  nta routes in-dialog requests (and the ACK) to the leg callback with a
 * server transaction already made; we check the remote CSeq, wrap the request and hand
 * it to the dispatcher.  Requests we send go through nta_msg_request_complete (route
 * set, target, CSeq) and the ordinary client transaction.  The userdata is anchored while
 * the leg exists, i.e. until terminate().
 */
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_protos.h>
#include <sofia-sip/su_tag.h>
#include <sofia-sip/url.h>
#include <sofia-sip/su_string.h>

#include "luasip.h"

/* A dialog's life (STYLE rule 9), changed only by dialog_enter():
 *   EARLY -> CONFIRMED (its 2xx) | TERMINATED;  CONFIRMED -> TERMINATED;  TERMINATED: final.
 * Only EARLY and CONFIRMED hold the nta leg and a place on agent->dialogs. */
typedef enum dialog_state {
  DIALOG_EARLY, DIALOG_CONFIRMED, DIALOG_TERMINATED
} dialog_state_t;

static const char *const dialog_state_names[] = { "early", "confirmed", "terminated" };

typedef struct lsip_dialog {
  lsip_obj_t obj;
  lsip_link_t link;           /* in agent->dialogs while the leg exists */
  lsip_agent_t *agent;
  nta_leg_t *leg;
  uint32_t remote_cseq;
  char call_id[128];          /* for Replaces (RFC 3891) and logs */
  char ltag[64], rtag[64];    /* kept after the leg is gone */
  lsip_obj_t **backref;       /* the client transaction's pointer to us, cleared on free */
  dialog_state_t state;       /* change only through dialog_enter() */
  unsigned uas:1, have_remote_cseq:1;
  unsigned secure:1;          /* RFC 3261 12.1: set up over TLS with sips: -- TLS only */
} lsip_dialog_t;

/* The one transition function: a dialog only moves forward (a move to the state it is
 * in, or back, is a no-op: terminate() is idempotent, a late 2xx for a dialog the script
 * already ended confirms nothing); TERMINATED lets go of the leg and is final. */
static void dialog_enter(lsip_dialog_t *d, dialog_state_t to)
{
  if (to <= d->state)
    return;
  d->state = to;
  if (to == DIALOG_TERMINATED) {
    if (d->leg) {
      nta_leg_destroy(d->leg);
      d->leg = NULL;
    }
    luasip_link_del(&d->link);
  }
}

static void dialog_release(lsip_dialog_t *d)
{
  dialog_enter(d, DIALOG_TERMINATED);
}

/* A client transaction points at its dialog; the dialog may be freed first (collected
 * once Lua drops it), so it clears that pointer. */
void luasip_dialog_backref(lsip_obj_t *obj, lsip_obj_t **ref)
{
  ((lsip_dialog_t *)obj)->backref = ref;
}

static void dialog_destroy(lsip_obj_t *obj)
{
  lsip_dialog_t *d = (lsip_dialog_t *)obj;
  if (d->backref) {
    *d->backref = NULL;
    d->backref = NULL;
  }
  dialog_release(d);
  luasip_freeobj(obj);
}

void luasip_dialogs_detach(lsip_agent_t *a)
{
  while (a->dialogs.next != &a->dialogs) {
    lsip_dialog_t *d = (lsip_dialog_t *)((char *)a->dialogs.next -
                                         offsetof(lsip_dialog_t, link));
    dialog_release(d);
    d->agent = NULL;
    if (d->obj.born)
      luasip_bridge("dialog_closed", &d->obj, NULL);
    luasip_unanchor(luasip_L(), &d->obj);
    /* an unborn (UAC) dialog belongs to its client transaction, which frees it */
  }
}

static int leg_request(nta_leg_magic_t *magic, nta_leg_t *leg, nta_incoming_t *irq,
                       sip_t const *sip)
{
  lsip_dialog_t *d = (lsip_dialog_t *)magic;
  lsip_obj_t *req;
  sip_method_t m = sip->sip_request->rq_method;
  LUASIP_COUNT_IN(m);
  if (!d->agent || d->state == DIALOG_TERMINATED)
    return luasip_count_reply(m, 481), 481;
  if (luasip_request_malformed(sip)) {
    if (m != sip_method_ack)
      return luasip_count_reply(m, 400), 400;
    luasip_counters.acks_dropped++;
    nta_incoming_destroy(irq);
    return 0;
  }
  if (sip->sip_request->rq_method == sip_method_ack) {
    msg_t *msg = nta_incoming_getrequest(irq);
    if (msg)
      luasip_request_ack(d->agent, msg, sip_object(msg));
    nta_incoming_destroy(irq);
    return 0;
  }
  /* RFC 3261 12.2.2: lower than the last remote CSeq is out of order */
  if (d->have_remote_cseq && sip->sip_cseq->cs_seq < d->remote_cseq)
    return luasip_count_reply(m, 500), 500;
  d->remote_cseq = sip->sip_cseq->cs_seq;
  d->have_remote_cseq = 1;
  /* RFC 3261 12.2.2 (re-INVITE), RFC 3311 (UPDATE), RFC 6665 4.1.2.4 (SUBSCRIBE,
   * NOTIFY): a target refresh request's Contact is the remote target from now on; the
   * route set stays (nta keeps it once set) */
  if (sip->sip_contact && (m == sip_method_invite || m == sip_method_update ||
                           m == sip_method_subscribe || m == sip_method_notify))
    nta_leg_server_route(leg, NULL, sip->sip_contact);
  req = luasip_request_from_irq(d->agent, irq);
  if (!req)
    return luasip_count_reply(m, 500), 500;
  /* d may have been terminated meanwhile; the request is re-read by dispatched() */
  luasip_request_dispatched(req, luasip_bridge("dialog_request", &d->obj, req));
  return 0;
}

static void keep_tags(lsip_dialog_t *d)
{
  const char *t = nta_leg_get_tag(d->leg), *r = nta_leg_get_rtag(d->leg);
  snprintf(d->ltag, sizeof d->ltag, "%s", t ? t : "");
  snprintf(d->rtag, sizeof d->rtag, "%s", r ? r : "");
}

static lsip_dialog_t *dialog_alloc(lsip_agent_t *a, int uas)
{
  lsip_dialog_t *d = calloc(1, sizeof *d);
  if (!d)
    return NULL;
  luasip_initobj(&d->obj, LUASIP_DIALOG, dialog_destroy);
  d->agent = a;
  d->uas = uas;
  return d;
}

/* The UAC dialog of an INVITE's 2xx; unborn until Lua asks for it (tx:dialog()). */
nta_leg_t *luasip_dialog_leg(lsip_obj_t *obj)
{
  return ((lsip_dialog_t *)obj)->leg;
}

int luasip_dialog_matches(lsip_obj_t *obj, const char *rtag)
{
  lsip_dialog_t *d = (lsip_dialog_t *)obj;
  return d->leg && rtag && su_casematch(nta_leg_get_rtag(d->leg), rtag);
}

/* The 2xx confirms an early dialog: its Contact is the remote target now. */
void luasip_dialog_confirm(lsip_obj_t *obj, sip_t const *resp)
{
  lsip_dialog_t *d = (lsip_dialog_t *)obj;
  dialog_enter(d, DIALOG_CONFIRMED);
  if (d->leg && resp->sip_contact)
    nta_leg_client_reroute(d->leg, resp->sip_record_route, resp->sip_contact, 0);
}

/* An early dialog that will not be confirmed (final failure, or another fork won). */
void luasip_dialog_drop(lsip_obj_t *obj)
{
  lsip_dialog_t *d = (lsip_dialog_t *)obj;
  if (d->backref) {                 /* the transaction lets go of it now */
    *d->backref = NULL;
    d->backref = NULL;
  }
  dialog_release(d);
  if (!d->obj.born) {
    dialog_destroy(obj);
    return;
  }
  luasip_bridge("dialog_closed", obj, NULL);
  luasip_unanchor(luasip_L(), obj);
}

/* The UAC dialog of a response with a To tag (early for 1xx, confirmed for 2xx); our
 * CSeq goes on from the request's (PRACKs and UPDATEs of the early dialog included). */
lsip_obj_t *luasip_dialog_uac(lsip_agent_t *a, sip_t const *resp, int early)
{
  nta_agent_t *nta = luasip_agent_nta(a);
  lsip_dialog_t *d = nta ? dialog_alloc(a, 0) : NULL;
  if (!d)
    return NULL;
  d->leg = nta_leg_tcreate(nta, leg_request, (nta_leg_magic_t *)d,
                           SIPTAG_CALL_ID(resp->sip_call_id),
                           SIPTAG_FROM(resp->sip_from),
                           SIPTAG_TO(resp->sip_to),
                           SIPTAG_CSEQ(resp->sip_cseq),
                           TAG_END());
  if (!d->leg) {
    luasip_freeobj(&d->obj);
    return NULL;
  }
  nta_leg_client_route(d->leg, resp->sip_record_route, resp->sip_contact);
  /* secure (12.1.2): our request left over TLS (our Via) to a sips: peer (its Contact,
   * sips: as RFC 5630 wants for a sips: request) */
  d->secure = resp->sip_via && su_casematch(resp->sip_via->v_protocol, sip_transport_tls) &&
              resp->sip_contact && resp->sip_contact->m_url->url_type == url_sips;
  d->state = early ? DIALOG_EARLY : DIALOG_CONFIRMED;
  snprintf(d->call_id, sizeof d->call_id, "%s", resp->sip_call_id->i_id);
  keep_tags(d);
  luasip_link_add(&a->dialogs, &d->link);
  return &d->obj;
}

/* The UAS dialog of req (INVITE, SUBSCRIBE or REFER without a To tag, with its server
 * transaction): pushes the dialog, anchored while its leg exists, and links it to the
 * request (req:reply knows it then has one).  NULL, nothing pushed, when the leg cannot be
 * made.  An INVITE's dialog is early until its 2xx goes out; SUBSCRIBE and REFER
 * dialogs start with their 2xx (RFC 6665 4.1.2.4). */
lsip_obj_t *luasip_dialog_uas(lua_State *L, lsip_obj_t *r, int early)
{
  lsip_agent_t *a = luasip_request_agent(r);
  nta_incoming_t *irq = luasip_request_irq(r);
  sip_t const *sip = luasip_request_sip(r);
  lsip_dialog_t *d = luasip_newobj(L, sizeof *d, LUASIP_DIALOG, dialog_destroy);
  d->agent = a;
  d->uas = 1;
  d->leg = nta_leg_tcreate(a->nta, leg_request, (nta_leg_magic_t *)d,
                           SIPTAG_CALL_ID(sip->sip_call_id),
                           SIPTAG_FROM(sip->sip_to),
                           SIPTAG_TO(sip->sip_from),
                           TAG_END());
  if (!d->leg) {
    lua_pop(L, 1);                  /* collected: nothing to release */
    return NULL;
  }
  nta_leg_tag(d->leg, nta_incoming_tag(irq, NULL));
  nta_leg_server_route(d->leg, sip->sip_record_route, sip->sip_contact);
  /* secure (12.1.1): a sips: Request-URI that arrived over TLS */
  d->secure = sip->sip_request->rq_url->url_type == url_sips && sip->sip_via &&
              su_casematch(sip->sip_via->v_protocol, sip_transport_tls);
  d->remote_cseq = sip->sip_cseq->cs_seq;
  d->have_remote_cseq = 1;
  d->state = early ? DIALOG_EARLY : DIALOG_CONFIRMED;
  snprintf(d->call_id, sizeof d->call_id, "%s", sip->sip_call_id->i_id);
  keep_tags(d);
  luasip_link_add(&a->dialogs, &d->link);
  luasip_anchor(L, &d->obj, -1);
  luasip_request_set_dialog(r, &d->obj);
  return &d->obj;
}

/* The 2xx of its INVITE went out. */
void luasip_dialog_confirmed(lsip_obj_t *obj)
{
  dialog_enter((lsip_dialog_t *)obj, DIALOG_CONFIRMED);
}

/* req:_dialog() -> dialog: the UAS dialog of an INVITE not yet answered finally */
static int req_dialog(lua_State *L)
{
  lsip_obj_t *r = luasip_checkobj(L, 1, LUASIP_REQUEST);
  lsip_agent_t *a = luasip_request_agent(r);
  nta_incoming_t *irq = luasip_request_ensure_irq(r);
  sip_t const *sip = luasip_request_sip(r);
  nta_agent_t *nta = a ? luasip_agent_nta(a) : NULL;
  if (sip->sip_request->rq_method != sip_method_invite &&
      sip->sip_request->rq_method != sip_method_subscribe &&
      sip->sip_request->rq_method != sip_method_refer)
    return luaL_error(L, "luasip.request:dialog: only INVITE, SUBSCRIBE and REFER make dialogs");
  if (sip->sip_to && sip->sip_to->a_tag)
    return luasip_fail(L, "in-dialog request: it has a dialog already", "dialog");
  if (!nta || !irq || nta_incoming_status(irq) >= 200)
    return luasip_fail(L, "request already answered", "answered");
  if (!luasip_dialog_uas(L, r, sip->sip_request->rq_method == sip_method_invite))
    return luasip_fail(L, "cannot create dialog", "memory");
  return 1;
}

/* dialog:_confirmed(): the 2xx went out */
static int dialog_confirmed(lua_State *L)
{
  dialog_enter((lsip_dialog_t *)luasip_checkobj(L, 1, LUASIP_DIALOG), DIALOG_CONFIRMED);
  return 0;
}

static lsip_dialog_t *dialog_check(lua_State *L, int idx)
{
  return (lsip_dialog_t *)luasip_checkobj(L, idx, LUASIP_DIALOG);
}

/* dialog:send{ method=, headers=, body=, content_type= } -> client_tx | nil, err, code */
static int dialog_send(lua_State *L)
{
  static const char *const fname = "luasip.dialog:send";
  lsip_dialog_t *d = dialog_check(L, 1);
  const char *method_name;
  sip_method_t method;
  msg_t *msg;
  sip_t *sip;
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "method");
  method_name = lua_tostring(L, -1);
  if (!method_name)
    return luaL_error(L, "%s: method must be a string", fname);
  method = sip_method_code(method_name);
  if (method == sip_method_invalid || method == sip_method_cancel ||
      method == sip_method_ack)
    return luaL_error(L, "%s: cannot send %s this way", fname, method_name);
  if (d->state == DIALOG_TERMINATED || !d->agent || d->agent->closed)
    return luasip_fail(L, "dialog terminated", "terminated");
  msg = nta_msg_create(d->agent->nta, 0);
  if (!msg)
    return luasip_fail(L, "out of memory", "memory");
  luasip_response_new(L, msg);      /* owns msg while anything below may raise */
  sip = sip_object(msg);
  lua_getfield(L, 2, "headers");
  luasip_add_headers(L, lua_gettop(L), msg, sip, fname);
  lua_pop(L, 1);
  luasip_set_body(L, 2, msg, sip, fname);
  if (!sip->sip_user_agent)
    sip_add_tl(msg, sip, SIPTAG_USER_AGENT_STR(d->agent->user_agent), TAG_END());
  /* request line, From/To with tags, Call-ID, next CSeq, Route and target from the leg */
  if (nta_msg_request_complete(msg, d->leg, method,
                               method == sip_method_unknown ? method_name : NULL,
                               NULL) < 0)
    return luasip_fail(L, "cannot build request", "build");
  if (d->secure) {                /* a secure dialog stays on TLS, whatever its target */
    char buf[300];
    const char *why = luasip_sips_refusal(d->agent, sip, NULL, 1, buf, sizeof buf);
    if (why)
      return luasip_fail(L, why, "tls");
  }
  /* our Contact for the transport the request leaves on (its first Route, else the
   * remote target): sips: in a dialog over TLS (RFC 5630) */
  if (!sip->sip_contact && (method == sip_method_invite || method == sip_method_update ||
                            method == sip_method_subscribe || method == sip_method_refer ||
                            method == sip_method_notify))
    sip_add_tl(msg, sip,
               SIPTAG_CONTACT(luasip_agent_contact_for(d->agent, NULL,
                                                       sip->sip_route
                                                       ? sip->sip_route->r_url
                                                       : sip->sip_request->rq_url)),
               TAG_END());
  return luasip_client_start(L, d->agent, msg, NULL, 0);
}

/* dialog:terminate() -> true (idempotent): forget the dialog without sending anything */
static int dialog_terminate(lua_State *L)
{
  lsip_dialog_t *d = dialog_check(L, 1);
  if (d->state != DIALOG_TERMINATED) {
    dialog_release(d);
    luasip_unanchor(L, &d->obj);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* dialog:_retarget(contact): the 2xx to a target refresh we sent (re-INVITE, UPDATE,
 * SUBSCRIBE, NOTIFY) names the peer's new remote target (RFC 3261 12.2.1.2) */
static int dialog_retarget(lua_State *L)
{
  lsip_dialog_t *d = dialog_check(L, 1);
  const char *c = luaL_checkstring(L, 2);
  su_home_t home[1] = { SU_HOME_INIT(home) };
  sip_contact_t *m;
  if (d->leg && d->state != DIALOG_TERMINATED && (m = sip_contact_make(home, c)) &&
      m->m_url->url_type != url_invalid)
    nta_leg_client_reroute(d->leg, NULL, m, 0);
  su_home_deinit(home);
  return 0;
}

/* dialog:_keep(): anchor a dialog first seen by Lua in an event */
static int dialog_keep(lua_State *L)
{
  lsip_dialog_t *d = dialog_check(L, 1);
  if (d->state != DIALOG_TERMINATED)
    luasip_anchor(L, &d->obj, 1);
  return 0;
}

static void push_url(lua_State *L, url_t const *u)
{
  char buf[512];
  issize_t n = u ? url_e(buf, sizeof buf, u) : -1;
  if (n > 0 && (size_t)n < sizeof buf)
    lua_pushlstring(L, buf, (size_t)n);
  else
    lua_pushnil(L);
}

static int dialog_fields(lua_State *L)
{
  lsip_dialog_t *d = (lsip_dialog_t *)luasip_testobj(L, 1, LUASIP_DIALOG);
  const char *k = lua_tostring(L, 2);
  if (!d || !k)
    return 0;
  if (!strcmp(k, "call_id")) {
    lua_pushstring(L, d->call_id);
    return 1;
  }
  if (!strcmp(k, "secure")) {
    lua_pushboolean(L, d->secure);
    return 1;
  }
  if (!strcmp(k, "role")) {
    lua_pushstring(L, d->uas ? "uas" : "uac");
    return 1;
  }
  if (!strcmp(k, "local_tag")) {
    lua_pushstring(L, d->ltag[0] ? d->ltag : NULL);
    return 1;
  }
  if (!strcmp(k, "remote_tag")) {
    lua_pushstring(L, d->rtag[0] ? d->rtag : NULL);
    return 1;
  }
  return 0;
}

/* dialog:state() -> "early" | "confirmed" | "terminated" */
static int dialog_state(lua_State *L)
{
  lsip_dialog_t *d = dialog_check(L, 1);
  lua_pushstring(L, dialog_state_names[d->state]);
  return 1;
}

/* dialog:target() -> remote target URI (Contact of the peer) */
static int dialog_target(lua_State *L)
{
  lsip_dialog_t *d = dialog_check(L, 1);
  sip_contact_t const *m = NULL;
  if (!d->leg || nta_leg_get_route(d->leg, NULL, &m) < 0 || !m)
    return 0;
  push_url(L, m->m_url);
  return 1;
}

static const luaL_Reg dialog_methods[] = {
  {"send", dialog_send},
  {"terminate", dialog_terminate},
  {"state", dialog_state},
  {"target", dialog_target},
  {"_keep", dialog_keep},
  {"_retarget", dialog_retarget},
  {"_confirmed", dialog_confirmed},
  {NULL, NULL}
};

static const luaL_Reg request_dialog_methods[] = {
  {"_dialog", req_dialog},
  {NULL, NULL}
};

void luasip_dialog_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_DIALOG, dialog_methods, dialog_fields);
  luasip_add_methods(L, LUASIP_REQUEST, request_dialog_methods);
}
