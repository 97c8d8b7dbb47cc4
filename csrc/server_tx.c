/* SPDX-License-Identifier: MIT
 * luasip.request: an incoming request and its server side.  Uses nta_incoming (created
 * lazily: only INVITEs and requests left unanswered by their handler's first run get
 * one), nta_msg_mreply for stateless answers (DESIGN D9), and does the INVITE duties nta
 * leaves to a UA when it runs with NTATAG_UA(0): 100 Trying, 2xx retransmission until the
 * ACK (RFC 3261 13.3.1.4), BYE when none comes in 64*T1, 487 on CANCEL.
 * Ownership: the struct owns one msg reference for reading (m.msg) and, until nta takes
 * it, one for answering (pending).  It outlives its userdata while the 2xx is in flight.
 */
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/nta_tport.h>
#include <sofia-sip/tport.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_protos.h>
#include <sofia-sip/sip_util.h>
#include <sofia-sip/su_string.h>
#include <sofia-sip/su_tag.h>

#include "luasip.h"


typedef struct lsip_req {
  lsip_msgobj_t m;
  lsip_link_t link;           /* in agent->requests while sofia state exists */
  lsip_agent_t *agent;
  nta_incoming_t *irq;
  msg_t *pending;             /* reference handed to nta with the answer */
  tport_t *tport;             /* delivering transport, for 2xx retransmission */
  char transport[8];
  int status;                 /* highest status sent */
  unsigned dispatching:1, cancelled:1, is_ack:1, orphan:1, reliable:1, forwarded:1;
  lsip_obj_t *proxy;          /* proxy.c forwarding this request, if any */
  su_timer_t *rtx;            /* 2xx retransmission timer */
  msg_t *resp2xx;
  unsigned rtx_interval, rtx_elapsed;
  tp_name_t rtx_tpn[1];
  struct lsip_req *invite;    /* for an ACK: nothing (the INVITE is passed alongside) */
} lsip_req_t;

static const char *const luasip_methods_allow =
  "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, REFER, "
  "INFO, UPDATE, PRACK, MESSAGE";

/* ---------------------------------------------------------------- lifetime */

static int req_has_sofia(lsip_req_t *r)
{
  return r->irq || r->rtx || r->pending;
}

static void rtx_stop(lsip_req_t *r)
{
  if (r->rtx) {
    su_timer_destroy(r->rtx);
    r->rtx = NULL;
  }
  if (r->resp2xx) {
    msg_destroy(r->resp2xx);
    r->resp2xx = NULL;
  }
}

static void req_free(lsip_req_t *r)
{
  if (r->proxy)
    luasip_proxy_forget(r->proxy);
  if (r->m.msg)
    msg_destroy(r->m.msg);
  luasip_freeobj(&r->m.obj);
}

/* Drops sofia state that is no longer needed; frees an orphan with nothing left. */
static void req_settle(lsip_req_t *r)
{
  if (req_has_sofia(r))
    return;
  if (r->tport) {
    tport_unref(r->tport);
    r->tport = NULL;
  }
  luasip_link_del(&r->link);
  if (r->orphan)
    req_free(r);
}

static void req_release_sofia(lsip_req_t *r)
{
  rtx_stop(r);
  if (r->irq) {
    nta_incoming_destroy(r->irq);
    r->irq = NULL;
  }
  if (r->pending) {
    msg_destroy(r->pending);
    r->pending = NULL;
  }
  if (r->tport) {
    tport_unref(r->tport);
    r->tport = NULL;
  }
  luasip_link_del(&r->link);
}

static int send_final_plain(lsip_req_t *r, int status, const char *phrase);

/* The userdata is gone (drained after __gc). */
static void req_destroy(lsip_obj_t *obj)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  if (r->irq && r->status < 200) {
    /* abandoned by its handler: the caller still gets an answer */
    luasip_log(2, "%s request collected without a final response: 500",
               r->m.sip->sip_request->rq_method_name);
    send_final_plain(r, 500, "Request Abandoned");
  }
  if (r->rtx && r->agent && !r->agent->closed) {
    r->orphan = 1;                /* keep retransmitting the 2xx until ACK or timeout */
    return;
  }
  req_release_sofia(r);
  req_free(r);
}

