/* SPDX-License-Identifier: MIT
 * luasip.client_tx: a request we send (UAC, out of dialog) on nta_outgoing_mcreate.
 * The userdata is anchored from creation until the final response has been delivered to
 * Lua.  INVITE: the ACK for a 2xx is sent here (UA(0) nta leaves it to us), remembered
 * for 64*T1 so retransmitted 2xx are ACKed again; a 2xx from another fork is ACKed and
 * BYEd (nta_msg_ackbye).  Non-2xx ACKs are nta's.
 */
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/nta_tport.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_protos.h>
#include <sofia-sip/sip_util.h>
#include <sofia-sip/su_string.h>
#include <sofia-sip/su_tag.h>
#include <sofia-sip/url.h>

#include "luasip.h"

#define ACK_KEEP_MS (64 * 500)

/* A client transaction's life, changed only by client_to():
 *   SENDING    nta_outgoing_mcreate is running; orq not known yet (a local failure may be
 *              delivered from inside it)
 *   PROCEEDING orq held, anchored, on the agent's list, waiting for the final response
 *   COMPLETED  the final response is being delivered to Lua; orq still held
 *   CLOSED     orq destroyed, off the list, unanchored; nothing of sofia left.  Reached by
 *              the final response's delivery, tx:close(), the agent's close or the GC at
 *              lua_close, from any state and possibly from inside a Lua call the core made
 *              about this very transaction: every caller of the bridge re-reads the state. */
typedef enum {
  CLIENT_SENDING,
  CLIENT_PROCEEDING,
  CLIENT_COMPLETED,
  CLIENT_CLOSED
} client_state_t;

typedef struct lsip_client {
  lsip_obj_t obj;
  lsip_link_t link;
  lsip_agent_t *agent;
  nta_outgoing_t *orq;
  client_state_t state;
  int status;
  unsigned is_invite:1, want_dialog:1;
  lsip_obj_t *dialog;         /* dialog created by our 2xx (owned by Lua once born) */
  uint32_t rseq;              /* last RSeq PRACKed in the early dialog */
  char *prack_body, *prack_type;  /* what Lua wants in the next PRACK (an SDP answer) */
} lsip_client_t;

/* ---------------------------------------------------------------- ACK memory */

typedef struct acked {
  struct acked *next;
  char *call_id, *to_tag;
  uint32_t cseq;
  su_time_t until;
} acked_t;

static void acks_prune(lsip_agent_t *a, int all)
{
  acked_t **pp = (acked_t **)&a->acks, *k;
  su_time_t now = su_now();
  while ((k = *pp)) {
    if (all || su_time_cmp(k->until, now) < 0) {
      *pp = k->next;
      free(k->call_id);
      free(k->to_tag);
      free(k);
    } else {
      pp = &k->next;
    }
  }
}

static void acks_remember(lsip_agent_t *a, sip_t const *resp)
{
  acked_t *k = calloc(1, sizeof *k);
  acks_prune(a, 0);
  if (!k)
    return;
  k->call_id = strdup(resp->sip_call_id->i_id);
  k->to_tag = strdup(resp->sip_to->a_tag ? resp->sip_to->a_tag : "");
  k->cseq = resp->sip_cseq->cs_seq;
  k->until = su_time_add(su_now(), ACK_KEEP_MS / 1000);
  if (!k->call_id || !k->to_tag) {
    free(k->call_id);
    free(k->to_tag);
    free(k);
    return;
  }
  k->next = (acked_t *)a->acks;
  a->acks = k;
}

/* 1: same dialog (retransmission), 2: same INVITE, other fork, 0: unknown */
static int acks_match(lsip_agent_t *a, sip_t const *resp)
{
  acked_t *k;
  int found = 0;
  acks_prune(a, 0);
  for (k = (acked_t *)a->acks; k; k = k->next) {
    if (k->cseq != resp->sip_cseq->cs_seq || strcmp(k->call_id, resp->sip_call_id->i_id))
      continue;
    if (!strcmp(k->to_tag, resp->sip_to->a_tag ? resp->sip_to->a_tag : ""))
      return 1;
    found = 2;
  }
  return found;
}

