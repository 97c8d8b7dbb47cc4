/* SPDX-License-Identifier: MIT
 * The server side of a luasip.request: its life as one state machine (request.h), the
 * nta_incoming transaction (made lazily: only INVITEs and requests left unanswered by
 * their handler's first run get one), stateless answers by nta_msg_mreply (DESIGN D9),
 * and the INVITE duties nta leaves to a UA under NTATAG_UA(0): 100 Trying, 2xx
 * retransmission until the ACK (RFC 3261 13.3.1.4), BYE when none comes in 64*T1, 487 on
 * CANCEL, PRACK (RFC 3262).  ACKs for our 2xx are found in a per-agent hash table keyed
 * by Call-ID and CSeq (the To tag is compared on a hit); CANCELs are matched by nta.
 * Ownership: the struct owns one msg reference for reading (m.msg) and, until nta takes
 * it, one for answering (pending).  It outlives its userdata while its 2xx is in flight.
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

#include "request.h"

static const char *const state_names[LSIP_RQ_NSTATES] = {
  "first run", "proceeding", "reliable", "accepted", "answered", "cancelled",
  "forwarded", "ack", "gone"
};

#define TO(s) (1u << LSIP_RQ_##s)
static const unsigned transitions[LSIP_RQ_NSTATES] = {
  [LSIP_RQ_FIRST_RUN] = TO(PROCEEDING) | TO(ANSWERED) | TO(FORWARDED) | TO(GONE),
  [LSIP_RQ_PROCEEDING] = TO(RELIABLE) | TO(ACCEPTED) | TO(ANSWERED) | TO(CANCELLED) |
                         TO(GONE),
  [LSIP_RQ_RELIABLE] = TO(ACCEPTED) | TO(ANSWERED) | TO(CANCELLED) | TO(GONE),
  [LSIP_RQ_ACCEPTED] = TO(ANSWERED) | TO(GONE),
  [LSIP_RQ_ACK] = TO(FORWARDED),
};
#undef TO

static int final_state(lsip_req_state_t s)
{
  return s >= LSIP_RQ_ANSWERED;
}

/* ---------------------------------------------------------------- the ACK table */

/* INVITEs in ACCEPTED, by Call-ID + CSeq number (what an ACK for a 2xx shares with its
 * INVITE: it is a transaction of its own, with a new branch, RFC 3261 17.1.1.3). */
typedef struct ack_table {
  unsigned size, count;       /* size: a power of two */
  lsip_req_t **slot;
} ack_table_t;

static unsigned ack_key(sip_t const *sip)
{
  const unsigned char *s = (const unsigned char *)sip->sip_call_id->i_id;
  unsigned h = 2166136261u ^ (unsigned)sip->sip_cseq->cs_seq;  /* FNV-1a */
  h *= 16777619u;
  while (*s) {
    h ^= *s++;
    h *= 16777619u;
  }
  return h;
}

static int ack_table_grow(ack_table_t *t)
{
  unsigned size = t->size ? t->size * 2 : 64, i;
  lsip_req_t **slot = calloc(size, sizeof *slot);
  if (!slot)
    return -1;
  for (i = 0; i < t->size; i++) {
    lsip_req_t *r = t->slot[i], *next;
    for (; r; r = next) {
      next = r->ack_next;
      r->ack_next = slot[r->ack_hash & (size - 1)];
      slot[r->ack_hash & (size - 1)] = r;
    }
  }
  free(t->slot);
  t->slot = slot;
  t->size = size;
  return 0;
}

static int ack_table_add(lsip_req_t *r)
{
  ack_table_t *t = r->agent->await_ack;
  if (!t && !(t = r->agent->await_ack = calloc(1, sizeof *t)))
    return -1;
  if (t->count >= t->size && ack_table_grow(t) < 0)
    return -1;
  r->ack_hash = ack_key(r->m.sip);
  r->ack_next = t->slot[r->ack_hash & (t->size - 1)];
  t->slot[r->ack_hash & (t->size - 1)] = r;
  t->count++;
  return 0;
}