void luasip_requests_detach(lsip_agent_t *a)
{
  while (a->requests.next != &a->requests) {
    lsip_req_t *r = (lsip_req_t *)((char *)a->requests.next - offsetof(lsip_req_t, link));
    int waited = r->m.obj.alive && (r->rtx || r->reliable);
    req_release_sofia(r);
    r->agent = NULL;
    if (waited)
      luasip_bridge("request_closed", &r->m.obj, NULL);  /* wake wait_ack / PRACK waits */
    if (r->orphan)
      req_free(r);
  }
}

/* ---------------------------------------------------------------- sending */

static void rtx_tick(su_root_magic_t *magic, su_timer_t *t, su_timer_arg_t *arg);

static void start_2xx_rtx(lsip_req_t *r)
{
  sip_via_t const *v = r->m.sip->sip_via;
  nta_agent_t *nta = luasip_agent_nta(r->agent);
  if (!v || !r->tport || !nta)
    return;
  r->resp2xx = nta_incoming_getresponse(r->irq);
  if (!r->resp2xx)
    return;
  /* the request's Via already carries received/rport (nta's check_request_via) */
  r->rtx_tpn->tpn_proto = tport_name(r->tport)->tpn_proto;
  r->rtx_tpn->tpn_host = v->v_received ? v->v_received : v->v_host;
  r->rtx_tpn->tpn_canon = r->rtx_tpn->tpn_host;
  r->rtx_tpn->tpn_port = v->v_rport && v->v_rport[0] ? v->v_rport
                         : v->v_port ? v->v_port : "5060";
  r->rtx = su_timer_create(su_root_task(luasip_S->root), 0);
  r->rtx_interval = r->agent->t1;
  r->rtx_elapsed = 0;
  if (!r->rtx || su_timer_set_interval(r->rtx, rtx_tick, r, r->rtx_interval) < 0)
    rtx_stop(r);
}

static int bye_done(nta_outgoing_magic_t *magic, nta_outgoing_t *orq, sip_t const *sip)
{
  nta_leg_t *leg = (nta_leg_t *)magic;
  if (!sip || sip->sip_status->st_status >= 200) {
    nta_outgoing_destroy(orq);
    nta_leg_destroy(leg);
  }
  return 0;
}

/* No ACK for our 2xx: end the session we created (RFC 3261 13.3.1.4). */
static void send_bye(lsip_req_t *r)
{
  nta_agent_t *nta = luasip_agent_nta(r->agent);
  sip_t const *req = r->m.sip, *resp;
  nta_leg_t *leg;
  if (!nta || !r->resp2xx || !(resp = sip_object(r->resp2xx)))
    return;
  leg = nta_leg_tcreate(nta, NULL, NULL,
                        SIPTAG_CALL_ID(req->sip_call_id),
                        SIPTAG_FROM(resp->sip_to),
                        SIPTAG_TO(req->sip_from),
                        TAG_END());
  if (!leg)
    return;
  nta_leg_server_route(leg, req->sip_record_route, req->sip_contact);
  if (!nta_outgoing_tcreate(leg, bye_done, (nta_outgoing_magic_t *)leg, NULL,
                            SIP_METHOD_BYE, NULL,
                            SIPTAG_USER_AGENT_STR(r->agent->user_agent),
                            TAG_END()))
    nta_leg_destroy(leg);
}

