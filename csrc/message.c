/* SPDX-License-Identifier: MIT
 * Read-only views of sofia messages (luasip.response, and the reading half of
 * luasip.request): fields are copied into Lua values on first access and cached in the
 * object's user value; headers are encoded into strings.  Also the helpers that put Lua
 * headers and bodies into outgoing messages.  No sofia pointer ever reaches Lua.
 */
#include <stdlib.h>
#include <ctype.h>
#include <string.h>

#include <sofia-sip/msg_header.h>
#include <sofia-sip/msg_mclass.h>
#include <sofia-sip/msg_addr.h>
#include <sofia-sip/sip_header.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/su_string.h>
#include <sofia-sip/url.h>

#include "luasip.h"

/* ---------------------------------------------------------------- encoders */

typedef issize_t encode_f(char *b, isize_t size, void const *what);

static issize_t enc_url(char *b, isize_t size, void const *u)
{
  return url_e(b, size, (url_t const *)u);
}

static issize_t enc_field(char *b, isize_t size, void const *h)
{
  return msg_header_field_e(b, size, (msg_header_t const *)h, 0);
}

/* Pushes s[0..n) with each folded line break (RFC 3261 7.3.1: CRLF followed by white
 * space, and any other CR or LF sofia left in a value) and the white space around it as
 * one SP, so a value read from a request can go into a reply unchanged. */
static void push_unfolded(lua_State *L, const char *s, size_t n)
{
  luaL_Buffer B;
  size_t i = 0;
  if (!memchr(s, '\r', n) && !memchr(s, '\n', n)) {
    lua_pushlstring(L, s, n);
    return;
  }
  luaL_buffinit(L, &B);
  while (i < n) {
    size_t j = i;
    int brk = 0;
    while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\r' || s[j] == '\n')) {
      brk |= s[j] == '\r' || s[j] == '\n';
      j++;
    }
    if (j > i) {
      if (brk)
        luaL_addchar(&B, ' ');
      else
        luaL_addlstring(&B, s + i, j - i);
      i = j;
    } else {
      luaL_addchar(&B, s[i]);
      i++;
    }
  }
  luaL_pushresult(&B);
}

static void push_encoded(lua_State *L, encode_f *enc, void const *what)
{
  char buf[512];
  issize_t n = enc(buf, sizeof buf, what);
  if (n < 0) {
    lua_pushnil(L);
  } else if ((size_t)n < sizeof buf) {
    push_unfolded(L, buf, (size_t)n);
  } else {
    char *p = malloc((size_t)n + 1);
    if (!p) {
      lua_pushnil(L);
      return;
    }
    enc(p, n + 1, what);
    /* a memory error in push_unfolded would leak p: copy to a Lua string first */
    lua_pushlstring(L, p, (size_t)n);
    free(p);
    if (memchr(lua_tostring(L, -1), '\r', (size_t)n) || memchr(lua_tostring(L, -1), '\n', (size_t)n)) {
      const char *t = lua_tostring(L, -1);
      push_unfolded(L, t, (size_t)n);
      lua_remove(L, -2);
    }
  }
}

static void push_url(lua_State *L, url_t const *u)
{
  if (u)
    push_encoded(L, enc_url, u);
  else
    lua_pushnil(L);
}

static void setstr(lua_State *L, const char *k, const char *v)
{
  if (v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
  }
}

/* {name = value | true, ...} from a NULL-terminated "name=value" list */
static void push_params(lua_State *L, msg_param_t const *params)
{
  int n = 0;
  while (params && params[n])
    n++;
  lua_createtable(L, 0, n);         /* presized: no rehash (and realloc) per field */
  for (; params && *params; params++) {
    const char *eq = strchr(*params, '=');
    if (eq) {
      lua_pushlstring(L, *params, (size_t)(eq - *params));
      lua_pushstring(L, eq + 1);
    } else {
      lua_pushstring(L, *params);
      lua_pushboolean(L, 1);
    }
    lua_rawset(L, -3);
  }
}