/* Fills ack (a new message) as an ACK to target along route, with these From, To,
 * Call-ID and CSeq number: the parts both kinds of ACK share.  -1 on failure. */
static int ack_fill(lsip_agent_t *a, msg_t *ack, url_t const *target,
                    sip_route_t const *route, sip_from_t const *from, sip_to_t const *to,
                    sip_call_id_t const *call_id, uint32_t seq)
{
  su_home_t *home = msg_home(ack);
  if (!target)
    return -1;
  return sip_add_tl(ack, sip_object(ack),
                    SIPTAG_REQUEST(sip_request_create(home, SIP_METHOD_ACK,
                                                      (url_string_t const *)target, NULL)),
                    SIPTAG_ROUTE(route),
                    SIPTAG_FROM(from),
                    SIPTAG_TO(to),
                    SIPTAG_CALL_ID(call_id),
                    SIPTAG_CSEQ(sip_cseq_create(home, seq, SIP_METHOD_ACK)),
                    SIPTAG_MAX_FORWARDS_STR("70"),
                    SIPTAG_USER_AGENT_STR(a->user_agent),
                    TAG_END()) < 0 ? -1 : 0;
}

/* ACK for a 2xx, built from the response (RFC 3261 13.2.2.4): Request-URI from Contact,
 * Route from the reversed Record-Route, same Call-ID/From/To and CSeq number. */
static int send_2xx_ack(lsip_agent_t *a, sip_t const *resp, url_t const *fallback)
{
  nta_agent_t *nta = luasip_agent_nta(a);
  msg_t *ack;
  su_home_t *home;
  url_t const *target;
  sip_route_t *route = NULL;
  if (!nta || !(ack = nta_msg_create(nta, 0)))
    return -1;
  home = msg_home(ack);
  target = resp->sip_contact ? resp->sip_contact->m_url : fallback;
  if (resp->sip_record_route)
    route = sip_route_reverse(home, (sip_route_t const *)resp->sip_record_route);
  if (route && !url_has_param(route->r_url, "lr")) {
    /* strict router: it becomes the Request-URI, the target goes last (RFC 3261 12.2.1.1) */
    sip_route_t *r, *last = route;
    url_t const *first = route->r_url;
    while (last->r_next)
      last = last->r_next;
    r = sip_route_create(home, target, NULL);
    if (r)
      last->r_next = r;
    target = first;
    route = route->r_next;
  }
  if (ack_fill(a, ack, target, route, resp->sip_from, resp->sip_to, resp->sip_call_id,
               resp->sip_cseq->cs_seq) < 0) {
    msg_destroy(ack);
    return -1;
  }
  return nta_msg_tsend(nta, ack, NULL, TAG_END());
}

/* The value of orq's Via branch parameter (nta_outgoing_branch gives "branch=..."), or
 * NULL */
const char *luasip_orq_branch(nta_outgoing_t *orq)
{
  char const *b = nta_outgoing_branch(orq);
  return b && su_casenmatch(b, "branch=", 7) ? b + 7 : b;
}

/* ACK for a non-2xx final response to the INVITE orq (RFC 3261 17.1.1.3), for a response
 * nta could not match: the Request-URI, Call-ID, From, CSeq number and Route of the
 * INVITE, the To of the response, and a Via with the INVITE's branch (the key), over the
 * INVITE's own transport (its connection) */
int luasip_ack_non2xx(lsip_agent_t *a, nta_outgoing_t *orq, sip_t const *resp)
{
  nta_agent_t *nta = luasip_agent_nta(a);
  msg_t *req = nta_outgoing_getrequest(orq), *ack = NULL;
  sip_t const *rs = req ? sip_object(req) : NULL;
  char const *branch = luasip_orq_branch(orq);
  tport_t *tp = nta_outgoing_transport(orq);
  int rc = -1;
  if (nta && rs && rs->sip_request && rs->sip_cseq && branch && resp->sip_to &&
      (ack = nta_msg_create(nta, 0))) {
    if (ack_fill(a, ack, rs->sip_request->rq_url, rs->sip_route, rs->sip_from, resp->sip_to,
                 rs->sip_call_id, rs->sip_cseq->cs_seq) < 0) {
      msg_destroy(ack);
    } else {
      /* nta_msg_tsend takes ack; the next hop is the INVITE's (a flow, a Route) */
      rc = nta_msg_tsend(nta, ack, NULL, NTATAG_BRANCH_KEY(branch),
                         TAG_IF(tp, NTATAG_TPORT(tp)), TAG_END());
      if (rc == 0)
        LUASIP_COUNT_OUT(sip_method_ack);
    }
  }
  tport_unref(tp);
  if (req)
    msg_destroy(req);
  return rc;
}