static void rtx_tick(su_root_magic_t *magic, su_timer_t *t, su_timer_arg_t *arg)
{
  lsip_req_t *r = (lsip_req_t *)arg;
  (void)magic; (void)t;
  r->rtx_elapsed += r->rtx_interval;
  if (!r->agent || r->rtx_elapsed >= 64 * r->agent->t1) {
    luasip_log(3, "no ACK for 2xx to INVITE %s: sending BYE",
               r->m.sip->sip_call_id ? r->m.sip->sip_call_id->i_id : "?");
    send_bye(r);
    rtx_stop(r);
    if (!r->orphan)
      luasip_bridge("ack_timeout", &r->m.obj, NULL);
    req_settle(r);
    return;
  }
  if (r->tport)
    tport_tsend(r->tport, r->resp2xx, r->rtx_tpn, TAG_END());
  r->rtx_interval = r->rtx_interval * 2 < r->agent->t2 ? r->rtx_interval * 2 : r->agent->t2;
  su_timer_set_interval(r->rtx, rtx_tick, r, r->rtx_interval);
}

/* A PRACK for one of our reliable provisional responses (RFC 3262 3): the core answers
 * it 200, then Lua hears ("prack", invite, prack). */
static int prack_callback(nta_reliable_magic_t *magic, nta_reliable_t *rel,
                          nta_incoming_t *pr_irq, sip_t const *sip)
{
  lsip_req_t *r = (lsip_req_t *)magic;
  lsip_obj_t *pr;
  (void)rel; (void)sip;
  if (!pr_irq || !r->agent)
    return 0;
  pr = luasip_request_from_irq(r->agent, pr_irq);
  if (!pr)
    return 200;
  send_final_plain((lsip_req_t *)pr, SIP_200_OK);
  luasip_request_dispatched(pr, luasip_bridge("prack", r->m.obj.alive ? &r->m.obj : NULL, pr));
  return 0;
}

static int irq_callback(nta_incoming_magic_t *magic, nta_incoming_t *irq, sip_t const *sip)
{
  lsip_req_t *r = (lsip_req_t *)magic;
  (void)irq;
  if (!sip && r->reliable && r->status < 200) {
    /* a reliable provisional response was never PRACKed (RFC 3262 3: 5xx) */
    send_final_plain(r, 504, "Reliable Response Time-Out");
    if (r->m.obj.alive)
      luasip_bridge("prack_timeout", &r->m.obj, NULL);
    req_settle(r);
    return 0;
  }
  /* CANCEL ends only an INVITE (RFC 3261 9.2); for others nta's 200 is all there is */
  if (sip && sip->sip_request && sip->sip_request->rq_method == sip_method_cancel &&
      r->m.sip->sip_request->rq_method == sip_method_invite && r->status < 200) {
    /* nta already answered the CANCEL 200; the INVITE ends with 487, and a proxy
     * cancels its branches (RFC 3261 16.10) */
    send_final_plain(r, SIP_487_REQUEST_CANCELLED);
    r->cancelled = 1;
    if (r->proxy)
      luasip_proxy_cancel(r->proxy);
    if (r->m.obj.alive)
      luasip_bridge("cancel", &r->m.obj, NULL);
    req_settle(r);
  }
  return 0;
}

static nta_incoming_t *make_irq(lsip_req_t *r)
{
  nta_agent_t *nta = luasip_agent_nta(r->agent);
  if (!nta || !r->pending)
    return NULL;
  r->irq = nta_incoming_create(nta, NULL, r->pending, NULL,
                               NTATAG_TPORT(r->tport),
                               TAG_END());
  r->pending = NULL;                /* nta owns it now, even on failure */
  if (r->irq) {
    nta_incoming_bind(r->irq, irq_callback, (nta_incoming_magic_t *)r);
    if (!r->m.sip->sip_to || !r->m.sip->sip_to->a_tag)
      nta_incoming_tag(r->irq, NULL);
  }
  return r->irq;
}

/* After a final response went out through the irq. */
static void after_final(lsip_req_t *r, int status)
{
  /* a proxied 2xx is the UAS's to retransmit, not ours */
  if (r->m.sip->sip_request->rq_method == sip_method_invite && status < 300 && !r->proxy)
    start_2xx_rtx(r);
  nta_incoming_destroy(r->irq);
  r->irq = NULL;
}

