/* SPDX-License-Identifier: MIT
 * Private to request.c (the luasip.request object: fields, reply building) and
 * server_tx.c (its server side: one state enum, one transition function, the INVITE
 * duties nta leaves to a UA).  Other files use the luasip_request_* API of luasip.h.
 */
#ifndef LUASIP_REQUEST_H
#define LUASIP_REQUEST_H

#include "luasip.h"

/* A request's life (STYLE rule 9).  Transitions, all through luasip_req_enter():
 *
 *   FIRST_RUN  -> PROCEEDING (transaction made) | ANSWERED (stateless final)
 *                 | FORWARDED (req:forward) | GONE
 *   PROCEEDING -> RELIABLE (reliable 1xx) | ACCEPTED (2xx to INVITE) | ANSWERED
 *                 | CANCELLED (CANCEL: 487) | GONE
 *   RELIABLE   -> ACCEPTED | ANSWERED | CANCELLED | GONE
 *   ACCEPTED   -> ANSWERED (ACK came, or none in 64*T1: BYE) | GONE
 *   ACK        -> FORWARDED
 *   ANSWERED, CANCELLED, FORWARDED, GONE: final.
 *
 * Sofia state by state: FIRST_RUN holds `pending` (a reference for a stateless answer);
 * PROCEEDING and RELIABLE hold `irq`; ACCEPTED holds the 2xx, its retransmission timer
 * and a place in the agent's ACK table; all three hold `tport` and sit on
 * agent->requests.  Final states hold nothing of sofia's.  The struct is freed when it
 * is in a final state and its userdata is gone (luasip_req_collect). */
typedef enum lsip_req_state {
  LSIP_RQ_FIRST_RUN,    /* its handler's first run, no transaction: may answer statelessly */
  LSIP_RQ_PROCEEDING,   /* a server transaction, no final response yet */
  LSIP_RQ_RELIABLE,     /* ... and a reliable provisional went out (RFC 3262) */
  LSIP_RQ_ACCEPTED,     /* 2xx to an INVITE sent, retransmitted until the ACK (13.3.1.4) */
  LSIP_RQ_ANSWERED,     /* final response sent (an INVITE's 2xx: and ACKed or given up) */
  LSIP_RQ_CANCELLED,    /* a CANCEL ended it with 487 (RFC 3261 9.2) */
  LSIP_RQ_FORWARDED,    /* sent on statelessly (req:forward): nothing to answer */
  LSIP_RQ_ACK,          /* an ACK: never answered */
  LSIP_RQ_GONE,         /* lost its sofia side unanswered: agent closed, no transaction */
  LSIP_RQ_NSTATES
} lsip_req_state_t;

typedef struct lsip_req {
  lsip_msgobj_t m;
  lsip_req_state_t state;     /* change only through luasip_req_enter() */
  lsip_link_t link;           /* in agent->requests while the state holds sofia state */
  lsip_agent_t *agent;        /* NULL once the agent closed */
  nta_incoming_t *irq;        /* PROCEEDING, RELIABLE */
  msg_t *pending;             /* FIRST_RUN: reference handed to nta with the answer */
  tport_t *tport;             /* delivering transport, for 2xx retransmission */
  char transport[8];
  int status;                 /* highest status sent */
  lsip_obj_t *proxy;          /* proxy.c forwarding this request, if any */
  lsip_obj_t *dialog;         /* its UAS dialog (dialog.c clears this when freeing it) */
  /* ACCEPTED */
  su_timer_t *rtx;            /* 2xx retransmission timer */
  msg_t *resp2xx;
  unsigned rtx_interval, rtx_elapsed;
  tp_name_t rtx_tpn[1];
  unsigned ack_hash;          /* Call-ID + CSeq: the key of the agent's ACK table */
  struct lsip_req *ack_next;  /* chain in that table */
} lsip_req_t;

/* server_tx.c */
void luasip_req_enter(lsip_req_t *r, lsip_req_state_t to);
void luasip_req_collect(lsip_req_t *r);
int luasip_req_unanswered(lsip_req_t const *r);
nta_incoming_t *luasip_req_make_irq(lsip_req_t *r);
/* luasip_req_send: -1 when nothing was sent, LUASIP_SEND_FAILED when the transport
 * refused a final (nta then answers 500 and the request is answered with that) */
#define LUASIP_SEND_FAILED (-2)
int luasip_req_send(lsip_req_t *r, msg_t *resp, int status, const char *reason);
int luasip_req_send_reliable(lsip_req_t *r, msg_t *resp, int status, const char *reason);

#endif