static int client_deliver(lsip_client_t *c, nta_outgoing_t *orq, sip_t const *sip,
                          msg_t *stray);

/* The INVITE of ours, still waiting, sent with the response's Via branch */
static lsip_client_t *client_by_branch(lsip_agent_t *a, sip_t const *sip)
{
  char const *v = sip->sip_via ? sip->sip_via->v_branch : NULL;
  lsip_link_t *l;
  for (l = a->clients.next; v && l != &a->clients; l = l->next) {
    lsip_client_t *c = (lsip_client_t *)((char *)l - offsetof(lsip_client_t, link));
    char const *b = c->orq && c->is_invite && c->state == CLIENT_PROCEEDING
                    ? luasip_orq_branch(c->orq) : NULL;
    if (b && su_casematch(b, v))
      return c;
  }
  return NULL;
}

int luasip_client_stray(lsip_agent_t *a, msg_t *msg, sip_t *sip)
{
  int m, status = sip->sip_status->st_status;
  lsip_client_t *c;
  if (!sip->sip_cseq || sip->sip_cseq->cs_method != sip_method_invite || status < 200 ||
      !sip->sip_call_id || !sip->sip_to)
    return 0;
  if (status >= 300) {
    /* sofia 1.12 over TCP/TLS: the 487 that follows our CANCEL matches no transaction
     * (nta hands it to the agent); it is the INVITE's final answer all the same */
    if (!(c = client_by_branch(a, sip)))
      return 0;
    luasip_ack_non2xx(a, c->orq, sip);
    client_deliver(c, c->orq, sip, msg);
    return 1;
  }
  m = acks_match(a, sip);
  if (m == 1) {
    luasip_counters.rtx_core++;     /* the 2xx was retransmitted: so is our ACK */
    send_2xx_ack(a, sip, NULL);
    msg_destroy(msg);
    return 1;
  }
  if (m == 2) {
    LUASIP_COUNT_OUT(sip_method_ack);
    LUASIP_COUNT_OUT(sip_method_bye);
    nta_msg_ackbye(luasip_agent_nta(a), msg);  /* a late fork: confirm and end it */
    return 1;
  }
  return 0;
}

/* ---------------------------------------------------------------- lifetime */

static void early_release(lsip_client_t *c)
{
  free(c->prack_body);
  free(c->prack_type);
  c->prack_body = c->prack_type = NULL;
}

/* The one transition function of a client transaction (see client_state_t). */
static void client_to(lsip_client_t *c, client_state_t to)
{
  if (c->state == CLIENT_CLOSED || c->state == to)
    return;
  c->state = to;
  if (to != CLIENT_CLOSED)
    return;
  early_release(c);
  if (c->orq) {
    /* nta allows destroying a transaction from inside its own callback; whoever called
     * us from there must not touch orq again (it reads c->state after Lua returns) */
    nta_outgoing_destroy(c->orq);
    c->orq = NULL;
  }
  luasip_link_del(&c->link);
  /* at lua_close the registry goes with the state: no anchor to drop */
  if (!luasip_S->closing)
    luasip_unanchor(luasip_L(), &c->obj);
}

static void client_destroy(lsip_obj_t *obj)
{
  lsip_client_t *c = (lsip_client_t *)obj;
  client_to(c, CLIENT_CLOSED);        /* only lua_close collects an open transaction */
  early_release(c);                   /* tx:prack_body() after the close */
  if (c->dialog) {
    if (!c->dialog->born)
      c->dialog->destroy(c->dialog);  /* Lua never asked for it */
    else
      luasip_dialog_backref(c->dialog, NULL);  /* it lives on without us */
  }
  luasip_freeobj(&c->obj);
}

