-- A phone behind a real NAT: three network namespaces made by this spec (root needed),
--   private 10.77.N.2 --- 10.77.N.1 [nat: nftables masquerade] 198.51.100.1 --- public 198.51.100.2
-- The public namespace runs spec/peers/nat_proxy.lua (registrar, proxy and a caller),
-- the private one spec/peers/nat_phone.lua (alice's phone).  The public side has no route
-- to the private network: alice is only reachable through the flow her REGISTER opened
-- in the NAT.  Nothing touches the host's own interfaces.
local H = require "spec.helper"
local B = require "spec.peers.baresip.peer"

local function sh(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  return ok == true or ok == 0
end

local why_not
if not sh("test \"$(id -u)\" = 0") then
  why_not = "network namespaces need root"
elseif not sh("{ command -v nft && command -v ip; }") then
  why_not = "nft (nftables) or ip (iproute2) is not installed"
end

math.randomseed(os.time() + math.floor(os.clock() * 1e6))
local tag = ("%d%03d"):format(os.time() % 100000, math.random(0, 999))
local NS = { priv = "lsip-priv-" .. tag, nat = "lsip-nat-" .. tag, pub = "lsip-pub-" .. tag }
local net = 10 + math.random(0, 200)
local PRIV_IP, PUB_IP = "10.77." .. net .. ".2", "198.51.100.2"

local function teardown()
  for _, ns in pairs(NS) do sh("ip netns del " .. ns) end
end

local function setup()
  local id = tag:sub(-6)
  local script = table.concat({
    "set -e",
    ("ip netns add %s; ip netns add %s; ip netns add %s"):format(NS.priv, NS.nat, NS.pub),
    ("ip link add vp%s netns %s type veth peer name vi%s netns %s"):format(id, NS.priv, id, NS.nat),
    ("ip link add vu%s netns %s type veth peer name vo%s netns %s"):format(id, NS.pub, id, NS.nat),
    ("ip -n %s addr add %s/24 dev vp%s"):format(NS.priv, PRIV_IP, id),
    ("ip -n %s addr add 10.77.%d.1/24 dev vi%s"):format(NS.nat, net, id),
    ("ip -n %s addr add 198.51.100.1/24 dev vo%s"):format(NS.nat, id),
    ("ip -n %s addr add %s/24 dev vu%s"):format(NS.pub, PUB_IP, id),
    ("for ns in %s %s %s; do ip -n $ns link set lo up; done"):format(NS.priv, NS.nat, NS.pub),
    ("ip -n %s link set vp%s up; ip -n %s link set vi%s up"):format(NS.priv, id, NS.nat, id),
    ("ip -n %s link set vo%s up; ip -n %s link set vu%s up"):format(NS.nat, id, NS.pub, id),
    ("ip -n %s route add default via 10.77.%d.1"):format(NS.priv, net),
    ("ip netns exec %s sysctl -qw net.ipv4.ip_forward=1"):format(NS.nat),
    ("ip netns exec %s nft -f - <<'NFT'\n"
      .. "table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
      .. "  oifname \"vo%s\" masquerade\n }\n}\nNFT"):format(NS.nat, id),
  }, "\n")
  local f = assert(io.popen("sh 2>&1", "w"))
  f:write(script, "\n")
  local ok = f:close()
  return ok == true or ok == 0
end

if not why_not then
  if setup() then
    teardown()
  else
    teardown()
    why_not = "network namespaces or nftables NAT cannot be made here"
  end
end

local it_nat = why_not and function(name) pending(name .. " -- " .. why_not) end or it
local have_baresip, no_baresip = B.available()
local it_baresip = (why_not or not have_baresip)
  and function(name) pending(name .. " -- " .. (why_not or no_baresip)) end or it
local unpack = table.unpack or unpack   -- luacheck: ignore 143

describe("a phone behind NAT (network namespaces, nftables masquerade)", function()
  local procs = {}
  before_each(function() if not why_not then assert(setup(), "namespaces") end end)
  after_each(function()
    for _, p in ipairs(procs) do p.kill() end
    procs = {}
    teardown()
  end)

  -- run(ns, word...) -> proc: a command in namespace ns; in_ns(ns, script, arg...): a Lua
  -- script there
  local function run(ns, ...)
    local p = H.background({ "ip", "netns", "exec", ns, ... }, 45)
    procs[#procs + 1] = p
    return p
  end
  local function in_ns(ns, script, ...) return run(ns, H.interpreter(), script, ...) end

  local function call_through_nat(transport, nat)
    local proxy = in_ns(NS.pub, "spec/peers/nat_proxy.lua", PUB_IP, "5060", nat and "nat" or "")
    H.run_until(function() return proxy.log():match("READY") or proxy.done() end, 10,
      "the proxy listening")
    local phone = in_ns(NS.priv, "spec/peers/nat_phone.lua", PRIV_IP, PUB_IP, "5060", transport)
    H.run_until(function()
      local called = proxy.log():match("CALL 200")
      if proxy.done() and not called then return true end     -- the call failed
      return (phone.log():match("ENDED") or phone.done())
        and (proxy.log():match("BYE ") or proxy.done())
    end, 40, "the call through the NAT")
    return proxy.log(), phone.log()
  end

  for _, transport in ipairs{ "udp", "tcp" } do
    it_nat("registers over " .. transport .. " from behind the NAT and receives a call", function()
      local plog, flog = call_through_nat(transport, transport == "udp")
      -- the registrar saw the NAT's public address, not the phone's private one
      assert.matches("REGISTERED " .. transport .. " 198%.51%.100%.1:%d+", plog)
      assert.matches("REGISTER 200", flog)
      assert.matches("INVITED 198%.51%.100%.2", flog)      -- the proxy, through the NAT
      assert.matches("ANSWERED", flog)                       -- the ACK found the flow too
      assert.matches("CALL 200", plog)
      assert.matches("BYE sent", plog)
      assert.matches("ENDED remote bye", flog)               -- so did the BYE
    end)
  end

  it_nat("without nat = true, a UDP phone is not reached at its private Contact", function()
    local plog, flog = call_through_nat("udp", false)
    assert.matches("REGISTERED udp 198%.51%.100%.1:%d+", plog)
    assert.matches("CALL %d+", plog)
    assert.not_matches("CALL 200", plog)
    assert.not_matches("INVITED", flog)
  end)

  for _, transport in ipairs{ "udp", "tcp" } do
    it_nat("examples/pbx.lua with PBX_NAT=1 calls a phone registered over " .. transport
      .. " from behind the NAT", function()
      local users = assert(loadfile("examples/users.lua"))()
      local pbx = run(NS.pub, "env", "PBX_NAT=1", H.interpreter(), "examples/pbx.lua",
        PUB_IP .. ":5060")
      H.run_until(function() return pbx.log():match("listening") or pbx.done() end, 15,
        "the PBX listening")
      local phone = in_ns(NS.priv, "spec/peers/nat_phone.lua", PRIV_IP, PUB_IP, "5060",
        transport, users.alice)
      H.run_until(function() return phone.log():match("REGISTER %d+") or phone.done() end,
        15, "alice registered")
      assert.matches("REGISTER 200", phone.log())
      local bob = in_ns(NS.pub, "spec/peers/nat_caller.lua", PUB_IP, "5060", users.bob)
      H.run_until(function()
        if bob.done() and not bob.log():match("CALL 200") then return true end
        return (phone.log():match("ENDED") or phone.done())
          and (bob.log():match("BYE ") or bob.done())
      end, 40, "bob's call through the NAT")
      assert.matches("INVITED 198%.51%.100%.2", phone.log())
      assert.matches("CALL 200", bob.log())
      assert.matches("ANSWERED", phone.log())       -- the ACK took alice's flow
      assert.matches("BYE sent", bob.log())
      assert.matches("ENDED remote bye", phone.log()) -- so did the BYE
    end)
  end

  -- baresip (spec/peers/baresip/peer.lua) as alice's phone behind the NAT, registering
  -- with digest to examples/pbx.lua (PBX_NAT=1, TLS on 5061 with the "server"
  -- certificate of spec/peers/make-certs.sh: made out to 127.0.0.1, not to the PBX's
  -- 198.51.100.2, and baresip is given no CA: that it registers over TLS at all shows
  -- baresip 1.0.0 does not verify the server, README Limits), called by bob from the
  -- public side
  for _, transport in ipairs{ "tcp", "tls" } do
    it_baresip("baresip registers over " .. transport .. " from behind the NAT to "
      .. "examples/pbx.lua and is called through it", function()
      local users = assert(loadfile("examples/users.lua"))()
      local dir = os.tmpname()
      os.remove(dir)
      finally(function() os.execute("rm -rf " .. H.shquote(dir)) end)
      assert(sh("mkdir -m 700 " .. H.shquote(dir) .. " && sh spec/peers/make-certs.sh "
        .. H.shquote(dir)), "openssl: test certificates")
      local pbx = run(NS.pub, "env", "PBX_NAT=1", "LUASIP_TLS_CERT=" .. dir .. "/server.pem",
        "LUASIP_TLS_KEY=" .. dir .. "/server.key", H.interpreter(), "examples/pbx.lua",
        PUB_IP .. ":5060")
      H.run_until(function() return pbx.log():match("listening") or pbx.done() end, 15,
        "the PBX listening")
      assert.matches("TLS on port 5061", pbx.log())
      local alice = B.start{ name = "alice", trace = true, address = PRIV_IP, max_seconds = 60,
        ns = { wrap = function(argv) return { "ip", "netns", "exec", NS.priv, unpack(argv) } end },
        context = function() return "--- pbx log\n" .. pbx.log() end }
      finally(alice.stop)
      alice.ready()
      local pbx_at = PUB_IP .. (transport == "tls" and ":5061" or ":5060")
      alice.command("uanew", B.account("alice", users.alice,
        pbx_at .. ";transport=" .. transport, "auto", PUB_IP))
      assert.equal("200 OK", alice.wait_event("REGISTER_OK", 15).param, alice.report())
      local bob = in_ns(NS.pub, "spec/peers/nat_caller.lua", PUB_IP, "5060", users.bob, "sdp")
      local inc = alice.wait_event("CALL_ESTABLISHED", 20)
      assert.same({ "incoming", "sip:bob@" .. PUB_IP }, { inc.direction, inc.peeruri })
      H.run_until(function() return bob.done() end, 20, "bob's call and hangup")
      assert.matches("CALL 200\nBYE sent", bob.log())
      assert.equal("Connection reset by peer", alice.wait_event("CALL_CLOSED").param)
      -- INVITE, ACK and BYE all came from the PBX's port over alice's connection, through
      -- the NAT (the public side has no route to her address)
      local got = {}
      for _, m in ipairs(alice.messages()) do
        if m.src == pbx_at and m.dst:match("^" .. PRIV_IP:gsub("%.", "%%.") .. ":%d+$") then
          got[#got + 1] = m.start:match("^(%u+) ")
        end
      end
      assert.same({ "INVITE", "ACK", "BYE" }, got, alice.report())
      -- digest: challenged, then accepted; the PBX saw the NAT's address (received=)
      local answers = {}
      for _, m in ipairs(alice.messages()) do
        if m.src == pbx_at and m.text:match("\nCSeq: %d+ REGISTER") then
          answers[#answers + 1] = m.start
          if m.start:match("^SIP/2%.0 200") then
            assert.matches("\nVia: [^\n]*;received=198%.51%.100%.1", "\n" .. m.text)
          end
        end
      end
      assert.same({ "SIP/2.0 401 Unauthorized", "SIP/2.0 200 OK" }, answers, alice.report())
    end)
  end
end)