static void push_uri_parts(lua_State *L, url_t const *u)
{
  lua_createtable(L, 0, 8);
  if (!u)
    return;
  setstr(L, "scheme", u->url_scheme);
  setstr(L, "user", u->url_user);
  setstr(L, "password", u->url_password);
  setstr(L, "host", u->url_host);
  if (u->url_port) {
    lua_pushinteger(L, atoi(u->url_port));
    lua_setfield(L, -2, "port");
  }
  setstr(L, "headers", u->url_headers);
  if (u->url_params) {
    lua_pushstring(L, u->url_params);
    lua_setfield(L, -2, "param_string");
  }
  {
    /* url params "a=b;lr" as a table */
    char const *p = u->url_params, *q;
    int count = p && *p ? 1 : 0;
    for (q = p; q && *q; q++)
      count += *q == ';';
    lua_createtable(L, 0, count);
    while (p && *p) {
      size_t n = strcspn(p, ";");
      size_t k = strcspn(p, "=;");
      lua_pushlstring(L, p, k);
      if (k < n)
        lua_pushlstring(L, p + k + 1, n - k - 1);
      else
        lua_pushboolean(L, 1);
      lua_rawset(L, -3);
      p += n;
      if (*p == ';')
        p++;
    }
    lua_setfield(L, -2, "params");
  }
}

/* A display name without its quotes and backslash escapes. */
static void push_display(lua_State *L, const char *d)
{
  luaL_Buffer B;
  size_t n = strlen(d);
  if (n < 2 || d[0] != '"' || d[n - 1] != '"') {
    lua_pushstring(L, d);
    return;
  }
  luaL_buffinit(L, &B);
  for (d++, n -= 2; n > 0; d++, n--) {
    if (*d == '\\' && n > 1) {
      d++;
      n--;
    }
    luaL_addchar(&B, *d);
  }
  luaL_pushresult(&B);
}

/* name-addr: {display=, uri=, tag=, params={}} */
static void push_addr(lua_State *L, sip_addr_t const *a)
{
  if (!a) {
    lua_pushnil(L);
    return;
  }
  lua_createtable(L, 0, 5);
  if (a->a_display && a->a_display[0]) {
    push_display(L, a->a_display);
    lua_setfield(L, -2, "display");
  }
  push_url(L, a->a_url);
  lua_setfield(L, -2, "uri");
  setstr(L, "tag", a->a_tag);
  push_params(L, a->a_params);
  lua_setfield(L, -2, "params");
  push_encoded(L, enc_field, a);
  lua_setfield(L, -2, "value");
}

static void push_vias(lua_State *L, sip_via_t const *v)
{
  int i = 0, n = 0;
  sip_via_t const *c;
  for (c = v; c; c = c->v_next)
    n++;
  lua_createtable(L, n, 0);
  for (; v; v = v->v_next) {
    lua_createtable(L, 0, 8);
    setstr(L, "protocol", v->v_protocol);
    setstr(L, "host", v->v_host);
    if (v->v_port) {
      lua_pushinteger(L, atoi(v->v_port));
      lua_setfield(L, -2, "port");
    }
    setstr(L, "branch", v->v_branch);
    setstr(L, "received", v->v_received);
    setstr(L, "rport", v->v_rport);
    push_params(L, v->v_params);
    lua_setfield(L, -2, "params");
    push_encoded(L, enc_field, v);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, -2, ++i);
  }
}

static void push_contacts(lua_State *L, sip_contact_t const *m)
{
  int i = 0, n = 0;
  sip_contact_t const *c;
  for (c = m; c; c = c->m_next)
    n++;
  lua_createtable(L, n, 0);
  for (; m; m = m->m_next) {
    lua_createtable(L, 0, 8);
    if (m->m_url->url_type == url_any) {
      lua_pushboolean(L, 1);
      lua_setfield(L, -2, "star");
    }
    if (m->m_display && m->m_display[0]) {
      push_display(L, m->m_display);
      lua_setfield(L, -2, "display");
    }
    push_url(L, m->m_url);
    lua_setfield(L, -2, "uri");
    if (m->m_expires) {
      lua_pushinteger(L, strtol(m->m_expires, NULL, 10));
      lua_setfield(L, -2, "expires");
    }
    if (m->m_q) {
      lua_pushnumber(L, strtod(m->m_q, NULL));
      lua_setfield(L, -2, "q");
    }
    push_params(L, m->m_params);
    lua_setfield(L, -2, "params");
    push_encoded(L, enc_field, m);
    lua_setfield(L, -2, "value");
    lua_rawseti(L, -2, ++i);
  }
}