void luasip_clients_detach(lsip_agent_t *a)
{
  while (a->clients.next != &a->clients) {
    lsip_client_t *c = (lsip_client_t *)((char *)a->clients.next -
                                         offsetof(lsip_client_t, link));
    c->agent = NULL;
    /* still anchored while Lua hears of it, so the bridge can push its userdata; Lua
     * may close it meanwhile (client_to is idempotent) */
    luasip_bridge("tx_closed", &c->obj, NULL);   /* wake whoever waits on it */
    client_to(c, CLIENT_CLOSED);
  }
  acks_prune(a, 1);
}

static int prack_done(nta_outgoing_magic_t *magic, nta_outgoing_t *orq, sip_t const *sip)
{
  (void)magic;
  if (!sip || sip->sip_status->st_status >= 200)
    nta_outgoing_destroy(orq);
  return 0;
}

/* PRACK a reliable provisional response (RFC 3262 4) in its early dialog. */
static void send_prack(lsip_client_t *c, sip_t const *sip)
{
  nta_leg_t *leg = c->dialog ? luasip_dialog_leg(c->dialog) : NULL;
  sip_rack_t rack[1];
  if (!leg)
    return;
  /* a retransmission (same or older RSeq) is not PRACKed again (RFC 3262 4) */
  if (c->rseq && sip->sip_rseq->rs_response <= c->rseq)
    return;
  c->rseq = sip->sip_rseq->rs_response;
  sip_rack_init(rack);
  rack->ra_response = sip->sip_rseq->rs_response;
  rack->ra_cseq = sip->sip_cseq->cs_seq;
  rack->ra_method = sip->sip_cseq->cs_method;
  rack->ra_method_name = sip->sip_cseq->cs_method_name;
  /* built on the early dialog's leg: nta_outgoing_prack wants a tagged transaction */
  if (nta_outgoing_tcreate(leg, prack_done, NULL, NULL, SIP_METHOD_PRACK, NULL,
                           SIPTAG_RACK(rack),
                           SIPTAG_USER_AGENT_STR(c->agent->user_agent),
                           TAG_IF(c->prack_body, SIPTAG_CONTENT_TYPE_STR(c->prack_type)),
                           TAG_IF(c->prack_body, SIPTAG_PAYLOAD_STR(c->prack_body)),
                           TAG_END()))
    LUASIP_COUNT_OUT(sip_method_prack);
  free(c->prack_body);
  free(c->prack_type);
  c->prack_body = c->prack_type = NULL;
}

/* The (early or confirmed) dialog an INVITE response with a To tag belongs to: one
 * dialog per transaction; a 2xx or a reliable 18x from another fork replaces it. */
static void track_dialog(lsip_client_t *c, sip_t const *sip, int status)
{
  int reliable = sip->sip_rseq && sip->sip_require &&
                 sip_has_feature(sip->sip_require, "100rel");
  if (c->dialog && !luasip_dialog_matches(c->dialog, sip->sip_to->a_tag)) {
    if (status < 200 && !reliable)
      return;                         /* keep the first early dialog */
    luasip_dialog_drop(c->dialog);    /* may call Lua ("dialog_closed") */
    c->dialog = NULL;
    c->rseq = 0;
    if (c->state == CLIENT_CLOSED || !c->agent)
      return;                         /* Lua closed the transaction or the agent */
  }
  if (!c->dialog) {
    c->dialog = luasip_dialog_uac(c->agent, sip, status < 200);
    if (c->dialog)
      luasip_dialog_backref(c->dialog, &c->dialog);
  } else if (status >= 200)
    luasip_dialog_confirm(c->dialog, sip);
}

/* nta answers a request with a 503 of its own when the transport fails under it; on TLS
 * that is a handshake refused or a server certificate that did not verify (agent.c sets
 * TPTAG_SDWN_ERROR on TLS transports so it comes at once).  The reason phrase, the only
 * part Lua sees, says so. */
#define LUASIP_NTA_INTERNAL_MSG (1 << 15)   /* nta_internal.h: a response nta made */