static void ack_table_del(lsip_req_t *r)
{
  ack_table_t *t = r->agent ? r->agent->await_ack : NULL;
  lsip_req_t **pp;
  if (!t || !t->size)
    return;
  for (pp = &t->slot[r->ack_hash & (t->size - 1)]; *pp; pp = &(*pp)->ack_next) {
    if (*pp == r) {
      *pp = r->ack_next;
      r->ack_next = NULL;
      t->count--;
      return;
    }
  }
}

static lsip_req_t *ack_table_find(lsip_agent_t *a, sip_t const *ack)
{
  ack_table_t *t = a->await_ack;
  unsigned h;
  lsip_req_t *r;
  if (!t || !t->count || !ack->sip_call_id || !ack->sip_cseq || !ack->sip_to)
    return NULL;
  h = ack_key(ack);
  for (r = t->slot[h & (t->size - 1)]; r; r = r->ack_next) {
    sip_t const *resp = sip_object(r->resp2xx);
    if (r->ack_hash == h && r->m.sip->sip_cseq->cs_seq == ack->sip_cseq->cs_seq &&
        su_strmatch(r->m.sip->sip_call_id->i_id, ack->sip_call_id->i_id) &&
        resp && su_strmatch(resp->sip_to->a_tag, ack->sip_to->a_tag))
      return r;
  }
  return NULL;
}

/* ---------------------------------------------------------------- transitions */

static void rtx_tick(su_root_magic_t *magic, su_timer_t *t, su_timer_arg_t *arg);

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

/* Entering ACCEPTED: keep the 2xx nta sent and retransmit it ourselves. */
static int rtx_start(lsip_req_t *r)
{
  sip_via_t const *v = r->m.sip->sip_via;
  if (!v || !r->tport || !(r->resp2xx = nta_incoming_getresponse(r->irq)))
    return -1;
  /* the request's Via already carries received/rport (nta's check_request_via) */
  r->rtx_tpn->tpn_proto = tport_name(r->tport)->tpn_proto;
  r->rtx_tpn->tpn_host = v->v_received ? v->v_received : v->v_host;
  r->rtx_tpn->tpn_canon = r->rtx_tpn->tpn_host;
  r->rtx_tpn->tpn_port = v->v_rport && v->v_rport[0] ? v->v_rport
                         : v->v_port ? v->v_port : "5060";
  r->rtx = su_timer_create(su_root_task(luasip_S->root), 0);
  r->rtx_interval = r->agent->t1;
  r->rtx_elapsed = 0;
  if (!r->rtx || su_timer_set_interval(r->rtx, rtx_tick, r, r->rtx_interval) < 0 ||
      ack_table_add(r) < 0) {
    rtx_stop(r);
    return -1;
  }
  return 0;
}