/* A final answer with no Lua options: used for 487, 500 and abandoned requests. */
static int send_final_plain(lsip_req_t *r, int status, const char *phrase)
{
  nta_agent_t *nta = luasip_agent_nta(r->agent);
  int rv = -1;
  if (!nta || r->status >= 200)
    return -1;
  if (r->irq) {
    rv = nta_incoming_treply(r->irq, status, phrase,
                             SIPTAG_SERVER_STR(r->agent->user_agent), TAG_END());
    r->status = status;
    after_final(r, status);
  } else if (r->pending) {
    rv = nta_msg_treply(nta, r->pending, status, phrase,
                        SIPTAG_SERVER_STR(r->agent->user_agent), TAG_END());
    r->pending = NULL;
    r->status = status;
  }
  return rv;
}

/* ---------------------------------------------------------------- incoming */

static lsip_req_t *req_new(lsip_agent_t *a, msg_t *msg, sip_t *sip)
{
  lsip_req_t *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  luasip_initobj(&r->m.obj, LUASIP_REQUEST, req_destroy);
  r->agent = a;
  r->m.msg = msg;
  r->m.sip = sip;
  return r;
}

void luasip_request_incoming(lsip_agent_t *a, nta_agent_t *nta, msg_t *msg, sip_t *sip)
{
  lsip_req_t *r = req_new(a, msg, sip);
  tport_t *tp;
  if (!r) {
    nta_msg_treply(nta, msg, SIP_500_INTERNAL_SERVER_ERROR, TAG_END());
    return;
  }
  r->pending = msg_ref_create(msg);
  tp = tport_delivered_by(nta_agent_tports(nta), msg);
  if (tp) {
    r->tport = tport_ref(tp);
    snprintf(r->transport, sizeof r->transport, "%s", tport_name(tp)->tpn_proto);
  }
  luasip_link_add(&a->requests, &r->link);
  if (sip->sip_request->rq_method == sip_method_invite && make_irq(r)) {
    nta_incoming_treply(r->irq, SIP_100_TRYING, TAG_END());
    r->status = 100;
  }
  r->dispatching = 1;
  luasip_request_dispatched(&r->m.obj, luasip_bridge("request", &r->m.obj, NULL));
}

/* After the first run of the request's handler: the bridge call returned rc.  Everything
 * is re-read from r (Lua may have answered, proxied or forwarded it, or closed the agent).
 * When Lua did not run or the dispatcher raised, nobody will answer: 500 now (statelessly
 * while there is no transaction), not when GC finds the request. */
void luasip_request_dispatched(lsip_obj_t *obj, int rc)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  r->dispatching = 0;
  if (rc < 0 && !r->is_ack && !r->forwarded && r->status < 200 && r->agent &&
      !r->agent->closed) {
    luasip_log(3, "%s left unanswered by a failed dispatch: 500",
               r->m.sip->sip_request->rq_method_name);
    if (r->proxy)
      luasip_proxy_cancel(r->proxy);  /* its branches end; the answer is ours */
    send_final_plain(r, SIP_500_INTERNAL_SERVER_ERROR);
  }
  if (!r->m.obj.born) {
    /* Lua could not even see it (out of memory): answer and forget */
    send_final_plain(r, SIP_500_INTERNAL_SERVER_ERROR);
    req_release_sofia(r);
    req_free(r);
    return;
  }
  if (r->status < 200 && !r->irq && !(r->agent && r->agent->closed))
    make_irq(r);                   /* the handler waits: absorb retransmissions */
  req_settle(r);
}

/* A request nta already made a transaction for (in-dialog requests reach leg callbacks
 * with one).  Returns an unborn object; the caller bridges it, then calls
 * luasip_request_dispatched. */