/* Pushes the named field of a message; returns 1, or 0 with nothing pushed. */
int luasip_msg_field(lua_State *L, msg_t *msg, sip_t const *sip, const char *key)
{
  switch (key[0]) {
  case 'b':
    if (!strcmp(key, "body")) {
      if (sip->sip_payload)
        lua_pushlstring(L, sip->sip_payload->pl_data, sip->sip_payload->pl_len);
      else
        lua_pushnil(L);
      return 1;
    }
    break;
  case 'c':
    if (!strcmp(key, "call_id")) {
      lua_pushstring(L, sip->sip_call_id ? sip->sip_call_id->i_id : NULL);
      return 1;
    }
    if (!strcmp(key, "cseq")) {
      if (sip->sip_cseq)
        lua_pushinteger(L, (lua_Integer)sip->sip_cseq->cs_seq);
      else
        lua_pushnil(L);
      return 1;
    }
    if (!strcmp(key, "cseq_method")) {
      lua_pushstring(L, sip->sip_cseq ? sip->sip_cseq->cs_method_name : NULL);
      return 1;
    }
    if (!strcmp(key, "contact")) {
      push_contacts(L, sip->sip_contact);
      return 1;
    }
    if (!strcmp(key, "content_type")) {
      lua_pushstring(L, sip->sip_content_type ? sip->sip_content_type->c_type : NULL);
      return 1;
    }
    break;
  case 'e':
    if (!strcmp(key, "expires")) {
      if (sip->sip_expires)
        lua_pushinteger(L, (lua_Integer)sip->sip_expires->ex_delta);
      else
        lua_pushnil(L);
      return 1;
    }
    break;
  case 'f':
    if (!strcmp(key, "from")) {
      push_addr(L, (sip_addr_t const *)sip->sip_from);
      return 1;
    }
    if (!strcmp(key, "from_tag")) {
      lua_pushstring(L, sip->sip_from ? sip->sip_from->a_tag : NULL);
      return 1;
    }
    break;
  case 'm':
    if (!strcmp(key, "method")) {
      if (sip->sip_request)
        lua_pushstring(L, sip->sip_request->rq_method_name);
      else
        lua_pushstring(L, sip->sip_cseq ? sip->sip_cseq->cs_method_name : NULL);
      return 1;
    }
    if (!strcmp(key, "max_forwards")) {
      if (sip->sip_max_forwards)
        lua_pushinteger(L, (lua_Integer)sip->sip_max_forwards->mf_count);
      else
        lua_pushnil(L);
      return 1;
    }
    break;
  case 'r':
    if (!strcmp(key, "reason") && sip->sip_status) {
      lua_pushstring(L, sip->sip_status->st_phrase);
      return 1;
    }
    if (!strcmp(key, "ruri") && sip->sip_request) {
      push_uri_parts(L, sip->sip_request->rq_url);
      return 1;
    }
    break;
  case 's':
    if (!strcmp(key, "status") && sip->sip_status) {
      lua_pushinteger(L, sip->sip_status->st_status);
      return 1;
    }
    if (!strcmp(key, "source")) {
      su_sockaddr_t const *su = msg_addr(msg);
      char host[64];
      if (!su || !su_inet_ntop(su->su_family, SU_ADDR(su), host, sizeof host))
        return 0;
      lua_createtable(L, 0, 2);
      setstr(L, "address", host);
      lua_pushinteger(L, ntohs(su->su_port));
      lua_setfield(L, -2, "port");
      return 1;
    }
    break;
  case 't':
    if (!strcmp(key, "to")) {
      push_addr(L, (sip_addr_t const *)sip->sip_to);
      return 1;
    }
    if (!strcmp(key, "to_tag")) {
      lua_pushstring(L, sip->sip_to ? sip->sip_to->a_tag : NULL);
      return 1;
    }
    break;
  case 'u':
    if (!strcmp(key, "uri") && sip->sip_request) {
      push_url(L, sip->sip_request->rq_url);
      return 1;
    }
    break;
  case 'v':
    if (!strcmp(key, "via")) {
      push_vias(L, sip->sip_via);
      return 1;
    }
    if (!strcmp(key, "version")) {
      lua_pushstring(L, sip->sip_request ? sip->sip_request->rq_version
                     : sip->sip_status ? sip->sip_status->st_version : NULL);
      return 1;
    }
    break;
  }
  return 0;
}