/* What a final state leaves behind: nothing of sofia's. */
static void release_sofia(lsip_req_t *r)
{
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

/* The one transition function: leaves r->state for `to`, doing each state's exit and
 * entry work.  Never frees r (luasip_req_collect does) and never calls Lua. */
void luasip_req_enter(lsip_req_t *r, lsip_req_state_t to)
{
  lsip_req_state_t from = r->state;
  if (!(transitions[from] & (1u << to))) {
    luasip_log_call(1, r->m.sip, "internal: request %s -> %s refused", state_names[from],
                    state_names[to]);
    return;
  }
  if (from == LSIP_RQ_ACCEPTED) {
    ack_table_del(r);
    rtx_stop(r);
  }
  r->state = to;
  switch (to) {
  case LSIP_RQ_ACCEPTED:
    if (rtx_start(r) < 0) {         /* cannot retransmit: the 2xx went out once */
      r->state = LSIP_RQ_ANSWERED;
      release_sofia(r);
      return;
    }
    nta_incoming_destroy(r->irq);   /* the 2xx is ours to retransmit from now on */
    r->irq = NULL;
    return;
  case LSIP_RQ_PROCEEDING:
  case LSIP_RQ_RELIABLE:
    return;
  default:
    release_sofia(r);
    return;
  }
}

static void req_free(lsip_req_t *r)
{
  if (r->proxy)
    luasip_proxy_forget(r->proxy);
  if (r->dialog)
    luasip_dialog_backref(r->dialog, NULL);
  if (r->m.msg)
    msg_destroy(r->m.msg);
  luasip_freeobj(&r->m.obj);
}

/* Frees r when nothing needs it any more: a final state and a userdata that was
 * collected (and whose deferred destroy already ran). */
void luasip_req_collect(lsip_req_t *r)
{
  if (final_state(r->state) && r->m.obj.born && !r->m.obj.alive && !r->m.obj.queued)
    req_free(r);
}

int luasip_req_unanswered(lsip_req_t const *r)
{
  return r->state <= LSIP_RQ_RELIABLE && r->agent && !r->agent->closed;
}

/* The state a final response of this status leads to. */
static lsip_req_state_t after_final(lsip_req_t const *r, int status)
{
  /* a proxied 2xx is the UAS's to retransmit, not ours */
  if (r->m.sip->sip_request->rq_method == sip_method_invite && status < 300 && !r->proxy)
    return LSIP_RQ_ACCEPTED;
  return LSIP_RQ_ANSWERED;
}

/* ---------------------------------------------------------------- sending */

static int irq_callback(nta_incoming_magic_t *magic, nta_incoming_t *irq, sip_t const *sip);
static void drop_dialog(lsip_req_t *r);

/* FIRST_RUN -> PROCEEDING: a server transaction from the pending reference. */
nta_incoming_t *luasip_req_make_irq(lsip_req_t *r)
{
  nta_agent_t *nta = r->agent ? luasip_agent_nta(r->agent) : NULL;
  if (r->state != LSIP_RQ_FIRST_RUN || !nta || !r->pending)
    return NULL;
  r->irq = nta_incoming_create(nta, NULL, r->pending, NULL, NTATAG_TPORT(r->tport),
                               TAG_END());
  r->pending = NULL;                /* nta owns it now, even on failure */
  if (!r->irq) {
    luasip_req_enter(r, LSIP_RQ_GONE);
    return NULL;
  }
  nta_incoming_bind(r->irq, irq_callback, (nta_incoming_magic_t *)r);
  if (!r->m.sip->sip_to || !r->m.sip->sip_to->a_tag)
    nta_incoming_tag(r->irq, NULL);
  luasip_req_enter(r, LSIP_RQ_PROCEEDING);
  return r->irq;
}

/* Sends resp (our reference, complete but for the status line) through the transaction,
 * or statelessly in FIRST_RUN, and moves r on. */
int luasip_req_send(lsip_req_t *r, msg_t *resp, int status, const char *reason)
{
  nta_agent_t *nta = luasip_agent_nta(r->agent);
  int rv;
  if (r->state == LSIP_RQ_FIRST_RUN) {
    luasip_count_reply(r->m.sip->sip_request->rq_method, status);
    rv = nta_msg_mreply(nta, resp, sip_object(resp), status, reason, r->pending, TAG_END());
    r->pending = NULL;              /* nta took it */
    r->status = status;
    luasip_req_enter(r, LSIP_RQ_ANSWERED);
    return rv;
  }
  if (nta_incoming_complete_response(r->irq, resp, status, reason, TAG_END()) < 0) {
    msg_destroy(resp);
    return -1;
  }
  luasip_count_reply(r->m.sip->sip_request->rq_method, status);
  rv = nta_incoming_mreply(r->irq, resp);
  if (status >= 200 && rv == 0 && nta_incoming_status(r->irq) < 200) {
    /* the final did not go out (sendmsg failed: e.g. EMSGSIZE, a response too large for
     * UDP, for which RFC 3261 18.2.2 has no other transport); nta answers 500 itself on
     * its next timer and ends the transaction: so do we, with no ACK to wait for */
    luasip_log_call(2, r->m.sip, "%d to %s %s could not be sent (too large for UDP, or "
                    "the connection failed); the caller gets 500", status,
                    r->m.sip->sip_request->rq_method_name,
                    r->m.sip->sip_call_id ? r->m.sip->sip_call_id->i_id : "?");
    r->status = 500;
    drop_dialog(r);                 /* made for this 2xx, or early: it ends with the 500 */
    luasip_req_enter(r, LSIP_RQ_ANSWERED);
    return LUASIP_SEND_FAILED;
  }
  if (status > r->status)
    r->status = status;
  if (status >= 200)
    luasip_req_enter(r, after_final(r, status));
  return rv;
}

static int prack_callback(nta_reliable_magic_t *magic, nta_reliable_t *rel,
                          nta_incoming_t *pr_irq, sip_t const *sip);

/* A 101-199 sent reliably: RSeq and Require: 100rel are nta's; it retransmits until the
 * PRACK (RFC 3262). */
int luasip_req_send_reliable(lsip_req_t *r, msg_t *resp, int status, const char *reason)
{
  if (nta_incoming_complete_response(r->irq, resp, status, reason, TAG_END()) < 0) {
    msg_destroy(resp);
    return -1;
  }
  if (!nta_reliable_mreply(r->irq, prack_callback, (nta_reliable_magic_t *)r, resp))
    return -1;                      /* msg freed by nta */
  luasip_count_reply(r->m.sip->sip_request->rq_method, status);
  if (status > r->status)
    r->status = status;
  if (r->state == LSIP_RQ_PROCEEDING)
    luasip_req_enter(r, LSIP_RQ_RELIABLE);
  return 0;
}

/* A final answer with no Lua options: 487, 500, 504 and abandoned requests. */
static void reply_plain(lsip_req_t *r, int status, const char *phrase)
{
  nta_agent_t *nta = r->agent ? luasip_agent_nta(r->agent) : NULL;
  if (!nta || !luasip_req_unanswered(r))
    return;
  luasip_count_reply(r->m.sip->sip_request->rq_method, status);
  if (r->state == LSIP_RQ_FIRST_RUN) {
    nta_msg_treply(nta, r->pending, status, phrase,
                   SIPTAG_SERVER_STR(r->agent->user_agent), TAG_END());
    r->pending = NULL;
  } else {
    nta_incoming_treply(r->irq, status, phrase,
                        SIPTAG_SERVER_STR(r->agent->user_agent), TAG_END());
  }
  r->status = status;
  luasip_req_enter(r, after_final(r, status));
}

/* ---------------------------------------------------------------- INVITE duties */

static int bye_done(nta_outgoing_magic_t *magic, nta_outgoing_t *orq, sip_t const *sip)
{
  nta_leg_t *leg = (nta_leg_t *)magic;
  if (sip && sip->sip_status->st_status >= 300)
    luasip_log_call(3, sip, "BYE after the unACKed 2xx (%s) failed: %d %s",
               sip->sip_call_id ? sip->sip_call_id->i_id : "?",
               sip->sip_status->st_status, sip->sip_status->st_phrase);
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
  else
    LUASIP_COUNT_OUT(sip_method_bye);
}

/* The UAS dialog of a 2xx never ACKed ends with the session. */
static void drop_dialog(lsip_req_t *r)
{
  if (r->dialog && luasip_dialog_leg(r->dialog))
    luasip_dialog_drop(r->dialog);  /* clears r->dialog through the backref */
}

static void rtx_tick(su_root_magic_t *magic, su_timer_t *t, su_timer_arg_t *arg)
{
  lsip_req_t *r = (lsip_req_t *)arg;
  (void)magic; (void)t;
  r->rtx_elapsed += r->rtx_interval;
  if (r->rtx_elapsed >= 64 * r->agent->t1) {
    luasip_log_call(3, r->m.sip, "no ACK for 2xx to INVITE %s: sending BYE",
               r->m.sip->sip_call_id ? r->m.sip->sip_call_id->i_id : "?");
    send_bye(r);
    luasip_req_enter(r, LSIP_RQ_ANSWERED);
    if (r->m.obj.alive)
      luasip_bridge("ack_timeout", &r->m.obj, NULL);  /* a notification: no rc to act on */
    drop_dialog(r);                 /* re-read: Lua may have ended it already */
    luasip_req_collect(r);
    return;
  }
  if (r->tport) {
    luasip_counters.rtx_core++;
    tport_tsend(r->tport, r->resp2xx, r->rtx_tpn, TAG_END());
  }
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
  (void)sip;
  if (!pr_irq || !r->agent)
    return 0;
  LUASIP_COUNT_IN(sip_method_prack);
  pr = luasip_request_from_irq(r->agent, pr_irq);
  if (!pr)
    return 200;
  reply_plain((lsip_req_t *)pr, SIP_200_OK);
  luasip_request_dispatched(pr, luasip_bridge("prack", r->m.obj.alive ? &r->m.obj : NULL,
                                              pr));
  /* done with: nta queues a later reliable 1xx while the INVITE's newest reliable one is
   * still listed, PRACKed or not, and sends the queue only on a PRACK -- one sent after
   * this callback returned would wait for ever.  nta reads the list again after us. */
  nta_reliable_destroy(rel);
  return 0;
}

/* CANCEL of an INVITE still unanswered (RFC 3261 9.2): nta already answered the CANCEL
 * 200; the INVITE ends with 487, and a proxy cancels its branches (16.10). */
static void cancelled(lsip_req_t *r)
{
  luasip_count_reply(sip_method_invite, 487);
  nta_incoming_treply(r->irq, SIP_487_REQUEST_CANCELLED,
                      SIPTAG_SERVER_STR(r->agent->user_agent), TAG_END());
  r->status = 487;
  luasip_req_enter(r, LSIP_RQ_CANCELLED);
  if (r->proxy)
    luasip_proxy_cancel(r->proxy);  /* Lua hears proxy_final */
  if (r->m.obj.alive)
    luasip_bridge("cancel", &r->m.obj, NULL);
  luasip_req_collect(r);
}

static int irq_callback(nta_incoming_magic_t *magic, nta_incoming_t *irq, sip_t const *sip)
{
  lsip_req_t *r = (lsip_req_t *)magic;
  (void)irq;
  if (!sip) {
    if (r->state == LSIP_RQ_RELIABLE) {
      /* a reliable provisional response was never PRACKed (RFC 3262 3: 5xx) */
      reply_plain(r, 504, "Reliable Response Time-Out");
      if (r->m.obj.alive)
        luasip_bridge("prack_timeout", &r->m.obj, NULL);
      luasip_req_collect(r);
    }
    return 0;
  }
  /* CANCEL ends only an INVITE; for others nta's 200 is all there is */
  if (sip->sip_request && sip->sip_request->rq_method == sip_method_cancel) {
    LUASIP_COUNT_IN(sip_method_cancel);
    luasip_count_reply(sip_method_cancel, 200);
  }
  if (sip->sip_request && sip->sip_request->rq_method == sip_method_cancel &&
      r->m.sip->sip_request->rq_method == sip_method_invite && luasip_req_unanswered(r))
    cancelled(r);
  return 0;
}

/* ---------------------------------------------------------------- lifetime */

/* The userdata is gone (drained after __gc). */
static void req_destroy(lsip_obj_t *obj)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  if (luasip_req_unanswered(r)) {
    /* abandoned by its handler: the caller still gets an answer */
    luasip_log_call(2, r->m.sip, "%s request collected without a final response: 500",
               r->m.sip->sip_request->rq_method_name);
    reply_plain(r, 500, "Request Abandoned");
  }
  if (r->state == LSIP_RQ_ACCEPTED)
    return;                         /* retransmits its 2xx until ACK or timeout */
  if (!final_state(r->state))
    luasip_req_enter(r, LSIP_RQ_GONE);
  req_free(r);
}