lsip_obj_t *luasip_request_from_irq(lsip_agent_t *a, nta_incoming_t *irq)
{
  msg_t *msg = nta_incoming_getrequest(irq);
  lsip_req_t *r = msg ? req_new(a, msg, sip_object(msg)) : NULL;
  tport_t *tp;
  if (!r) {
    if (msg)
      msg_destroy(msg);
    return NULL;
  }
  r->irq = irq;
  nta_incoming_bind(irq, irq_callback, (nta_incoming_magic_t *)r);
  tp = nta_incoming_transport(a->nta, irq, msg);
  if (tp) {
    r->tport = tp;                  /* nta_incoming_transport gave us a reference */
    snprintf(r->transport, sizeof r->transport, "%s", tport_name(tp)->tpn_proto);
  }
  luasip_link_add(&a->requests, &r->link);
  r->dispatching = 1;
  return &r->m.obj;
}

/* The request's server transaction, made now if it has none yet (first run only). */
nta_incoming_t *luasip_request_ensure_irq(lsip_obj_t *obj)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  if (!r->irq && r->dispatching && r->status < 200)
    make_irq(r);
  return r->irq;
}

void luasip_request_set_proxy(lsip_obj_t *obj, lsip_obj_t *proxy)
{
  ((lsip_req_t *)obj)->proxy = proxy;
}

int luasip_request_status(lsip_obj_t *obj)
{
  return ((lsip_req_t *)obj)->status;
}

/* Forwards a response received on a proxy branch (msg: our reference, our Via still on
 * top) upstream: through the transaction while no final went out, statelessly after
 * that (late 2xx, RFC 3261 16.7 step 10). */
int luasip_request_forward(lsip_obj_t *obj, msg_t *msg)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  sip_t *sip = sip_object(msg);
  nta_agent_t *nta = r->agent ? luasip_agent_nta(r->agent) : NULL;
  int status = sip->sip_status->st_status, rv;
  if (!nta) {
    msg_destroy(msg);
    return -1;
  }
  if (!r->irq || r->status >= 200) {
    if (status >= 200 && status < 300)
      return nta_msg_tsend(nta, msg, NULL, TAG_END());  /* removes our Via itself */
    msg_destroy(msg);
    return 0;
  }
  sip_via_remove(msg, sip);
  rv = nta_incoming_mreply(r->irq, msg);
  if (status > r->status)
    r->status = status;
  if (status >= 200) {
    after_final(r, status);
    if (!r->dispatching)
      req_settle(r);
  }
  return rv;
}

/* The request went on statelessly (req:forward): nothing to answer any more. */
void luasip_request_forwarded(lsip_obj_t *obj)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  r->forwarded = 1;
  if (r->pending) {
    msg_destroy(r->pending);
    r->pending = NULL;
  }
  if (!r->dispatching)
    req_settle(r);
}

lsip_agent_t *luasip_request_agent(lsip_obj_t *obj)
{
  return ((lsip_req_t *)obj)->agent;
}

nta_incoming_t *luasip_request_irq(lsip_obj_t *obj)
{
  return ((lsip_req_t *)obj)->irq;
}

msg_t *luasip_request_msg(lsip_obj_t *obj)
{
  return ((lsip_req_t *)obj)->m.msg;
}

sip_t const *luasip_request_sip(lsip_obj_t *obj)
{
  return ((lsip_req_t *)obj)->m.sip;
}

int luasip_request_ack(lsip_agent_t *a, msg_t *msg, sip_t *sip)
{
  lsip_link_t *l;
  lsip_req_t *inv = NULL, *ack;
  for (l = a->requests.next; l != &a->requests; l = l->next) {
    lsip_req_t *r = (lsip_req_t *)((char *)l - offsetof(lsip_req_t, link));
    sip_t const *resp;
    if (!r->resp2xx || !(resp = sip_object(r->resp2xx)))
      continue;
    if (r->m.sip->sip_cseq->cs_seq == sip->sip_cseq->cs_seq &&
        su_strmatch(r->m.sip->sip_call_id->i_id, sip->sip_call_id->i_id) &&
        su_strmatch(resp->sip_to->a_tag, sip->sip_to->a_tag)) {
      inv = r;
      break;
    }
  }
  ack = req_new(a, msg, sip);
  if (!ack) {
    msg_destroy(msg);
    return 0;
  }
  ack->is_ack = 1;
  ack->status = 700;                /* never answered */
  if (inv) {
    rtx_stop(inv);
    luasip_bridge("ack", inv->m.obj.alive ? &inv->m.obj : NULL, &ack->m.obj);
    req_settle(inv);
  } else {
    luasip_bridge("request", &ack->m.obj, NULL);
  }
  if (!ack->m.obj.born)
    req_free(ack);
  return 1;
}