/* ---------------------------------------------------------------- headers */

/* The list head of the header named name (long or compact form), or NULL. */
static msg_header_t const *find_header(msg_t *msg, sip_t const *sip, const char *name,
                                       int *unknown)
{
  msg_mclass_t const *mc = msg_mclass(msg);
  msg_href_t const *hr;
  *unknown = 0;
  if (!name || !*name)
    return NULL;
  hr = msg_find_hclass(mc, name, NULL);
  if (!hr || hr == mc->mc_error || !hr->hr_class)
    return NULL;
  if (hr == mc->mc_unknown) {
    *unknown = 1;
    return (msg_header_t const *)sip->sip_unknown;
  }
  return *(msg_header_t const * const *)((char const *)sip + hr->hr_offset);
}

/* Pushes the first value (all=0) or a list of every value (all=1) of a header.  Items of
 * list headers (Supported, Require, Allow...) count as values: "k: a, b" gives {"a","b"}. */
int luasip_msg_header(lua_State *L, msg_t *msg, sip_t const *sip, const char *name, int all)
{
  int unknown, i = 0;
  msg_header_t const *h = find_header(msg, sip, name, &unknown);
  if (all)
    lua_newtable(L);
  for (; h; h = h->sh_next) {
    if (unknown) {
      sip_unknown_t const *un = (sip_unknown_t const *)h;
      if (!un->un_name || !su_casematch(un->un_name, name))
        continue;
      lua_pushstring(L, un->un_value ? un->un_value : "");
    } else if (all && h->sh_class->hc_kind == msg_kind_list) {
      msg_param_t const *item = ((msg_list_t const *)h)->k_items;
      for (; item && *item; item++) {
        lua_pushstring(L, *item);
        lua_rawseti(L, -2, ++i);
      }
      continue;
    } else {
      push_encoded(L, enc_field, h);
    }
    if (!all)
      return 1;
    lua_rawseti(L, -2, ++i);
  }
  if (!all)
    lua_pushnil(L);
  return 1;
}

lsip_msgobj_t *luasip_msgobj_check(lua_State *L, int idx)
{
  lsip_msgobj_t *m = (lsip_msgobj_t *)luasip_testobj(L, idx, LUASIP_REQUEST);
  if (!m)
    m = (lsip_msgobj_t *)luasip_testobj(L, idx, LUASIP_RESPONSE);
  if (!m) {
    if (!luaL_testudata(L, idx, LUASIP_REQUEST) && !luaL_testudata(L, idx, LUASIP_RESPONSE))
      luaL_argerror(L, idx, "luasip.request or luasip.response expected");
    luaL_error(L, "attempt to use a closed luasip message");
  }
  if (!m->msg)
    luaL_error(L, "attempt to use a closed luasip message");
  return m;
}

/* msg:header(name) -> string | nil   (first value; compact names work) */
int luasip_msg_method_header(lua_State *L)
{
  lsip_msgobj_t *m = luasip_msgobj_check(L, 1);
  return luasip_msg_header(L, m->msg, m->sip, luaL_checkstring(L, 2), 0);
}

/* msg:headers(name) -> {string...} */
int luasip_msg_method_headers(lua_State *L)
{
  lsip_msgobj_t *m = luasip_msgobj_check(L, 1);
  return luasip_msg_header(L, m->msg, m->sip, luaL_checkstring(L, 2), 1);
}