static lsip_req_t *req_new(lsip_agent_t *a, msg_t *msg, sip_t *sip, lsip_req_state_t state)
{
  lsip_req_t *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  luasip_initobj(&r->m.obj, LUASIP_REQUEST, req_destroy);
  r->state = state;
  r->agent = a;
  r->m.msg = msg;
  r->m.sip = sip;
  return r;
}

void luasip_requests_detach(lsip_agent_t *a)
{
  while (a->requests.next != &a->requests) {
    lsip_req_t *r = (lsip_req_t *)((char *)a->requests.next - offsetof(lsip_req_t, link));
    int waited = r->m.obj.alive &&
                 (r->state == LSIP_RQ_ACCEPTED || r->state == LSIP_RQ_RELIABLE);
    luasip_req_enter(r, LSIP_RQ_GONE);
    r->agent = NULL;
    if (waited)
      luasip_bridge("request_closed", &r->m.obj, NULL);  /* wake wait_ack / PRACK waits */
    else
      luasip_req_collect(r);
  }
  if (a->await_ack) {
    ack_table_t *t = a->await_ack;
    free(t->slot);
    free(t);
    a->await_ack = NULL;
  }
}

/* ---------------------------------------------------------------- incoming */

void luasip_request_incoming(lsip_agent_t *a, nta_agent_t *nta, msg_t *msg, sip_t *sip)
{
  lsip_req_t *r = req_new(a, msg, sip, LSIP_RQ_FIRST_RUN);
  tport_t *tp;
  if (!r) {
    luasip_count_reply(sip->sip_request->rq_method, 500);
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
  /* a stateless agent (a front forwarding everything) makes no transaction itself; an
   * INVITE's transaction absorbs retransmissions while its handler runs (its 100 Trying:
   * luasip_request_dispatched) */
  if (sip->sip_request->rq_method == sip_method_invite && !a->stateless)
    luasip_req_make_irq(r);
  /* the agent goes along: the dispatcher needs its handlers for every request */
  luasip_request_dispatched(&r->m.obj, luasip_bridge("request", &r->m.obj, &a->obj));
}

/* After the first run of the request's handler: the bridge call returned rc.  Everything
 * is re-read from r (Lua may have answered, proxied or forwarded it, or closed the agent).
 * When Lua did not run or the dispatcher raised, nobody will answer: 500 now (statelessly
 * while there is no transaction), not when GC finds the request. */
void luasip_request_dispatched(lsip_obj_t *obj, int rc)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  if (rc < 0 && luasip_req_unanswered(r)) {
    luasip_log_call(3, r->m.sip, "%s left unanswered by a failed dispatch: 500",
               r->m.sip->sip_request->rq_method_name);
    if (r->proxy)
      luasip_proxy_cancel(r->proxy);  /* its branches end (Lua hears proxy_final) */
    reply_plain(r, SIP_500_INTERNAL_SERVER_ERROR);  /* unless that answered it */
  }
  /* RFC 3261 17.2.1: an INVITE's 100 Trying, unless the handler's first run already
   * answered it (a UAS replying 180 or 200 at once spares the message) */
  if (r->state == LSIP_RQ_PROCEEDING && r->status < 100 && r->irq &&
      r->m.sip->sip_request->rq_method == sip_method_invite) {
    luasip_count_reply(sip_method_invite, 100);
    nta_incoming_treply(r->irq, SIP_100_TRYING, TAG_END());
    r->status = 100;
  }
  if (!r->m.obj.born) {             /* Lua never saw it: nobody else will free it */
    if (!final_state(r->state))
      luasip_req_enter(r, LSIP_RQ_GONE);
    req_free(r);
    return;
  }
  if (r->state == LSIP_RQ_FIRST_RUN && !(r->agent && r->agent->stateless))
    luasip_req_make_irq(r);         /* the handler waits: absorb retransmissions */
}