/* ---------------------------------------------------------------- Lua API */

static lsip_req_t *req_check(lua_State *L, int idx)
{
  return (lsip_req_t *)luasip_checkobj(L, idx, LUASIP_REQUEST);
}

static int needs_contact(sip_t const *sip, int status)
{
  sip_method_t m = sip->sip_request->rq_method;
  if (status <= 100 || status >= 300)
    return 0;
  return m == sip_method_invite || m == sip_method_subscribe || m == sip_method_refer ||
         m == sip_method_update || (m == sip_method_notify && status < 300);
}

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

/* req:reply(status [, reason] [, {headers=, body=, content_type=, stateless=, reliable=}])
 *   -> true | nil, err, code */
static int req_reply(lua_State *L)
{
  static const char *const fname = "luasip.request:reply";
  lsip_req_t *r = req_check(L, 1);
  lua_Integer status;
  lua_Number sn;
  const char *reason = NULL;
  int opts = 3, has_opts, reliable = 0;
  nta_agent_t *nta;
  msg_t *resp;
  sip_t *rs;
  int rv;

  sn = lua_type(L, 2) == LUA_TNUMBER ? lua_tonumber(L, 2) : 0;
  status = (lua_Integer)sn;
  if ((lua_Number)status != sn || status < 100 || status > 699)
    return req_argerror(L, fname, "status must be 100-699");
  if (lua_type(L, 3) == LUA_TSTRING) {
    size_t n;
    reason = lua_tolstring(L, 3, &n);
    if (!reason_ok(reason, n))
      return req_argerror(L, fname, "reason must not contain CR or LF (or other control "
                          "characters)");
    opts = 4;
  } else if (lua_isnil(L, 3) && lua_istable(L, 4)) {
    opts = 4;                         /* reply(status, nil, opts) */
  } else if (!lua_isnoneornil(L, 3) && !lua_istable(L, 3)) {
    return req_argerror(L, fname, "reason must be a string");
  }
  if (!lua_isnoneornil(L, opts) && !lua_istable(L, opts))
    return req_argerror(L, fname, "options must be a table");
  if (r->is_ack)
    return req_argerror(L, fname, "an ACK is never answered");
  if (r->cancelled)
    return luasip_fail(L, "request cancelled", "cancelled");
  if (r->status >= 200)
    return luasip_fail(L, "request already answered", "answered");
  nta = r->agent ? luasip_agent_nta(r->agent) : NULL;
  if (!nta)
    return luasip_fail(L, "agent closed", "closed");
  if (lua_istable(L, opts)) {
    lua_getfield(L, opts, "reliable");
    reliable = lua_toboolean(L, -1);
    lua_pop(L, 1);
    if (reliable) {
      sip_t const *q = r->m.sip;
      if (q->sip_request->rq_method != sip_method_invite || status <= 100 || status >= 200)
        return req_argerror(L, fname, "only a 101-199 answer to an INVITE can be reliable");
      if (!(q->sip_supported && sip_has_feature(q->sip_supported, "100rel")) &&
          !(q->sip_require && sip_has_feature(q->sip_require, "100rel")))
        return luasip_fail(L, "the caller does not support 100rel", "unsupported");
    }
  }
  if (status == 100 && r->status >= 100) {
    lua_pushboolean(L, 1);          /* 100 Trying already went out */
    return 1;
  }
  has_opts = !lua_isnoneornil(L, opts);
  if (!reason)
    reason = sip_status_phrase((int)status);
  if (!reason)
    reason = status < 200 ? "Session Progress" : status < 300 ? "OK" : "Unknown";

  /* Stateless answers (DESIGN D9) only for idempotent requests answered during their
   * first run -- OPTIONS, REGISTER, or when the caller says so (opts.stateless, used for
   * the core's own rejections) -- so a retransmission never runs a handler twice. */
  if (!r->irq) {
    int stateless = 0;
    if (r->dispatching && status >= 200) {
      sip_method_t m = r->m.sip->sip_request->rq_method;
      stateless = m == sip_method_options || m == sip_method_register;
      if (has_opts) {
        lua_getfield(L, opts, "stateless");
        if (!lua_isnil(L, -1))
          stateless = lua_toboolean(L, -1);
        lua_pop(L, 1);
      }
    }
    if (!stateless && (!r->dispatching || !make_irq(r)))
      return luasip_fail(L, "no transaction for this request", "transaction");
  }

  resp = nta_msg_create(nta, 0);
  rs = sip_object(resp);
  if (!resp || !rs)
    return luasip_fail(L, "out of memory", "memory");
  /* a luasip.response owns the message while Lua code may raise on bad headers, so
   * nothing leaks; nta gets a reference of its own below */
  luasip_response_new(L, resp);
  if (has_opts) {
    lua_getfield(L, opts, "headers");
    luasip_add_headers(L, lua_gettop(L), resp, rs, "luasip.request:reply");
    lua_pop(L, 1);
    luasip_set_body(L, opts, resp, rs, "luasip.request:reply");
  }
  resp = msg_ref_create(resp);
  if (!rs->sip_server && !rs->sip_user_agent)
    sip_add_tl(resp, rs, SIPTAG_SERVER_STR(r->agent->user_agent), TAG_END());
  if (!rs->sip_contact && needs_contact(r->m.sip, (int)status))
    sip_add_tl(resp, rs, SIPTAG_CONTACT(luasip_agent_contact_for(r->agent, msg_home(resp),
                                                                 r->tport, NULL)),
               TAG_END());
  if ((status == 405 || status == 501) && !rs->sip_allow)
    sip_add_tl(resp, rs, SIPTAG_ALLOW_STR(luasip_methods_allow), TAG_END());

  if (reliable) {
    /* RFC 3262: RSeq and Require: 100rel are nta's; it retransmits until the PRACK */
    if (nta_incoming_complete_response(r->irq, resp, (int)status, reason, TAG_END()) < 0) {
      msg_destroy(resp);
      return luasip_fail(L, "cannot build response", "build");
    }
    if (!nta_reliable_mreply(r->irq, prack_callback, (nta_reliable_magic_t *)r, resp))
      return luasip_fail(L, "cannot send reliable response", "send");  /* msg freed */
    r->reliable = 1;
    if ((int)status > r->status)
      r->status = (int)status;
    lua_pushboolean(L, 1);
    return 1;
  }
  if (r->irq) {
    if (nta_incoming_complete_response(r->irq, resp, (int)status, reason, TAG_END()) < 0) {
      msg_destroy(resp);
      return luasip_fail(L, "cannot build response", "build");
    }
    rv = nta_incoming_mreply(r->irq, resp);
    if ((int)status > r->status)
      r->status = (int)status;
    if (status >= 200)
      after_final(r, (int)status);
  } else {
    rv = nta_msg_mreply(nta, resp, rs, (int)status, reason, r->pending, TAG_END());
    r->pending = NULL;
    r->status = (int)status;
  }
  if (!r->dispatching)
    req_settle(r);
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
  if (r->forwarded)
    lua_pushliteral(L, "forwarded");
  else if (r->is_ack || r->status < 200)
    lua_pushboolean(L, 0);
  else
    lua_pushinteger(L, r->status);
  return 1;
}

/* req:cancelled() -> boolean */
static int req_cancelled(lua_State *L)
{
  lua_pushboolean(L, req_check(L, 1)->cancelled);
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
  {NULL, NULL}
};

void luasip_request_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_REQUEST, req_methods, req_fields);
}