/* msg:raw() -> string: the message as it is encoded */
int luasip_msg_method_raw(lua_State *L)
{
  lsip_msgobj_t *m = luasip_msgobj_check(L, 1);
  su_home_t home[1] = { SU_HOME_INIT(home) };
  size_t len = 0;
  char *s = msg_as_string(home, m->msg, NULL, 0, &len);
  if (s)
    lua_pushlstring(L, s, len);
  else
    lua_pushnil(L);
  su_home_deinit(home);
  return 1;
}

/* ---------------------------------------------------------------- responses */

static void msgobj_destroy(lsip_obj_t *obj)
{
  lsip_msgobj_t *m = (lsip_msgobj_t *)obj;
  if (m->msg)
    msg_destroy(m->msg);
  luasip_freeobj(&m->obj);
}

/* Wraps msg (takes over one reference) as a luasip.response on top of the stack. */
lsip_obj_t *luasip_response_new(lua_State *L, msg_t *msg)
{
  lsip_msgobj_t *m = luasip_newobj(L, sizeof *m, LUASIP_RESPONSE, msgobj_destroy);
  m->msg = msg;
  m->sip = sip_object(msg);
  return &m->obj;
}

/* The same, without Lua: the userdata is made later, inside the bridge. */
lsip_obj_t *luasip_response_alloc(msg_t *msg)
{
  lsip_msgobj_t *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  luasip_initobj(&m->obj, LUASIP_RESPONSE, msgobj_destroy);
  m->msg = msg;
  m->sip = sip_object(msg);
  return &m->obj;
}

static int response_fields(lua_State *L)
{
  lsip_msgobj_t *m = (lsip_msgobj_t *)luasip_testobj(L, 1, LUASIP_RESPONSE);
  if (!m || !m->msg)
    return 0;
  if (luasip_msg_field(L, m->msg, m->sip, lua_tostring(L, 2)))
    return 1;
  return 0;
}

static const luaL_Reg response_methods[] = {
  {"header", luasip_msg_method_header},
  {"headers", luasip_msg_method_headers},
  {"raw", luasip_msg_method_raw},
  {NULL, NULL}
};

/* ---------------------------------------------------------------- building */

/* A copy of msg to send on (a proxied or forwarded request, a relayed response) that
 * shares msg's strings and keeps it alive (msg_set_parent): each header is copied
 * shallowly, with the text it was received as (the agent parses with
 * MSG_DO_EXTRACT_COPY), so sofia sends the headers left unchanged as they came instead
 * of encoding them again (msg_dup drops that text).  Not msg_copy: on a parsed message
 * it copies the fragment chain too, and headers parsed into a message with a chain are
 * appended after its body.  Like msg_dup, extra instances of a single header go to the
 * error list and a list header's first object is taken. */
msg_t *luasip_msg_copy(msg_t *orig)
{
  msg_mclass_t const *mc = msg_mclass(orig);
  msg_pub_t const *src = msg_object(orig);
  msg_t *copy = msg_create(mc, src->msg_flags);
  msg_pub_t *dst = copy ? msg_object(copy) : NULL;
  msg_header_t *const *ssh, *const *end;
  if (!copy)
    return NULL;
  /* the header structs in one block (as nta's messages: NTATAG_PRELOAD), not a malloc each */
  su_home_preload(msg_home(copy), 1, LUASIP_PRELOAD);
  end = (msg_header_t *const *)((char const *)src + src->msg_size);
  for (ssh = &src->msg_request; ssh < end; ssh++) {
    msg_header_t const *sh = *ssh;
    msg_header_t **hh = sh ? msg_hclass_offset(mc, dst, sh->sh_class) : NULL;
    if (sh && !hh)
      goto fail;
    for (; sh; sh = sh->sh_next) {
      msg_header_t *h = msg_header_copy_one(msg_home(copy), sh);
      if (!h)
        goto fail;
      if (*hh && h->sh_class->hc_kind == msg_kind_single) {
        msg_error_t **e = &dst->msg_error;
        while (*e)
          e = &(*e)->er_next;
        *e = (msg_error_t *)h;
        continue;
      }
      while (*hh)
        hh = &(*hh)->sh_next;
      *hh = h;
      if (sh->sh_class->hc_kind == msg_kind_list)
        break;
    }
  }
  msg_set_parent(copy, orig);
  return copy;
fail:
  msg_destroy(copy);
  return NULL;
}