/* A request nta already made a transaction for (in-dialog requests reach leg callbacks
 * with one).  Returns an unborn object; the caller bridges it, then calls
 * luasip_request_dispatched. */
lsip_obj_t *luasip_request_from_irq(lsip_agent_t *a, nta_incoming_t *irq)
{
  msg_t *msg = nta_incoming_getrequest(irq);
  lsip_req_t *r = msg ? req_new(a, msg, sip_object(msg), LSIP_RQ_PROCEEDING) : NULL;
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
  return &r->m.obj;
}

/* An ACK: for a 2xx of ours (found by hash) it ends the retransmissions and Lua hears
 * ("ack", invite, ack); otherwise it is a request of its own for the ACK handler. */
int luasip_request_ack(lsip_agent_t *a, msg_t *msg, sip_t *sip)
{
  lsip_req_t *inv = ack_table_find(a, sip);
  lsip_req_t *ack = req_new(a, msg, sip, LSIP_RQ_ACK);
  if (!ack) {
    msg_destroy(msg);
    return 0;
  }
  if (inv) {
    luasip_req_enter(inv, LSIP_RQ_ANSWERED);
    luasip_bridge("ack", inv->m.obj.alive ? &inv->m.obj : NULL, &ack->m.obj);
    luasip_req_collect(inv);        /* an INVITE whose userdata is gone ends here */
  } else {
    luasip_bridge("request", &ack->m.obj, &a->obj);
  }
  if (!ack->m.obj.born)
    req_free(ack);
  return 1;
}