static void name_tls_failure(nta_outgoing_t *orq, msg_t *msg)
{
  sip_t *sip = sip_object(msg);
  tport_t *tp;
  if (!sip || !sip->sip_status || sip->sip_status->st_status != 503 ||
      !(sip->sip_flags & LUASIP_NTA_INTERNAL_MSG))
    return;
  tp = nta_outgoing_transport(orq);
  if (tp && tport_has_tls(tp)) {
    sip_status_t *st = sip_status_create(msg_home(msg), 503, "TLS Connection Failed", NULL);
    if (st)
      msg_header_replace(msg, (msg_pub_t *)sip, (msg_header_t *)sip->sip_status,
                         (msg_header_t *)st);
  }
  tport_unref(tp);
}

static int client_response(nta_outgoing_magic_t *magic, nta_outgoing_t *orq,
                           sip_t const *sip)
{
  return client_deliver((lsip_client_t *)magic, orq, sip, NULL);
}

/* A response of orq (sip; NULL: none came) to Lua, then the PRACK of a reliable one.
 * stray: the response as a message nta did not match to orq (taken), or NULL: nta's. */
static int client_deliver(lsip_client_t *c, nta_outgoing_t *orq, sip_t const *sip,
                          msg_t *stray)
{
  int status = sip && sip->sip_status ? sip->sip_status->st_status : 408;
  lsip_obj_t *resp = NULL;
  msg_t *msg;

  if (c->state == CLIENT_CLOSED || c->state == CLIENT_COMPLETED) {
    if (stray)
      msg_destroy(stray);
    return 0;
  }
  if (c->want_dialog && sip && c->agent && status > 100 && status < 300 &&
      sip->sip_to && sip->sip_to->a_tag && (c->is_invite || status >= 200))
    track_dialog(c, sip, status);   /* before the ACK: the callee may BYE right after */
  if (c->want_dialog && c->dialog && sip && status >= 300) {
    luasip_dialog_drop(c->dialog);  /* the early dialog ends with the INVITE */
    c->dialog = NULL;
  }
  /* dropping a dialog Lua knows calls Lua: it may have closed this transaction (and
   * destroyed orq) or the agent (rule 8: re-read).  A 2xx is still ACKed. */
  if (c->state == CLIENT_CLOSED) {
    if (c->is_invite && status >= 200 && status < 300 && sip && c->agent) {
      LUASIP_COUNT_OUT(sip_method_ack);
      send_2xx_ack(c->agent, sip, NULL);
      acks_remember(c->agent, sip);
    }
    if (stray)
      msg_destroy(stray);
    return 0;
  }
  if (c->is_invite && status >= 200 && status < 300 && sip && c->agent) {
    msg_t *req = nta_outgoing_getrequest(orq);
    sip_t const *rs = req ? sip_object(req) : NULL;
    LUASIP_COUNT_OUT(sip_method_ack);
    send_2xx_ack(c->agent, sip, rs ? rs->sip_request->rq_url : NULL);
    acks_remember(c->agent, sip);
    if (req)
      msg_destroy(req);
  }
  if (status > c->status || status >= 200)
    c->status = status;
  msg = stray ? stray : sip ? nta_outgoing_getresponse(orq) : NULL;
  if (msg) {
    name_tls_failure(orq, msg);
    resp = luasip_response_alloc(msg);
    if (!resp)
      msg_destroy(msg);
  }
  if (status >= 200)
    client_to(c, CLIENT_COMPLETED);
  luasip_bridge("response", &c->obj, resp);

  /* Lua ran (or not): it may have closed this transaction (orq is then gone), closed
   * the agent, or taken the response.  Only what is re-read from c counts now. */
  if (resp && !resp->born)
    resp->destroy(resp);
  if (c->state == CLIENT_CLOSED)
    return 0;
  if (c->state == CLIENT_COMPLETED) {
    client_to(c, CLIENT_CLOSED);
    return 0;
  }
  if (c->is_invite && status > 100 && status < 200 && sip && sip->sip_rseq &&
      sip->sip_require && sip_has_feature(sip->sip_require, "100rel") &&
      sip->sip_to->a_tag && c->agent) {
    if (!c->dialog)                   /* sent without dialog = true: PRACK all the same */
      track_dialog(c, sip, status);
    if (c->state != CLIENT_CLOSED && c->agent)
      send_prack(c, sip);             /* after Lua, which may give it a body */
  }
  return 0;
}