static int add_one_header(msg_t *msg, sip_t *sip, const char *name, const char *value)
{
  msg_mclass_t const *mc = msg_mclass(msg);
  msg_href_t const *hr = msg_find_hclass(mc, name, NULL);
  su_home_t *home = msg_home(msg);
  char *line;
  int rv;
  if (hr && hr != mc->mc_unknown && hr != mc->mc_error && hr->hr_class &&
      hr->hr_class->hc_kind == msg_kind_single) {
    msg_header_t **hh = (msg_header_t **)((char *)sip + hr->hr_offset);
    if (*hh)
      msg_header_remove_all(msg, (msg_pub_t *)sip, *hh);
  }
  /* "name: value\r\n" in the message's home, parsed in place (msg_header_add_str would
   * copy it again; su_sprintf cost ~2k instructions a header) */
  line = su_strcat_all(home, name, ": ", value, "\r\n", NULL);
  if (!line)
    return -1;
  rv = msg_header_parse_str(msg, (msg_pub_t *)sip, line);
  return rv;
}

/* Removes every header named name (long or compact form; unknown headers by name). */
void luasip_remove_header(msg_t *msg, sip_t *sip, const char *name)
{
  msg_mclass_t const *mc = msg_mclass(msg);
  msg_href_t const *hr = msg_find_hclass(mc, name, NULL);
  if (!hr || hr == mc->mc_error || !hr->hr_class)
    return;
  if (hr == mc->mc_unknown) {
    sip_unknown_t *un = sip->sip_unknown, *next;
    for (; un; un = next) {
      next = un->un_next;
      if (un->un_name && su_casematch(un->un_name, name))
        msg_header_remove(msg, (msg_pub_t *)sip, (msg_header_t *)un);
    }
    return;
  }
  {
    msg_header_t **hh = (msg_header_t **)((char *)sip + hr->hr_offset);
    if (*hh)
      msg_header_remove_all(msg, (msg_pub_t *)sip, *hh);
  }
}

static void check_header_text(lua_State *L, const char *fname, const char *name,
                              const char *s)
{
  if (strpbrk(s, "\r\n"))
    luaL_error(L, "%s: header '%s': the value must not contain CR or LF", fname, name);
}

/* A header name is a token (RFC 3261 25.1): letters, digits and -.!%*_+`'~ */
static void check_header_name(lua_State *L, const char *fname, const char *name, size_t n)
{
  size_t i;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)name[i];
    if (!(c < 128 && (isalnum(c) || strchr("-.!%*_+`'~", c))))
      break;
  }
  if (n == 0 || i < n)
    luaL_error(L, "%s: bad header name '%s' (a token expected)", fname, name);
}

/* Adds the headers of the table at idx to msg.  The table is either a map
 * { ["X-Name"] = "value" | {"v1", "v2"} } or a list { "X-Name: value", ... }, or both.
 * Raises naming fname for malformed input. */