/* ---------------------------------------------------------------- for other files */

/* The request's server transaction, made now if it has none yet (first run only). */
nta_incoming_t *luasip_request_ensure_irq(lsip_obj_t *obj)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  if (r->state == LSIP_RQ_FIRST_RUN)
    return luasip_req_make_irq(r);
  return r->irq;
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
  if (!r->irq) {
    if (status >= 200 && status < 300) {
      luasip_count_reply(r->m.sip->sip_request->rq_method, status);
      return nta_msg_tsend(nta, msg, NULL, TAG_END());  /* removes our Via itself */
    }
    msg_destroy(msg);
    return 0;
  }
  sip_via_remove(msg, sip);
  luasip_count_reply(r->m.sip->sip_request->rq_method, status);
  rv = nta_incoming_mreply(r->irq, msg);
  if (status > r->status)
    r->status = status;
  if (status >= 200) {
    luasip_req_enter(r, after_final(r, status));
    luasip_req_collect(r);
  }
  return rv;
}

/* The request went on statelessly (req:forward): nothing to answer any more. */
void luasip_request_forwarded(lsip_obj_t *obj)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  if (r->state == LSIP_RQ_FIRST_RUN || r->state == LSIP_RQ_ACK)
    luasip_req_enter(r, LSIP_RQ_FORWARDED);
}

void luasip_request_set_proxy(lsip_obj_t *obj, lsip_obj_t *proxy)
{
  ((lsip_req_t *)obj)->proxy = proxy;
}

/* dialog.c: d is the request's UAS dialog; d clears our pointer if freed first. */
void luasip_request_set_dialog(lsip_obj_t *obj, lsip_obj_t *d)
{
  lsip_req_t *r = (lsip_req_t *)obj;
  if (r->dialog)
    luasip_dialog_backref(r->dialog, NULL);
  r->dialog = d;
  if (d)
    luasip_dialog_backref(d, &r->dialog);
}

int luasip_request_status(lsip_obj_t *obj)
{
  return ((lsip_req_t *)obj)->status;
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

tport_t *luasip_request_tport(lsip_obj_t *obj)
{
  return ((lsip_req_t *)obj)->tport;
}

sip_t const *luasip_request_sip(lsip_obj_t *obj)
{
  return ((lsip_req_t *)obj)->m.sip;
}