/* ---------------------------------------------------------------- Lua API */

static int dialog_creating(sip_method_t m)
{
  return m == sip_method_invite || m == sip_method_subscribe || m == sip_method_refer ||
         m == sip_method_notify || m == sip_method_update;
}

/* agent:send{ method=, uri=, headers=, body=, content_type=, proxy=, from=, to= }
 *   -> client_tx | nil, err, code.  Responses reach the dispatcher as
 *   ("response", client_tx, response). */
static int agent_send(lua_State *L)
{
  static const char *const fname = "luasip.agent:send";
  lsip_agent_t *a = luasip_agent_check(L, 1);
  nta_agent_t *nta = a->nta;
  const char *method_name, *uri, *proxy = NULL;
  sip_method_t method;
  msg_t *msg;
  sip_t *sip;
  su_home_t *home;
  url_t const *dest;
  int want_dialog;

  luaL_checktype(L, 2, LUA_TTABLE);
  lua_getfield(L, 2, "method");
  method_name = lua_tostring(L, -1);
  if (!method_name || lua_type(L, -1) != LUA_TSTRING)
    return luaL_error(L, "%s: method must be a string", fname);
  method = sip_method_code(method_name);
  if (method == sip_method_invalid || method == sip_method_ack ||
      method == sip_method_cancel)
    return luaL_error(L, "%s: cannot send %s this way", fname, method_name);
  lua_getfield(L, 2, "uri");
  uri = luasip_uri_arg(L, -1, fname);
  lua_getfield(L, 2, "proxy");
  if (!lua_isnil(L, -1))
    proxy = luasip_uri_arg(L, -1, fname);

  msg = nta_msg_create(nta, 0);
  if (!msg)
    return luasip_fail(L, "out of memory", "memory");
  luasip_response_new(L, msg);      /* owns msg while anything below may raise */
  sip = sip_object(msg);
  home = msg_home(msg);
  if (sip_add_tl(msg, sip,
                 SIPTAG_REQUEST(sip_request_create(home, method,
                                                   method == sip_method_unknown
                                                   ? method_name : NULL,
                                                   (url_string_t const *)uri, NULL)),
                 TAG_END()) < 0 || !sip->sip_request)
    return luaL_error(L, "%s: bad uri '%s'", fname, uri);
  lua_getfield(L, 2, "headers");
  luasip_add_headers(L, lua_gettop(L), msg, sip, fname);
  lua_pop(L, 1);
  luasip_set_body(L, 2, msg, sip, fname);

  /* the next hop decides which of our transports (and so which Contact) is used */
  dest = proxy ? url_make(home, proxy) : sip->sip_route ? sip->sip_route->r_url
         : sip->sip_request->rq_url;
  if (!sip->sip_from) {
    lua_getfield(L, 2, "from");
    if (lua_isstring(L, -1)) {
      if (sip_add_make(msg, sip, sip_from_class, lua_tostring(L, -1)) < 0)
        return luaL_error(L, "%s: bad from '%s'", fname, lua_tostring(L, -1));
    } else {
      sip_contact_t const *m = luasip_agent_contact_for(a, NULL, dest);
      char buf[300];
      snprintf(buf, sizeof buf, "<sip:luasip@%s%s%s>", m->m_url->url_host,
               m->m_url->url_port ? ":" : "", m->m_url->url_port ? m->m_url->url_port : "");
      sip_add_make(msg, sip, sip_from_class, buf);
    }
    lua_pop(L, 1);
  }
  if (sip->sip_from && !sip->sip_from->a_tag)
    sip_from_tag(home, sip->sip_from, nta_agent_newtag(home, "tag=%s", nta));
  if (!sip->sip_to) {
    lua_getfield(L, 2, "to");
    if (sip_add_make(msg, sip, sip_to_class, lua_isstring(L, -1) ? lua_tostring(L, -1)
                     : uri) < 0)
      return luaL_error(L, "%s: bad to", fname);
    lua_pop(L, 1);
  }
  if (!sip->sip_from || !sip->sip_to)
    return luaL_error(L, "%s: bad from or to", fname);
  if (!sip->sip_call_id)
    sip_add_tl(msg, sip, SIPTAG_CALL_ID(sip_call_id_create(home, NULL)), TAG_END());
  if (!sip->sip_cseq)
    sip_add_tl(msg, sip,
               SIPTAG_CSEQ(sip_cseq_create(home, (uint32_t)(su_randint(1, 0x7fff)), method,
                                           method_name)),
               TAG_END());
  if (!sip->sip_max_forwards)
    sip_add_tl(msg, sip, SIPTAG_MAX_FORWARDS_STR("70"), TAG_END());
  if (!sip->sip_user_agent)
    sip_add_tl(msg, sip, SIPTAG_USER_AGENT_STR(a->user_agent), TAG_END());
  if (method == sip_method_invite && !sip->sip_supported)
    sip_add_tl(msg, sip, SIPTAG_SUPPORTED_STR("100rel"), TAG_END());  /* we PRACK */
  if (!sip->sip_contact && dialog_creating(method))
    sip_add_tl(msg, sip, SIPTAG_CONTACT(luasip_agent_contact_for(a, NULL, dest)),
               TAG_END());
  if (!sip->sip_call_id || !sip->sip_cseq)
    return luasip_fail(L, "out of memory", "memory");

  lua_getfield(L, 2, "dialog");
  /* dialog-creating requests (RFC 3261 12, RFC 6665 4.1.2.4, RFC 3515) */
  /* every INVITE tracks its dialog: a 2xx nobody waits for any more must get a BYE */
  want_dialog = method == sip_method_invite ||
                (lua_toboolean(L, -1) && (method == sip_method_subscribe ||
                                          method == sip_method_refer));
  lua_pop(L, 1);
  return luasip_client_start(L, a, msg, proxy, want_dialog);
}