int luasip_add_headers(lua_State *L, int idx, msg_t *msg, sip_t *sip, const char *fname)
{
  if (lua_isnoneornil(L, idx))
    return 0;
  if (!lua_istable(L, idx))
    return luaL_error(L, "%s: headers must be a table", fname);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    if (lua_type(L, -2) == LUA_TNUMBER) {
      const char *line = luaL_checkstring(L, -1);
      const char *colon = strchr(line, ':');
      char name[128];
      size_t n;
      if (!colon || (n = (size_t)(colon - line)) == 0 || n >= sizeof name)
        return luaL_error(L, "%s: bad header line '%s'", fname, line);
      memcpy(name, line, n);
      while (n > 0 && (name[n - 1] == ' ' || name[n - 1] == '\t'))
        n--;
      name[n] = '\0';
      check_header_name(L, fname, name, n);
      check_header_text(L, fname, name, line);
      colon++;
      while (*colon == ' ' || *colon == '\t')
        colon++;
      if (add_one_header(msg, sip, name, colon) < 0)
        return luaL_error(L, "%s: cannot parse header '%s'", fname, line);
    } else if (lua_type(L, -2) == LUA_TSTRING) {
      size_t nlen;
      const char *name = lua_tolstring(L, -2, &nlen);
      check_header_name(L, fname, name, nlen);
      if (lua_istable(L, -1)) {
        int i, n = (int)luasip_rawlen(L, -1);
        for (i = 1; i <= n; i++) {
          const char *v;
          lua_rawgeti(L, -1, i);
          v = lua_tostring(L, -1);
          if (!v)
            return luaL_error(L, "%s: header '%s' values must be strings", fname, name);
          check_header_text(L, fname, name, v);
          if (add_one_header(msg, sip, name, v) < 0)
            return luaL_error(L, "%s: cannot parse header '%s: %s'", fname, name, v);
          lua_pop(L, 1);
        }
      } else {
        const char *v = lua_tostring(L, -1);
        if (!v)
          return luaL_error(L, "%s: header '%s' must be a string", fname, name);
        check_header_text(L, fname, name, v);
        if (add_one_header(msg, sip, name, v) < 0)
          return luaL_error(L, "%s: cannot parse header '%s: %s'", fname, name, v);
      }
    } else {
      return luaL_error(L, "%s: header names must be strings", fname);
    }
    lua_pop(L, 1);
  }
  return 0;
}

/* Sets the body from opts.body / opts.content_type of the options table at idx. */
int luasip_set_body(lua_State *L, int idx, msg_t *msg, sip_t *sip, const char *fname)
{
  size_t len;
  const char *body, *ctype;
  su_home_t *home = msg_home(msg);
  if (!lua_istable(L, idx))
    return 0;
  lua_getfield(L, idx, "body");
  lua_getfield(L, idx, "content_type");
  if (lua_isnil(L, -2)) {
    lua_pop(L, 2);
    return 0;
  }
  /* the type first: lua_tolstring would turn a number into a string in place */
  if (lua_type(L, -2) != LUA_TSTRING)
    return luaL_error(L, "%s: body must be a string, got %s", fname, luaL_typename(L, -2));
  body = lua_tolstring(L, -2, &len);
  ctype = lua_tostring(L, -1);
  if (!lua_isnil(L, -1) && !ctype)
    return luaL_error(L, "%s: content_type must be a string", fname);
  if (ctype) {
    sip_content_type_t *c = sip_content_type_make(home, ctype);
    if (!c)
      return luaL_error(L, "%s: bad content_type '%s'", fname, ctype);
    if (sip->sip_content_type)
      msg_header_remove_all(msg, (msg_pub_t *)sip, (msg_header_t *)sip->sip_content_type);
    msg_header_insert(msg, (msg_pub_t *)sip, (msg_header_t *)c);
  } else if (!sip->sip_content_type && len > 0) {
    return luaL_error(L, "%s: a body needs a content_type", fname);
  }
  if (sip->sip_payload)
    msg_header_remove_all(msg, (msg_pub_t *)sip, (msg_header_t *)sip->sip_payload);
  if (len > 0) {
    sip_payload_t *pl = sip_payload_create(home, body, (isize_t)len);
    if (!pl)
      return luaL_error(L, "%s: out of memory", fname);
    msg_header_insert(msg, (msg_pub_t *)sip, (msg_header_t *)pl);
  }
  lua_pop(L, 2);
  return 1;
}

/* A SIP URI argument, checked for shape; raises naming fname. */
const char *luasip_uri_arg(lua_State *L, int idx, const char *fname)
{
  const char *s = lua_tostring(L, idx);
  url_t u[1];
  char buf[1024];
  size_t n;
  if (!s || lua_type(L, idx) != LUA_TSTRING)
    luaL_error(L, "%s: uri must be a string", fname);
  n = strlen(s);
  if (n == 0 || n >= sizeof buf)
    luaL_error(L, "%s: bad uri '%s'", fname, s);
  memcpy(buf, s, n + 1);
  if (url_d(u, buf) < 0 || (u->url_type != url_sip && u->url_type != url_sips) ||
      !u->url_host)
    luaL_error(L, "%s: bad uri '%s' (sip: or sips: expected)", fname, s);
  return s;
}

void luasip_message_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_RESPONSE, response_methods, response_fields);
}