/* Sends msg (completed request; the caller keeps its reference) as a new client
 * transaction; pushes the luasip.client_tx or the fail tuple.  want_dialog: an INVITE
 * whose 2xx creates a dialog (tx:dialog()). */
int luasip_client_start(lua_State *L, lsip_agent_t *a, msg_t *msg, const char *proxy,
                        int want_dialog)
{
  sip_t const *sip = sip_object(msg);
  nta_outgoing_t *orq;
  lsip_client_t *c;
  char nope[300];
  url_t *hop = proxy ? url_make(NULL, proxy) : NULL;
  const char *refused = luasip_sips_refusal(a, sip, hop, 0, nope, sizeof nope);
  su_free(NULL, hop);
  if (refused)                  /* never a sips: request over UDP or TCP (RFC 5630) */
    return luasip_fail(L, refused, "tls");
  c = luasip_newobj(L, sizeof *c, LUASIP_CLIENT_TX, client_destroy);
  c->agent = a;
  c->is_invite = sip->sip_request->rq_method == sip_method_invite;
  c->want_dialog = want_dialog;
  c->state = CLIENT_SENDING;
  luasip_anchor(L, &c->obj, -1);
  luasip_link_add(&a->clients, &c->link);
  /* nta takes this reference only when it creates the transaction: on NULL (an
   * invalid target such as a tel: Contact, a message it cannot serialize) it is ours */
  orq = nta_outgoing_mcreate(a->nta, client_response, (nta_outgoing_magic_t *)c,
                             (url_string_t const *)proxy, msg_ref_create(msg),
                             TAG_END());
  if (!orq) {
    char target[256];
    url_t const *u = proxy ? NULL : sip->sip_request->rq_url;
    issize_t n = u ? url_e(target, sizeof target, u) : -1;
    const char *why = lua_pushfstring(L, "cannot send request to %s (not a usable SIP target)",
      proxy ? proxy : n > 0 && (size_t)n < sizeof target ? target : "its target");
    msg_destroy(msg);
    client_to(c, CLIENT_CLOSED);
    return luasip_fail(L, why, "send");
  }
  LUASIP_COUNT_OUT(sip->sip_request->rq_method);
  if (c->state == CLIENT_CLOSED) {
    nta_outgoing_destroy(orq);    /* answered (failed) inside mcreate */
  } else {
    c->orq = orq;
    client_to(c, CLIENT_PROCEEDING);
  }
  return 1;
}

/* tx:cancel() -> true | nil, err, code   (INVITE before its final response) */
static int client_cancel(lua_State *L)
{
  lsip_client_t *c = (lsip_client_t *)luasip_checkobj(L, 1, LUASIP_CLIENT_TX);
  if (!c->is_invite)
    return luaL_error(L, "luasip.client_tx:cancel: only an INVITE can be cancelled");
  if (c->state != CLIENT_PROCEEDING || !c->orq || !c->agent)
    return luasip_fail(L, "already answered", "answered");
  if (nta_outgoing_cancel(c->orq) < 0)
    return luasip_fail(L, "cannot send CANCEL", "send");
  LUASIP_COUNT_OUT(sip_method_cancel);
  lua_pushboolean(L, 1);
  return 1;
}

/* tx:dialog() -> the dialog the 2xx created (INVITE sent with dialog = true), or nil */
static int client_dialog(lua_State *L)
{
  lsip_client_t *c = (lsip_client_t *)luasip_checkobj(L, 1, LUASIP_CLIENT_TX);
  if (!c->dialog)
    return 0;
  if (!c->dialog->born)
    luasip_wrapobj(L, c->dialog);
  else
    luasip_pushobj(L, c->dialog);
  return 1;
}

/* tx:prack_body(body, content_type): the body of the PRACK for the reliable
 * provisional response being delivered (call it from on_provisional) */
static int client_prack_body(lua_State *L)
{
  lsip_client_t *c = (lsip_client_t *)luasip_checkobj(L, 1, LUASIP_CLIENT_TX);
  const char *body = luaL_checkstring(L, 2);
  const char *type = luaL_optstring(L, 3, "application/sdp");
  su_home_t home[1] = { SU_HOME_INIT(home) };
  /* checked now: a type sofia cannot parse would cost the PRACK itself later */
  int ok = sip_content_type_make(home, type) != NULL;
  su_home_deinit(home);
  if (!ok)
    return luaL_error(L, "luasip.client_tx:prack_body: bad content_type '%s'", type);
  free(c->prack_body);
  free(c->prack_type);
  c->prack_body = strdup(body);
  c->prack_type = strdup(type);
  return 0;
}

/* tx:status() -> highest status received (0 before any) */
static int client_status(lua_State *L)
{
  lsip_client_t *c = (lsip_client_t *)luasip_checkobj(L, 1, LUASIP_CLIENT_TX);
  lua_pushinteger(L, c->status);
  return 1;
}

/* tx:close() -> true: stop listening (the transaction itself runs its course in nta);
 * idempotent, and allowed from inside on_provisional or any other callback about it */
static int client_close(lua_State *L)
{
  lsip_client_t *c = (lsip_client_t *)luasip_checkobj(L, 1, LUASIP_CLIENT_TX);
  client_to(c, CLIENT_CLOSED);
  lua_pushboolean(L, 1);
  return 1;
}

static int client_fields(lua_State *L)
{
  lsip_client_t *c = (lsip_client_t *)luasip_testobj(L, 1, LUASIP_CLIENT_TX);
  const char *k = lua_tostring(L, 2);
  if (c && k && !strcmp(k, "is_invite")) {
    lua_pushboolean(L, c->is_invite);
    return 1;
  }
  return 0;
}

static const luaL_Reg client_methods[] = {
  {"cancel", client_cancel},
  {"status", client_status},
  {"dialog", client_dialog},
  {"prack_body", client_prack_body},
  {"close", client_close},
  {NULL, NULL}
};

static const luaL_Reg agent_client_methods[] = {
  {"send", agent_send},
  {NULL, NULL}
};

void luasip_client_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_CLIENT_TX, client_methods, client_fields);
  luasip_add_methods(L, LUASIP_AGENT, agent_client_methods);
}
